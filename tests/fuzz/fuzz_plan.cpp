// libFuzzer harness for the plan loader (cmir::parse_plan): every input must either parse or throw cmir::PlanError;
// anything else (crash, ASan/UBSan report, other exception, hang) is a finding. Each input is tried twice: as it is,
// and with its trailer (CRC-32 + end marker) rewritten to match, so mutations reach the section, graph and shape checks
// behind the checksum.
#include <cstdint>
#include <cstring>
#include <vector>

#include "cmir/plan.hpp"

namespace {

void try_parse(const unsigned char* data, std::size_t size) {
  try {
    cmir::Plan plan = cmir::parse_plan(data, size);
    // Touch what a consumer touches: every weight of every op (must be inside the plan's buffer).
    volatile float sink = 0.f;
    for (const auto& op : plan.ops)
      for (const auto& w : op.weights)
        if (w.count) sink = sink + w.data[0] + w.data[w.count - 1];
    (void)sink;
  } catch (const cmir::PlanError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try_parse(data, size);
  if (size >= 88) {
    std::vector<unsigned char> fixed(data, data + size);
    // Keep the header's file_size consistent too, so truncations and extensions get past the size check.
    const std::uint64_t n = size;
    std::memcpy(fixed.data() + 16, &n, 8);
    const std::uint32_t crc = cmir::crc32(fixed.data(), size - 8);
    std::memcpy(fixed.data() + size - 8, &crc, 4);
    std::memcpy(fixed.data() + size - 4, "PEND", 4);
    try_parse(fixed.data(), fixed.size());
  }
  return 0;
}
