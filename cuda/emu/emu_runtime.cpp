// cmir_emu runtime: fibers for the threads of a block, the barrier/warp scheduler, launch checks with the limits of
// an H100/H200 (sm_90), and the runtime calls the launchers and the test harnesses make. Host memory stands in for
// device memory (so AddressSanitizer sees every out-of-bounds access); streams run synchronously.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cmir_emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CMIR_EMU_ASAN 1
#endif

namespace cmir_emu {

uint3 g_thread_idx{0, 0, 0};
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim{1, 1, 1};
dim3 g_grid_dim{1, 1, 1};

namespace {

// ---------------------------------------------------------------- device model (H100/H200, sm_90)
constexpr int kSms = 132;  // CMIR_EMU_SMS overrides it: launchers plan work by SM count (e.g. split-K, channel
                           // splits), and a small count takes the other branch of each plan with small test shapes

int sm_count() {
  const char* v = std::getenv("CMIR_EMU_SMS");
  const int n = v != nullptr ? std::atoi(v) : kSms;
  return n >= 1 && n <= 1024 ? n : kSms;
}
// Blocks a cooperative launch may have: one per SM (the emulator cannot count registers, so it allows only what
// every kernel gets; the launchers plan their cooperative grids to that bound). CMIR_EMU_COOP_BLOCKS lowers it, as a
// GPU shared with other work (MPS, green contexts) would, to test the launchers' fallbacks.
int coop_capacity() {
  const char* v = std::getenv("CMIR_EMU_COOP_BLOCKS");
  const int n = v != nullptr ? std::atoi(v) : 0;
  return n >= 1 && n < sm_count() ? n : sm_count();
}
constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned kMaxGridDim[3] = {2147483647u, 65535u, 65535u};
constexpr size_t kSmemPerBlock = 48 * 1024;           // without opt-in
constexpr size_t kSmemPerBlockOptin = 227 * 1024;     // cudaFuncAttributeMaxDynamicSharedMemorySize ceiling
constexpr size_t kSmemPerSm = 228 * 1024;
constexpr size_t kFiberStack = 256 * 1024;

cudaError_t g_last_error = cudaSuccess;

// As CUDA's runtime: the last error of any call, returned and cleared by cudaGetLastError.
void set_error(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
}

// ---------------------------------------------------------------- fibers
// A context switch saves the callee-saved registers on the old stack and resumes the new one. On x86-64 a few
// instructions do it (swapcontext would add a signal-mask system call to each of the millions of switches a test
// makes); elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void cmir_emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.globl cmir_emu_switch
.hidden cmir_emu_switch
.type cmir_emu_switch,@function
cmir_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size cmir_emu_switch, .-cmir_emu_switch
.section .note.GNU-stack,"",@progbits
.text
)");
struct Context {
  void* sp = nullptr;
};
#else
struct Context {
  ucontext_t uc{};
};
#endif

enum class State { kRunnable, kBarrier, kGrid, kWarp, kDone };  // kGrid: waits in a grid-wide barrier

struct AsyncCopy {
  unsigned char* dst;
  unsigned char bytes[16];
  int n;
};

struct Fiber {
  Context ctx{};
  char* stack = nullptr;  // usable stack (a guard page below it)
  State state = State::kDone;
  uint3 tid{0, 0, 0};
  int linear = 0;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  // cp.async: copies read their source at issue and land in shared memory when a wait covers their group.
  std::vector<AsyncCopy> async_open;                 // issued, not yet committed
  std::vector<std::vector<AsyncCopy>> async_groups;  // committed, oldest first
};

struct Warp {
  int arrived = 0;
  unsigned mask = 0;
  Collective kind = Collective::kSync;
  uint64_t gen = 0;
  uint64_t values[2][32] = {};
  std::vector<int> waiting;
};

struct Scheduler {
  Scheduler() = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;
  ~Scheduler() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (Fiber* f : pool) {
      munmap(f->stack - page, kFiberStack + page);
      delete f;
    }
  }
  std::vector<Fiber*> pool;  // grows to the largest block (cooperative: the whole grid); stacks reused by every launch
  Fiber* const* block_fibers = nullptr;  // the running block's threads (warp collectives wake lanes through it)
  bool cooperative = false;              // the launch may use grid_barrier (all its blocks resident at once)
  Context main_ctx{};
  Fiber* current = nullptr;
  int nthreads = 0;
  std::vector<Warp> warps;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  std::string order = "reverse";
  void* dyn_smem = nullptr;
  size_t dyn_smem_bytes = 0;
  const char* static_begin = nullptr;  // the launching module's static shared memory
  const char* static_end = nullptr;
  std::mt19937_64 rng{0};
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
};

