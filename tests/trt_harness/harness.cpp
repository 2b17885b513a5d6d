// Tier-2 harness of libcmir_trt_plugins.so (DESIGN.md section 4): everything TensorRT would call on our plugins,
// without libnvinfer. Usage: cmir_trt_plugin_harness PATH/libcmir_trt_plugins.so [--no-gpu] [--verbose]
//
// CPU checks (always): dlopen + getCreators/setLoggerFinder; per creator name/version/namespace and field names and
// types against the schema; build-phase creation from field collections (defaults, explicit values, and rejected
// bad values); getFieldsToSerialize -> createPlugin(kRUNTIME) round trip; capability interfaces;
// supportsFormatCombination over every type x format; getOutputDataTypes; getOutputShapes through a small
// IExprBuilder implemented here (symbolic batch, evaluated for several values); configurePlugin/onShapeChange;
// clone/attachToContext. GPU checks (when a CUDA device is visible): enqueue on device buffers vs float64 loops
// written here: fp32 max error <= 1e-5 relative to max|ref|; fp16/bf16 max error <= 2x that of the same
// computation emulated at that precision the way PyTorch runs it (each op's result rounded to the type).
// Exit status: 0 when every check passed, 1 when any failed, 2 on usage errors.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cmir_plugin_schema.h"

using namespace nvinfer1;  // NOLINT: the harness reads like TensorRT's own calls
namespace schema = cmir_plugins::schema;

namespace {

// ---------------------------------------------------------------- check bookkeeping
int g_checks = 0;
int g_failures = 0;
bool g_verbose = false;

bool check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL: %s\n", what.c_str());
  } else if (g_verbose) {
    std::printf("ok:   %s\n", what.c_str());
  }
  return ok;
}

// ---------------------------------------------------------------- logger handed to the library
class CaptureLogger final : public ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) ++errors;
    last = msg != nullptr ? msg : "";
    if (g_verbose) std::printf("  [plugin log %d] %s\n", static_cast<int>(severity), last.c_str());
  }
  int errors = 0;
  std::string last;
};

class Finder final : public ILoggerFinder {
 public:
  ILogger* findLogger() override { return &logger; }
  CaptureLogger logger;
};

Finder g_finder;

// ---------------------------------------------------------------- a small IExprBuilder
// Expressions are trees over constants and named variables (batch, height, ...); constant operands fold, so
// isConstant() answers like TensorRT's for build-time-known dimensions. eval() binds the variables.
class Expr final : public IDimensionExpr {
 public:
  enum class Kind { kConst, kVar, kOp };
  Expr(Kind kind, int64_t value, int var, DimensionOperation op, const Expr* a, const Expr* b)
      : kind_(kind), value_(value), var_(var), op_(op), a_(a), b_(b), impl_(this) {
    mImpl = &impl_;
  }
  ~Expr() override = default;

  bool constant() const { return kind_ == Kind::kConst; }
  int64_t value() const { return value_; }
  int64_t eval(const std::vector<int64_t>& vars) const {
    switch (kind_) {
      case Kind::kConst: return value_;
      case Kind::kVar: return vars.at(static_cast<size_t>(var_));
      case Kind::kOp: return apply(op_, a_->eval(vars), b_->eval(vars));
    }
    return 0;
  }
  static int64_t apply(DimensionOperation op, int64_t x, int64_t y) {
    switch (op) {
      case DimensionOperation::kSUM: return x + y;
      case DimensionOperation::kPROD: return x * y;
      case DimensionOperation::kMAX: return std::max(x, y);
      case DimensionOperation::kMIN: return std::min(x, y);
      case DimensionOperation::kSUB: return x - y;
      case DimensionOperation::kEQUAL: return x == y;
      case DimensionOperation::kLESS: return x < y;
      case DimensionOperation::kFLOOR_DIV: {
        const int64_t q = x / y;
        return (q * y != x && ((x < 0) != (y < 0))) ? q - 1 : q;
      }
      case DimensionOperation::kCEIL_DIV: {
        const int64_t q = x / y;
        return (q * y != x && ((x < 0) == (y < 0))) ? q + 1 : q;
      }
    }
    return 0;
  }

 private:
  struct Impl final : apiv::VDimensionExpr {
    explicit Impl(const Expr* self) : self_(self) {}
    bool isConstant() const override { return self_->constant(); }
    int64_t getConstantValue() const override {
      return self_->constant() ? self_->value() : std::numeric_limits<int64_t>::min();
    }
    bool isSizeTensor() const override { return false; }
    const Expr* self_;
  };
  Kind kind_;
  int64_t value_;
  int var_;
  DimensionOperation op_;
  const Expr* a_;
  const Expr* b_;
  Impl impl_;
};

class ExprBuilder final : public IExprBuilder {
 public:
  ExprBuilder() : impl_(this) { mImpl = &impl_; }
  ~ExprBuilder() override = default;

  const Expr* make_const(int64_t v) {
    nodes_.push_back(std::make_unique<Expr>(Expr::Kind::kConst, v, -1, DimensionOperation::kSUM, nullptr, nullptr));
    return nodes_.back().get();
  }
  const Expr* make_var(int id) {
    nodes_.push_back(std::make_unique<Expr>(Expr::Kind::kVar, 0, id, DimensionOperation::kSUM, nullptr, nullptr));
    return nodes_.back().get();
  }
  const Expr* make_op(DimensionOperation op, const Expr* a, const Expr* b) {
    if (a->constant() && b->constant()) return make_const(Expr::apply(op, a->value(), b->value()));
    nodes_.push_back(std::make_unique<Expr>(Expr::Kind::kOp, 0, -1, op, a, b));
    return nodes_.back().get();
  }
  int invalid_calls = 0;

 private:
  struct Impl final : apiv::VExprBuilder {
    explicit Impl(ExprBuilder* self) : self_(self) {}
    const IDimensionExpr* constant(int64_t value) override { return self_->make_const(value); }
    const IDimensionExpr* operation(DimensionOperation op, const IDimensionExpr& first,
                                    const IDimensionExpr& second) override {
      // Every expression a plugin sees comes from this builder, so the downcast is safe.
      const auto& a = static_cast<const Expr&>(first);
      const auto& b = static_cast<const Expr&>(second);
      if ((op == DimensionOperation::kFLOOR_DIV || op == DimensionOperation::kCEIL_DIV) && b.constant() &&
          b.value() == 0) {
        ++self_->invalid_calls;
        return nullptr;
      }
      return self_->make_op(op, &a, &b);
    }
    const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&, const IDimensionExpr&) override {
      ++self_->invalid_calls;  // our plugins have no size tensors
      return nullptr;
    }
    ExprBuilder* self_;
  };
  Impl impl_;
  std::vector<std::unique_ptr<Expr>> nodes_;
};

// A dimension spec for shape tests: a constant, or variable `var` (evaluated from a binding).
struct DimSpec {
  int64_t value;  // constant value, or -1 for a variable
  int var;
};
DimSpec C(int64_t v) { return {v, -1}; }
DimSpec V(int id) { return {-1, id}; }

DimsExprs make_dims(ExprBuilder& eb, const std::vector<DimSpec>& spec) {
  DimsExprs d{};
  d.nbDims = static_cast<int32_t>(spec.size());
  for (size_t i = 0; i < spec.size(); ++i) {
    d.d[i] = spec[i].var >= 0 ? static_cast<const IDimensionExpr*>(eb.make_var(spec[i].var))
                              : static_cast<const IDimensionExpr*>(eb.make_const(spec[i].value));
  }
  return d;
}

Dims make_static(const std::vector<int64_t>& v) {
  Dims d{};
  d.nbDims = static_cast<int32_t>(v.size());
  for (size_t i = 0; i < v.size(); ++i) d.d[i] = v[i];
  return d;
}

std::string dims_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// ---------------------------------------------------------------- plugin field helpers
struct FieldArg {
  std::string name;
  PluginFieldType type;
  std::vector<unsigned char> bytes;  // the value(s)
  int32_t length;
};
FieldArg I32(const std::string& n, int32_t v) {
  FieldArg f{n, PluginFieldType::kINT32, std::vector<unsigned char>(sizeof v), 1};
  std::memcpy(f.bytes.data(), &v, sizeof v);
  return f;
}
FieldArg I64(const std::string& n, int64_t v) {
  FieldArg f{n, PluginFieldType::kINT64, std::vector<unsigned char>(sizeof v), 1};
  std::memcpy(f.bytes.data(), &v, sizeof v);
  return f;
}
FieldArg F32(const std::string& n, float v) {
  FieldArg f{n, PluginFieldType::kFLOAT32, std::vector<unsigned char>(sizeof v), 1};
  std::memcpy(f.bytes.data(), &v, sizeof v);
  return f;
}

