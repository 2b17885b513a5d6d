// Test driver of the CPU emulator (tests/test_cuda_emu*.py run it as a subprocess, built with ASan + UBSan).
//
//   cmir_cuda_emu_driver involution DIR dtype B C H W K stride gc relu   (x, kernel[, scale, shift] -> y)
//   cmir_cuda_emu_driver fused DIR dtype B C H W K stride gc hidden relu (x, w1, b1, w2, b2[, scale, shift] -> y)
//   cmir_cuda_emu_driver cmam DIR dtype B C H W dim heads eps [ws_off]   (art, pv, wa, wp -> art_out, pv_out)
//   cmir_cuda_emu_driver pointwise DIR dtype B Cin Cout H W relu ws      (x, w, bias[, residual] -> y)
//     ... ws Cs Hs Ws stride                                          (+ a projection shortcut: shortcut.bin)
//   cmir_cuda_emu_driver conv2d DIR dtype B Cin Cout H W kh kw stride pad relu ws  (x, w, bias[, residual] -> y)
//   cmir_cuda_emu_driver sa DIR dtype B Ca Cp H W k          (a[, p], w, bias -> ya[, yp], att; w/bias fp32)
//   cmir_cuda_emu_driver convert DIR f2h|h2f|f2bf|bf2f                   (in -> out)
//   cmir_cuda_emu_driver selftest NAME                                   (emulator semantics, see selftest())
//
// Arrays are raw little-endian files DIR/<name>.bin (fp32, or fp16/bf16 bits for dtype 1/2; scale/shift/w1/b1/w2/b2
// always fp32; the pointwise op's w/bias/residual/shortcut in its dtype), copied into exactly-sized "device" buffers;
// outputs and the CMAM workspace start as 0xff bytes (NaN), so an element a kernel fails to write is caught.
// pointwise with ws = 1 passes a split-K workspace (counters zeroed, partials 0xff) and runs the launch twice on it
// (y re-poisoned): it prints whether the counters were left zero after each run and whether the second output has
// the first's bits; ws = 2 passes a workspace too small for any split. Exit status: 0 done, 3 the launcher returned
// an error (its name on stdout), 2 usage or I/O error; emulator-detected misuse aborts (cmir_emu: ... on stderr).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cmam.cuh"
#include "conv2d.cuh"
#include "dtype.cuh"
#include "involution.cuh"
#include "pointwise.cuh"
#include "spatial_attention.cuh"

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "driver: %s\n", msg.c_str());
  std::exit(2);
}

std::vector<char> read_file(const std::string& path, size_t expect) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) die("cannot open " + path);
  std::vector<char> buf(expect);
  const size_t got = expect == 0 ? 0 : std::fread(buf.data(), 1, expect, f);
  const bool extra = std::fgetc(f) != EOF;
  std::fclose(f);
  if (got != expect || extra) die(path + ": expected exactly " + std::to_string(expect) + " bytes");
  return buf;
}

bool exists(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f != nullptr) std::fclose(f);
  return f != nullptr;
}

void write_file(const std::string& path, const void* data, size_t n) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(data, 1, n, f) != n || std::fclose(f) != 0) die("cannot write " + path);
}

// An exactly-sized "device" buffer (cudaMalloc of the emulator: plain heap memory under ASan).
struct Dev {
  void* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t bytes, int fill = -1) : n(bytes) {
    if (cudaMalloc(&p, bytes) != cudaSuccess) die("cudaMalloc failed");
    if (fill >= 0 && cudaMemset(p, fill, bytes) != cudaSuccess) die("cudaMemset failed");
  }
  Dev(const std::string& path, size_t bytes) : Dev(bytes) {
    const auto host = read_file(path, bytes);
    if (bytes > 0 && cudaMemcpy(p, host.data(), bytes, cudaMemcpyHostToDevice) != cudaSuccess) die("cudaMemcpy");
  }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void save(const std::string& path) const {
    std::vector<char> host(n);
    if (n > 0 && cudaMemcpy(host.data(), p, n, cudaMemcpyDeviceToHost) != cudaSuccess) die("cudaMemcpy");
    write_file(path, host.data(), n);
  }
};

