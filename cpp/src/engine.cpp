// Executor of a validated plan. Convolutions and max pooling run through oneDNN (NHWC activations, weights reordered
// once into the layout oneDNN picks, BN already folded, ReLU/residual fused as post-ops); involution, CMAM and spatial
// attention run cmir_trt's own kernels (cmir/cpu_kernels.hpp); the small head ops are plain loops here.
//
// Threads: with threads == 2 independent chains of ops (the ART and PV backbones) run side by side, one thread each
// (see build_schedule); otherwise each op uses all threads.
//
// Precision bf16: convolutions run oneDNN's bf16 kernels (weights converted once at load, fp32 accumulation). A
// tensor is stored in bf16 when a oneDNN op (conv, max pool) makes it and only oneDNN ops read it; a conv whose
// input is fp32 (made by our own kernels) converts it into a per-lane buffer first. Everything our kernels touch, the
// head and the outputs stay fp32 (see choose_dtypes). The first conv on each image and the involution after it stay
// fp32 altogether: image intensities need more than bf16's 8 bits (measured on the demo model: those two layers
// carried most of the probability error; they are <1% of the FLOPs).
//
// Memory: every tensor has a per-sample size, so one first-fit plan over tensor lifetimes (in per-sample floats) is
// scaled by the batch size. An execution context owns the arena, scratch buffers, oneDNN primitives and memory objects
// for one batch size; contexts are pooled, so a warm engine allocates nothing per call and concurrent calls never share
// buffers.
#include "cmir/engine.hpp"

#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "cmir/cpu_kernels.hpp"
#include "oneapi/dnnl/dnnl.hpp"

namespace cmir {
namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

constexpr int kMaxBatch = 1 << 16;
constexpr std::size_t kAlignFloats = 16;  // 64 bytes
constexpr std::size_t kMaxPooledContexts = 16;

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using FloatBuffer = std::unique_ptr<float[], FreeDeleter>;

FloatBuffer alloc_floats(std::size_t n) {
  const std::size_t bytes = std::max<std::size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return FloatBuffer(static_cast<float*>(p));
}

std::size_t round_up(std::size_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

std::string describe(const Plan& plan, const Op& op) {
  std::ostringstream os;
  os << op_name(op.type);
  const auto& in = plan.tensors[op.inputs[0]];
  switch (op.type) {
    case OpType::kConv: {
      const auto& out = plan.tensors[op.outputs[0]];
      os << " " << op.ints[0] << "x" << op.ints[0] << " s" << op.ints[1] << " " << in.c << "->" << out.c << " @"
         << out.h << "x" << out.w << (op.inputs.size() == 2 ? " +res" : "") << (op.ints[3] ? " relu" : "");
      break;
    }
    case OpType::kInvolution:
    case OpType::kInvolutionFused:
      os << " " << op.ints[0] << "x" << op.ints[0] << " s" << op.ints[1] << " C" << in.c << " @" << in.h << "x"
         << in.w;
      break;
    default:
      os << " " << in.h << "x" << in.w << "x" << in.c;
  }
  return os.str();
}

bool has_isa(dnnl::cpu_isa have, dnnl::cpu_isa want) {
  // oneDNN's ISA values are bit sets: each one includes the bits of the ISAs below it.
  const auto h = static_cast<unsigned>(have), w = static_cast<unsigned>(want);
  return (h & w) == w;
}

void check_finite(const float* p, std::size_t n, const char* what) {
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]))
      throw std::invalid_argument(std::string(what) + " contains NaN or infinity (element " + std::to_string(i) + ")");
}

// Bilinear resize with PyTorch's align_corners=False convention (source index clamped at 0).
void resize_bilinear(const float* x, float* y, int batch, int ih, int iw, int oh, int ow, int c) {
  const float sh = static_cast<float>(ih) / static_cast<float>(oh);
  const float sw = static_cast<float>(iw) / static_cast<float>(ow);
  auto index = [](int d, float scale, int in, int* i0, int* i1, float* l1) {
    float src = (static_cast<float>(d) + 0.5f) * scale - 0.5f;
    if (src < 0.f) src = 0.f;
    int i = static_cast<int>(src);
    if (i > in - 1) i = in - 1;
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    *l1 = src - static_cast<float>(i);
  };
  for (int b = 0; b < batch; ++b) {
    const float* xb = x + static_cast<std::size_t>(b) * ih * iw * c;
    float* yb = y + static_cast<std::size_t>(b) * oh * ow * c;
    for (int oy = 0; oy < oh; ++oy) {
      int y0, y1;
      float ly1;
      index(oy, sh, ih, &y0, &y1, &ly1);
      const float ly0 = 1.f - ly1;
      for (int ox = 0; ox < ow; ++ox) {
        int x0, x1;
        float lx1;
        index(ox, sw, iw, &x0, &x1, &lx1);
        const float lx0 = 1.f - lx1;
        float* o = yb + (static_cast<std::size_t>(oy) * ow + ox) * c;
        const float* p00 = xb + (static_cast<std::size_t>(y0) * iw + x0) * c;
        const float* p01 = xb + (static_cast<std::size_t>(y0) * iw + x1) * c;
        const float* p10 = xb + (static_cast<std::size_t>(y1) * iw + x0) * c;
        const float* p11 = xb + (static_cast<std::size_t>(y1) * iw + x1) * c;
        for (int k = 0; k < c; ++k)
          o[k] = ly0 * (lx0 * p00[k] + lx1 * p01[k]) + ly1 * (lx0 * p10[k] + lx1 * p11[k]);
      }
    }
  }
}

}  // namespace

const char* precision_name(Precision p) { return p == Precision::kBf16 ? "bf16" : "fp32"; }

std::string onednn_cpu_isa() {
  using isa = dnnl::cpu_isa;
  const isa have = dnnl::get_effective_cpu_isa();
  // Highest first: the first one contained in `have` names it.
  const std::pair<isa, const char*> names[] = {
      {isa::avx512_core_amx_fp16, "avx512_core_amx_fp16"}, {isa::avx512_core_amx, "avx512_core_amx"},
      {isa::avx512_core_fp16, "avx512_core_fp16"}, {isa::avx512_core_bf16, "avx512_core_bf16"},
      {isa::avx512_core_vnni, "avx512_core_vnni"}, {isa::avx512_core, "avx512_core"},
      {isa::avx2_vnni_2, "avx2_vnni_2"}, {isa::avx2_vnni, "avx2_vnni"}, {isa::avx2, "avx2"}, {isa::avx, "avx"},
      {isa::sse41, "sse41"}};
  for (const auto& [i, n] : names)
    if (has_isa(have, i)) return n;
  return "default";
}