// Owns the PluginField array for one createPlugin call.
struct Collection {
  explicit Collection(const std::vector<FieldArg>& args) : args_(args) {
    for (const FieldArg& a : args_) fields_.emplace_back(a.name.c_str(), a.bytes.data(), a.type, a.length);
    fc.nbFields = static_cast<int32_t>(fields_.size());
    fc.fields = fields_.data();
  }
  PluginFieldCollection fc{};

 private:
  std::vector<FieldArg> args_;
  std::vector<PluginField> fields_;
};

// Field values of a plugin read back through getFieldsToSerialize (double per schema field, NaN if missing).
std::vector<double> serialized_values(IPluginV3OneRuntime* rt, const schema::FieldSpec* specs, int32_t n,
                                      const std::string& who) {
  std::vector<double> out(static_cast<size_t>(n), std::nan(""));
  const PluginFieldCollection* fc = rt->getFieldsToSerialize();
  if (!check(fc != nullptr && fc->nbFields == n, who + ": getFieldsToSerialize returns every schema field")) {
    return out;
  }
  for (int32_t k = 0; k < fc->nbFields; ++k) {
    const PluginField& f = fc->fields[k];
    for (int32_t i = 0; i < n; ++i) {
      if (f.name == nullptr || std::strcmp(f.name, specs[i].name) != 0) continue;
      const bool is_int = specs[i].type == schema::FieldType::kInt32;
      check(f.length == 1 && f.data != nullptr &&
                f.type == (is_int ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32),
            who + ": serialized field '" + specs[i].name + "' is one " + (is_int ? "int32" : "float32"));
      if (f.data == nullptr) continue;
      if (is_int) {
        int32_t v;
        std::memcpy(&v, f.data, sizeof v);
        out[i] = v;
      } else {
        float v;
        std::memcpy(&v, f.data, sizeof v);
        out[i] = v;
      }
    }
  }
  return out;
}

template <typename T>
T* capability(IPluginV3* p, PluginCapabilityType type) {
  return p == nullptr ? nullptr : static_cast<T*>(p->getCapabilityInterface(type));
}

// RAII owner of plugins the harness creates (TensorRT would delete them the same way).
using PluginPtr = std::unique_ptr<IPluginV3>;

// ---------------------------------------------------------------- low-precision emulation
float round_to(float v, DataType t) {
  if (t == DataType::kFLOAT) return v;
  if (t == DataType::kBF16) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    u &= 0xffff0000u;
    float r;
    std::memcpy(&r, &u, sizeof r);
    return r;
  }
  // fp16: round to nearest even at 11 significant bits, subnormals below 2^-14, overflow to inf
  if (!std::isfinite(v)) return v;
  const float a = std::fabs(v);
  if (a >= 65520.0F) return std::copysign(std::numeric_limits<float>::infinity(), v);
  int e;
  std::frexp(a, &e);                      // a = m * 2^e, m in [0.5, 1)
  const int exp = std::max(e - 11, -24);  // quantum: 2^(e-11), never below the subnormal step 2^-24
  const float q = std::ldexp(1.0F, exp);
  return std::copysign(std::nearbyint(a / q) * q, v);
}

void round_vec(std::vector<float>& v, DataType t) {
  for (float& x : v) x = round_to(x, t);
}

// Host <-> device in a given element type.
std::vector<uint16_t> to_bits16(const std::vector<float>& v, DataType t) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const float r = round_to(v[i], t);
    if (t == DataType::kBF16) {
      uint32_t u;
      std::memcpy(&u, &r, sizeof u);
      out[i] = static_cast<uint16_t>(u >> 16);
    } else {  // fp16 encode of an already representable value
      uint32_t u;
      std::memcpy(&u, &r, sizeof u);
      const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
      const float a = std::fabs(r);
      if (a == 0.0F) {
        out[i] = sign;
      } else if (std::isinf(a)) {
        out[i] = static_cast<uint16_t>(sign | 0x7c00u);
      } else if (a < std::ldexp(1.0F, -14)) {
        out[i] = static_cast<uint16_t>(sign | static_cast<uint16_t>(std::lround(a / std::ldexp(1.0F, -24))));
      } else {
        int e;
        const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
        const auto mant = static_cast<uint16_t>(std::lround((m * 2.0F - 1.0F) * 1024.0F));
        out[i] = static_cast<uint16_t>(sign | static_cast<uint16_t>((e - 1 + 15) << 10) | mant);
      }
    }
  }
  return out;
}

float from_bits16(uint16_t h, DataType t) {
  if (t == DataType::kBF16) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  const int sign = (h & 0x8000) ? -1 : 1;
  const int e = (h >> 10) & 0x1f;
  const int m = h & 0x3ff;
  if (e == 0) return static_cast<float>(sign) * std::ldexp(static_cast<float>(m), -24);
  if (e == 31) return m ? std::nanf("") : static_cast<float>(sign) * std::numeric_limits<float>::infinity();
  return static_cast<float>(sign) * std::ldexp(1.0F + static_cast<float>(m) / 1024.0F, e - 15);
}

size_t elem_size(DataType t) { return t == DataType::kFLOAT ? 4 : 2; }

// A device buffer (RAII), filled from / read back to float.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0 && cudaMalloc(&ptr_, bytes_) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr && cudaFree(ptr_) != cudaSuccess) std::printf("  warning: cudaFree failed\n");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  bool ok() const { return bytes_ == 0 || ptr_ != nullptr; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

bool upload(DeviceBuffer& dst, const std::vector<float>& v, DataType t) {
  if (t == DataType::kFLOAT) {
    return cudaMemcpy(dst.get(), v.data(), v.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess;
  }
  const std::vector<uint16_t> bits = to_bits16(v, t);
  return cudaMemcpy(dst.get(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess;
}

bool download(std::vector<float>& v, const DeviceBuffer& src, DataType t) {
  if (t == DataType::kFLOAT) {
    return cudaMemcpy(v.data(), src.get(), v.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess;
  }
  std::vector<uint16_t> bits(v.size());
  if (cudaMemcpy(bits.data(), src.get(), bits.size() * 2, cudaMemcpyDeviceToHost) != cudaSuccess) return false;
  for (size_t i = 0; i < v.size(); ++i) v[i] = from_bits16(bits[i], t);
  return true;
}

std::vector<float> random_vec(std::mt19937& rng, size_t n, float scale, float offset = 0.0F) {
  std::normal_distribution<float> dist(0.0F, 1.0F);
  std::vector<float> v(n);
  for (float& x : v) x = offset + scale * dist(rng);
  return v;
}

// Compare a kernel's output with the float64 reference; low precision also against the emulation's error.
bool compare(const std::string& what, const std::vector<float>& got, const std::vector<double>& ref,
             const std::vector<double>& emulated, DataType t) {
  double max_ref = 0.0, err = 0.0, emu_err = 0.0;
  bool finite = true;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(ref[i]));
    finite = finite && std::isfinite(got[i]);
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - ref[i]));
    if (!emulated.empty()) emu_err = std::max(emu_err, std::fabs(emulated[i] - ref[i]));
  }
  // Low precision is never held to less than the fp32 bound (guards a degenerate zero emulation error).
  const double bound = t == DataType::kFLOAT ? 1e-5 * max_ref : std::max(2.0 * emu_err, 1e-5 * max_ref);
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: max|err| %.3g <= bound %.3g (max|ref| %.3g, emulated-precision err %.3g)",
                what.c_str(), err, bound, max_ref, emu_err);
  if (g_verbose || !(finite && err <= bound)) std::printf("  %s\n", buf);
  return check(finite && err <= bound, buf);
}

// ---------------------------------------------------------------- generic CPU checks of one creator
struct BadCase {
  std::string what;
  std::vector<FieldArg> fields;
};

struct CreatorSpec {
  const char* name;
  const char* version;
  const schema::FieldSpec* fields;
  int32_t nb_fields;
  int32_t nb_inputs;
  int32_t nb_outputs;
  std::vector<FieldArg> explicit_fields;  // valid non-default values
  std::vector<double> explicit_values;    // what they read back as
  std::vector<BadCase> bad;
};