int arg_int(char** argv, int i) { return std::atoi(argv[i]); }

int report(cudaError_t e) {
  if (e == cudaSuccess) return 0;
  std::printf("launch error: %s\n", cudaGetErrorName(e));
  return 3;
}

int run_involution(const std::string& dir, char** a, bool fused) {
  const auto dtype = static_cast<CmirDType>(arg_int(a, 0));
  const int b = arg_int(a, 1), c = arg_int(a, 2), h = arg_int(a, 3), w = arg_int(a, 4), k = arg_int(a, 5),
            s = arg_int(a, 6), gc = arg_int(a, 7);
  const int hidden = fused ? arg_int(a, 8) : 0, relu = arg_int(a, fused ? 9 : 8);
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t ho = static_cast<size_t>((h + s - 1) / s), wo = static_cast<size_t>((w + s - 1) / s);
  const size_t g = static_cast<size_t>(c / gc), kk = static_cast<size_t>(k) * k;
  Dev x(dir + "/x.bin", static_cast<size_t>(b) * c * h * w * es);
  Dev y(static_cast<size_t>(b) * c * ho * wo * es, 0xff);
  const bool has_scale = exists(dir + "/scale.bin"), has_shift = exists(dir + "/shift.bin");
  Dev scale(has_scale ? dir + "/scale.bin" : "/dev/null", has_scale ? static_cast<size_t>(c) * 4 : 0);
  Dev shift(has_shift ? dir + "/shift.bin" : "/dev/null", has_shift ? static_cast<size_t>(c) * 4 : 0);
  const auto* sp = static_cast<const float*>(scale.p);
  const auto* hp = static_cast<const float*>(shift.p);
  cudaError_t e;
  if (!fused) {
    Dev kern(dir + "/kernel.bin", static_cast<size_t>(b) * g * kk * ho * wo * es);
    e = launch_involution_epilogue(nullptr, dtype, x.p, kern.p, y.p, b, c, h, w, k, s, gc, sp, hp, relu);
  } else {
    const size_t hid = static_cast<size_t>(hidden);
    Dev w1(dir + "/w1.bin", hid * c * 4), b1(dir + "/b1.bin", hid * 4), w2(dir + "/w2.bin", g * kk * hid * 4),
        b2(dir + "/b2.bin", g * kk * 4);
    e = launch_involution_fused(nullptr, dtype, x.p, static_cast<const float*>(w1.p), static_cast<const float*>(b1.p),
                                static_cast<const float*>(w2.p), static_cast<const float*>(b2.p), y.p, b, c, h, w, k,
                                s, gc, hidden, sp, hp, relu);
  }
  if (e != cudaSuccess) return report(e);
  y.save(dir + "/y.bin");
  return 0;
}