Scheduler& sched() {
  static Scheduler s;
  return s;
}

// Switch stacks, telling AddressSanitizer which stack is live (else it reports false stack overflows).
void raw_switch(Context* from, Context* to) {
#if defined(__x86_64__)
  cmir_emu_switch(&from->sp, to->sp);
#else
  swapcontext(&from->uc, &to->uc);
#endif
}

void switch_context(Context* from, Context* to, const void* to_bottom, size_t to_size, bool from_exits) {
#if defined(CMIR_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(from_exits ? nullptr : &fake, to_bottom, to_size);
  raw_switch(from, to);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)to_bottom;
  (void)to_size;
  (void)from_exits;
  raw_switch(from, to);
#endif
}

// Back from the current fiber to the scheduler (the fiber resumes here when scheduled again).
void yield_to_scheduler() {
  Scheduler& s = sched();
  Fiber* f = s.current;
  switch_context(&f->ctx, &s.main_ctx, s.main_stack_bottom, s.main_stack_size, false);
}

void fiber_entry() {
  Scheduler& s = sched();
#if defined(CMIR_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &s.main_stack_bottom, &s.main_stack_size);
#endif
  for (;;) {  // one iteration per block this fiber runs a thread of
    s.body(s.body_ctx);
    s.current->state = State::kDone;
    yield_to_scheduler();
  }
}

Fiber* make_fiber() {
  auto* f = new Fiber();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* mem = mmap(nullptr, kFiberStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) fatal("cannot allocate a fiber stack");
  mprotect(mem, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting memory
  f->stack = static_cast<char*>(mem) + page;
#if defined(__x86_64__)
  // The first switch to the fiber "returns" into fiber_entry with the stack aligned as after a call.
  auto* top = reinterpret_cast<uint64_t*>(f->stack + kFiberStack);
  top[-1] = 0;                                           // fiber_entry's return address (it never returns)
  top[-2] = reinterpret_cast<uint64_t>(&fiber_entry);    // popped by `ret`
  for (int i = 3; i <= 8; ++i) top[-i] = 0;              // rbp rbx r12 r13 r14 r15
  top[-9] = 0x1f80u | (uint64_t{0x037fu} << 32);         // default MXCSR and x87 control word
  f->ctx.sp = &top[-9];
#else
  getcontext(&f->ctx.uc);
  f->ctx.uc.uc_stack.ss_sp = f->stack;
  f->ctx.uc.uc_stack.ss_size = kFiberStack;
  f->ctx.uc.uc_link = nullptr;
  makecontext(&f->ctx.uc, fiber_entry, 0);
#endif
  return f;
}

void resume(Fiber* f) {
  Scheduler& s = sched();
  s.current = f;
  g_thread_idx = f->tid;
  switch_context(&s.main_ctx, &f->ctx, f->stack, kFiberStack, false);
  s.current = nullptr;
}

// Order in which warps, and the lanes of a warp, take their turns: reverse index order by default (a thread reading
// a neighbour's slot before the barrier finds it not yet written), forward, or shuffled.
void run_order(std::vector<int>& order, int n) {
  Scheduler& s = sched();
  order.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  if (s.order == "reverse") {
    std::reverse(order.begin(), order.end());
  } else if (s.order == "random") {
    std::shuffle(order.begin(), order.end(), s.rng);
  }
}

std::string thread_str(const Fiber* f) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", g_block_idx.x, g_block_idx.y, g_block_idx.z,
                f->tid.x, f->tid.y, f->tid.z);
  return buf;
}

// Makes the n threads of a block runnable, without cp.async copies (copies a thread never waited for die with its
// block).
void start_block(Fiber* const* fibers, int n) {
  for (int i = 0; i < n; ++i) {
    fibers[i]->state = State::kRunnable;
    fibers[i]->async_open.clear();
    fibers[i]->async_groups.clear();
  }
}