IPluginCreatorV3One* find_creator(IPluginCreatorInterface* const* creators, int32_t n, const char* name) {
  for (int32_t i = 0; i < n; ++i) {
    if (creators[i] == nullptr) continue;
    const InterfaceInfo info = creators[i]->getInterfaceInfo();
    if (std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") != 0) continue;
    auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
    if (std::strcmp(c->getPluginName(), name) == 0) return c;
  }
  return nullptr;
}

void check_capabilities(IPluginV3* p, const CreatorSpec& spec, const std::string& who) {
  auto* core = capability<IPluginV3OneCore>(p, PluginCapabilityType::kCORE);
  auto* build = capability<IPluginV3OneBuild>(p, PluginCapabilityType::kBUILD);
  auto* rt = capability<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
  if (!check(core && build && rt, who + ": core, build and runtime capabilities present")) return;
  check(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0 &&
            std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0 &&
            std::strcmp(rt->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0,
        who + ": capability interface kinds");
  check(std::strcmp(p->getInterfaceInfo().kind, "PLUGIN") == 0 && p->getInterfaceInfo().major == 1,
        who + ": IPluginV3 interface info");
  check(std::strcmp(core->getPluginName(), spec.name) == 0 && std::strcmp(core->getPluginVersion(), spec.version) == 0 &&
            std::strcmp(core->getPluginNamespace(), schema::kNamespace) == 0,
        who + ": plugin name/version/namespace match the creator");
  check(build->getNbOutputs() == spec.nb_outputs, who + ": getNbOutputs");
}

// supportsFormatCombination over every (type, format) at every position, with the earlier positions fixed to a
// supported combination of type t0: expected true exactly for kLINEAR with t0 (t0 in fp32/fp16/bf16).
void check_formats(IPluginV3OneBuild* build, const CreatorSpec& spec, const std::string& who) {
  const int32_t n = spec.nb_inputs + spec.nb_outputs;
  const DataType supported[] = {DataType::kFLOAT, DataType::kHALF, DataType::kBF16};
  auto is_supported = [&](DataType t) { return std::find(std::begin(supported), std::end(supported), t) != std::end(supported); };
  int mismatches = 0, queries = 0;
  std::vector<DynamicPluginTensorDesc> io(static_cast<size_t>(n));
  for (int32_t pos = 0; pos < n; ++pos) {
    for (DataType prefix : supported) {
      for (int32_t k = 0; k < pos; ++k) {
        io[k] = DynamicPluginTensorDesc{};
        io[k].desc.type = prefix;
        io[k].desc.format = TensorFormat::kLINEAR;
      }
      for (int32_t ti = 0; ti < EnumMax<DataType>(); ++ti) {
        for (int32_t fi = 0; fi < EnumMax<TensorFormat>(); ++fi) {
          io[pos] = DynamicPluginTensorDesc{};
          io[pos].desc.type = static_cast<DataType>(ti);
          io[pos].desc.format = static_cast<TensorFormat>(fi);
          const DataType t = static_cast<DataType>(ti);
          const bool expected = static_cast<TensorFormat>(fi) == TensorFormat::kLINEAR && is_supported(t) &&
                                (pos == 0 || t == prefix);
          ++queries;
          if (build->supportsFormatCombination(pos, io.data(), spec.nb_inputs, spec.nb_outputs) != expected) {
            if (mismatches++ < 5) {
              std::printf("  %s: supportsFormatCombination(pos %d, type %d, format %d, prefix type %d) != %d\n",
                          who.c_str(), pos, ti, fi, static_cast<int>(prefix), expected);
            }
          }
        }
      }
      if (pos == 0) break;  // no prefix at position 0
    }
  }
  check(mismatches == 0, who + ": supportsFormatCombination over " + std::to_string(queries) +
                             " type/format combinations (linear, one type of fp32/fp16/bf16)");
  check(!build->supportsFormatCombination(n, io.data(), spec.nb_inputs, spec.nb_outputs) &&
            !build->supportsFormatCombination(-1, io.data(), spec.nb_inputs, spec.nb_outputs),
        who + ": supportsFormatCombination rejects out-of-range positions");
}

void check_output_types(IPluginV3OneBuild* build, const CreatorSpec& spec, const std::string& who) {
  for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16}) {
    std::vector<DataType> in(static_cast<size_t>(spec.nb_inputs), t);
    std::vector<DataType> out(static_cast<size_t>(spec.nb_outputs), DataType::kINT8);
    const int32_t rc = build->getOutputDataTypes(out.data(), spec.nb_outputs, in.data(), spec.nb_inputs);
    bool all = rc == 0;
    for (DataType o : out) all = all && o == t;
    check(all, who + ": getOutputDataTypes follows the input type " + std::to_string(static_cast<int>(t)));
  }
  std::vector<DataType> mixed(static_cast<size_t>(spec.nb_inputs), DataType::kFLOAT);
  mixed.back() = DataType::kHALF;
  std::vector<DataType> out(static_cast<size_t>(spec.nb_outputs));
  const int before = g_finder.logger.errors;
  check(build->getOutputDataTypes(out.data(), spec.nb_outputs, mixed.data(), spec.nb_inputs) != 0 &&
            g_finder.logger.errors > before,
        who + ": getOutputDataTypes rejects mixed input types with a logged error");
  std::vector<DataType> ints(static_cast<size_t>(spec.nb_inputs), DataType::kINT32);
  check(build->getOutputDataTypes(out.data(), spec.nb_outputs, ints.data(), spec.nb_inputs) != 0,
        who + ": getOutputDataTypes rejects int32 inputs");
}