bool bf16_supported(std::string* why) {
  // avx512_core_bf16 (vdpbf16ps) or AMX: oneDNN's native bf16 convolutions. Below that oneDNN 3.2 either refuses bf16
  // or emulates it (avx512_core), slower than fp32 - not worth offering.
  const bool ok = has_isa(dnnl::get_effective_cpu_isa(), dnnl::cpu_isa::avx512_core_bf16);
  if (!ok && why != nullptr)
    *why = "bf16 needs a CPU with avx512_bf16 or AMX; oneDNN sees " + onednn_cpu_isa() +
           " on this one (set by the CPU, or capped by ONEDNN_MAX_CPU_ISA)";
  return ok;
}

struct Engine::Impl {
  Plan plan;
  int threads = 1;
  Precision precision = Precision::kFp32;
  std::vector<char> half;     // per tensor: stored in bf16
  std::vector<char> op_bf16;  // per op: computes in bf16 (bf16 precision, not one of the fp32 image layers)
  // bf16: per fused-involution op, its generation weights rounded and packed once (cpu::bf16_pack_pairs).
  struct PackedGeneration {
    std::vector<std::uint16_t> reduce, span;
  };
  std::map<std::size_t, PackedGeneration> packed;
  // bf16: per CMAM op, both directions' projection weights rounded and packed once (cpu::cmam_pack_bf16).
  std::map<std::size_t, std::pair<std::vector<std::uint16_t>, std::vector<std::uint16_t>>> packed_cmam;

  void pack_generation_weights() {
    if (precision != Precision::kBf16 || !cpu::bf16_kernels_supported()) return;
    for (std::size_t i = 0; i < plan.ops.size(); ++i) {
      const Op& op = plan.ops[i];
      if (!op_bf16[i]) continue;
      if (op.type == OpType::kCmam) {
        const int c = plan.tensors[op.inputs[0]].c, dim = op.ints[0];
        auto& pc = packed_cmam[i];
        pc.first.resize(cpu::cmam_bf16_weight_elems(c, dim));
        pc.second.resize(pc.first.size());
        cpu::cmam_pack_bf16(op.weights[0].data, c, dim, pc.first.data());
        cpu::cmam_pack_bf16(op.weights[1].data, c, dim, pc.second.data());
        continue;
      }
      if (op.type != OpType::kInvolutionFused) continue;
      const auto& x = plan.tensors[op.inputs[0]];
      const int hidden = op.ints[4], gkk = x.c / op.ints[2] * op.ints[0] * op.ints[0];
      PackedGeneration& pg = packed[i];
      pg.reduce.resize(cpu::bf16_pack_pairs_size(x.c, hidden));
      pg.span.resize(cpu::bf16_pack_pairs_size(hidden, gkk));
      cpu::bf16_pack_pairs(op.weights[0].data, x.c, hidden, pg.reduce.data());
      cpu::bf16_pack_pairs(op.weights[2].data, hidden, gkk, pg.span.data());
    }
  }
  std::size_t fused_scratch_floats(std::size_t i, int nthreads) const {
    const Op& op = plan.ops[i];
    const auto& t = plan.tensors[op.inputs[0]];
    return packed.count(i) ? cpu::involution_fused_bf16_scratch_floats(t.c, op.ints[4], t.c / op.ints[2], op.ints[0],
                                                                       nthreads)
                           : cpu::involution_fused_scratch_floats(t.c, op.ints[4], t.c / op.ints[2], op.ints[0],
                                                                  nthreads);
  }
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::vector<std::size_t> offsets;  // per-sample float offset of every tensor in the arena
  std::size_t arena_per_sample = 0;
  std::vector<std::string> labels;
  std::vector<bool> aliased;  // per op: a residual conv that writes in place over its residual input

  // Two-lane schedule (threads == 2): independent chains of ops (the ART and PV backbones) run side by side, one
  // thread each, instead of splitting every op over two threads (at batch 1 the per-op split scales poorly: small
  // maps, a barrier per op). A region is a contiguous range of ops; when lane[1] is empty it runs in order with all
  // threads. Lane assignment follows data dependencies, so the result is the same as the sequential order.
  struct Region {
    std::vector<std::size_t> lane[2];
  };
  std::vector<Region> regions;
  std::vector<int> op_lane;  // per op: 0/1 inside a two-lane region, -1 otherwise
  bool use_lanes = false;

  // Which tensors are stored in bf16 (see the file comment). Fixed point: the two sides of a max pool, and the
  // residual and output of a conv that sums in place, must share a type.
  void choose_dtypes() {
    const std::size_t nt = plan.tensors.size();
    half.assign(nt, 0);
    op_bf16.assign(plan.ops.size(), precision == Precision::kBf16 ? 1 : 0);
    if (precision != Precision::kBf16) return;
    // The image layers: a conv reading an input image, and an involution reading such a conv's output, run fp32.
    std::vector<char> image_conv_out(nt, 0);
    for (std::size_t i = 0; i < plan.ops.size(); ++i) {
      const Op& op = plan.ops[i];
      const std::uint32_t in = op.inputs[0];
      if (op.type == OpType::kConv && (in == plan.art || in == plan.pv)) {
        op_bf16[i] = 0;
        for (auto t : op.outputs) image_conv_out[t] = 1;
      } else if ((op.type == OpType::kInvolutionFused || op.type == OpType::kInvolution) && image_conv_out[in]) {
        op_bf16[i] = 0;
      }
    }
    auto onednn = [](OpType t) { return t == OpType::kConv || t == OpType::kMaxPool; };
    for (std::size_t i = 0; i < plan.ops.size(); ++i)
      for (auto t : plan.ops[i].outputs) half[t] = onednn(plan.ops[i].type) && op_bf16[i] ? 1 : 0;
    for (const auto& op : plan.ops)
      if (!onednn(op.type))
        for (auto t : op.inputs) half[t] = 0;
    for (auto t : {plan.art, plan.pv, plan.clinical, plan.logit, plan.probability, plan.heatmap})
      if (t != kNoTensor) half[t] = 0;
    for (bool changed = true; changed;) {
      changed = false;
      for (const auto& op : plan.ops) {
        std::uint32_t a = kNoTensor, b = kNoTensor;
        if (op.type == OpType::kMaxPool) {
          a = op.inputs[0];
          b = op.outputs[0];
        } else if (op.type == OpType::kConv && op.inputs.size() == 2) {
          a = op.inputs[1];
          b = op.outputs[0];
        } else {
          continue;
        }
        if (half[a] != half[b]) {
          half[a] = half[b] = 0;
          changed = true;
        }
      }
    }
  }
  dt dtype(std::uint32_t t) const { return half[t] ? dt::bf16 : dt::f32; }
  std::size_t elem_bytes(std::uint32_t t) const { return half[t] ? 2 : 4; }
  // Floats of arena per sample that tensor t takes (a bf16 tensor takes half).
  std::size_t slot_floats(std::uint32_t t) const {
    const std::size_t e = plan.tensors[t].elems();
    return half[t] ? (e + 1) / 2 : e;
  }