// Runs the threads of the current block (s.block_fibers) until all have exited (true) or all live ones wait in a
// grid barrier (false: a cooperative launch resumes them once every block has arrived).
bool run_block() {
  Scheduler& s = sched();
  Fiber* const* fibers = s.block_fibers;
  const int n = s.nthreads;
  for (auto& w : s.warps) w = Warp{};  // no collective is pending when a block starts or resumes
  int live = 0;
  for (int i = 0; i < n; ++i) live += fibers[i]->state != State::kDone;
  const int nwarps = (n + 31) / 32;
  std::vector<int> warp_order, lane_order;
  while (live > 0) {
    // One warp at a time runs to its next __syncthreads (or its end), the warps and, within a warp, the lanes in
    // the adversarial order: a warp that races ahead rewrites shared memory other warps have not read yet, and a
    // lane reads what its neighbours have not written yet, wherever a barrier is missing.
    run_order(warp_order, nwarps);
    bool ran = false;
    for (int w : warp_order) {
      const int lanes = std::min(32, n - w * 32);
      for (bool progressed = true; progressed;) {
        progressed = false;
        run_order(lane_order, lanes);
        for (int l : lane_order) {
          Fiber* f = fibers[w * 32 + l];
          if (f->state != State::kRunnable) continue;
          resume(f);
          ran = progressed = true;
          if (f->state == State::kDone) --live;
        }
      }
    }
    if (ran || live == 0) continue;
    // Nobody can run: every live thread waits. A block barrier completes when all of them wait at the same one; a
    // grid barrier parks the block.
    const Fiber* first = nullptr;
    for (int i = 0; i < n; ++i) {
      const Fiber* f = fibers[i];
      if (f->state == State::kDone) continue;
      if (f->state == State::kWarp) {
        fatal(("deadlock: " + thread_str(f) + " waits in a warp collective for lanes that never arrive (exited, "
               "or waiting at a __syncthreads)").c_str());
      }
      if (first == nullptr) {
        first = f;
      } else if (f->barrier_line != first->barrier_line || std::strcmp(f->barrier_file, first->barrier_file) != 0) {
        fatal(("barrier divergence: " + thread_str(first) + " waits at " + first->barrier_file + ":" +
               std::to_string(first->barrier_line) + ", " + thread_str(f) + " at " + f->barrier_file + ":" +
               std::to_string(f->barrier_line))
                  .c_str());
      }
    }
    if (live != n) {
      for (int i = 0; i < n; ++i) {
        if (fibers[i]->state == State::kDone) {
          fatal(((first->state == State::kGrid ? "grid barrier at " : "__syncthreads at ") +
                 std::string(first->barrier_file) + ":" + std::to_string(first->barrier_line) + " waits for " +
                 thread_str(fibers[i]) + ", which has exited")
                    .c_str());
        }
      }
    }
    if (first->state == State::kGrid) return false;
    for (int i = 0; i < n; ++i) {
      if (fibers[i]->state == State::kBarrier) fibers[i]->state = State::kRunnable;
    }
  }
  return true;
}

struct FuncAttrs {
  int max_dynamic_smem = static_cast<int>(kSmemPerBlock);
};

std::map<const void*, FuncAttrs>& func_attrs() {
  static std::map<const void*, FuncAttrs> m;
  return m;
}