// Creates plugins from field collections and checks creation, the serialisation round trip and clone.
// Returns a build-phase plugin with the explicit (non-default) fields, or null.
PluginPtr check_creator(IPluginCreatorV3One* creator, const CreatorSpec& spec) {
  const std::string who = spec.name;
  check(std::strcmp(creator->getPluginVersion(), spec.version) == 0, who + ": creator version " + spec.version);
  check(std::strcmp(creator->getPluginNamespace(), schema::kNamespace) == 0,
        who + ": creator namespace " + schema::kNamespace);
  check(creator->getInterfaceInfo().major == 1, who + ": IPluginCreatorV3One interface major 1");
  const PluginFieldCollection* names = creator->getFieldNames();
  if (check(names != nullptr && names->nbFields == spec.nb_fields, who + ": getFieldNames lists every field")) {
    for (int32_t i = 0; i < spec.nb_fields; ++i) {
      const PluginField& f = names->fields[i];
      const bool is_int = spec.fields[i].type == schema::FieldType::kInt32;
      check(f.name != nullptr && std::strcmp(f.name, spec.fields[i].name) == 0 &&
                f.type == (is_int ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32) && f.length == 1,
            who + ": field " + std::to_string(i) + " is '" + spec.fields[i].name + "' " + (is_int ? "int32" : "float32"));
    }
  }

  // Defaults: an empty collection gives every schema default.
  PluginFieldCollection empty{};
  PluginPtr def(creator->createPlugin("default", &empty, TensorRTPhase::kBUILD));
  if (check(def != nullptr, who + ": createPlugin(kBUILD) with no fields uses the defaults")) {
    const auto v = serialized_values(capability<IPluginV3OneRuntime>(def.get(), PluginCapabilityType::kRUNTIME),
                                     spec.fields, spec.nb_fields, who + " (defaults)");
    for (int32_t i = 0; i < spec.nb_fields; ++i) {
      check(static_cast<float>(v[i]) == static_cast<float>(spec.fields[i].default_value),
            who + ": default of '" + spec.fields[i].name + "' is " + std::to_string(spec.fields[i].default_value));
    }
    check_capabilities(def.get(), spec, who + " (defaults)");
  }

  // Explicit values, then the round trip through the serialised fields in the runtime phase.
  Collection explicit_fc(spec.explicit_fields);
  PluginPtr plugin(creator->createPlugin("explicit", &explicit_fc.fc, TensorRTPhase::kBUILD));
  if (!check(plugin != nullptr, who + ": createPlugin(kBUILD) with explicit fields")) return nullptr;
  auto* rt = capability<IPluginV3OneRuntime>(plugin.get(), PluginCapabilityType::kRUNTIME);
  const auto v = serialized_values(rt, spec.fields, spec.nb_fields, who + " (explicit)");
  bool same = true;
  for (int32_t i = 0; i < spec.nb_fields; ++i) same = same && static_cast<float>(v[i]) == static_cast<float>(spec.explicit_values[i]);
  check(same, who + ": explicit field values read back unchanged");

  PluginPtr runtime(creator->createPlugin("runtime", rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
  if (check(runtime != nullptr, who + ": createPlugin(kRUNTIME) from getFieldsToSerialize()")) {
    const auto v2 = serialized_values(capability<IPluginV3OneRuntime>(runtime.get(), PluginCapabilityType::kRUNTIME),
                                      spec.fields, spec.nb_fields, who + " (runtime)");
    bool equal = true;
    for (int32_t i = 0; i < spec.nb_fields; ++i) equal = equal && v2[i] == v[i];
    check(equal, who + ": runtime-phase plugin has identical fields");
    check(capability<IPluginV3OneCore>(runtime.get(), PluginCapabilityType::kCORE) != nullptr &&
              capability<IPluginV3OneRuntime>(runtime.get(), PluginCapabilityType::kRUNTIME) != nullptr,
          who + ": runtime-phase plugin has core and runtime capabilities");
  }
  // kRUNTIME with a partial collection (an engine from another plugin version) is refused.
  {
    const int before = g_finder.logger.errors;
    Collection partial({spec.explicit_fields.front()});
    PluginPtr p(creator->createPlugin("partial", &partial.fc, TensorRTPhase::kRUNTIME));
    check(p == nullptr && g_finder.logger.errors > before,
          who + ": createPlugin(kRUNTIME) refuses a collection missing fields, with a logged error");
  }

  // clone and attachToContext give independent plugins with the same fields.
  PluginPtr cl(plugin->clone());
  if (check(cl != nullptr && cl.get() != plugin.get(), who + ": clone returns a new plugin")) {
    const auto vc = serialized_values(capability<IPluginV3OneRuntime>(cl.get(), PluginCapabilityType::kRUNTIME),
                                      spec.fields, spec.nb_fields, who + " (clone)");
    check(vc == v, who + ": clone keeps the fields");
    check_capabilities(cl.get(), spec, who + " (clone)");
  }
  PluginPtr attached(rt->attachToContext(nullptr));
  if (check(attached != nullptr && attached.get() != plugin.get(), who + ": attachToContext returns a clone")) {
    const auto va = serialized_values(capability<IPluginV3OneRuntime>(attached.get(), PluginCapabilityType::kRUNTIME),
                                      spec.fields, spec.nb_fields, who + " (attached)");
    check(va == v, who + ": attached clone keeps the fields");
  }
  auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
  check(build->getTimingCacheID() != nullptr && build->getMetadataString() != nullptr,
        who + ": timing-cache id and metadata string present");

  // Bad field values are refused (nullptr) with a logged error, never a crash.
  for (const BadCase& bad : spec.bad) {
    const int before = g_finder.logger.errors;
    Collection fc(bad.fields);
    PluginPtr p(creator->createPlugin("bad", &fc.fc, TensorRTPhase::kBUILD));
    check(p == nullptr && g_finder.logger.errors > before, who + ": refuses " + bad.what);
  }
  check_formats(build, spec, who);
  check_output_types(build, spec, who);
  return plugin;
}

// Output shapes through the expression builder: `inputs` specs, expected output dims as functions of the
// variable binding; each binding in `bindings` is evaluated.
using ShapeFn = std::function<std::vector<int64_t>(const std::vector<int64_t>&)>;
void check_shapes(IPluginV3OneBuild* build, const std::string& who, const std::vector<std::vector<DimSpec>>& inputs,
                  const std::vector<ShapeFn>& expected, const std::vector<std::vector<int64_t>>& bindings) {
  ExprBuilder eb;
  std::vector<DimsExprs> in;
  for (const auto& s : inputs) in.push_back(make_dims(eb, s));
  std::vector<DimsExprs> out(expected.size());
  const int32_t rc = build->getOutputShapes(in.data(), static_cast<int32_t>(in.size()), nullptr, 0, out.data(),
                                            static_cast<int32_t>(out.size()), eb);
  if (!check(rc == 0 && eb.invalid_calls == 0, who + ": getOutputShapes succeeds")) return;
  for (const auto& vars : bindings) {
    for (size_t o = 0; o < out.size(); ++o) {
      std::vector<int64_t> got;
      bool non_null = true;
      for (int32_t i = 0; i < out[o].nbDims; ++i) {
        non_null = non_null && out[o].d[i] != nullptr;
        got.push_back(out[o].d[i] ? static_cast<const Expr*>(out[o].d[i])->eval(vars) : -1);
      }
      const auto want = expected[o](vars);
      check(non_null && got == want, who + ": output " + std::to_string(o) + " shape " + dims_str(got) +
                                         " == " + dims_str(want) + " for binding " + dims_str(vars));
    }
  }
}

void check_shapes_rejected(IPluginV3OneBuild* build, const std::string& who, const std::string& what,
                           const std::vector<std::vector<DimSpec>>& inputs, int32_t nb_outputs) {
  ExprBuilder eb;
  std::vector<DimsExprs> in;
  for (const auto& s : inputs) in.push_back(make_dims(eb, s));
  std::vector<DimsExprs> out(static_cast<size_t>(nb_outputs));
  const int before = g_finder.logger.errors;
  const int32_t rc = build->getOutputShapes(in.data(), static_cast<int32_t>(in.size()), nullptr, 0, out.data(),
                                            nb_outputs, eb);
  check(rc != 0 && g_finder.logger.errors > before, who + ": getOutputShapes rejects " + what);
}

// configurePlugin and onShapeChange with static shapes: accepted when consistent, refused otherwise.
void check_configure(IPluginV3* plugin, const std::string& who, const std::vector<std::vector<int64_t>>& ins,
                     const std::vector<std::vector<int64_t>>& outs, bool expect_ok, const std::string& what) {
  auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
  auto* rt = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
  std::vector<DynamicPluginTensorDesc> din, dout;
  std::vector<PluginTensorDesc> pin, pout;
  auto fill = [](const std::vector<int64_t>& d) {
    DynamicPluginTensorDesc t{};
    t.desc.dims = t.min = t.max = t.opt = make_static(d);
    t.desc.type = DataType::kFLOAT;
    t.desc.format = TensorFormat::kLINEAR;
    return t;
  };
  for (const auto& d : ins) din.push_back(fill(d)), pin.push_back(din.back().desc);
  for (const auto& d : outs) dout.push_back(fill(d)), pout.push_back(dout.back().desc);
  const int32_t c1 = build->configurePlugin(din.data(), static_cast<int32_t>(din.size()), dout.data(),
                                            static_cast<int32_t>(dout.size()));
  const int32_t c2 = rt->onShapeChange(pin.data(), static_cast<int32_t>(pin.size()), pout.data(),
                                       static_cast<int32_t>(pout.size()));
  check(expect_ok ? (c1 == 0 && c2 == 0) : (c1 != 0 && c2 != 0),
        who + ": configurePlugin/onShapeChange " + (expect_ok ? "accept " : "reject ") + what);
  // getWorkspaceSize must answer for any configured shape (a size_t; its value is the launcher's business).
  (void)build->getWorkspaceSize(din.data(), static_cast<int32_t>(din.size()), dout.data(),
                                static_cast<int32_t>(dout.size()));
}

// ---------------------------------------------------------------- float64 references and emulations
// Involution: y[n,c,h,w] = sum_{kh,kw} W[n, c/gc, kh, kw, h, w] * X[n, c, h*s-p+kh, w*s-p+kw].
// `t` != kFLOAT emulates PyTorch's low-precision unfold*kernel then sum: products rounded, fp32 sum, rounded result.
std::vector<double> involution_ref(const std::vector<float>& x, const std::vector<float>& k, int b, int c, int h,
                                   int w, int ks, int s, int gc, DataType t) {
  const int ho = (h + s - 1) / s, wo = (w + s - 1) / s, p = (ks - 1) / 2, g = c / gc;
  std::vector<double> y(static_cast<size_t>(b) * c * ho * wo);
  for (int n = 0; n < b; ++n)
    for (int ch = 0; ch < c; ++ch)
      for (int oh = 0; oh < ho; ++oh)
        for (int ow = 0; ow < wo; ++ow) {
          double acc = 0.0;
          float accf = 0.0F;
          for (int kh = 0; kh < ks; ++kh)
            for (int kw = 0; kw < ks; ++kw) {
              const int ih = oh * s - p + kh, iw = ow * s - p + kw;
              if (ih < 0 || ih >= h || iw < 0 || iw >= w) continue;
              const size_t ki = ((((static_cast<size_t>(n) * g + ch / gc) * ks + kh) * ks + kw) * ho + oh) * wo + ow;
              const size_t xi = ((static_cast<size_t>(n) * c + ch) * h + ih) * w + iw;
              acc += static_cast<double>(k[ki]) * x[xi];
              accf += round_to(k[ki] * x[xi], t);
            }
          y[((static_cast<size_t>(n) * c + ch) * ho + oh) * wo + ow] = t == DataType::kFLOAT ? acc : round_to(accf, t);
        }
  return y;
}

// CMAM, one direction: out[n, :, tok] = LN(tq + O(MHA(Q tq, K tkv, V tkv))) over C. Layout NCHW (tokens = H*W).
// `t` != kFLOAT rounds every op's result to t (as PyTorch does in that precision with fp32 accumulation).
void cmam_dir_ref(const std::vector<float>& q_in, const std::vector<float>& kv_in, const std::vector<float>& wts,
                  std::vector<double>& out, int b, int c, int ntok, int dim, int heads, float eps, DataType t) {
  const bool lp = t != DataType::kFLOAT;
  auto r = [&](double v) { return lp ? static_cast<double>(round_to(static_cast<float>(v), t)) : v; };
  const size_t C = static_cast<size_t>(c), D = static_cast<size_t>(dim);
  const float* wq = wts.data();
  const float* bq = wq + D * C;
  const float* wk = bq + D;
  const float* bk = wk + D * C;
  const float* wv = bk + D;
  const float* bv = wv + D * C;
  const float* wo = bv + D;
  const float* bo = wo + C * D;
  const float* gamma = bo + C;
  const float* beta = gamma + C;
  const int hd = dim / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  out.assign(static_cast<size_t>(b) * C * ntok, 0.0);
  for (int n = 0; n < b; ++n) {
    auto tok = [&](const std::vector<float>& src, int i, size_t ch) {
      return static_cast<double>(src[(static_cast<size_t>(n) * C + ch) * ntok + i]);
    };
    std::vector<double> Q(ntok * D), K(ntok * D), Vv(ntok * D);
    for (int i = 0; i < ntok; ++i)
      for (size_t d = 0; d < D; ++d) {
        double aq = bq[d], ak = bk[d], av = bv[d];
        for (size_t ch = 0; ch < C; ++ch) {
          aq += wq[d * C + ch] * tok(q_in, i, ch);
          ak += wk[d * C + ch] * tok(kv_in, i, ch);
          av += wv[d * C + ch] * tok(kv_in, i, ch);
        }
        Q[i * D + d] = r(aq), K[i * D + d] = r(ak), Vv[i * D + d] = r(av);
      }
    std::vector<double> att_out(ntok * D);
    for (int hh = 0; hh < heads; ++hh)
      for (int i = 0; i < ntok; ++i) {
        std::vector<double> sc(ntok);
        double mx = -1e300;
        for (int j = 0; j < ntok; ++j) {
          double dot = 0.0;
          for (int e = 0; e < hd; ++e) dot += Q[i * D + hh * hd + e] * K[j * D + hh * hd + e];
          sc[j] = r(r(dot) * scale);
          mx = std::max(mx, sc[j]);
        }
        double sum = 0.0;
        for (int j = 0; j < ntok; ++j) sum += (sc[j] = std::exp(sc[j] - mx));
        for (int j = 0; j < ntok; ++j) sc[j] = r(sc[j] / sum);
        for (int e = 0; e < hd; ++e) {
          double acc = 0.0;
          for (int j = 0; j < ntok; ++j) acc += sc[j] * Vv[j * D + hh * hd + e];
          att_out[i * D + hh * hd + e] = r(acc);
        }
      }
    for (int i = 0; i < ntok; ++i) {
      std::vector<double> y(C);
      double mean = 0.0;
      for (size_t ch = 0; ch < C; ++ch) {
        double acc = bo[ch];
        for (size_t d = 0; d < D; ++d) acc += wo[ch * D + d] * att_out[i * D + d];
        y[ch] = r(tok(q_in, i, ch) + r(acc));
        mean += y[ch];
      }
      mean /= static_cast<double>(C);
      double var = 0.0;
      for (size_t ch = 0; ch < C; ++ch) var += (y[ch] - mean) * (y[ch] - mean);
      var /= static_cast<double>(C);
      const double inv = 1.0 / std::sqrt(var + eps);
      for (size_t ch = 0; ch < C; ++ch) {
        out[(static_cast<size_t>(n) * C + ch) * ntok + i] = r((y[ch] - mean) * inv * gamma[ch] + beta[ch]);
      }
    }
  }
}

// ---------------------------------------------------------------- GPU enqueue checks
PluginTensorDesc tensor_desc(const std::vector<int64_t>& d, DataType t) {
  PluginTensorDesc p{};
  p.dims = make_static(d);
  p.type = t;
  p.format = TensorFormat::kLINEAR;
  p.scale = 1.0F;
  return p;
}

// Runs one plugin the way an execution context does: attachToContext, onShapeChange, enqueue on a stream.
bool run_plugin(IPluginV3* built, const std::vector<std::vector<int64_t>>& in_dims,
                const std::vector<std::vector<int64_t>>& out_dims, DataType t,
                const std::vector<const std::vector<float>*>& inputs, std::vector<std::vector<float>>& outputs,
                const std::string& who) {
  auto* rt0 = capability<IPluginV3OneRuntime>(built, PluginCapabilityType::kRUNTIME);
  PluginPtr attached(rt0->attachToContext(nullptr));
  auto* rt = capability<IPluginV3OneRuntime>(attached.get(), PluginCapabilityType::kRUNTIME);
  auto* build = capability<IPluginV3OneBuild>(built, PluginCapabilityType::kBUILD);
  if (!check(rt != nullptr, who + ": attachToContext for execution")) return false;
  std::vector<PluginTensorDesc> din, dout;
  std::vector<DynamicPluginTensorDesc> ddin, ddout;
  for (const auto& d : in_dims) {
    din.push_back(tensor_desc(d, t));
    DynamicPluginTensorDesc x{};
    x.desc = din.back();
    x.min = x.opt = x.max = din.back().dims;
    ddin.push_back(x);
  }
  for (const auto& d : out_dims) {
    dout.push_back(tensor_desc(d, t));
    DynamicPluginTensorDesc x{};
    x.desc = dout.back();
    x.min = x.opt = x.max = dout.back().dims;
    ddout.push_back(x);
  }
  const size_t ws = build->getWorkspaceSize(ddin.data(), static_cast<int32_t>(ddin.size()), ddout.data(),
                                            static_cast<int32_t>(ddout.size()));
  std::vector<std::unique_ptr<DeviceBuffer>> dev_in, dev_out;
  std::vector<const void*> in_ptrs;
  std::vector<void*> out_ptrs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    dev_in.push_back(std::make_unique<DeviceBuffer>(inputs[i]->size() * elem_size(t)));
    if (!check(dev_in.back()->ok() && upload(*dev_in.back(), *inputs[i], t), who + ": upload input")) return false;
    in_ptrs.push_back(dev_in.back()->get());
  }
  for (auto& o : outputs) {
    dev_out.push_back(std::make_unique<DeviceBuffer>(o.size() * elem_size(t)));
    if (!check(dev_out.back()->ok(), who + ": allocate output")) return false;
    // NaN pattern: outputs the plugin leaves unwritten fail the comparison.
    if (!check(cudaMemset(dev_out.back()->get(), 0xff, o.size() * elem_size(t)) == cudaSuccess,
               who + ": fill output")) {
      return false;
    }
    out_ptrs.push_back(dev_out.back()->get());
  }
  DeviceBuffer workspace(ws);
  cudaStream_t stream = nullptr;
  if (!check(workspace.ok() && cudaStreamCreate(&stream) == cudaSuccess, who + ": workspace and stream")) return false;
  const int32_t shape_rc = rt->onShapeChange(din.data(), static_cast<int32_t>(din.size()), dout.data(),
                                             static_cast<int32_t>(dout.size()));
  const int32_t rc = rt->enqueue(din.data(), dout.data(), in_ptrs.data(), out_ptrs.data(), workspace.get(), stream);
  cudaError_t sync = cudaStreamSynchronize(stream);
  const cudaError_t destroyed = cudaStreamDestroy(stream);
  if (sync == cudaSuccess) sync = destroyed;
  if (!check(shape_rc == 0 && rc == 0 && sync == cudaSuccess,
             who + ": enqueue returns 0 and the stream completes (" + cudaGetErrorString(sync) + ")")) {
    return false;
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!check(download(outputs[i], *dev_out[i], t), who + ": download output")) return false;
  }
  return true;
}

