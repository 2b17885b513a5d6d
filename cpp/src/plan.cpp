// Plan parser and validator (format: export/plan-format.md). Every count, offset, size, shape and attribute is checked
// before it is used; all arithmetic on file-supplied numbers is overflow-checked.
#include "cmir/plan.hpp"

#include <array>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

namespace cmir {
namespace {

constexpr std::size_t kHeaderSize = 80;
constexpr std::uint64_t kMaxFileSize = 4ull << 30;      // 4 GiB: far above any CMIR, well below address limits
constexpr std::uint32_t kMaxTensors = 1u << 16;
constexpr std::uint32_t kMaxOps = 1u << 16;
constexpr std::uint32_t kMaxOpArity = 64;                // inputs / outputs / attributes per op
constexpr int kMaxDim = 1 << 14;                         // H, W
constexpr int kMaxChannels = 1 << 16;
constexpr std::size_t kMaxElemsPerSample = 1ull << 28;  // 1 GiB of float32 per sample and tensor

[[noreturn]] void fail(const std::string& msg) { throw PlanError("invalid plan: " + msg); }

// Bounded little-endian reader over a byte span.
class Reader {
 public:
  Reader(const unsigned char* p, std::size_t n, const char* what) : p_(p), n_(n), what_(what) {}
  template <typename T>
  T get() {
    if (n_ - pos_ < sizeof(T) || pos_ > n_) fail(std::string(what_) + " section is truncated");
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::size_t remaining() const { return n_ - pos_; }

 private:
  const unsigned char* p_;
  std::size_t n_;
  std::size_t pos_ = 0;
  const char* what_;
};

bool valid_utf8(const unsigned char* s, std::size_t n) {
  std::size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > n) return false;
    for (std::size_t k = 1; k < len; ++k)
      if ((s[i + k] & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

std::string op_label(std::size_t index, OpType t) {
  std::ostringstream os;
  os << "op " << index << " (" << op_name(t) << ")";
  return os.str();
}

// Shape rules of each op, checked against the tensor table (export/plan-format.md, "Ops").
class GraphChecker {
 public:
  explicit GraphChecker(const Plan& plan) : plan_(plan) {}

  void check_op(std::size_t index, const Op& op) {
    label_ = op_label(index, op.type);
    const auto& T = plan_.tensors;
    auto in = [&](std::size_t i) -> const TensorDesc& { return T[op.inputs[i]]; };
    auto out = [&](std::size_t i) -> const TensorDesc& { return T[op.outputs[i]]; };
    auto arity = [&](std::size_t ni_min, std::size_t ni_max, std::size_t no, std::size_t nint, std::size_t nfl,
                     std::size_t nw) {
      if (op.inputs.size() < ni_min || op.inputs.size() > ni_max || op.outputs.size() != no ||
          op.ints.size() != nint || op.floats.size() != nfl || op.weights.size() != nw)
        bad("wrong number of inputs, outputs, attributes or weights");
    };
    auto weights = [&](std::size_t i, std::size_t count) {
      if (op.weights[i].count != count) bad("weight " + std::to_string(i) + " has " +
                                            std::to_string(op.weights[i].count) + " floats, expected " +
                                            std::to_string(count));
    };
    auto same = [&](const TensorDesc& a, const TensorDesc& b, const char* what) {
      if (a.h != b.h || a.w != b.w || a.c != b.c) bad(std::string("shape mismatch: ") + what);
    };
    auto is_vec = [&](const TensorDesc& a, const char* what) {
      if (a.h != 1 || a.w != 1) bad(std::string(what) + " must be a vector (1 x 1 x C)");
    };
    switch (op.type) {
      case OpType::kConv: {
        arity(1, 2, 1, 4, 0, 2);
        const int k = op.ints[0], s = op.ints[1], p = op.ints[2], relu = op.ints[3];
        if (k < 1 || k > 15 || s < 1 || s > 4 || p < 0 || p > k / 2 || (relu != 0 && relu != 1)) bad("bad attributes");
        const auto& x = in(0);
        const auto& y = out(0);
        if (x.h + 2 * p < k || x.w + 2 * p < k) bad("kernel larger than the padded input");
        if (y.h != (x.h + 2 * p - k) / s + 1 || y.w != (x.w + 2 * p - k) / s + 1) bad("output size does not match");
        weights(0, static_cast<std::size_t>(y.c) * x.c * k * k);
        weights(1, static_cast<std::size_t>(y.c));
        if (op.inputs.size() == 2) same(in(1), y, "residual vs output");
        break;
      }
      case OpType::kMaxPool: {
        arity(1, 1, 1, 3, 0, 0);
        const int k = op.ints[0], s = op.ints[1], p = op.ints[2];
        if (k < 1 || k > 15 || s < 1 || s > 4 || p < 0 || p > k / 2) bad("bad attributes");
        const auto& x = in(0);
        const auto& y = out(0);
        if (x.h + 2 * p < k || x.w + 2 * p < k) bad("kernel larger than the padded input");
        if (y.c != x.c || y.h != (x.h + 2 * p - k) / s + 1 || y.w != (x.w + 2 * p - k) / s + 1)
          bad("output size does not match");
        break;
      }
      case OpType::kAvgPoolCeil: {
        arity(1, 1, 1, 1, 0, 0);
        const int s = op.ints[0];
        if (s < 1 || s > 4) bad("bad stride");
        const auto& x = in(0);
        const auto& y = out(0);
        if (y.c != x.c || y.h != (x.h + s - 1) / s || y.w != (x.w + s - 1) / s) bad("output size does not match");
        break;
      }
      case OpType::kInvolution: {
        arity(2, 2, 1, 4, 0, 2);
        const int k = op.ints[0], s = op.ints[1], gc = op.ints[2], relu = op.ints[3];
        if (k < 1 || k > 15 || k % 2 == 0 || s < 1 || s > 4 || gc < 1 || gc > 1024 || (relu != 0 && relu != 1))
          bad("bad attributes");
        const auto& x = in(0);
        const auto& kern = in(1);
        const auto& y = out(0);
        if (x.c % gc != 0) bad("channels not divisible by group_channels");
        const int ho = (x.h + s - 1) / s, wo = (x.w + s - 1) / s;
        if (y.h != ho || y.w != wo || y.c != x.c) bad("output size does not match");
        if (kern.h != ho || kern.w != wo || kern.c != (x.c / gc) * k * k) bad("kernel tensor shape does not match");
        weights(0, static_cast<std::size_t>(x.c));
        weights(1, static_cast<std::size_t>(x.c));
        break;
      }
      case OpType::kInvolutionFused: {
        // ints: K, stride, group_channels, relu, hidden; weights: reduce_wt [C, hidden], reduce_b [hidden],
        // span_wt [hidden, G*K*K], span_b [G*K*K], BN-after scale [C], shift [C]
        arity(1, 1, 1, 5, 0, 6);
        const int k = op.ints[0], s = op.ints[1], gc = op.ints[2], relu = op.ints[3], hidden = op.ints[4];
        if (k < 1 || k > 15 || k % 2 == 0 || s < 1 || s > 4 || gc < 1 || gc > 1024 || (relu != 0 && relu != 1) ||
            hidden < 1 || hidden > kMaxDim)
          bad("bad attributes");
        const auto& x = in(0);
        const auto& y = out(0);
        if (x.c % gc != 0) bad("channels not divisible by group_channels");
        const int ho = (x.h + s - 1) / s, wo = (x.w + s - 1) / s;
        if (y.h != ho || y.w != wo || y.c != x.c) bad("output size does not match");
        const std::size_t c = static_cast<std::size_t>(x.c), hd = static_cast<std::size_t>(hidden);
        const std::size_t gkk = static_cast<std::size_t>(x.c / gc) * static_cast<std::size_t>(k) * k;
        weights(0, c * hd);
        weights(1, hd);
        weights(2, hd * gkk);
        weights(3, gkk);
        weights(4, c);
        weights(5, c);
        break;
      }
      case OpType::kAffine: {
        arity(1, 1, 1, 1, 0, 2);
        if (op.ints[0] != 0 && op.ints[0] != 1) bad("bad attributes");
        same(in(0), out(0), "input vs output");
        weights(0, static_cast<std::size_t>(in(0).c));
        weights(1, static_cast<std::size_t>(in(0).c));
        break;
      }
      case OpType::kSpatialAttention: {
        arity(2, 2, 3, 1, 0, 2);
        const int k = op.ints[0];
        if (k < 1 || k > 15 || k % 2 == 0) bad("bad kernel size");
        same(in(0), in(1), "art vs pv");
        same(in(0), out(0), "art vs art_out");
        same(in(0), out(1), "pv vs pv_out");
        const auto& att = out(2);
        if (att.h != in(0).h || att.w != in(0).w || att.c != 1) bad("attention map shape does not match");
        weights(0, static_cast<std::size_t>(2) * k * k);
        weights(1, 1);
        break;
      }
      case OpType::kCmam: {
        arity(2, 2, 2, 2, 1, 2);
        const int dim = op.ints[0], heads = op.ints[1];
        const float eps = op.floats[0];
        if (dim < 1 || dim > 4096 || heads < 1 || heads > 64 || dim % heads != 0) bad("bad dim/heads");
        if (!(eps >= 0.0f && eps <= 1.0f)) bad("bad eps");
        same(in(0), in(1), "art vs pv");
        same(in(0), out(0), "art vs art_out");
        same(in(0), out(1), "pv vs pv_out");
        const std::size_t c = static_cast<std::size_t>(in(0).c), d = static_cast<std::size_t>(dim);
        weights(0, 4 * d * c + 3 * d + 3 * c);
        weights(1, 4 * d * c + 3 * d + 3 * c);
        break;
      }
      case OpType::kGap: {
        arity(1, 1, 1, 0, 0, 0);
        is_vec(out(0), "output");
        if (out(0).c != in(0).c) bad("channel count does not match");
        break;
      }
      case OpType::kLinear: {
        arity(1, 1, 1, 1, 0, 2);
        if (op.ints[0] != 0 && op.ints[0] != 1) bad("bad attributes");
        is_vec(in(0), "input");
        is_vec(out(0), "output");
        weights(0, static_cast<std::size_t>(in(0).c) * out(0).c);
        weights(1, static_cast<std::size_t>(out(0).c));
        break;
      }
      case OpType::kConcat: {
        arity(1, kMaxOpArity, 1, 0, 0, 0);
        std::size_t total = 0;
        for (std::size_t i = 0; i < op.inputs.size(); ++i) {
          is_vec(in(i), "input");
          total += static_cast<std::size_t>(in(i).c);
        }
        is_vec(out(0), "output");
        if (total != static_cast<std::size_t>(out(0).c)) bad("output width is not the sum of the inputs");
        break;
      }
      case OpType::kProbability: {
        arity(1, 1, 1, 1, 0, 0);
        if (op.ints[0] != 0 && op.ints[0] != 1) bad("bad mode");
        is_vec(in(0), "input");
        same(in(0), out(0), "input vs output");
        break;
      }
      case OpType::kResizeBilinear: {
        arity(1, 1, 1, 0, 0, 0);
        if (in(0).c != out(0).c) bad("channel count does not match");
        break;
      }
      case OpType::kMean2: {
        arity(2, 2, 1, 0, 0, 0);
        same(in(0), in(1), "inputs");
        same(in(0), out(0), "input vs output");
        break;
      }
      case OpType::kCam: {
        arity(2, 3, 1, 2, 1, 1);
        const int ncls = op.ints[0], nph = op.ints[1];
        if ((ncls != 1 && ncls != 3) || nph < 1 || nph > 2 || op.inputs.size() != static_cast<std::size_t>(nph) + 1)
          bad("bad attributes");
        if (!(op.floats[0] >= 0.0f && op.floats[0] <= 1.0f)) bad("bad eps");
        const auto& a = in(0);
        if (nph == 2) same(a, in(1), "art vs pv");
        const auto& logit = in(op.inputs.size() - 1);
        is_vec(logit, "logit");
        if (logit.c != ncls) bad("logit width does not match num_classes");
        if (out(0).h != a.h || out(0).w != a.w || out(0).c != 1) bad("output shape does not match");
        weights(0, static_cast<std::size_t>(ncls) * nph * a.c);
        break;
      }
      default:
        bad("unknown op type " + std::to_string(static_cast<std::uint32_t>(op.type)));
    }
  }

 private:
  [[noreturn]] void bad(const std::string& msg) { fail(label_ + ": " + msg); }
  const Plan& plan_;
  std::string label_;
};

}  // namespace

const char* op_name(OpType t) {
  switch (t) {
    case OpType::kConv: return "conv";
    case OpType::kMaxPool: return "maxpool";
    case OpType::kAvgPoolCeil: return "avgpool_ceil";
    case OpType::kInvolution: return "involution";
    case OpType::kAffine: return "affine";
    case OpType::kSpatialAttention: return "spatial_attention";
    case OpType::kCmam: return "cmam";
    case OpType::kGap: return "gap";
    case OpType::kLinear: return "linear";
    case OpType::kConcat: return "concat";
    case OpType::kProbability: return "probability";
    case OpType::kResizeBilinear: return "resize_bilinear";
    case OpType::kMean2: return "mean2";
    case OpType::kCam: return "cam";
    case OpType::kInvolutionFused: return "involution_fused";
  }
  return "unknown";
}

std::uint32_t crc32(const unsigned char* data, std::size_t size) {
  // Reflected CRC-32 (polynomial 0xEDB88320), the same value as Python's zlib.crc32.
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < size; ++i) c = table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

namespace {

// owned: the file's bytes, already placed so that `data` (which points into it) is 64-byte aligned; the plan takes it
// over and its weights point into it (no second copy of the weights). Without it the weights are copied.
Plan parse_impl(const unsigned char* data, std::size_t size, std::vector<unsigned char>* owned) {
  if (data == nullptr || size < kHeaderSize + 8) fail("file is too short to be a plan (" + std::to_string(size) +
                                                      " bytes)");
  if (std::memcmp(data, "CMIRPLAN", 8) != 0) fail("bad magic (not a cmir plan file)");
  Reader hdr(data + 8, kHeaderSize - 8, "header");
  const auto version = hdr.get<std::uint32_t>();
  if (version != kPlanVersion)
    fail("unsupported format version " + std::to_string(version) + " (this engine reads version " +
         std::to_string(kPlanVersion) + ")");
  const auto header_size = hdr.get<std::uint32_t>();
  const auto file_size = hdr.get<std::uint64_t>();
  const auto meta_off = hdr.get<std::uint64_t>(), meta_size = hdr.get<std::uint64_t>();
  const auto graph_off = hdr.get<std::uint64_t>(), graph_size = hdr.get<std::uint64_t>();
  const auto weights_off = hdr.get<std::uint64_t>(), weights_size = hdr.get<std::uint64_t>();
  if (hdr.get<std::uint64_t>() != 0) fail("reserved header bytes are not zero");
  if (header_size != kHeaderSize) fail("bad header size");
  if (file_size != size) fail("file size " + std::to_string(size) + " does not match the header's " +
                              std::to_string(file_size) + " (truncated or padded file)");
  if (file_size > kMaxFileSize) fail("file too large");
  if (std::memcmp(data + size - 4, "PEND", 4) != 0) fail("missing end marker (truncated file)");
  std::uint32_t stored_crc;
  std::memcpy(&stored_crc, data + size - 8, 4);
  if (crc32(data, size - 8) != stored_crc) fail("checksum mismatch (file corrupt)");
  // Sections in order, non-overlapping, inside [header, trailer). Values are < 4 GiB here, so sums cannot overflow
  // once each is bounded by the file size.
  const std::uint64_t body_end = size - 8;
  auto section = [&](std::uint64_t off, std::uint64_t len, std::uint64_t min_off, const char* what) {
    if (off < min_off || off > body_end || len > body_end - off) fail(std::string(what) + " section out of bounds");
  };
  section(meta_off, meta_size, kHeaderSize, "metadata");
  section(graph_off, graph_size, meta_off + meta_size, "graph");
  section(weights_off, weights_size, graph_off + graph_size, "weights");
  if (weights_off % 64 != 0 || weights_size % 4 != 0) fail("weights section is not aligned");
  if (meta_size == 0 || !valid_utf8(data + meta_off, meta_size) || data[meta_off] != '{')
    fail("metadata is not a UTF-8 JSON object");

  Plan plan;
  const unsigned char* wbuf = nullptr;
  if (owned != nullptr && reinterpret_cast<std::uintptr_t>(data) % 64 == 0) {
    wbuf = data + weights_off;  // weights_off % 64 == 0: aligned in place
  } else {
    // A copy with 64-byte aligned weights: the buffer is owned by the plan, weight pointers point into it.
    plan.bytes.resize(static_cast<std::size_t>(weights_size) + 64);
    auto base = reinterpret_cast<std::uintptr_t>(plan.bytes.data());
    unsigned char* dst = plan.bytes.data() + (64 - base % 64) % 64;
    if (weights_size) std::memcpy(dst, data + weights_off, static_cast<std::size_t>(weights_size));
    wbuf = dst;
  }
  plan.metadata_json.assign(reinterpret_cast<const char*>(data + meta_off), static_cast<std::size_t>(meta_size));

  Reader g(data + graph_off, static_cast<std::size_t>(graph_size), "graph");
  if (g.get<std::uint32_t>() != 0x48505247u) fail("bad graph magic");  // "GRPH"
  InputSpec& spec = plan.spec;
  spec.image_size = static_cast<int>(g.get<std::uint32_t>());
  spec.in_channels = static_cast<int>(g.get<std::uint32_t>());
  spec.num_clinical = static_cast<int>(g.get<std::uint32_t>());
  spec.num_classes = static_cast<int>(g.get<std::uint32_t>());
  const auto two_phase = g.get<std::uint32_t>();
  if (spec.image_size < 1 || spec.image_size > kMaxDim || spec.in_channels < 1 || spec.in_channels > 64 ||
      spec.num_clinical < 0 || spec.num_clinical > 4096 || (spec.num_classes != 1 && spec.num_classes != 3) ||
      two_phase > 1)
    fail("bad input spec");
  spec.two_phase = two_phase == 1;
  plan.art = g.get<std::uint32_t>();
  plan.pv = g.get<std::uint32_t>();
  plan.clinical = g.get<std::uint32_t>();
  plan.logit = g.get<std::uint32_t>();
  plan.probability = g.get<std::uint32_t>();
  plan.heatmap = g.get<std::uint32_t>();
  const auto n_tensors = g.get<std::uint32_t>();
  const auto n_ops = g.get<std::uint32_t>();
  if (n_tensors == 0 || n_tensors > kMaxTensors || n_ops == 0 || n_ops > kMaxOps) fail("bad tensor or op count");
  if (static_cast<std::uint64_t>(n_tensors) * 12 > g.remaining()) fail("graph section is truncated");
  plan.tensors.resize(n_tensors);
  for (auto& t : plan.tensors) {
    const auto h = g.get<std::uint32_t>(), w = g.get<std::uint32_t>(), c = g.get<std::uint32_t>();
    if (h < 1 || w < 1 || c < 1 || h > static_cast<std::uint32_t>(kMaxDim) ||
        w > static_cast<std::uint32_t>(kMaxDim) || c > static_cast<std::uint32_t>(kMaxChannels))
      fail("tensor shape out of range");
    t = TensorDesc{static_cast<int>(h), static_cast<int>(w), static_cast<int>(c)};
    if (t.elems() > kMaxElemsPerSample) fail("tensor too large");
  }

  // Graph inputs: defined before any op; every other tensor is written exactly once, by an op, before it is read.
  std::vector<char> defined(n_tensors, 0);
  auto need_tensor = [&](std::uint32_t id, const char* what) {
    if (id >= n_tensors) fail(std::string(what) + " tensor id out of range");
  };
  const int s = spec.image_size;
  need_tensor(plan.art, "art input");
  auto check_image = [&](std::uint32_t id) {
    const auto& t = plan.tensors[id];
    if (t.h != s || t.w != s || t.c != spec.in_channels) fail("input tensor shape does not match the input spec");
    if (defined[id]) fail("input tensor listed twice");
    defined[id] = 1;
  };
  check_image(plan.art);
  if (spec.two_phase) {
    need_tensor(plan.pv, "pv input");
    check_image(plan.pv);
  } else if (plan.pv != kNoTensor) {
    fail("single-phase plan names a pv input");
  }
  if (spec.num_clinical > 0) {
    need_tensor(plan.clinical, "clinical input");
    const auto& t = plan.tensors[plan.clinical];
    if (t.h != 1 || t.w != 1 || t.c != spec.num_clinical || defined[plan.clinical])
      fail("clinical tensor does not match the input spec");
    defined[plan.clinical] = 1;
  } else if (plan.clinical != kNoTensor) {
    fail("plan without clinical features names a clinical input");
  }

  GraphChecker checker(plan);
  plan.ops.reserve(n_ops);
  const float* wbase = reinterpret_cast<const float*>(wbuf);
  for (std::uint32_t i = 0; i < n_ops; ++i) {
    Op op;
    op.type = static_cast<OpType>(g.get<std::uint32_t>());
    const auto ni = g.get<std::uint32_t>(), no = g.get<std::uint32_t>(), nint = g.get<std::uint32_t>();
    const auto nfl = g.get<std::uint32_t>(), nw = g.get<std::uint32_t>();
    if (ni > kMaxOpArity || no > kMaxOpArity || nint > kMaxOpArity || nfl > kMaxOpArity || nw > kMaxOpArity)
      fail("op " + std::to_string(i) + ": too many inputs, outputs or attributes");
    for (std::uint32_t k = 0; k < ni; ++k) {
      const auto id = g.get<std::uint32_t>();
      if (id >= n_tensors) fail("op " + std::to_string(i) + ": input tensor id out of range");
      if (!defined[id]) fail("op " + std::to_string(i) + ": reads tensor " + std::to_string(id) +
                             " before it is written");
      op.inputs.push_back(id);
    }
    for (std::uint32_t k = 0; k < no; ++k) {
      const auto id = g.get<std::uint32_t>();
      if (id >= n_tensors) fail("op " + std::to_string(i) + ": output tensor id out of range");
      if (defined[id]) fail("op " + std::to_string(i) + ": tensor " + std::to_string(id) + " is written twice");
      defined[id] = 1;
      op.outputs.push_back(id);
    }
    for (std::uint32_t k = 0; k < nint; ++k) op.ints.push_back(g.get<std::int32_t>());
    for (std::uint32_t k = 0; k < nfl; ++k) op.floats.push_back(g.get<float>());
    for (std::uint32_t k = 0; k < nw; ++k) {
      const auto off = g.get<std::uint64_t>(), count = g.get<std::uint64_t>();
      if (off % 64 != 0 || off > weights_size || count > (weights_size - off) / 4)
        fail("op " + std::to_string(i) + ": weight " + std::to_string(k) + " out of bounds");
      WeightRef ref{wbase + off / 4, static_cast<std::size_t>(count)};
      op.weights.push_back(ref);
    }
    checker.check_op(i, op);
    for (const auto& w : op.weights)
      for (std::size_t k = 0; k < w.count; ++k)
        if (!(w.data[k] - w.data[k] == 0.0f)) fail("op " + std::to_string(i) + ": weights contain NaN or inf");
    plan.ops.push_back(std::move(op));
  }
  if (g.remaining() != 0) fail("trailing bytes after the last op in the graph section");
  auto need_output = [&](std::uint32_t id, const char* what, int h, int w, int c) {
    need_tensor(id, what);
    if (!defined[id]) fail(std::string(what) + " output is never written");
    const auto& t = plan.tensors[id];
    if (t.h != h || t.w != w || t.c != c) fail(std::string(what) + " output has the wrong shape");
  };
  need_output(plan.logit, "logit", 1, 1, spec.num_classes);
  need_output(plan.probability, "probability", 1, 1, spec.num_classes);
  need_output(plan.heatmap, "heatmap", s, s, 1);
  if (owned != nullptr && plan.bytes.empty()) plan.bytes = std::move(*owned);  // moving keeps the data pointer
  return plan;
}

}  // namespace

Plan parse_plan(const unsigned char* data, std::size_t size) { return parse_impl(data, size, nullptr); }

Plan load_plan_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw PlanError("cannot open plan file: " + path);
  f.seekg(0, std::ios::end);
  const std::streamoff len = f.tellg();
  if (len < 0) throw PlanError("cannot read plan file: " + path);
  if (static_cast<std::uint64_t>(len) > kMaxFileSize) throw PlanError("plan file too large: " + path);
  f.seekg(0, std::ios::beg);
  // Read straight into the buffer the plan keeps, placed 64-byte aligned, so the weights are held once.
  std::vector<unsigned char> buf(static_cast<std::size_t>(len) + 64);
  const auto base = reinterpret_cast<std::uintptr_t>(buf.data());
  unsigned char* start = buf.data() + (64 - base % 64) % 64;
  if (len > 0 && !f.read(reinterpret_cast<char*>(start), len)) throw PlanError("cannot read plan file: " + path);
  try {
    return parse_impl(start, static_cast<std::size_t>(len), &buf);
  } catch (const PlanError& e) {
    throw PlanError(path + ": " + e.what());
  }
}

}  // namespace cmir