cudaError_t check_launch(const LaunchSpec& spec) {
  const unsigned b[3] = {spec.block.x, spec.block.y, spec.block.z};
  const unsigned g[3] = {spec.grid.x, spec.grid.y, spec.grid.z};
  for (int i = 0; i < 3; ++i) {
    if (b[i] < 1 || b[i] > kMaxBlockDim[i] || g[i] < 1 || g[i] > kMaxGridDim[i]) {
      return cudaErrorInvalidConfiguration;
    }
  }
  if (static_cast<uint64_t>(b[0]) * b[1] * b[2] > static_cast<uint64_t>(kMaxThreadsPerBlock)) {
    return cudaErrorInvalidConfiguration;
  }
  const auto it = func_attrs().find(spec.func);
  const size_t limit = it == func_attrs().end() ? kSmemPerBlock : static_cast<size_t>(it->second.max_dynamic_smem);
  if (spec.dynamic_smem > limit) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace

void fatal(const char* what) {
  std::fprintf(stderr, "cmir_emu: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

int lane_id() {
  const Scheduler& s = sched();
  return s.current->linear % 32;
}

void block_barrier(const char* file, int line) {
  Scheduler& s = sched();
  Fiber* f = s.current;
  if (f == nullptr) fatal("__syncthreads() outside a kernel");
  f->state = State::kBarrier;
  f->barrier_file = file;
  f->barrier_line = line;
  yield_to_scheduler();
}

void grid_barrier(const char* file, int line) {
  Scheduler& s = sched();
  Fiber* f = s.current;
  if (f == nullptr) fatal("grid barrier outside a kernel");
  if (!s.cooperative) {
    fatal("grid barrier in a kernel not launched cooperatively (on the GPU: undefined, a hang when blocks wait for "
          "blocks that are not resident)");
  }
  f->state = State::kGrid;
  f->barrier_file = file;
  f->barrier_line = line;
  yield_to_scheduler();
}

const uint64_t* warp_collective(unsigned mask, uint64_t value, Collective kind) {
  Scheduler& s = sched();
  Fiber* f = s.current;
  if (f == nullptr) fatal("warp intrinsic outside a kernel");
  const int w = f->linear / 32, lane = f->linear % 32;
  Warp& warp = s.warps[static_cast<size_t>(w)];
  // Lanes of the mask that exist in this block (a partial last warp has fewer).
  const int lanes_here = std::min(32, s.nthreads - w * 32);
  const unsigned present = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1u);
  if ((mask & ~present) != 0) fatal("warp intrinsic with a mask naming lanes that do not exist in the block");
  if (warp.arrived == 0) {
    warp.mask = mask;
    warp.kind = kind;
  } else if (warp.mask != mask || warp.kind != kind) {
    fatal(("warp divergence: " + thread_str(f) + " joins a different warp intrinsic (mask or kind) than its "
           "lanes already waiting")
              .c_str());
  }
  const uint64_t gen = warp.gen;
  warp.values[gen % 2][lane] = value;
  ++warp.arrived;
  if (warp.arrived == __builtin_popcount(mask)) {
    for (int other : warp.waiting) s.block_fibers[other]->state = State::kRunnable;
    warp.waiting.clear();
    warp.arrived = 0;
    ++warp.gen;
  } else {
    f->state = State::kWarp;
    warp.waiting.push_back(f->linear);
    yield_to_scheduler();
    g_thread_idx = f->tid;
  }
  return warp.values[gen % 2];
}

void* dynamic_smem() {
  const Scheduler& s = sched();
  if (s.current == nullptr) fatal("dynamic shared memory used outside a kernel");
  return s.dyn_smem;
}

namespace {

bool in_shared(const void* p, size_t n) {
  const Scheduler& s = sched();
  const auto* c = static_cast<const char*>(p);
  const auto* d = static_cast<const char*>(s.dyn_smem);
  if (d != nullptr && c >= d && c + n <= d + s.dyn_smem_bytes) return true;
  return s.static_begin != nullptr && c >= s.static_begin && c + n <= s.static_end;
}

void land(const std::vector<AsyncCopy>& group) {
  for (const AsyncCopy& c : group) std::memcpy(c.dst, c.bytes, static_cast<size_t>(c.n));
}

}  // namespace

void async_copy(void* dst_shared, const void* src_global, size_t bytes, size_t zfill) {
  Scheduler& s = sched();
  if (s.current == nullptr) fatal("cp.async outside a kernel");
  if (bytes != 4 && bytes != 8 && bytes != 16) fatal("cp.async size must be 4, 8 or 16 bytes");
  if (zfill > bytes) fatal("cp.async zero-fill larger than the copy");
  if (reinterpret_cast<uintptr_t>(dst_shared) % bytes != 0 || reinterpret_cast<uintptr_t>(src_global) % bytes != 0) {
    fatal("cp.async addresses must be aligned to the copy size (a misaligned address faults on the GPU)");
  }
  if (!in_shared(dst_shared, bytes)) fatal("cp.async destination is not inside the block's shared memory");
  AsyncCopy c{static_cast<unsigned char*>(dst_shared), {}, static_cast<int>(bytes)};
  std::memcpy(c.bytes, src_global, bytes - zfill);  // the global read happens now (ASan checks it here)
  s.current->async_open.push_back(c);
}

void async_commit() {
  Scheduler& s = sched();
  if (s.current == nullptr) fatal("cp.async commit outside a kernel");
  s.current->async_groups.push_back(std::move(s.current->async_open));
  s.current->async_open.clear();
}

void async_wait_prior(size_t pending) {
  Scheduler& s = sched();
  if (s.current == nullptr) fatal("cp.async wait outside a kernel");
  auto& groups = s.current->async_groups;
  while (groups.size() > pending) {
    land(groups.front());
    groups.erase(groups.begin());
  }
}

uint64_t g_launches = 0;
uint64_t g_memsets = 0;
std::vector<std::array<unsigned long long, 5>> g_shapes;  // one per launch: grid x, y, z, threads, dynamic smem
uint64_t launch_count() { return g_launches; }
uint64_t memset_count() { return g_memsets; }
bool launch_shape(uint64_t i, unsigned long long (&shape)[5]) {
  if (i >= g_shapes.size()) return false;
  for (int j = 0; j < 5; ++j) shape[j] = g_shapes[i][static_cast<size_t>(j)];
  return true;
}

cudaError_t run_kernel(LaunchSpec* spec, void (*body)(void*), void* ctx) {
  ++g_launches;
  g_shapes.push_back({spec->grid.x, spec->grid.y, spec->grid.z,
                      static_cast<unsigned long long>(spec->block.x) * spec->block.y * spec->block.z,
                      static_cast<unsigned long long>(spec->dynamic_smem)});
  const cudaError_t bad = check_launch(*spec);
  if (bad != cudaSuccess) {
    set_error(bad);
    return bad;
  }
  Scheduler& s = sched();
  if (s.body != nullptr) fatal("kernel launched from inside a kernel (dynamic parallelism is not emulated)");
  if (const char* o = std::getenv("CMIR_EMU_ORDER")) s.order = o;
  if (s.order != "reverse" && s.order != "forward" && s.order != "random") {
    fatal("CMIR_EMU_ORDER must be reverse, forward or random");
  }
  const char* seed = std::getenv("CMIR_EMU_SEED");
  s.rng.seed(seed != nullptr ? std::strtoull(seed, nullptr, 10) : 0);
  const int n = static_cast<int>(spec->block.x * spec->block.y * spec->block.z);
  const uint64_t nblocks = static_cast<uint64_t>(spec->grid.x) * spec->grid.y * spec->grid.z;
  if (spec->cooperative && nblocks > static_cast<uint64_t>(coop_capacity())) {
    set_error(cudaErrorCooperativeLaunchTooLarge);
    return cudaErrorCooperativeLaunchTooLarge;
  }
  // A cooperative launch keeps every block's threads (and shared memory) alive at once: blocks run one at a time up
  // to each grid barrier, then all resume.
  const uint64_t resident = spec->cooperative ? nblocks : 1;
  const size_t fibers_needed = static_cast<size_t>(resident) * static_cast<size_t>(n);
  while (s.pool.size() < fibers_needed) s.pool.push_back(make_fiber());
  s.nthreads = n;
  s.warps.assign(static_cast<size_t>((n + 31) / 32), Warp{});
  for (size_t j = 0; j < fibers_needed; ++j) {
    Fiber* f = s.pool[j];
    const unsigned i = static_cast<unsigned>(j % static_cast<size_t>(n));
    f->linear = static_cast<int>(i);
    f->tid = uint3{i % spec->block.x, (i / spec->block.x) % spec->block.y, i / (spec->block.x * spec->block.y)};
  }
  // Exactly the requested dynamic shared memory per resident block, so AddressSanitizer reports any access past it.
  // Each block's buffer 16-byte aligned; the bytes up to the next one poisoned (the whole tail: ASan tracks 8-byte
  // granules by their addressable prefix, so a single poisoned byte followed by addressable ones would not count).
  const size_t dyn_pitch = (spec->dynamic_smem + 1 + 15) / 16 * 16;
  std::vector<char> dyn(static_cast<size_t>(resident) * dyn_pitch);
  const size_t static_bytes = static_cast<size_t>(spec->static_smem_end - spec->static_smem_begin);
  // Static shared memory is one section per module: a parked block's copy is saved here while others run.
  std::vector<char> static_saved(spec->cooperative ? static_cast<size_t>(nblocks) * static_bytes : 0);
  s.dyn_smem_bytes = spec->dynamic_smem;
  s.static_begin = spec->static_smem_begin;
  s.static_end = spec->static_smem_end;
#if defined(CMIR_EMU_ASAN)
  for (uint64_t r = 0; r < resident; ++r) {
    ASAN_POISON_MEMORY_REGION(dyn.data() + r * dyn_pitch + spec->dynamic_smem, dyn_pitch - spec->dynamic_smem);
  }
#endif
  s.body = body;
  s.body_ctx = ctx;
  s.cooperative = spec->cooperative;
  g_block_dim = spec->block;
  g_grid_dim = spec->grid;
  // Blocks run one at a time; in random order mode, in a shuffled order (blocks must not depend on each other).
  std::vector<uint64_t> block_order;
  const bool shuffle_blocks = s.order == "random" && nblocks <= (uint64_t{1} << 24);
  if (shuffle_blocks) {
    block_order.resize(nblocks);
    for (uint64_t i = 0; i < nblocks; ++i) block_order[i] = i;
    std::shuffle(block_order.begin(), block_order.end(), s.rng);
  }
  // Block b's slot among the resident ones, and the switch to it (its index, threads, shared memory).
  auto enter = [&](uint64_t b) {
    const uint64_t slot = spec->cooperative ? b : 0;
    g_block_idx = uint3{static_cast<unsigned>(b % spec->grid.x), static_cast<unsigned>((b / spec->grid.x) % spec->grid.y),
                        static_cast<unsigned>(b / (static_cast<uint64_t>(spec->grid.x) * spec->grid.y))};
    s.block_fibers = s.pool.data() + slot * static_cast<uint64_t>(n);
    s.dyn_smem = spec->dynamic_smem > 0 ? dyn.data() + slot * dyn_pitch : nullptr;
    return slot;
  };
  std::vector<char> finished(static_cast<size_t>(resident), 0);
  for (bool first_round = true;; first_round = false) {
    for (uint64_t i = 0; i < nblocks; ++i) {
      const uint64_t b = shuffle_blocks ? block_order[i] : (s.order == "reverse" ? nblocks - 1 - i : i);
      const uint64_t slot = enter(b);
      if (spec->cooperative && finished[slot] != 0) continue;
      char* saved = spec->cooperative ? static_saved.data() + b * static_bytes : nullptr;
      if (first_round) {
        // Shared memory starts undefined: poison it with 0xff bytes (NaN as fp32/fp16/bf16).
        if (spec->dynamic_smem > 0) std::memset(s.dyn_smem, 0xff, spec->dynamic_smem);
        if (static_bytes > 0 && spec->static_smem_begin != nullptr) std::memset(spec->static_smem_begin, 0xff, static_bytes);
        start_block(s.block_fibers, n);
      } else if (saved != nullptr && static_bytes > 0) {
        std::memcpy(spec->static_smem_begin, saved, static_bytes);
      }
      finished[slot] = run_block() ? 1 : 0;
      if (saved != nullptr && static_bytes > 0) std::memcpy(saved, spec->static_smem_begin, static_bytes);
    }
    if (!spec->cooperative) break;
    // Every block either exited or waits in a grid barrier: all must wait (a block that exited never arrives: on
    // the GPU the others hang), then all resume.
    uint64_t done = 0;
    for (char f : finished) done += static_cast<uint64_t>(f);
    if (done == nblocks) break;
    if (done != 0) {
      fatal("grid barrier: some blocks of the cooperative launch exited without arriving (on the GPU the others "
            "would wait forever)");
    }
    for (size_t j = 0; j < fibers_needed; ++j) {
      if (s.pool[j]->state == State::kGrid) s.pool[j]->state = State::kRunnable;
    }
  }
#if defined(CMIR_EMU_ASAN)
  for (uint64_t r = 0; r < resident; ++r) {
    ASAN_UNPOISON_MEMORY_REGION(dyn.data() + r * dyn_pitch + spec->dynamic_smem, dyn_pitch - spec->dynamic_smem);
  }
#endif
  s.block_fibers = nullptr;
  s.cooperative = false;
  s.body = nullptr;
  s.body_ctx = nullptr;
  s.dyn_smem = nullptr;
  return cudaSuccess;
}

}  // namespace cmir_emu

// ---------------------------------------------------------------- runtime API
using cmir_emu::set_error;

namespace {

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorUnknown: return "cudaErrorUnknown";
  }
  return "cudaErrorUnknown";
}