const char* type_name(DataType t) {
  return t == DataType::kFLOAT ? "fp32" : t == DataType::kHALF ? "fp16" : "bf16";
}

struct InvCase {
  int b, c, h, w, k, s, gc;
};
const InvCase kInvCases[] = {{2, 48, 13, 13, 3, 1, 16}, {1, 32, 9, 11, 7, 2, 16}, {3, 24, 5, 7, 5, 2, 8}};
struct CmamCase {
  int b, c, h, w, dim, heads;
  float eps;
};
const CmamCase kCmamCases[] = {{2, 32, 3, 5, 16, 4, 1e-5F}, {1, 48, 4, 4, 24, 3, 1e-3F}};

// Random CMAM inputs of one case: maps N(0,1), weights N(0, 1/C), LayerNorm gamma around 1.
void cmam_inputs(std::mt19937& rng, const CmamCase& cs, std::vector<float>& art, std::vector<float>& pv,
                 std::vector<float>& wa, std::vector<float>& wp) {
  const size_t C = static_cast<size_t>(cs.c), D = static_cast<size_t>(cs.dim);
  const size_t nw = 4 * D * C + 3 * D + 3 * C;
  const size_t n = static_cast<size_t>(cs.b) * C * cs.h * cs.w;
  art = random_vec(rng, n, 1.0F);
  pv = random_vec(rng, n, 1.0F);
  wa = random_vec(rng, nw, 1.0F / std::sqrt(static_cast<float>(cs.c)));
  wp = random_vec(rng, nw, 1.0F / std::sqrt(static_cast<float>(cs.c)));
  for (auto* wv : {&wa, &wp}) {
    for (size_t i = 0; i < C; ++i) (*wv)[nw - 2 * C + i] += 1.0F;
  }
}

