// The CMIR plan file (export/plan-format.md): parsing and validation. Everything here is checked against bounds before
// use; a malformed file throws cmir::PlanError with a message and never reads outside the buffer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace cmir {

class PlanError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr std::uint32_t kPlanVersion = 1;
constexpr std::uint32_t kNoTensor = 0xFFFFFFFFu;

enum class OpType : std::uint32_t {
  kConv = 1,
  kMaxPool = 2,
  kAvgPoolCeil = 3,
  kInvolution = 4,
  kAffine = 5,
  kSpatialAttention = 6,
  kCmam = 7,
  kGap = 8,
  kLinear = 9,
  kConcat = 10,
  kProbability = 11,
  kResizeBilinear = 12,
  kMean2 = 13,
  kCam = 14,
  kInvolutionFused = 15,
};
const char* op_name(OpType t);

// Per-sample NHWC shape of one tensor (vectors are 1 x 1 x C). The batch dimension is chosen at run time.
struct TensorDesc {
  int h = 0, w = 0, c = 0;
  std::size_t elems() const { return static_cast<std::size_t>(h) * w * c; }
};

struct WeightRef {
  const float* data = nullptr;  // points into the plan's weight section (kept alive by Plan::bytes)
  std::size_t count = 0;
};

struct Op {
  OpType type{};
  std::vector<std::uint32_t> inputs, outputs;
  std::vector<std::int32_t> ints;
  std::vector<float> floats;
  std::vector<WeightRef> weights;
};

struct InputSpec {
  int image_size = 0, in_channels = 0, num_clinical = 0, num_classes = 0;
  bool two_phase = false;
};

struct Plan {
  std::vector<unsigned char> bytes;  // owns the weights (the whole file when loaded from disk); weights point into it
  std::string metadata_json;
  InputSpec spec;
  std::uint32_t art = kNoTensor, pv = kNoTensor, clinical = kNoTensor;
  std::uint32_t logit = kNoTensor, probability = kNoTensor, heatmap = kNoTensor;
  std::vector<TensorDesc> tensors;
  std::vector<Op> ops;
};

// Parses and fully validates a plan held in memory (header, checksum, sections, graph, op attributes and shapes).
Plan parse_plan(const unsigned char* data, std::size_t size);
// Reads the file (bounded by a size limit) and parses it.
Plan load_plan_file(const std::string& path);

std::uint32_t crc32(const unsigned char* data, std::size_t size);

}  // namespace cmir