cudaError_t fail(cudaError_t e) {
  set_error(e);
  return e;
}

struct EmuStream {
  int magic = 0x5eed;
};

}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return fail(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return fail(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return fail(cudaErrorInvalidValue);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "cmir_emu (CPU emulation of an H200, sm_90)");
  prop->totalGlobalMem = size_t{141} << 30;
  prop->sharedMemPerBlock = cmir_emu::kSmemPerBlock;
  prop->sharedMemPerBlockOptin = cmir_emu::kSmemPerBlockOptin;
  prop->sharedMemPerMultiprocessor = cmir_emu::kSmemPerSm;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = cmir_emu::kMaxThreadsPerBlock;
  for (int i = 0; i < 3; ++i) {
    prop->maxThreadsDim[i] = static_cast<int>(cmir_emu::kMaxBlockDim[i]);
    prop->maxGridSize[i] = static_cast<int>(cmir_emu::kMaxGridDim[i]);
  }
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = cmir_emu::sm_count();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return fail(cudaErrorInvalidValue);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = cmir_emu::kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = static_cast<int>(cmir_emu::kMaxBlockDim[0]); break;
    case cudaDevAttrMaxBlockDimY: *value = static_cast<int>(cmir_emu::kMaxBlockDim[1]); break;
    case cudaDevAttrMaxBlockDimZ: *value = static_cast<int>(cmir_emu::kMaxBlockDim[2]); break;
    case cudaDevAttrMaxGridDimX: *value = static_cast<int>(cmir_emu::kMaxGridDim[0]); break;
    case cudaDevAttrMaxGridDimY: *value = static_cast<int>(cmir_emu::kMaxGridDim[1]); break;
    case cudaDevAttrMaxGridDimZ: *value = static_cast<int>(cmir_emu::kMaxGridDim[2]); break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(cmir_emu::kSmemPerBlock); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = cmir_emu::sm_count(); break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = static_cast<int>(cmir_emu::kSmemPerSm); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(cmir_emu::kSmemPerBlockOptin); break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return fail(cudaErrorInvalidValue);
  *version = 13000;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) { return cudaRuntimeGetVersion(version); }