template <typename T>
bool write_raw(const std::string& path, const std::vector<T>& v) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(v.data(), sizeof(T), v.size(), f) == v.size();
  return std::fclose(f) == 0 && ok;
}

// --dump-references DIR: the float64 references of the enqueue checks, with their inputs, for the pytest side to
// compare with tests/_reference.py and the PyTorch model (so the GPU checks rest on verified references).
bool dump_references(const std::string& dir) {
  std::mt19937 rng(7);
  std::string meta;
  bool ok = true;
  for (size_t i = 0; i < sizeof(kInvCases) / sizeof(kInvCases[0]); ++i) {
    const InvCase& cs = kInvCases[i];
    const int ho = (cs.h + cs.s - 1) / cs.s, wo = (cs.w + cs.s - 1) / cs.s, g = cs.c / cs.gc;
    const auto x = random_vec(rng, static_cast<size_t>(cs.b) * cs.c * cs.h * cs.w, 1.0F);
    const auto k = random_vec(rng, static_cast<size_t>(cs.b) * g * cs.k * cs.k * ho * wo, 0.3F);
    const auto y = involution_ref(x, k, cs.b, cs.c, cs.h, cs.w, cs.k, cs.s, cs.gc, DataType::kFLOAT);
    const std::string base = dir + "/involution" + std::to_string(i);
    ok = ok && write_raw(base + "_x.f32", x) && write_raw(base + "_kernel.f32", k) && write_raw(base + "_y.f64", y);
    meta += "involution" + std::to_string(i) + " " + std::to_string(cs.b) + " " + std::to_string(cs.c) + " " +
            std::to_string(cs.h) + " " + std::to_string(cs.w) + " " + std::to_string(cs.k) + " " +
            std::to_string(cs.s) + " " + std::to_string(cs.gc) + "\n";
  }
  for (size_t i = 0; i < sizeof(kCmamCases) / sizeof(kCmamCases[0]); ++i) {
    const CmamCase& cs = kCmamCases[i];
    std::vector<float> art, pv, wa, wp;
    cmam_inputs(rng, cs, art, pv, wa, wp);
    std::vector<double> ya, yp;
    cmam_dir_ref(art, pv, wa, ya, cs.b, cs.c, cs.h * cs.w, cs.dim, cs.heads, cs.eps, DataType::kFLOAT);
    cmam_dir_ref(pv, art, wp, yp, cs.b, cs.c, cs.h * cs.w, cs.dim, cs.heads, cs.eps, DataType::kFLOAT);
    const std::string base = dir + "/cmam" + std::to_string(i);
    ok = ok && write_raw(base + "_art.f32", art) && write_raw(base + "_pv.f32", pv) &&
         write_raw(base + "_weights_art.f32", wa) && write_raw(base + "_weights_pv.f32", wp) &&
         write_raw(base + "_art_out.f64", ya) && write_raw(base + "_pv_out.f64", yp);
    char eps[32];
    std::snprintf(eps, sizeof eps, "%.9g", static_cast<double>(cs.eps));
    meta += "cmam" + std::to_string(i) + " " + std::to_string(cs.b) + " " + std::to_string(cs.c) + " " +
            std::to_string(cs.h) + " " + std::to_string(cs.w) + " " + std::to_string(cs.dim) + " " +
            std::to_string(cs.heads) + " " + eps + "\n";
  }
  std::FILE* f = std::fopen((dir + "/cases.txt").c_str(), "w");
  if (f == nullptr) return false;
  ok = ok && std::fputs(meta.c_str(), f) >= 0;
  return std::fclose(f) == 0 && ok;
}

// Host-side fp16/bf16 conversions used to feed and read the kernels, against known encodings (as torch gives).
void check_conversions() {
  struct Enc {
    float v;
    uint16_t half, bf16;
  };
  const Enc known[] = {{1.0F, 0x3c00, 0x3f80}, {-2.0F, 0xc000, 0xc000}, {65504.0F, 0x7bff, 0x4780},
                       {0.099975586F, 0x2e66, 0x3dcd}, {std::ldexp(1.0F, -24), 0x0001, 0x3380},
                       {std::ldexp(1.0F, -14), 0x0400, 0x3880}, {0.0F, 0x0000, 0x0000}, {3.140625F, 0x4248, 0x4049}};
  int bad = 0;
  for (const Enc& e : known) {
    const uint16_t h = to_bits16({e.v}, DataType::kHALF)[0];
    const uint16_t b = to_bits16({e.v}, DataType::kBF16)[0];
    if (h != e.half || b != e.bf16 || from_bits16(h, DataType::kHALF) != round_to(e.v, DataType::kHALF) ||
        from_bits16(b, DataType::kBF16) != round_to(e.v, DataType::kBF16)) {
      std::printf("  conversion of %.9g: fp16 0x%04x (want 0x%04x), bf16 0x%04x (want 0x%04x)\n",
                  static_cast<double>(e.v), h, e.half, b, e.bf16);
      ++bad;
    }
  }
  // Round to nearest even at the fp16 halfway point 1 + 2^-11, and overflow above the largest fp16.
  check(bad == 0 && round_to(1.0F + std::ldexp(1.0F, -11), DataType::kHALF) == 1.0F &&
            round_to(1.0F + 3 * std::ldexp(1.0F, -11), DataType::kHALF) == 1.0F + std::ldexp(1.0F, -9) &&
            std::isinf(round_to(70000.0F, DataType::kHALF)),
        "harness self-check: fp16/bf16 host conversions match known encodings");
}

namespace inv = schema::involution;
namespace cm = schema::cross_modal_attention;

// The element types to run enqueue with: every combination of (type, kLINEAR) over all positions that
// supportsFormatCombination accepts, found as TensorRT queries it (position by position, earlier positions fixed).
// Each must be one type of fp32/fp16/bf16 throughout, the combinations the enqueue checks can feed; any other
// declared combination fails a check here instead of going untested.
std::vector<DataType> enqueue_types(IPluginV3* plugin, int32_t nb_in, int32_t nb_out, const std::string& who) {
  auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
  const int32_t n = nb_in + nb_out;
  std::vector<DynamicPluginTensorDesc> io(static_cast<size_t>(n));
  std::vector<DataType> cur(static_cast<size_t>(n));
  std::vector<DataType> types;
  int declared = 0;
  std::function<void(int32_t)> walk = [&](int32_t pos) {
    if (pos == n) {
      ++declared;
      const bool uniform = std::all_of(cur.begin(), cur.end(), [&](DataType t) { return t == cur[0]; });
      const bool runnable = cur[0] == DataType::kFLOAT || cur[0] == DataType::kHALF || cur[0] == DataType::kBF16;
      std::string combo;
      for (DataType t : cur) combo += std::to_string(static_cast<int>(t)) + " ";
      if (check(uniform && runnable, who + ": declared type combination " + combo + "has an enqueue check")) {
        types.push_back(cur[0]);
      }
      return;
    }
    for (int32_t ti = 0; ti < EnumMax<DataType>(); ++ti) {
      io[static_cast<size_t>(pos)] = DynamicPluginTensorDesc{};
      io[static_cast<size_t>(pos)].desc.type = static_cast<DataType>(ti);
      io[static_cast<size_t>(pos)].desc.format = TensorFormat::kLINEAR;
      if (build->supportsFormatCombination(pos, io.data(), nb_in, nb_out)) {
        cur[static_cast<size_t>(pos)] = static_cast<DataType>(ti);
        walk(pos + 1);
      }
    }
  };
  walk(0);
  check(declared > 0, who + ": supportsFormatCombination declares at least one combination");
  return types;
}