int run_cmam(const std::string& dir, char** a) {
  const auto dtype = static_cast<CmirDType>(arg_int(a, 0));
  const int b = arg_int(a, 1), c = arg_int(a, 2), h = arg_int(a, 3), w = arg_int(a, 4), dim = arg_int(a, 5),
            heads = arg_int(a, 6);
  const float eps = std::strtof(a[7], nullptr);
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t act = static_cast<size_t>(b) * c * h * w * es;
  const size_t wts = cmam_packed_weights_size(c, dim) * es;
  Dev art(dir + "/art.bin", act), pv(dir + "/pv.bin", act), wa(dir + "/wa.bin", wts), wp(dir + "/wp.bin", wts);
  Dev oa(act, 0xff), op(act, 0xff);
  const size_t ws_bytes = cmam_workspace_size(dtype, b, c, h, w, dim, heads);
  // ws_off: the workspace handed over that many bytes into its buffer (a caller's unaligned scratch pointer).
  const size_t ws_off = a[8] != nullptr ? static_cast<size_t>(arg_int(a, 8)) : 0;
  Dev ws(ws_bytes + ws_off, 0xff);  // poisoned: split-K must zero its sums
  const uint64_t launches = cmir_emu::launch_count(), memsets = cmir_emu::memset_count();
  const cudaError_t e = launch_cmam(nullptr, dtype, art.p, pv.p, wa.p, wp.p, oa.p, op.p,
                                    static_cast<char*>(ws.p) + ws_off, ws_bytes, b, c, h, w, dim, heads, eps);
  if (e != cudaSuccess) return report(e);
  // What the launcher enqueued (one graph-capturable sequence): tests check the count and the kernels' shapes.
  std::printf("launches=%llu memsets=%llu\n", static_cast<unsigned long long>(cmir_emu::launch_count() - launches),
              static_cast<unsigned long long>(cmir_emu::memset_count() - memsets));
  unsigned long long sh[5];
  for (uint64_t i = launches; cmir_emu::launch_shape(i, sh); ++i) {
    std::printf("launch %llu: grid=%llu,%llu,%llu threads=%llu smem=%llu\n",
                static_cast<unsigned long long>(i - launches), sh[0], sh[1], sh[2], sh[3], sh[4]);
  }
  oa.save(dir + "/art_out.bin");
  op.save(dir + "/pv_out.bin");
  return 0;
}

// What a launcher enqueued (one graph-capturable sequence): the tests check the counts.
void print_counts(uint64_t launches, uint64_t memsets) {
  std::printf("launches=%llu memsets=%llu\n", static_cast<unsigned long long>(cmir_emu::launch_count() - launches),
              static_cast<unsigned long long>(cmir_emu::memset_count() - memsets));
}

