// libFuzzer harness for the plan loader (cmir::parse_plan): every input must either parse or throw cmir::PlanError;
// anything else (crash, ASan/UBSan report, other exception, hang) is a finding. Each input is tried twice: as it is,
// and with its trailer (CRC-32 + end marker) rewritten to match, so mutations reach the section, graph and shape checks
// behind the checksum. A third try treats the input as a plan cut off before its weights section: zero weights of the
// size the header declares (up to 8 MiB) and a valid trailer are appended, so small inputs (header + metadata + graph)
// reach every graph and shape check at a high execution rate (seeds: tests/fuzz/make_seeds.py).
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
  if (size >= 80) {
    std::uint64_t woff = 0, wsize = 0;
    std::memcpy(&woff, data + 56, 8);
    std::memcpy(&wsize, data + 64, 8);
    if (woff >= size && woff <= (8u << 20) && wsize <= (8u << 20)) {
      std::vector<unsigned char> full(data, data + size);
      full.resize(static_cast<std::size_t>(woff + wsize) + 8, 0);
      const std::uint64_t n = full.size();
      std::memcpy(full.data() + 16, &n, 8);
      const std::uint32_t crc = cmir::crc32(full.data(), full.size() - 8);
      std::memcpy(full.data() + full.size() - 8, &crc, 4);
      std::memcpy(full.data() + full.size() - 4, "PEND", 4);
      try_parse(full.data(), full.size());
    }
  }
  return 0;
}