void gpu_involution(IPluginCreatorV3One* creator) {
  std::mt19937 rng(1234);
  for (const InvCase& cs : kInvCases) {
    Collection fc({I32("kernel_size", cs.k), I32("stride", cs.s), I32("group_channels", cs.gc)});
    PluginPtr plugin(creator->createPlugin("gpu", &fc.fc, TensorRTPhase::kBUILD));
    if (!check(plugin != nullptr, "involution gpu: create")) continue;
    const int ho = (cs.h + cs.s - 1) / cs.s, wo = (cs.w + cs.s - 1) / cs.s, g = cs.c / cs.gc;
    for (DataType t : enqueue_types(plugin.get(), inv::kNbInputs, inv::kNbOutputs, "involution enqueue")) {
      std::vector<float> x = random_vec(rng, static_cast<size_t>(cs.b) * cs.c * cs.h * cs.w, 1.0F);
      std::vector<float> k = random_vec(rng, static_cast<size_t>(cs.b) * g * cs.k * cs.k * ho * wo, 0.3F);
      round_vec(x, t);  // the kernel sees exactly these values, so the reference starts from them
      round_vec(k, t);
      const std::string who = "involution enqueue " + std::string(type_name(t)) + " B" + std::to_string(cs.b) +
                              " C" + std::to_string(cs.c) + " " + std::to_string(cs.h) + "x" + std::to_string(cs.w) +
                              " K" + std::to_string(cs.k) + " s" + std::to_string(cs.s);
      std::vector<std::vector<float>> out = {std::vector<float>(static_cast<size_t>(cs.b) * cs.c * ho * wo)};
      if (!run_plugin(plugin.get(), {{cs.b, cs.c, cs.h, cs.w}, {cs.b, g * cs.k * cs.k, ho, wo}},
                      {{cs.b, cs.c, ho, wo}}, t, {&x, &k}, out, who)) {
        continue;
      }
      const auto ref = involution_ref(x, k, cs.b, cs.c, cs.h, cs.w, cs.k, cs.s, cs.gc, DataType::kFLOAT);
      const auto emu = t == DataType::kFLOAT ? std::vector<double>{}
                                             : involution_ref(x, k, cs.b, cs.c, cs.h, cs.w, cs.k, cs.s, cs.gc, t);
      compare(who, out[0], ref, emu, t);
    }
  }
}

void gpu_cmam(IPluginCreatorV3One* creator) {
  std::mt19937 rng(99);
  for (const CmamCase& cs : kCmamCases) {
    Collection fc({I32("heads", cs.heads), I32("dim", cs.dim), F32("eps", cs.eps)});
    PluginPtr plugin(creator->createPlugin("gpu", &fc.fc, TensorRTPhase::kBUILD));
    if (!check(plugin != nullptr, "cmam gpu: create")) continue;
    const size_t C = static_cast<size_t>(cs.c), D = static_cast<size_t>(cs.dim);
    const size_t nw = 4 * D * C + 3 * D + 3 * C;
    const int ntok = cs.h * cs.w;
    for (DataType t : enqueue_types(plugin.get(), cm::kNbInputs, cm::kNbOutputs, "cmam enqueue")) {
      std::vector<float> art, pv, wa, wp;
      cmam_inputs(rng, cs, art, pv, wa, wp);
      for (auto* v : {&art, &pv, &wa, &wp}) round_vec(*v, t);
      const std::string who = "cmam enqueue " + std::string(type_name(t)) + " B" + std::to_string(cs.b) + " C" +
                              std::to_string(cs.c) + " " + std::to_string(cs.h) + "x" + std::to_string(cs.w) +
                              " dim" + std::to_string(cs.dim) + " heads" + std::to_string(cs.heads);
      const std::vector<int64_t> map = {cs.b, cs.c, cs.h, cs.w};
      const std::vector<int64_t> wd = {static_cast<int64_t>(nw)};
      std::vector<std::vector<float>> out(2, std::vector<float>(art.size()));
      if (!run_plugin(plugin.get(), {map, map, wd, wd}, {map, map}, t, {&art, &pv, &wa, &wp}, out, who)) continue;
      std::vector<double> ref_a, ref_p, emu_a, emu_p;
      cmam_dir_ref(art, pv, wa, ref_a, cs.b, cs.c, ntok, cs.dim, cs.heads, cs.eps, DataType::kFLOAT);
      cmam_dir_ref(pv, art, wp, ref_p, cs.b, cs.c, ntok, cs.dim, cs.heads, cs.eps, DataType::kFLOAT);
      if (t != DataType::kFLOAT) {
        cmam_dir_ref(art, pv, wa, emu_a, cs.b, cs.c, ntok, cs.dim, cs.heads, cs.eps, t);
        cmam_dir_ref(pv, art, wp, emu_p, cs.b, cs.c, ntok, cs.dim, cs.heads, cs.eps, t);
      }
      compare(who + " art_out", out[0], ref_a, emu_a, t);
      compare(who + " pv_out", out[1], ref_p, emu_p, t);
    }
  }
}

// ---------------------------------------------------------------- the two plugins' CPU checks

void check_involution(IPluginCreatorV3One* creator) {
  CreatorSpec spec{inv::kName, inv::kVersion, inv::kFields, inv::kNbFields, inv::kNbInputs, inv::kNbOutputs,
                   {I32("kernel_size", 3), I32("stride", 2), I32("group_channels", 16)},
                   {3, 2, 16},
                   {{"an even kernel_size", {I32("kernel_size", 4)}},
                    {"kernel_size above its maximum", {I32("kernel_size", 17)}},
                    {"stride 0", {I32("stride", 0)}},
                    {"group_channels 0", {I32("group_channels", 0)}},
                    {"a float32 kernel_size", {F32("kernel_size", 3.0F)}},
                    {"an unknown field", {I32("kernel", 3)}},
                    {"a field given twice", {I32("stride", 1), I32("stride", 2)}},
                    {"an int64 value out of int32 range", {I64("group_channels", int64_t{1} << 40)}}}};
  PluginPtr plugin = check_creator(creator, spec);
  if (!plugin) return;
  auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
  const std::string who = spec.name;
  // int64 values in range are accepted (producers other than the ONNX parser use them).
  {
    Collection fc({I64("kernel_size", 5)});
    PluginPtr p(creator->createPlugin("i64", &fc.fc, TensorRTPhase::kBUILD));
    check(p != nullptr, who + ": accepts an int64 kernel_size in range");
  }
  // Variables: 0 = batch, 1 = height, 2 = width. K=3, s=2, gc=16: C=48 -> G=3, kernel channels 27.
  const ShapeFn y = [](const std::vector<int64_t>& v) {
    return std::vector<int64_t>{v[0], 48, (v[1] + 1) / 2, (v[2] + 1) / 2};
  };
  check_shapes(build, who + " (dynamic batch)", {{V(0), C(48), C(13), C(13)}, {V(0), C(27), C(7), C(7)}},
               {[](const std::vector<int64_t>& v) { return std::vector<int64_t>{v[0], 48, 7, 7}; }},
               {{1, 0, 0}, {5, 0, 0}, {64, 0, 0}});
  check_shapes(build, who + " (dynamic batch and size)", {{V(0), C(48), V(1), V(2)}, {V(0), C(27), V(3), V(4)}},
               {y}, {{1, 13, 13, 7, 7}, {3, 16, 9, 8, 5}, {2, 1, 2, 1, 1}});
  check_shapes_rejected(build, who, "a kernel with 26 channels (G*K*K = 27)",
                        {{V(0), C(48), C(13), C(13)}, {V(0), C(26), C(7), C(7)}}, 1);
  check_shapes_rejected(build, who, "channels not divisible by group_channels",
                        {{V(0), C(40), C(13), C(13)}, {V(0), C(27), C(7), C(7)}}, 1);
  check_shapes_rejected(build, who, "a 3-D input", {{V(0), C(48), C(13)}, {V(0), C(27), C(7), C(7)}}, 1);
  check_shapes_rejected(build, who, "a kernel of the wrong height",
                        {{V(0), C(48), C(13), C(13)}, {V(0), C(27), C(13), C(7)}}, 1);
  check_configure(plugin.get(), who, {{2, 48, 13, 13}, {2, 27, 7, 7}}, {{2, 48, 7, 7}}, true, "consistent shapes");
  check_configure(plugin.get(), who, {{2, 48, 13, 13}, {2, 27, 7, 7}}, {{2, 48, 13, 13}}, false,
                  "an output of the wrong size");
  check_configure(plugin.get(), who, {{2, 48, 13, 13}, {3, 27, 7, 7}}, {{2, 48, 7, 7}}, false,
                  "a kernel of another batch");
}

