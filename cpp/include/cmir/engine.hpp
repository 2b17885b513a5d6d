// The native CMIR engine: a validated plan, executed on the CPU with oneDNN for the standard layers and cmir_trt's own
// kernels for involution, CMAM and spatial attention. Thread-safe: predict may be called from several threads at once
// (each call takes an execution context of its own from a pool; a context holds the arena planned for its batch size,
// so a warm engine allocates nothing per call).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "cmir/plan.hpp"

namespace cmir {

// Arithmetic of the convolutions. kBf16: bf16 weights (converted once at load) and activations between convolutions,
// fp32 accumulation (oneDNN); involution, CMAM, spatial attention, the head and the outputs stay fp32.
enum class Precision { kFp32 = 0, kBf16 = 1 };
const char* precision_name(Precision p);  // "fp32", "bf16"
// Whether this CPU runs bf16 natively (avx512_bf16 or AMX, as oneDNN detects it, after ONEDNN_MAX_CPU_ISA);
// when not, `why` (optional) receives a one-line reason naming what the CPU has.
bool bf16_supported(std::string* why = nullptr);
std::string onednn_cpu_isa();  // oneDNN's effective instruction set, e.g. "avx512_core_bf16"

struct OpTiming {
  std::string name;   // e.g. "conv 3x3 s2 64->64"
  double seconds = 0;  // summed over the calls that were profiled
};

class Engine {
 public:
  // threads <= 0: all cores. Throws PlanError (bad file), std::invalid_argument (bf16 on a CPU without it) or
  // std::runtime_error.
  static std::unique_ptr<Engine> load(const std::string& path, int threads = 0, Precision precision = Precision::kFp32);
  static std::unique_ptr<Engine> from_bytes(const unsigned char* data, std::size_t size, int threads = 0,
                                            Precision precision = Precision::kFp32);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const InputSpec& spec() const;
  const std::string& metadata_json() const;
  int threads() const;
  Precision precision() const;
  std::size_t num_ops() const;
  std::size_t num_bf16_tensors() const;  // activations stored in bf16 (0 at fp32)

  // Inputs NCHW float32: art/pv [B, in_channels, S, S] (pv null for a single-phase plan), clinical [B, F] (null when
  // F = 0). Outputs: logit/probability [B, num_classes], heatmap [B, 1, S, S]. Non-finite inputs throw
  // std::invalid_argument. profile (optional) receives per-op wall times, added to what it holds.
  void predict(const float* art, const float* pv, const float* clinical, int batch, float* logit, float* probability,
               float* heatmap, std::vector<OpTiming>* profile = nullptr);

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  // The load-time work shared by load() and from_bytes(): schedule, memory plan, op labels, weight reorders.
  static std::unique_ptr<Engine> from_plan(Plan plan, int threads, Precision precision);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cmir