// A split-K workspace as a caller keeps it: its counters zeroed once, its partials poisoned (0xff: NaN), so a last
// block reading anything this launch's splits did not store shows.
struct SplitWs {
  Dev buf;
  size_t counter_bytes;
  explicit SplitWs(size_t bytes) : buf(bytes, 0xff), counter_bytes(std::min(bytes, kPointwiseWorkspaceZeroBytes)) {
    if (counter_bytes > 0 && cudaMemset(buf.p, 0, counter_bytes) != cudaSuccess) die("cudaMemset failed");
  }
  int counters_zero() const {  // every launch must leave them zero
    std::vector<unsigned char> c(counter_bytes);
    if (counter_bytes > 0 && cudaMemcpy(c.data(), buf.p, counter_bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
      die("cudaMemcpy");
    }
    return std::all_of(c.begin(), c.end(), [](unsigned char v) { return v == 0; }) ? 1 : 0;
  }
};

int run_pointwise(const std::string& dir, char** a, bool with_shortcut) {
  const auto dtype = static_cast<CmirDType>(arg_int(a, 0));
  const int b = arg_int(a, 1), cin = arg_int(a, 2), cout = arg_int(a, 3), h = arg_int(a, 4), w = arg_int(a, 5),
            relu = arg_int(a, 6), use_ws = arg_int(a, 7);
  // A projection shortcut (argc 15): w is then [Cout, Cin + Cs].
  const bool has_sc = with_shortcut;
  PointwiseShortcut sc{nullptr, has_sc ? arg_int(a, 8) : 0, has_sc ? arg_int(a, 9) : 0, has_sc ? arg_int(a, 10) : 0,
                       has_sc ? arg_int(a, 11) : 1};
  const int k_total = cin + sc.channels;
  if (pointwise_conv_unsupported(b, cin, cout, h, w) != nullptr) {
    // Sizes the launcher must refuse: small distinct non-null buffers (never read), so that only the sizes can be
    // the reason for the refusal.
    Dev x(16), wt(16), bias(16), y(16);
    const uint64_t launches = cmir_emu::launch_count();
    if (pointwise_conv_workspace_size(b, cin, cout, h, w) != 0) die("workspace size for refused sizes");
    const cudaError_t e = launch_pointwise_conv(nullptr, dtype, x.p, wt.p, bias.p, nullptr, y.p, nullptr, 0, b, cin,
                                                cout, h, w, relu, nullptr);
    if (cmir_emu::launch_count() != launches) die("a refused launch ran a kernel");
    return e == cudaSuccess ? 0 : report(e);
  }
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t pix = static_cast<size_t>(b) * h * w;
  Dev x(dir + "/x.bin", pix * cin * es), wt(dir + "/w.bin", static_cast<size_t>(cout) * k_total * es),
      bias(dir + "/bias.bin", static_cast<size_t>(cout) * es);
  const bool has_res = exists(dir + "/residual.bin");
  Dev res(has_res ? dir + "/residual.bin" : "/dev/null", has_res ? pix * cout * es : 0);
  Dev shortcut(has_sc ? dir + "/shortcut.bin" : "/dev/null",
               has_sc ? static_cast<size_t>(b) * sc.channels * sc.height * sc.width * es : 0);
  sc.x = shortcut.p;
  Dev y(pix * cout * es, 0xff);
  // ws = 2: room for the counters and one partial float only (a split plan must be refused, launching nothing).
  const size_t ws_need = use_ws ? pointwise_conv_workspace_size(b, k_total, cout, h, w) : 0;
  const size_t ws_bytes = use_ws == 2 && ws_need > 0 ? kPointwiseWorkspaceZeroBytes + 4 : ws_need;
  const SplitWs ws(ws_bytes);
  const uint64_t launches = cmir_emu::launch_count(), memsets = cmir_emu::memset_count();
  auto launch = [&] {
    return launch_pointwise_conv(nullptr, dtype, x.p, wt.p, bias.p, has_res ? res.p : nullptr, y.p,
                                 use_ws ? ws.buf.p : nullptr, ws_bytes, b, cin, cout, h, w, relu,
                                 has_sc ? &sc : nullptr);
  };
  cudaError_t e = launch();
  if (e != cudaSuccess) {
    if (cmir_emu::launch_count() != launches) die("a refused launch ran a kernel");
    return report(e);
  }
  print_counts(launches, memsets);
  y.save(dir + "/y.bin");
  if (use_ws) {
    const int zero1 = ws.counters_zero();
    std::vector<char> first(y.n);
    if (y.n > 0 && cudaMemcpy(first.data(), y.p, y.n, cudaMemcpyDeviceToHost) != cudaSuccess) die("cudaMemcpy");
    if (cudaMemset(y.p, 0xff, y.n) != cudaSuccess) die("cudaMemset failed");
    e = launch();
    if (e != cudaSuccess) return report(e);
    std::vector<char> second(y.n);
    if (y.n > 0 && cudaMemcpy(second.data(), y.p, y.n, cudaMemcpyDeviceToHost) != cudaSuccess) die("cudaMemcpy");
    std::printf("workspace=%zu counters_zero=%d,%d repeat_identical=%d\n", ws_bytes, zero1, ws.counters_zero(),
                first == second ? 1 : 0);
  }
  return 0;
}

// ws = 1: a split-K workspace (SplitWs); the counters must be zero again after the launch.
int run_conv2d(const std::string& dir, char** a) {
  const auto dtype = static_cast<CmirDType>(arg_int(a, 0));
  const int b = arg_int(a, 1), cin = arg_int(a, 2), cout = arg_int(a, 3), h = arg_int(a, 4), w = arg_int(a, 5),
            kh = arg_int(a, 6), kw = arg_int(a, 7), stride = arg_int(a, 8), pad = arg_int(a, 9), relu = arg_int(a, 10),
            use_ws = arg_int(a, 11);
  if (conv2d_unsupported(b, cin, cout, h, w, kh, kw, stride, pad) != nullptr) {
    Dev x(16), wt(16), bias(16), y(16);  // distinct non-null buffers: only the sizes can be refused
    const uint64_t launches = cmir_emu::launch_count();
    if (conv2d_workspace_size(b, cin, cout, h, w, kh, kw, stride, pad) != 0) die("workspace size for refused sizes");
    const cudaError_t e = launch_conv2d(nullptr, dtype, x.p, wt.p, bias.p, nullptr, y.p, nullptr, 0, b, cin, cout, h,
                                        w, kh, kw, stride, pad, relu);
    if (cmir_emu::launch_count() != launches) die("a refused launch ran a kernel");
    return e == cudaSuccess ? 0 : report(e);
  }
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t out_pix = static_cast<size_t>(b) * conv2d_output_size(h, kh, stride, pad) *
                         conv2d_output_size(w, kw, stride, pad);
  Dev x(dir + "/x.bin", static_cast<size_t>(b) * cin * h * w * es),
      wt(dir + "/w.bin", static_cast<size_t>(cout) * cin * kh * kw * es),
      bias(dir + "/bias.bin", static_cast<size_t>(cout) * es);
  const bool has_res = exists(dir + "/residual.bin");
  Dev res(has_res ? dir + "/residual.bin" : "/dev/null", has_res ? out_pix * cout * es : 0);
  Dev y(out_pix * cout * es, 0xff);
  const size_t ws_bytes = use_ws ? conv2d_workspace_size(b, cin, cout, h, w, kh, kw, stride, pad) : 0;
  const SplitWs ws(ws_bytes);
  const uint64_t launches = cmir_emu::launch_count(), memsets = cmir_emu::memset_count();
  const cudaError_t e = launch_conv2d(nullptr, dtype, x.p, wt.p, bias.p, has_res ? res.p : nullptr, y.p,
                                      use_ws ? ws.buf.p : nullptr, ws_bytes, b, cin, cout, h, w, kh, kw, stride, pad,
                                      relu);
  if (e != cudaSuccess) return report(e);
  print_counts(launches, memsets);
  std::printf("workspace=%zu counters_zero=%d\n", ws_bytes, ws.counters_zero());
  y.save(dir + "/y.bin");
  return 0;
}

// The workspace starts as 0xff bytes (NaN partials): the second launch must read only what the first wrote.
int run_sa(const std::string& dir, char** a) {
  const auto dtype = static_cast<CmirDType>(arg_int(a, 0));
  const int b = arg_int(a, 1), ca = arg_int(a, 2), cp = arg_int(a, 3), h = arg_int(a, 4), w = arg_int(a, 5),
            k = arg_int(a, 6);
  if (spatial_attention_unsupported(b, ca, cp, h, w, k) != nullptr) {
    Dev x(16), y(16), att(16), wt(16), bias(16), ws(64);  // distinct non-null buffers: only the sizes are refused
    const uint64_t launches = cmir_emu::launch_count();
    const cudaError_t e = launch_spatial_attention(nullptr, dtype, x.p, cp > 0 ? x.p : nullptr,
                                                   static_cast<const float*>(wt.p), static_cast<const float*>(bias.p),
                                                   y.p, cp > 0 ? y.p : nullptr, att.p, static_cast<float*>(ws.p), 64,
                                                   b, ca, cp, h, w, k);
    if (cmir_emu::launch_count() != launches) die("a refused launch ran a kernel");
    return e == cudaSuccess ? 0 : report(e);
  }
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t hw = static_cast<size_t>(h) * w;
  Dev xa(dir + "/a.bin", static_cast<size_t>(b) * ca * hw * es);
  Dev xp(cp > 0 ? dir + "/p.bin" : "/dev/null", static_cast<size_t>(b) * cp * hw * es);
  Dev wt(dir + "/w.bin", sizeof(float) * 2 * k * k), bias(dir + "/bias.bin", sizeof(float));
  Dev ya(static_cast<size_t>(b) * ca * hw * es, 0xff), yp(static_cast<size_t>(b) * cp * hw * es, 0xff),
      att(static_cast<size_t>(b) * hw * es, 0xff);
  const size_t ws_bytes = spatial_attention_workspace_size(b, ca, cp, h, w);
  Dev ws(ws_bytes, 0xff);
  const uint64_t launches = cmir_emu::launch_count(), memsets = cmir_emu::memset_count();
  const cudaError_t e = launch_spatial_attention(nullptr, dtype, xa.p, cp > 0 ? xp.p : nullptr,
                                                 static_cast<const float*>(wt.p), static_cast<const float*>(bias.p),
                                                 ya.p, cp > 0 ? yp.p : nullptr, att.p, static_cast<float*>(ws.p),
                                                 ws_bytes, b, ca, cp, h, w, k);
  if (e != cudaSuccess) return report(e);
  print_counts(launches, memsets);
  ya.save(dir + "/ya.bin");
  if (cp > 0) yp.save(dir + "/yp.bin");
  att.save(dir + "/att.bin");
  return 0;
}

int run_convert(const std::string& dir, const std::string& mode) {
  std::FILE* f = std::fopen((dir + "/in.bin").c_str(), "rb");
  if (f == nullptr) die("cannot open in.bin");
  std::vector<unsigned char> in;
  int ch;
  while ((ch = std::fgetc(f)) != EOF) in.push_back(static_cast<unsigned char>(ch));
  std::fclose(f);
  std::vector<unsigned char> out;
  auto put = [&out](const void* p, size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    out.insert(out.end(), c, c + n);
  };
  if (mode == "f2h" || mode == "f2bf") {
    for (size_t i = 0; i + 4 <= in.size(); i += 4) {
      float v;
      std::memcpy(&v, &in[i], 4);
      const unsigned short bits = mode == "f2h" ? __half_as_ushort(__float2half_rn(v))
                                                : __bfloat16_as_ushort(__float2bfloat16_rn(v));
      put(&bits, 2);
    }
  } else if (mode == "h2f" || mode == "bf2f") {
    for (size_t i = 0; i + 2 <= in.size(); i += 2) {
      unsigned short bits;
      std::memcpy(&bits, &in[i], 2);
      const float v = mode == "h2f" ? __half2float(__ushort_as_half(bits)) : __bfloat162float(__ushort_as_bfloat16(bits));
      put(&v, 4);
    }
  } else {
    die("unknown conversion " + mode);
  }
  write_file(dir + "/out.bin", out.data(), out.size());
  return 0;
}

}  // namespace

int selftest(const std::string& name);  // emu_selftest.cpp

int main(int argc, char** argv) {
  if (argc < 3) {
    die("usage: cmir_cuda_emu_driver involution|fused|cmam|pointwise|conv2d|sa|convert DIR ... | selftest NAME");
  }
  const std::string op = argv[1];
  if (op == "selftest") return selftest(argv[2]);
  const std::string dir = argv[2];
  if (op == "involution" && argc == 12) return run_involution(dir, argv + 3, false);
  if (op == "fused" && argc == 13) return run_involution(dir, argv + 3, true);
  if (op == "cmam" && (argc == 11 || argc == 12)) return run_cmam(dir, argv + 3);
  if (op == "pointwise" && (argc == 11 || argc == 15)) return run_pointwise(dir, argv + 3, argc == 15);
  if (op == "conv2d" && argc == 15) return run_conv2d(dir, argv + 3);
  if (op == "sa" && argc == 10) return run_sa(dir, argv + 3);
  if (op == "convert" && argc == 4) return run_convert(dir, argv[3]);
  die("bad arguments for " + op);
}