void check_cmam(IPluginCreatorV3One* creator) {
  CreatorSpec spec{cm::kName, cm::kVersion, cm::kFields, cm::kNbFields, cm::kNbInputs, cm::kNbOutputs,
                   {I32("heads", 4), I32("dim", 16), F32("eps", 1e-3F)},
                   {4, 16, 1e-3},
                   {{"dim not divisible by heads", {I32("heads", 3), I32("dim", 16)}},
                    {"a head_dim (dim / heads) above the kernel's 256", {I32("heads", 2), I32("dim", 1024)}},
                    {"heads 0", {I32("heads", 0)}},
                    {"a negative eps", {F32("eps", -1e-5F)}},
                    {"a NaN eps", {F32("eps", std::nanf(""))}},
                    {"an int32 eps", {I32("eps", 1)}},
                    {"an unknown field", {I32("num_heads", 8)}},
                    {"a field of length 2", {FieldArg{"dim", PluginFieldType::kINT32, std::vector<unsigned char>(8), 2}}}}};
  PluginPtr plugin = check_creator(creator, spec);
  if (!plugin) return;
  auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
  const std::string who = spec.name;
  // dim = 16, C = 32: packed weights 4*16*32 + 3*16 + 3*32 = 2192.
  const ShapeFn same = [](const std::vector<int64_t>& v) { return std::vector<int64_t>{v[0], 32, 3, 5}; };
  check_shapes(build, who + " (dynamic batch)", {{V(0), C(32), C(3), C(5)}, {V(0), C(32), C(3), C(5)}, {C(2192)}, {C(2192)}},
               {same, same}, {{1}, {4}, {33}});
  check_shapes_rejected(build, who, "weights of the wrong length",
                        {{V(0), C(32), C(3), C(5)}, {V(0), C(32), C(3), C(5)}, {C(2191)}, {C(2192)}}, 2);
  check_shapes_rejected(build, who, "art and pv of different shapes",
                        {{V(0), C(32), C(3), C(5)}, {V(0), C(32), C(5), C(3)}, {C(2192)}, {C(2192)}}, 2);
  check_shapes_rejected(build, who, "2-D weights",
                        {{V(0), C(32), C(3), C(5)}, {V(0), C(32), C(3), C(5)}, {C(2), C(1096)}, {C(2192)}}, 2);
  check_configure(plugin.get(), who, {{2, 32, 3, 5}, {2, 32, 3, 5}, {2192}, {2192}}, {{2, 32, 3, 5}, {2, 32, 3, 5}},
                  true, "consistent shapes");
  check_configure(plugin.get(), who, {{2, 32, 3, 5}, {2, 32, 3, 5}, {2192}, {2000}}, {{2, 32, 3, 5}, {2, 32, 3, 5}},
                  false, "short pv weights");
  // More tokens than the kernels address (B*H*W > 2^24): refused when configured, not at enqueue.
  check_configure(plugin.get(), who, {{1, 32, 4097, 4097}, {1, 32, 4097, 4097}, {2192}, {2192}},
                  {{1, 32, 4097, 4097}, {1, 32, 4097, 4097}}, false, "more than 2^24 tokens");
}

// --check-autoregister: with a stand-in libnvinfer (fake_nvinfer.cpp) already loaded, loading the plugin library
// with CMIR_TRT_PLUGINS_AUTOREGISTER=1 must register exactly `expected` creators, all in namespace "cmir".
int check_autoregister(const char* plugin_lib, const char* fake_lib, int expected) {
  void* fake = dlopen(fake_lib, RTLD_NOW | RTLD_LOCAL);
  if (!check(fake != nullptr, std::string("dlopen stand-in libnvinfer: ") + (fake ? "ok" : dlerror()))) return 1;
  using CountFn = int32_t (*)(int32_t*);
  auto count = reinterpret_cast<CountFn>(dlsym(fake, "fake_nvinfer_registered"));
  if (!check(count != nullptr, "stand-in exports fake_nvinfer_registered")) return 1;
  setenv("CMIR_TRT_PLUGINS_AUTOREGISTER", "1", 1);
  void* lib = dlopen(plugin_lib, RTLD_NOW | RTLD_LOCAL);
  check(lib != nullptr, std::string("dlopen plugin library: ") + (lib ? "ok" : dlerror()));
  int32_t all_cmir = 0;
  const int32_t n = count(&all_cmir);
  check(n == expected && (n == 0 || all_cmir == 1),
        "auto-registration registered " + std::to_string(n) + " creators (expected " + std::to_string(expected) +
            ") in namespace cmir");
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PATH/libcmir_trt_plugins.so [--no-gpu] [--verbose]\n", argv[0]);
    return 2;
  }
  if (std::strcmp(argv[1], "--check-autoregister") == 0) {
    if (argc != 5) {
      std::fprintf(stderr, "usage: %s --check-autoregister PLUGIN_LIB FAKE_NVINFER_LIB EXPECTED_COUNT\n", argv[0]);
      return 2;
    }
    return check_autoregister(argv[2], argv[3], std::atoi(argv[4]));
  }
  if (std::strcmp(argv[1], "--dump-references") == 0) {
    if (argc != 3) {
      std::fprintf(stderr, "usage: %s --dump-references DIR\n", argv[0]);
      return 2;
    }
    return dump_references(argv[2]) ? 0 : 1;
  }
  bool gpu = true;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-gpu") == 0) {
      gpu = false;
    } else if (std::strcmp(argv[i], "--verbose") == 0) {
      g_verbose = true;
    } else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  check_conversions();
  std::printf("cmir_trt plugin harness (TensorRT headers %d.%d.%d): %s\n", NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR,
              NV_TENSORRT_PATCH, argv[1]);
  // RTLD_NOW: every symbol must resolve now, as TensorRT's loader requires (no libnvinfer is loaded here).
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!check(lib != nullptr, std::string("dlopen: ") + (lib ? "ok" : dlerror()))) {
    std::printf("%d checks, %d failed\n", g_checks, g_failures);
    return 1;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto set_finder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  check(get_creators != nullptr, "library exports getCreators");
  check(set_finder != nullptr, "library exports setLoggerFinder");
  check(dlsym(lib, "launch_involution") == nullptr && dlsym(lib, "_ZN12cmir_plugins11log_messageEN8nvinfer15v_1_07ILogger8SeverityERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE") == nullptr,
        "library exports nothing but the entry points");
  if (get_creators == nullptr) {
    std::printf("%d checks, %d failed\n", g_checks, g_failures);
    return 1;
  }
  if (set_finder != nullptr) set_finder(&g_finder);

  int32_t n = -1;
  IPluginCreatorInterface* const* creators = get_creators(n);
  check(creators != nullptr && n == 2, "getCreators returns 2 creators, got " + std::to_string(n));
  if (creators != nullptr && n > 0) {
    for (int32_t i = 0; i < n; ++i) {
      check(creators[i] != nullptr &&
                std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
            "creator " + std::to_string(i) + " is an IPluginCreatorV3One");
    }
    IPluginCreatorV3One* inv_creator = find_creator(creators, n, inv::kName);
    IPluginCreatorV3One* cmam_creator = find_creator(creators, n, cm::kName);
    if (check(inv_creator != nullptr, std::string("creator ") + inv::kName)) check_involution(inv_creator);
    if (check(cmam_creator != nullptr, std::string("creator ") + cm::kName)) check_cmam(cmam_creator);

    int devices = 0;
    const cudaError_t dev_err = cudaGetDeviceCount(&devices);
    if (!gpu) {
      std::printf("GPU checks skipped: --no-gpu\n");
    } else if (dev_err != cudaSuccess || devices == 0) {
      std::printf("GPU checks skipped: no CUDA device (%s)\n", cudaGetErrorString(dev_err));
    } else {
      std::printf("GPU checks on %d device(s)\n", devices);
      if (inv_creator) gpu_involution(inv_creator);
      if (cmam_creator) gpu_cmam(cmam_creator);
    }
  }
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  // The library stays loaded: static creators live until exit, as in TensorRT's registry.
  return g_failures == 0 ? 0 : 1;
}