cudaError_t cudaGetLastError() {
  const cudaError_t e = cmir_emu::g_last_error;
  cmir_emu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return cmir_emu::g_last_error; }

const char* cudaGetErrorName(cudaError_t err) { return error_name(err); }
const char* cudaGetErrorString(cudaError_t err) { return error_name(err); }

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (ptr == nullptr) return fail(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  // Exactly `bytes` (no rounding up), so AddressSanitizer catches a kernel reading one element past a buffer.
  void* p = std::malloc(bytes);
  if (p == nullptr) return fail(cudaErrorMemoryAllocation);
  std::memset(p, 0xa5, bytes);  // uninitialised device memory is garbage, not zeros
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return fail(cudaErrorInvalidValue);
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return fail(cudaErrorInvalidValue);
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  ++cmir_emu::g_memsets;
  if (bytes == 0) return cudaSuccess;
  if (ptr == nullptr) return fail(cudaErrorInvalidValue);
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) { return cudaMemset(ptr, value, bytes); }

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  if (stream == nullptr) return fail(cudaErrorInvalidValue);
  *stream = reinterpret_cast<cudaStream_t>(new EmuStream());
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<EmuStream*>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr) return fail(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > cmir_emu::kSmemPerBlockOptin) return fail(cudaErrorInvalidValue);
    cmir_emu::func_attrs()[func].max_dynamic_smem = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    return (value >= -1 && value <= 100) ? cudaSuccess : fail(cudaErrorInvalidValue);
  }
  return fail(cudaErrorInvalidValue);
}