  void build_schedule() {
    const std::size_t nt = plan.tensors.size(), n = plan.ops.size();
    regions.clear();
    op_lane.assign(n, -1);
    std::vector<long> prod_region(nt, -1);
    std::vector<int> prod_lane(nt, -1);
    long rid = 0;
    int nlanes = 0;
    regions.emplace_back();
    for (std::size_t i = 0; i < n; ++i) {
      const Op& op = plan.ops[i];
      int lane = -1;
      bool join = false;
      for (auto t : op.inputs) {
        if (prod_region[t] != rid) continue;
        if (lane == -1) lane = prod_lane[t];
        else if (lane != prod_lane[t]) join = true;
      }
      // CMAM and SA always run alone, with all threads: their kernels separate phases with team barriers, which
      // must not bind to a lane's two-thread team.
      const bool solo = op.type == OpType::kCmam || op.type == OpType::kSpatialAttention;
      if (join || solo) {  // reads from both lanes: the region ends before this op
        regions.emplace_back();
        ++rid;
        nlanes = 0;
        lane = -1;
      }
      Region& r = regions.back();
      if (lane == -1) lane = nlanes < 2 ? nlanes++ : (r.lane[0].size() <= r.lane[1].size() ? 0 : 1);
      r.lane[lane].push_back(i);
      for (auto t : op.outputs) {
        prod_region[t] = rid;
        prod_lane[t] = lane;
      }
      if (solo) {  // and nothing joins its region
        regions.emplace_back();
        ++rid;
        nlanes = 0;
      }
    }
    regions.erase(std::remove_if(regions.begin(), regions.end(),
                                 [](const Region& r) { return r.lane[0].empty() && r.lane[1].empty(); }),
                  regions.end());
    use_lanes = false;
    if (threads != 2) {  // one op over all threads; regions then just run in order
      for (auto& r : regions) {
        r.lane[0].insert(r.lane[0].end(), r.lane[1].begin(), r.lane[1].end());
        std::sort(r.lane[0].begin(), r.lane[0].end());
        r.lane[1].clear();
      }
      return;
    }
    for (const auto& r : regions)
      if (!r.lane[1].empty()) {
        use_lanes = true;
        for (int l = 0; l < 2; ++l)
          for (auto i : r.lane[l]) op_lane[i] = l;
      }
  }

  // Weights reordered to the layout a conv primitive asked for, shared by all contexts (keyed by op and layout).
  std::mutex weights_mutex;
  std::map<std::size_t, std::vector<std::pair<memory::desc, memory>>> weights_cache;
  bool weights_released = false;

  struct Step {
    dnnl::primitive prim;
    std::unordered_map<int, memory> args;
    bool copy_residual = false;
    dnnl::primitive convert;  // bf16: fp32 input -> bf16 copy, before prim (empty when not needed)
    std::unordered_map<int, memory> convert_args;
  };
  struct Context {
    int batch = 0;
    // *2: lane 1 of two-lane regions. converted: bf16 copies of conv inputs made in fp32.
    FloatBuffer arena, scratch, kernel_scratch, scratch2, kernel_scratch2, converted, converted2;
    dnnl::stream stream, stream2;
    std::vector<Step> steps;  // one per op (prim empty for ops run by our own code)
  };
  std::mutex pool_mutex;
  std::deque<std::unique_ptr<Context>> pool;

  void plan_memory() {
    const auto& P = plan;
    const std::size_t nt = P.tensors.size();
    std::vector<long> first(nt, -1), last(nt, -1);
    for (std::size_t i = 0; i < P.ops.size(); ++i) {
      for (auto t : P.ops[i].outputs) first[t] = static_cast<long>(i);
      for (auto t : P.ops[i].inputs) last[t] = static_cast<long>(i);
    }
    const long end = static_cast<long>(P.ops.size());
    for (auto t : {P.logit, P.probability, P.heatmap}) last[t] = end;
    std::vector<long> producer(nt, -1);
    for (std::size_t i = 0; i < P.ops.size(); ++i)
      for (auto t : P.ops[i].outputs) producer[t] = static_cast<long>(i);
    // Two-lane regions run their ops in any interleaving: every tensor first or last used inside one is treated as
    // live for the whole region.
    for (const auto& r : regions) {
      if (r.lane[1].empty()) continue;
      const long b = static_cast<long>(std::min(r.lane[0].front(), r.lane[1].front()));
      const long e = static_cast<long>(std::max(r.lane[0].back(), r.lane[1].back()));
      for (std::size_t t = 0; t < nt; ++t) {
        if (first[t] >= b && first[t] <= e) first[t] = b;
        if (last[t] >= b && last[t] <= e) last[t] = e;
      }
    }
    // A conv with a residual whose input dies at that op writes its output in place over the residual (oneDNN's sum
    // post-op accumulates into dst), which saves a copy and arena space. alias[t] = the tensor t shares storage with.
    std::vector<std::uint32_t> alias(nt, kNoTensor);
    aliased.assign(P.ops.size(), false);
    for (std::size_t i = 0; i < P.ops.size(); ++i) {
      const Op& op = P.ops[i];
      if (op.type != OpType::kConv || op.inputs.size() != 2) continue;
      const std::uint32_t r = op.inputs[1], y = op.outputs[0];
      if (r == P.art || r == P.pv || r == P.clinical || r == op.inputs[0]) continue;
      if (op_lane[i] >= 0) {  // in a two-lane region: only over a residual made earlier in the same lane
        const long pr = producer[r];
        if (pr < 0 || op_lane[static_cast<std::size_t>(pr)] != op_lane[i]) continue;
        bool same_region = false;
        for (const auto& reg : regions)
          for (int l = 0; l < 2; ++l)
            if (std::find(reg.lane[l].begin(), reg.lane[l].end(), static_cast<std::size_t>(pr)) != reg.lane[l].end() &&
                std::find(reg.lane[l].begin(), reg.lane[l].end(), i) != reg.lane[l].end())
              same_region = true;
        if (!same_region) continue;
        bool read_later = false;  // widened lifetimes hide later reads: check them directly
        for (std::size_t j = i + 1; j < P.ops.size(); ++j)
          for (auto t : P.ops[j].inputs) read_later = read_later || t == r;
        if (read_later) continue;
      } else if (last[r] != static_cast<long>(i)) {
        continue;
      }
      alias[y] = r;
      aliased[i] = true;
    }
    auto root = [&](std::uint32_t t) {
      while (alias[t] != kNoTensor) t = alias[t];
      return t;
    };
    std::vector<long> root_last(last);
    for (std::size_t t = 0; t < nt; ++t) {
      const auto r = root(static_cast<std::uint32_t>(t));
      root_last[r] = std::max(root_last[r], last[t]);
    }
    std::vector<std::size_t> order;
    for (std::size_t t = 0; t < nt; ++t)
      if (alias[t] == kNoTensor && (root_last[t] >= 0 || t == P.art || t == P.pv || t == P.clinical))
        order.push_back(t);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return slot_floats(static_cast<std::uint32_t>(a)) > slot_floats(static_cast<std::uint32_t>(b));
    });
    offsets.assign(nt, 0);
    struct Placed {
      std::size_t off, size;
      long first, last;
    };
    std::vector<Placed> placed;
    arena_per_sample = 0;
    for (auto t : order) {
      const std::size_t size = round_up(slot_floats(static_cast<std::uint32_t>(t)));
      const long f = first[t], l = std::max(root_last[t], first[t]);
      std::vector<std::pair<std::size_t, std::size_t>> busy;
      for (const auto& p : placed)
        if (!(p.last < f || l < p.first)) busy.emplace_back(p.off, p.off + p.size);
      std::sort(busy.begin(), busy.end());
      std::size_t off = 0;
      for (const auto& b : busy) {
        if (off + size <= b.first) break;
        off = std::max(off, b.second);
      }
      offsets[t] = off;
      placed.push_back({off, size, f, l});
      arena_per_sample = std::max(arena_per_sample, off + size);
    }
    for (std::size_t t = 0; t < nt; ++t) offsets[t] = offsets[root(static_cast<std::uint32_t>(t))];
  }

  memory::dims nchw(std::uint32_t t, int batch) const {
    const auto& d = plan.tensors[t];
    return {batch, d.c, d.h, d.w};
  }

  dnnl::convolution_forward::primitive_desc conv_pd(std::size_t i, int batch) {
    const Op& op = plan.ops[i];
    const int k = op.ints[0], s = op.ints[1], p = op.ints[2];
    const auto& out = plan.tensors[op.outputs[0]];
    // bf16: the primitive always reads bf16 (an fp32 input is converted first, see make_context).
    const dt compute = op_bf16[i] ? dt::bf16 : dt::f32;
    memory::desc src_md(nchw(op.inputs[0], batch), compute, tag::nhwc);
    memory::desc dst_md(nchw(op.outputs[0], batch), dtype(op.outputs[0]), tag::nhwc);
    memory::desc w_any({out.c, plan.tensors[op.inputs[0]].c, k, k}, compute, tag::any);
    memory::desc b_md({out.c}, dt::f32, tag::a);
    dnnl::post_ops po;
    if (op.inputs.size() == 2) po.append_sum(1.0f);
    if (op.ints[3]) po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    attr.set_post_ops(po);
    return dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_inference,
                                                     dnnl::algorithm::convolution_direct, src_md, w_any, b_md, dst_md,
                                                     {s, s}, {p, p}, {p, p}, attr);
  }

  // Conv weights in the layout `want`. The first layout of an op is reordered from the plan's OIHW weights; any other
  // from that first copy, so the plan's OIHW copy is not needed after load (release_conv_weights).
  memory reordered_weights(std::size_t op_index, const memory::desc& want) {
    std::lock_guard<std::mutex> lock(weights_mutex);
    auto& entries = weights_cache[op_index];
    for (auto& e : entries)
      if (e.first == want) return e.second;
    memory src;
    if (!entries.empty()) {
      src = entries.front().second;
    } else {
      if (weights_released) throw std::logic_error("conv weights requested after their release");
      const Op& op = plan.ops[op_index];
      const auto& in = plan.tensors[op.inputs[0]];
      const auto& out = plan.tensors[op.outputs[0]];
      const int k = op.ints[0];
      memory::desc user_md({out.c, in.c, k, k}, dt::f32, tag::oihw);
      src = memory(user_md, eng, const_cast<float*>(op.weights[0].data));  // read only: the reorder's source
    }
    memory dst(want, eng);
    dnnl::stream s(eng);
    dnnl::reorder(src, dst).execute(s, src, dst);
    s.wait();
    entries.emplace_back(want, dst);
    return dst;
  }

  // At load: every conv's weights reordered once (layout of a batch-1 primitive), then the plan's OIHW copy handed
  // back to the OS page by page, so the weights are resident once, not twice (peak RSS).
  void prepare_conv_weights() {
    omp_set_num_threads(threads);
    const long page = sysconf(_SC_PAGESIZE);
    for (std::size_t i = 0; i < plan.ops.size(); ++i) {
      const Op& op = plan.ops[i];
      if (op.type != OpType::kConv) continue;
      reordered_weights(i, conv_pd(i, 1).weights_desc());
      if (page <= 0 || plan.bytes.empty()) continue;
      // Only whole pages inside this op's weight range (the buffer is anonymous memory owned by the plan; the
      // released pages are never read again: later layouts are reordered from the copy made above).
      const auto begin = reinterpret_cast<std::uintptr_t>(op.weights[0].data);
      const auto end = begin + op.weights[0].count * sizeof(float);
      const std::uintptr_t p0 = (begin + page - 1) / page * page, p1 = end / page * page;
      if (p1 > p0) madvise(reinterpret_cast<void*>(p0), p1 - p0, MADV_DONTNEED);
    }
    weights_released = true;
  }

  std::unique_ptr<Context> make_context(int batch) {
    omp_set_num_threads(threads);  // oneDNN sizes its parallel work at primitive creation
    auto ctx = std::make_unique<Context>();
    ctx->batch = batch;
    ctx->stream = dnnl::stream(eng);
    ctx->stream2 = dnnl::stream(eng);
    std::size_t arena_floats = 0;
    if (arena_per_sample > (static_cast<std::size_t>(1) << 40) / static_cast<std::size_t>(batch))
      throw std::invalid_argument("batch " + std::to_string(batch) + " needs more memory than allowed");
    arena_floats = arena_per_sample * static_cast<std::size_t>(batch);
    ctx->arena = alloc_floats(arena_floats);
    float* arena = ctx->arena.get();
    auto ptr = [&](std::uint32_t t) { return arena + offsets[t] * static_cast<std::size_t>(batch); };
    std::size_t scratch_bytes = 0, kernel_scratch = 0, converted_floats = 0;
    std::vector<std::pair<std::size_t, memory::desc>> scratch_users;  // step index, scratchpad desc
    std::vector<std::size_t> converters;  // ops whose fp32 input is converted to bf16 first
    ctx->steps.resize(plan.ops.size());
    for (std::size_t i = 0; i < plan.ops.size(); ++i) {
      const Op& op = plan.ops[i];
      Step& st = ctx->steps[i];
      // An op in a lane runs on one thread: create its primitive for one thread.
      omp_set_num_threads(op_lane[i] >= 0 ? 1 : threads);
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      if (op.type == OpType::kConv) {
        auto pd = conv_pd(i, batch);
        memory::desc dst_md(nchw(op.outputs[0], batch), dtype(op.outputs[0]), tag::nhwc);
        memory::desc b_md({plan.tensors[op.outputs[0]].c}, dt::f32, tag::a);
        st.prim = dnnl::convolution_forward(pd);
        if (op_bf16[i] && !half[op.inputs[0]]) {
          converters.push_back(i);  // the bf16 copy's memory is bound once the buffers exist, below
          converted_floats = std::max(converted_floats, (plan.tensors[op.inputs[0]].elems() * batch + 1) / 2);
        } else {
          st.args[DNNL_ARG_SRC] = memory(pd.src_desc(), eng, ptr(op.inputs[0]));
        }
        st.args[DNNL_ARG_WEIGHTS] = reordered_weights(i, pd.weights_desc());
        st.args[DNNL_ARG_BIAS] = memory(b_md, eng, const_cast<float*>(op.weights[1].data));
        st.args[DNNL_ARG_DST] = memory(dst_md, eng, ptr(op.outputs[0]));
        st.copy_residual = op.inputs.size() == 2 && !aliased[i];
        scratch_users.emplace_back(i, pd.scratchpad_desc());
        scratch_bytes = std::max(scratch_bytes, pd.scratchpad_desc().get_size());
      } else if (op.type == OpType::kMaxPool) {
        const int k = op.ints[0], s = op.ints[1], p = op.ints[2];
        memory::desc src_md(nchw(op.inputs[0], batch), dtype(op.inputs[0]), tag::nhwc);
        memory::desc dst_md(nchw(op.outputs[0], batch), dtype(op.outputs[0]), tag::nhwc);
        dnnl::pooling_forward::primitive_desc pd(eng, dnnl::prop_kind::forward_inference,
                                                 dnnl::algorithm::pooling_max, src_md, dst_md, {s, s}, {k, k}, {0, 0},
                                                 {p, p}, {p, p}, attr);
        st.prim = dnnl::pooling_forward(pd);
        st.args[DNNL_ARG_SRC] = memory(src_md, eng, ptr(op.inputs[0]));
        st.args[DNNL_ARG_DST] = memory(dst_md, eng, ptr(op.outputs[0]));
        scratch_users.emplace_back(i, pd.scratchpad_desc());
        scratch_bytes = std::max(scratch_bytes, pd.scratchpad_desc().get_size());
      } else if (op.type == OpType::kCmam) {
        const auto& t = plan.tensors[op.inputs[0]];
        kernel_scratch = std::max(kernel_scratch,
                                  packed_cmam.count(i)
                                      ? cpu::cmam_bf16_scratch_floats(batch, t.h * t.w, t.c, op.ints[0], op.ints[1])
                                      : cpu::cmam_scratch_floats(batch, t.h * t.w, t.c, op.ints[0], op.ints[1]));
      } else if (op.type == OpType::kSpatialAttention) {
        const auto& t = plan.tensors[op.inputs[0]];
        kernel_scratch = std::max(kernel_scratch, cpu::spatial_attention_scratch_floats(batch, t.h, t.w));
      } else if (op.type == OpType::kInvolutionFused) {
        // Per-thread tile buffers, independent of the batch; sized for the most threads the op may run with.
        kernel_scratch = std::max(kernel_scratch, fused_scratch_floats(i, threads));
      }
    }
    omp_set_num_threads(threads);
    ctx->scratch = alloc_floats(scratch_bytes / sizeof(float) + 1);
    ctx->kernel_scratch = alloc_floats(kernel_scratch + 1);
    ctx->converted = alloc_floats(converted_floats + 1);
    if (use_lanes) {
      ctx->scratch2 = alloc_floats(scratch_bytes / sizeof(float) + 1);
      ctx->kernel_scratch2 = alloc_floats(kernel_scratch + 1);
      ctx->converted2 = alloc_floats(converted_floats + 1);
    }
    for (auto i : converters) {
      const Op& op = plan.ops[i];
      Step& st = ctx->steps[i];
      omp_set_num_threads(op_lane[i] >= 0 ? 1 : threads);
      memory f32(memory::desc(nchw(op.inputs[0], batch), dt::f32, tag::nhwc), eng, ptr(op.inputs[0]));
      memory b16(memory::desc(nchw(op.inputs[0], batch), dt::bf16, tag::nhwc), eng,
                 op_lane[i] == 1 ? ctx->converted2.get() : ctx->converted.get());
      st.convert = dnnl::reorder(f32, b16);
      st.convert_args = {{DNNL_ARG_FROM, f32}, {DNNL_ARG_TO, b16}};
      st.args[DNNL_ARG_SRC] = b16;
    }
    omp_set_num_threads(threads);
    for (const auto& [i, md] : scratch_users)
      if (md.get_size() > 0)
        ctx->steps[i].args[DNNL_ARG_SCRATCHPAD] =
            memory(md, eng, op_lane[i] == 1 ? ctx->scratch2.get() : ctx->scratch.get());
    return ctx;
  }

  std::unique_ptr<Context> acquire(int batch) {
    {
      std::lock_guard<std::mutex> lock(pool_mutex);
      for (auto it = pool.begin(); it != pool.end(); ++it)
        if ((*it)->batch == batch) {
          auto ctx = std::move(*it);
          pool.erase(it);
          return ctx;
        }
    }
    return make_context(batch);  // outside the lock: creation takes a while and other batch sizes may proceed
  }

  void release(std::unique_ptr<Context> ctx) {
    std::lock_guard<std::mutex> lock(pool_mutex);
    pool.push_front(std::move(ctx));
    while (pool.size() > kMaxPooledContexts) pool.pop_back();  // least recently used
  }

  void run_op(Context& ctx, std::size_t i) {
    const Op& op = plan.ops[i];
    const int threads = op_lane[i] >= 0 ? 1 : this->threads;  // lanes: one thread each
    dnnl::stream& stream = op_lane[i] == 1 ? ctx.stream2 : ctx.stream;
    float* kscratch = op_lane[i] == 1 ? ctx.kernel_scratch2.get() : ctx.kernel_scratch.get();
    const int B = ctx.batch;
    float* arena = ctx.arena.get();
    auto ptr = [&](std::uint32_t t) { return arena + offsets[t] * static_cast<std::size_t>(B); };
    auto T = [&](std::uint32_t t) -> const TensorDesc& { return plan.tensors[t]; };
    switch (op.type) {
      case OpType::kConv:
      case OpType::kMaxPool: {
        Step& st = ctx.steps[i];
        if (st.convert) st.convert.execute(stream, st.convert_args);
        if (st.copy_residual)
          std::memcpy(ptr(op.outputs[0]), ptr(op.inputs[1]), T(op.outputs[0]).elems() * B * elem_bytes(op.outputs[0]));
        st.prim.execute(stream, st.args);
        stream.wait();
        break;
      }
      case OpType::kAvgPoolCeil: {
        const auto& x = T(op.inputs[0]);
        const auto& y = T(op.outputs[0]);
        const int s = op.ints[0], C = x.c;
        const float* xp = ptr(op.inputs[0]);
        float* yp = ptr(op.outputs[0]);
        for (int b = 0; b < B; ++b)
          for (int oy = 0; oy < y.h; ++oy)
            for (int ox = 0; ox < y.w; ++ox) {
              float* o = yp + ((static_cast<std::size_t>(b) * y.h + oy) * y.w + ox) * C;
              const int y0 = oy * s, y1 = std::min(y0 + s, x.h), x0 = ox * s, x1 = std::min(x0 + s, x.w);
              for (int c = 0; c < C; ++c) o[c] = 0.f;
              for (int iy = y0; iy < y1; ++iy)
                for (int ix = x0; ix < x1; ++ix) {
                  const float* q = xp + ((static_cast<std::size_t>(b) * x.h + iy) * x.w + ix) * C;
                  for (int c = 0; c < C; ++c) o[c] += q[c];
                }
              const float inv = 1.f / static_cast<float>((y1 - y0) * (x1 - x0));
              for (int c = 0; c < C; ++c) o[c] *= inv;
            }
        break;
      }
      case OpType::kInvolution: {
        const auto& x = T(op.inputs[0]);
        cpu::Epilogue ep;
        ep.scale = op.weights[0].data;
        ep.shift = op.weights[1].data;
        ep.relu = op.ints[3] != 0;
        cpu::involution_nhwc_epilogue(ptr(op.inputs[0]), ptr(op.inputs[1]), ptr(op.outputs[0]), B, x.h, x.w, x.c,
                                      op.ints[0], op.ints[1], op.ints[2], ep, threads);
        break;
      }
      case OpType::kInvolutionFused: {
        const auto& x = T(op.inputs[0]);
        cpu::InvolutionGeneration gen;
        gen.reduce_wt = op.weights[0].data;
        gen.reduce_b = op.weights[1].data;
        gen.span_wt = op.weights[2].data;
        gen.span_b = op.weights[3].data;
        gen.hidden = op.ints[4];
        cpu::Epilogue ep;
        ep.scale = op.weights[4].data;
        ep.shift = op.weights[5].data;
        ep.relu = op.ints[3] != 0;
        const std::size_t need = fused_scratch_floats(i, threads);
        const auto pg = packed.find(i);
        if (pg != packed.end()) {
          const cpu::InvolutionGenerationBf16 gen16{pg->second.reduce.data(), gen.reduce_b, pg->second.span.data(),
                                                    gen.span_b, gen.hidden};
          cpu::involution_fused_nhwc_bf16(ptr(op.inputs[0]), gen16, ptr(op.outputs[0]), kscratch, need, B, x.h, x.w,
                                          x.c, op.ints[0], op.ints[1], op.ints[2], ep, threads);
        } else {
          cpu::involution_fused_nhwc(ptr(op.inputs[0]), gen, ptr(op.outputs[0]), kscratch, need, B, x.h, x.w, x.c,
                                     op.ints[0], op.ints[1], op.ints[2], ep, threads);
        }
        break;
      }
      case OpType::kAffine: {
        const auto& x = T(op.inputs[0]);
        const float* sc = op.weights[0].data;
        const float* sh = op.weights[1].data;
        const float* xp = ptr(op.inputs[0]);
        float* yp = ptr(op.outputs[0]);
        const std::size_t pixels = static_cast<std::size_t>(B) * x.h * x.w;
        for (std::size_t px = 0; px < pixels; ++px)
          for (int c = 0; c < x.c; ++c) {
            const float v = xp[px * x.c + c] * sc[c] + sh[c];
            yp[px * x.c + c] = op.ints[0] && v < 0.f ? 0.f : v;
          }
        break;
      }
      case OpType::kSpatialAttention: {
        const auto& x = T(op.inputs[0]);
        cpu::spatial_attention_nhwc(ptr(op.inputs[0]), ptr(op.inputs[1]), op.weights[0].data, op.weights[1].data[0],
                                    op.ints[0], ptr(op.outputs[2]), ptr(op.outputs[0]), ptr(op.outputs[1]),
                                    kscratch, B, x.h, x.w, x.c, threads);
        break;
      }
      case OpType::kCmam: {
        const auto& x = T(op.inputs[0]);
        const auto pc = packed_cmam.find(i);
        if (pc != packed_cmam.end()) {
          cpu::cmam_bf16(ptr(op.inputs[0]), ptr(op.inputs[1]), op.weights[0].data, op.weights[1].data,
                         pc->second.first.data(), pc->second.second.data(), ptr(op.outputs[0]), ptr(op.outputs[1]),
                         kscratch, B, x.h * x.w, x.c, op.ints[0], op.ints[1], op.floats[0], threads);
        } else {
          cpu::cmam(ptr(op.inputs[0]), ptr(op.inputs[1]), op.weights[0].data, op.weights[1].data, ptr(op.outputs[0]),
                    ptr(op.outputs[1]), kscratch, B, x.h * x.w, x.c, op.ints[0], op.ints[1], op.floats[0], threads);
        }
        break;
      }
      case OpType::kGap: {
        const auto& x = T(op.inputs[0]);
        const std::size_t hw = static_cast<std::size_t>(x.h) * x.w;
        const float* xp = ptr(op.inputs[0]);
        float* yp = ptr(op.outputs[0]);
        for (int b = 0; b < B; ++b)
          for (int c = 0; c < x.c; ++c) {
            double acc = 0;
            for (std::size_t p = 0; p < hw; ++p) acc += xp[(b * hw + p) * x.c + c];
            yp[static_cast<std::size_t>(b) * x.c + c] = static_cast<float>(acc / static_cast<double>(hw));
          }
        break;
      }
      case OpType::kLinear: {
        const int n_in = T(op.inputs[0]).c, n_out = T(op.outputs[0]).c;
        const float* W = op.weights[0].data;
        const float* bias = op.weights[1].data;
        const float* xp = ptr(op.inputs[0]);
        float* yp = ptr(op.outputs[0]);
        for (int b = 0; b < B; ++b)
          for (int o = 0; o < n_out; ++o) {
            double acc = bias[o];
            const float* w = W + static_cast<std::size_t>(o) * n_in;
            const float* xv = xp + static_cast<std::size_t>(b) * n_in;
            for (int k = 0; k < n_in; ++k) acc += static_cast<double>(w[k]) * xv[k];
            const float v = static_cast<float>(acc);
            yp[static_cast<std::size_t>(b) * n_out + o] = op.ints[0] && v < 0.f ? 0.f : v;
          }
        break;
      }
      case OpType::kConcat: {
        const int total = T(op.outputs[0]).c;
        float* yp = ptr(op.outputs[0]);
        int at = 0;
        for (auto t : op.inputs) {
          const int c = T(t).c;
          const float* xp = ptr(t);
          for (int b = 0; b < B; ++b)
            std::memcpy(yp + static_cast<std::size_t>(b) * total + at, xp + static_cast<std::size_t>(b) * c,
                        sizeof(float) * c);
          at += c;
        }
        break;
      }
      case OpType::kProbability: {
        const int n = T(op.inputs[0]).c;
        const float* xp = ptr(op.inputs[0]);
        float* yp = ptr(op.outputs[0]);
        for (int b = 0; b < B; ++b) {
          const float* x = xp + static_cast<std::size_t>(b) * n;
          float* y = yp + static_cast<std::size_t>(b) * n;
          if (op.ints[0] == 0) {
            for (int k = 0; k < n; ++k) y[k] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x[k]))));
          } else {
            double m = x[0], sum = 0;
            for (int k = 1; k < n; ++k) m = std::max(m, static_cast<double>(x[k]));
            for (int k = 0; k < n; ++k) sum += std::exp(x[k] - m);
            for (int k = 0; k < n; ++k) y[k] = static_cast<float>(std::exp(x[k] - m) / sum);
          }
        }
        break;
      }
      case OpType::kResizeBilinear: {
        const auto& x = T(op.inputs[0]);
        const auto& y = T(op.outputs[0]);
        resize_bilinear(ptr(op.inputs[0]), ptr(op.outputs[0]), B, x.h, x.w, y.h, y.w, x.c);
        break;
      }
      case OpType::kMean2: {
        const std::size_t n = T(op.inputs[0]).elems() * B;
        const float* a = ptr(op.inputs[0]);
        const float* b = ptr(op.inputs[1]);
        float* y = ptr(op.outputs[0]);
        for (std::size_t k = 0; k < n; ++k) y[k] = 0.5f * (a[k] + b[k]);
        break;
      }
      case OpType::kCam: {
        const int ncls = op.ints[0], nph = op.ints[1];
        const auto& a = T(op.inputs[0]);
        const std::size_t hw = static_cast<std::size_t>(a.h) * a.w;
        const float* logit = ptr(op.inputs[op.inputs.size() - 1]);
        float* yp = ptr(op.outputs[0]);
        const float eps = op.floats[0];
        for (int b = 0; b < B; ++b) {
          int cls = 0;
          for (int k = 1; k < ncls; ++k)
            if (logit[b * ncls + k] > logit[b * ncls + cls]) cls = k;
          const float* w = op.weights[0].data + static_cast<std::size_t>(cls) * nph * a.c;
          float* y = yp + b * hw;
          float peak = 0.f;
          for (std::size_t p = 0; p < hw; ++p) {
            double acc = 0;
            for (int ph = 0; ph < nph; ++ph) {
              const float* x = ptr(op.inputs[ph]) + (b * hw + p) * a.c;
              const float* wp = w + static_cast<std::size_t>(ph) * a.c;
              for (int c = 0; c < a.c; ++c) acc += static_cast<double>(wp[c]) * x[c];
            }
            const float v = acc > 0 ? static_cast<float>(acc) : 0.f;
            y[p] = v;
            peak = std::max(peak, v);
          }
          const float denom = peak + eps;
          for (std::size_t p = 0; p < hw; ++p) y[p] /= denom;
        }
        break;
      }
    }
  }
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::from_plan(Plan plan, int threads, Precision precision) {
  if (precision == Precision::kBf16) {
    std::string why;
    if (!bf16_supported(&why)) throw std::invalid_argument(why);
  }
  auto impl = std::make_unique<Impl>();
  impl->plan = std::move(plan);
  impl->threads = threads > 0 ? threads : omp_get_num_procs();
  impl->precision = precision;
  impl->choose_dtypes();
  impl->pack_generation_weights();
  impl->build_schedule();
  impl->plan_memory();
  for (const auto& op : impl->plan.ops) impl->labels.push_back(describe(impl->plan, op));
  try {
    impl->prepare_conv_weights();
  } catch (const dnnl::error& e) {
    throw std::runtime_error(std::string("oneDNN could not prepare the convolutions: ") + e.what());
  }
  // The constructor is private, so make_unique cannot reach it; ownership is taken on the same line.
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

std::unique_ptr<Engine> Engine::load(const std::string& path, int threads, Precision precision) {
  return from_plan(load_plan_file(path), threads, precision);
}

std::unique_ptr<Engine> Engine::from_bytes(const unsigned char* data, std::size_t size, int threads,
                                           Precision precision) {
  return from_plan(parse_plan(data, size), threads, precision);
}

const InputSpec& Engine::spec() const { return impl_->plan.spec; }
const std::string& Engine::metadata_json() const { return impl_->plan.metadata_json; }
int Engine::threads() const { return impl_->threads; }
Precision Engine::precision() const { return impl_->precision; }
std::size_t Engine::num_bf16_tensors() const {
  return static_cast<std::size_t>(std::count(impl_->half.begin(), impl_->half.end(), 1));
}
std::size_t Engine::num_ops() const { return impl_->plan.ops.size(); }

void Engine::predict(const float* art, const float* pv, const float* clinical, int batch, float* logit,
                     float* probability, float* heatmap, std::vector<OpTiming>* profile) {
  Impl& m = *impl_;
  const InputSpec& sp = m.plan.spec;
  if (batch < 1 || batch > kMaxBatch) throw std::invalid_argument("batch size must be in [1, 65536], got " +
                                                                  std::to_string(batch));
  if (art == nullptr) throw std::invalid_argument("art input is missing");
  if (sp.two_phase && pv == nullptr) throw std::invalid_argument("pv input is missing (two-phase model)");
  if (sp.num_clinical > 0 && clinical == nullptr) throw std::invalid_argument("clinical input is missing");
  if (logit == nullptr || probability == nullptr || heatmap == nullptr)
    throw std::invalid_argument("an output buffer is missing");
  const std::size_t S = static_cast<std::size_t>(sp.image_size), C = static_cast<std::size_t>(sp.in_channels);
  const std::size_t image = C * S * S;
  check_finite(art, image * batch, "art");
  if (sp.two_phase) check_finite(pv, image * batch, "pv");
  if (sp.num_clinical > 0) check_finite(clinical, static_cast<std::size_t>(sp.num_clinical) * batch, "clinical");

  omp_set_num_threads(m.threads);
  std::unique_ptr<Impl::Context> ctx;
  try {
    ctx = m.acquire(batch);
  } catch (const dnnl::error& e) {
    throw std::runtime_error(std::string("oneDNN could not set up batch ") + std::to_string(batch) + ": " + e.what());
  }
  float* arena = ctx->arena.get();
  auto ptr = [&](std::uint32_t t) { return arena + m.offsets[t] * static_cast<std::size_t>(batch); };
  // NCHW user inputs -> NHWC arena tensors.
  auto to_nhwc = [&](const float* src, float* dst) {
    for (int b = 0; b < batch; ++b)
      for (std::size_t c = 0; c < C; ++c)
        for (std::size_t p = 0; p < S * S; ++p) dst[(b * S * S + p) * C + c] = src[(b * C + c) * S * S + p];
  };
  to_nhwc(art, ptr(m.plan.art));
  if (sp.two_phase) to_nhwc(pv, ptr(m.plan.pv));
  if (sp.num_clinical > 0)
    std::memcpy(ptr(m.plan.clinical), clinical, sizeof(float) * static_cast<std::size_t>(sp.num_clinical) * batch);

  if (profile != nullptr && profile->size() != m.plan.ops.size()) {
    profile->clear();
    for (const auto& l : m.labels) profile->push_back(OpTiming{l, 0.0});
  }
  try {
    auto run = [&](std::size_t i) {
      if (profile != nullptr) {
        const auto t0 = std::chrono::steady_clock::now();
        m.run_op(*ctx, i);
        (*profile)[i].seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } else {
        m.run_op(*ctx, i);
      }
    };
    for (const auto& region : m.regions) {
      if (region.lane[1].empty()) {
        for (auto i : region.lane[0]) run(i);
        continue;
      }
      std::exception_ptr err[2];
#pragma omp parallel num_threads(2)
      {
        // With one thread granted (nested inside another parallel region, a thread limit) it runs both lanes in turn.
        const int l = omp_get_thread_num(), granted = omp_get_num_threads();
        for (int lane = 0; lane < 2; ++lane) {
          if (granted > 1 && lane != l) continue;
          try {
            for (auto i : region.lane[lane]) run(i);
          } catch (...) {
            err[lane] = std::current_exception();
          }
        }
      }
      for (auto& e : err)
        if (e) std::rethrow_exception(e);
    }
  } catch (const dnnl::error& e) {
    m.release(std::move(ctx));
    throw std::runtime_error(std::string("oneDNN error: ") + e.what());
  } catch (...) {
    m.release(std::move(ctx));
    throw;
  }
  const std::size_t ncls = static_cast<std::size_t>(sp.num_classes);
  std::memcpy(logit, ptr(m.plan.logit), sizeof(float) * ncls * batch);
  std::memcpy(probability, ptr(m.plan.probability), sizeof(float) * ncls * batch);
  std::memcpy(heatmap, ptr(m.plan.heatmap), sizeof(float) * S * S * batch);
  m.release(std::move(ctx));
}

}  // namespace cmir
