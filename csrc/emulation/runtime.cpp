// The emulated CUDA execution model (emulation.h): grid and block scheduling, fibers, barriers,
// warp collectives and the synccheck-style errors.
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "emulation.h"

#if defined(__SANITIZE_ADDRESS__)
#define CSFR_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CSFR_EMU_ASAN 1
#endif
#endif

#ifdef CSFR_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

// ---- context switching ---------------------------------------------------------------------------
// A fiber switch saves the callee-saved registers on the running stack and loads another stack
// pointer. On x86-64 that is a few instructions (swapcontext would also make a signal-mask system
// call per switch, which dominated the run time); elsewhere POSIX ucontext is used.
#if defined(__x86_64__)
extern "C" void csfr_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl csfr_emu_switch
  .type csfr_emu_switch, @function
csfr_emu_switch:
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
  .size csfr_emu_switch, .-csfr_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace {
struct Context {
  void* sp = nullptr;
};

// A fresh context that starts `entry` (which must never return) on the stack [base, base + size).
void make_context(Context& ctx, unsigned char* base, size_t size, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(base + size) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top - 16);  // `ret` pops entry: rsp = top - 8 at its start, as after a call
  slot[0] = reinterpret_cast<uint64_t>(entry);
  slot[1] = 0;
  uint64_t* frame = slot - 7;  // six callee-saved registers (zero) and the saved FP control words
  for (int r = 1; r < 7; ++r) frame[r] = 0;
  frame[0] = 0x1F80ull | (0x037Full << 32);  // default MXCSR, x87 control word
  ctx.sp = frame;
}

inline void switch_context(Context& save, Context& load) { csfr_emu_switch(&save.sp, load.sp); }
}  // namespace
#else
#include <ucontext.h>

namespace {
struct Context {
  ucontext_t uc;
};

void make_context(Context& ctx, unsigned char* base, size_t size, void (*entry)()) {
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = base;
  ctx.uc.uc_stack.ss_size = size;
  ctx.uc.uc_link = nullptr;
  makecontext(&ctx.uc, entry, 0);
}

inline void switch_context(Context& save, Context& load) { swapcontext(&save.uc, &load.uc); }
}  // namespace
#endif

namespace csfr {
namespace emu {
namespace {

enum class State { kRunnable, kBlockBarrier, kCollective, kExited };

struct Fiber {
  Context context;
  uint3 tid;
  int warp = 0, lane = 0;
  State state = State::kRunnable;
  int64_t barriers = 0;  // __syncthreads passed
  const char* site = nullptr;
  Collective op = Collective::kShfl;
  unsigned mask = 0;
  int arg = 0, width = kWarpSize;
  uint64_t payload = 0, result = 0;
#ifdef CSFR_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

// One block's fibers and the scheduler's context; lives for one launch.
struct Block {
  std::vector<Fiber> fibers;
  std::vector<std::vector<int>> warps;  // fiber index by warp and lane (-1 past the block's end)
  Context scheduler;
  Fiber* current = nullptr;
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  unsigned char* dynamic_smem = nullptr;
  const std::function<void()>* body = nullptr;
  std::string error;  // what a fiber threw; the scheduler rethrows it
#ifdef CSFR_EMU_ASAN
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

constexpr size_t kStackBytes = 256 * 1024;

thread_local Block* g_block = nullptr;  // the block running on this OS thread
thread_local cudaError_t g_last_error = cudaSuccess;
std::mutex g_launch_mutex;  // static __shared__ arrays are process-wide: one launch at a time
uint64_t g_seed = [] {
  const char* env = std::getenv("CSFR_EMULATION_SEED");
  return env ? std::strtoull(env, nullptr, 10) : 0;
}();
uint64_t g_launches = 0;
std::unordered_map<const void*, int> g_max_dynamic_smem;

// Fiber stacks, reused across launches (mapped lazily: untouched pages cost nothing).
struct Stacks {
  unsigned char* base = nullptr;
  size_t count = 0;
  unsigned char* get(size_t n) {
    if (n > count) {
      if (base) munmap(base, count * kStackBytes);
      void* p = mmap(nullptr, n * kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (p == MAP_FAILED) throw std::runtime_error("csfr CUDA emulation: cannot map fiber stacks");
      base = static_cast<unsigned char*>(p);
      count = n;
    }
    return base;
  }
} g_stacks;

std::string describe(const Block& blk, const Fiber& f) {
  std::ostringstream out;
  out << "thread (" << f.tid.x << "," << f.tid.y << "," << f.tid.z << ") [warp " << f.warp << " lane " << f.lane
      << "] of block (" << blk.block_idx.x << "," << blk.block_idx.y << "," << blk.block_idx.z << ")";
  return out.str();
}

const char* collective_name(Collective op) {
  switch (op) {
    case Collective::kShfl: return "__shfl_sync";
    case Collective::kShflXor: return "__shfl_xor_sync";
    case Collective::kBallot: return "__ballot_sync";
    case Collective::kAll: return "__all_sync";
    case Collective::kAny: return "__any_sync";
    case Collective::kSyncWarp: return "__syncwarp";
  }
  return "?";
}

// Fiber <-> scheduler switches, with AddressSanitizer told which stack is live (its fiber API).
void switch_to_scheduler(Block& blk, Fiber& f, bool exiting) {
#ifdef CSFR_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, blk.scheduler_stack, blk.scheduler_stack_size);
#else
  (void)exiting;
#endif
  switch_context(f.context, blk.scheduler);
#ifdef CSFR_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &blk.scheduler_stack, &blk.scheduler_stack_size);
#endif
}

void resume(Block& blk, Fiber& f, unsigned char* stack) {
  blk.current = &f;
#ifdef CSFR_EMU_ASAN
  void* save = nullptr;
  __sanitizer_start_switch_fiber(&save, stack, kStackBytes);
#else
  (void)stack;
#endif
  switch_context(blk.scheduler, f.context);
#ifdef CSFR_EMU_ASAN
  __sanitizer_finish_switch_fiber(save, nullptr, nullptr);
#endif
  blk.current = nullptr;
  if (!blk.error.empty()) throw SyncError(blk.error);
}

void fiber_entry() {
  Block& blk = *g_block;
  Fiber& f = *blk.current;
#ifdef CSFR_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &blk.scheduler_stack, &blk.scheduler_stack_size);
#endif
  try {
    (*blk.body)();
  } catch (const std::exception& e) {  // an exception cannot unwind past a fiber's first frame
    blk.error = e.what();
  }
  f.state = State::kExited;
  switch_to_scheduler(blk, f, true);
}

// Waits at a barrier: marks the state, yields, and returns once the scheduler released it.
void wait(State state) {
  Block& blk = *g_block;
  Fiber& f = *blk.current;
  f.state = state;
  switch_to_scheduler(blk, f, false);
}

std::string hex(unsigned v) {
  std::ostringstream o;
  o << "0x" << std::hex << v;
  return o.str();
}

// Scheduler bookkeeping: the runnable fibers of each warp, the warps that have any, live and barrier
// counts. Two seeded policies, chosen per block: interleave (each step a random runnable warp, a random
// lane of it) and run-ahead (one random warp runs until all its lanes wait at __syncthreads or exit,
// then another): run-ahead is what exposes a missing __syncthreads between warps.
struct Schedule {
  std::vector<std::vector<int>> lanes;  // runnable fibers per warp
  std::vector<int> active, position;    // warps with runnable lanes, and each warp's index in `active`
  int live = 0, at_barrier = 0, focus = -1;
  bool run_ahead = false;

  explicit Schedule(size_t warps) : lanes(warps), position(warps, -1) {}

  void push(Block& blk, int t) {
    Fiber& f = blk.fibers[t];
    f.state = State::kRunnable;
    if (lanes[f.warp].empty()) {
      position[f.warp] = static_cast<int>(active.size());
      active.push_back(f.warp);
    }
    lanes[f.warp].push_back(t);
  }

  bool empty() const { return active.empty(); }
  bool warp_blocked(int w) const { return lanes[w].empty(); }

  int pop(std::mt19937_64& rng) {
    int w = focus;
    if (!run_ahead || w < 0 || lanes[w].empty()) w = focus = active[rng() % active.size()];
    std::vector<int>& list = lanes[w];
    const size_t pick = rng() % list.size();
    const int t = list[pick];
    list[pick] = list.back();
    list.pop_back();
    if (list.empty()) {  // drop w from the active warps
      const int last = active.back();
      active[position[w]] = last;
      position[last] = position[w];
      active.pop_back();
      position[w] = -1;
    }
    return t;
  }
};

// Called when no lane of `warp` is runnable: completes the collectives whose lanes have all arrived,
// and reports the ones that never can (a named lane exited, does not exist, or waits elsewhere).
void settle_warp(Block& blk, Schedule& sched, int w) {
  const std::vector<int>& warp = blk.warps[w];
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if (warp[lane] < 0) continue;
    Fiber& f = blk.fibers[warp[lane]];
    if (f.state != State::kCollective) continue;
    if (!(f.mask >> lane & 1u))
      throw SyncError("synccheck: " + describe(blk, f) + " calls " + collective_name(f.op) +
                      " with a mask that does not name its own lane");
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(f.mask >> l & 1u)) continue;
      if (warp[l] >= 0) {  // the common case, without building a message
        const Fiber& g = blk.fibers[warp[l]];
        if (g.state == State::kCollective && g.op == f.op && g.mask == f.mask) continue;
      }
      const std::string what = "synccheck: " + std::string(collective_name(f.op)) + " by " + describe(blk, f) +
                               " (mask " + hex(f.mask) + ") names lane " + std::to_string(l);
      if (warp[l] < 0)
        throw SyncError(what + ", which does not exist in a block of " + std::to_string(blk.block_dim.count()) +
                        " threads");
      const Fiber& g = blk.fibers[warp[l]];
      if (g.state == State::kExited) throw SyncError(what + ", which has exited");
      if (g.state == State::kBlockBarrier)
        throw SyncError("synccheck: divergent warp: " + what + ", which waits at __syncthreads " + g.site);
      if (g.op != f.op || g.mask != f.mask)
        throw SyncError("synccheck: divergent warp collective: " + what + ", which waits in " +
                        collective_name(g.op) + " with mask " + hex(g.mask));
    }
    // everyone named is here: every participant's result
    uint64_t ballot = 0;
    for (int l = 0; l < kWarpSize; ++l)
      if (f.mask >> l & 1u) ballot |= (blk.fibers[warp[l]].payload != 0 ? 1ull : 0ull) << l;
    const Collective op = f.op;
    const unsigned mask = f.mask;
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(mask >> l & 1u)) continue;
      Fiber& g = blk.fibers[warp[l]];
      int src = l;
      if (op == Collective::kShfl) {
        src = (l / g.width) * g.width + ((g.arg % g.width) + g.width) % g.width;
      } else if (op == Collective::kShflXor) {
        const int x = l ^ g.arg;
        src = x / g.width == l / g.width ? x : l;  // outside the lane's group: its own value
      }
      switch (op) {
        case Collective::kShfl:
        case Collective::kShflXor:
          // a source lane outside the mask gives an undefined value on a GPU: the lane's own here
          g.result = (mask >> src & 1u) ? blk.fibers[warp[src]].payload : g.payload;
          break;
        case Collective::kBallot: g.result = ballot; break;
        case Collective::kAll: g.result = (ballot == (mask & 0xffffffffull)) ? 1 : 0; break;
        case Collective::kAny: g.result = ballot != 0 ? 1 : 0; break;
        case Collective::kSyncWarp: g.result = 0; break;
      }
    }
    for (int l = 0; l < kWarpSize; ++l)
      if (mask >> l & 1u) sched.push(blk, warp[l]);
  }
}

// Releases __syncthreads once every live thread waits there; reports threads that exited before it.
void settle_block_barrier(Block& blk, Schedule& sched) {
  if (sched.at_barrier == 0 || sched.at_barrier != sched.live) return;
  const Fiber* first = nullptr;
  for (const Fiber& f : blk.fibers) {
    if (f.state != State::kBlockBarrier) continue;
    if (first && std::strcmp(first->site, f.site) != 0)
      throw SyncError("synccheck: divergent __syncthreads: " + describe(blk, *first) + " waits at " + first->site +
                      " but " + describe(blk, f) + " waits at " + f.site);
    if (!first) first = &f;
  }
  for (const Fiber& f : blk.fibers)
    if (f.state == State::kExited && f.barriers <= first->barriers)
      throw SyncError("synccheck: __syncthreads at " + std::string(first->site) + " is not reached by " +
                      describe(blk, f) + ", which exited before it (barrier " + std::to_string(first->barriers + 1) +
                      " of the block)");
  sched.at_barrier = 0;
  for (size_t t = 0; t < blk.fibers.size(); ++t)
    if (blk.fibers[t].state == State::kBlockBarrier) {
      ++blk.fibers[t].barriers;
      sched.push(blk, static_cast<int>(t));
    }
}

std::string deadlock_report(const Block& blk) {
  std::ostringstream out;
  out << "synccheck: block (" << blk.block_idx.x << "," << blk.block_idx.y << "," << blk.block_idx.z
      << ") cannot make progress:";
  int shown = 0;
  for (const Fiber& f : blk.fibers) {
    if (f.state == State::kExited) continue;
    if (shown++ >= 4) break;
    out << " " << describe(blk, f) << " waits at "
        << (f.state == State::kBlockBarrier ? std::string("__syncthreads ") + f.site : collective_name(f.op)) << ";";
  }
  return out.str();
}

// Runs one block: repeatedly resumes a runnable fiber (Schedule's seeded policy) until it blocks or
// exits, and releases a warp collective or the block barrier the moment its last participant arrives,
// so warps advance at independent rates (a missing __syncthreads between warps shows up).
void run_block(Block& blk, std::mt19937_64& rng) {
  const size_t n = blk.fibers.size();
  unsigned char* stacks = g_stacks.get(n);
  Schedule sched(blk.warps.size());
  sched.run_ahead = rng() & 1;
  sched.live = static_cast<int>(n);
  for (size_t t = 0; t < n; ++t) {
    Fiber& f = blk.fibers[t];
    f.barriers = 0;
    make_context(f.context, stacks + t * kStackBytes, kStackBytes, fiber_entry);
    sched.push(blk, static_cast<int>(t));
  }
  while (!sched.empty()) {
    const int t = sched.pop(rng);
    Fiber& f = blk.fibers[t];
    resume(blk, f, stacks + t * kStackBytes);
    if (f.state == State::kExited) --sched.live;
    if (f.state == State::kBlockBarrier) ++sched.at_barrier;
    if (sched.warp_blocked(f.warp)) settle_warp(blk, sched, f.warp);
    settle_block_barrier(blk, sched);
  }
  if (sched.live != 0) throw SyncError(deadlock_report(blk));
}

}  // namespace

const uint3& thread_idx() { return g_block->current->tid; }
const uint3& block_idx() { return g_block->block_idx; }
const dim3& block_dim() { return g_block->block_dim; }
const dim3& grid_dim() { return g_block->grid_dim; }

void syncthreads(const char* site) {
  g_block->current->site = site;
  wait(State::kBlockBarrier);
}

namespace {
WorkCounts g_work;  // launches hold g_launch_mutex, so one launch counts at a time
}  // namespace

WorkCounts take_work_counts() {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  const WorkCounts out = g_work;
  g_work = WorkCounts{};
  return out;
}

void count_atomic() { ++g_work.atomics; }

uint64_t warp_collective(Collective op, unsigned mask, uint64_t payload, int arg, int width) {
  ++g_work.collectives;
  Fiber& f = *g_block->current;
  if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0)
    throw SyncError("warp collective with width " + std::to_string(width) + " (must be a power of two <= 32)");
  f.op = op;
  f.mask = mask;
  f.payload = payload;
  f.arg = arg;
  f.width = width;
  wait(State::kCollective);
  return f.result;
}

void* dynamic_shared_memory() { return g_block->dynamic_smem; }

void set_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_seed = seed;
  g_launches = 0;
}

cudaError_t set_max_dynamic_smem(const void* kernel_id, int bytes) {
  if (bytes < 0 || bytes > kMaxSmemOptin) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_max_dynamic_smem[kernel_id] = bytes;
  return cudaSuccess;
}

void set_last_error(cudaError_t err) { g_last_error = err; }

cudaError_t take_last_error() {
  const cudaError_t err = g_last_error;
  g_last_error = cudaSuccess;
  return err;
}

const char* error_string(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

namespace {
void (*g_observer)(const char*) = nullptr;
}  // namespace

void set_observer(void (*observer)(const char* call)) { g_observer = observer; }

void observe(const char* call) {
  if (g_observer) g_observer(call);
}

cudaError_t run_grid(dim3 grid, dim3 block, size_t smem, const void* kernel_id, const std::function<void()>& body) {
  observe("cudaLaunchKernel");
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (block.count() == 0 || block.count() > kMaxThreadsPerBlock || grid.count() == 0 || grid.x > kMaxGridX ||
      grid.y > kMaxGridYZ || grid.z > kMaxGridYZ || block.z > 64)
    return cudaErrorInvalidConfiguration;
  const auto opted = g_max_dynamic_smem.find(kernel_id);
  const size_t smem_limit = opted == g_max_dynamic_smem.end() ? kDefaultDynamicSmem
                                                              : std::max<size_t>(kDefaultDynamicSmem, opted->second);
  if (smem > smem_limit) return cudaErrorInvalidValue;

  std::mt19937_64 rng(g_seed * 0x9e3779b97f4a7c15ull + (++g_launches));
  Block blk;
  blk.block_dim = block;
  blk.grid_dim = grid;
  blk.body = &body;
  const unsigned nthreads = static_cast<unsigned>(block.count());
  blk.fibers.resize(nthreads);
  blk.warps.assign((nthreads + kWarpSize - 1) / kWarpSize, std::vector<int>(kWarpSize, -1));
  for (unsigned t = 0; t < nthreads; ++t) {  // CUDA's numbering: x fastest, then y, then z
    Fiber& f = blk.fibers[t];
    f.tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    f.warp = static_cast<int>(t / kWarpSize);
    f.lane = static_cast<int>(t % kWarpSize);
    blk.warps[f.warp][f.lane] = static_cast<int>(t);
  }
  // exactly `smem` bytes, so that an overrun is a heap overflow under AddressSanitizer
  std::vector<unsigned char> dynamic(smem);
  blk.dynamic_smem = smem ? dynamic.data() : nullptr;

  std::vector<uint64_t> order(grid.count());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  Block* const outer = g_block;
  g_block = &blk;
  try {
    for (uint64_t id : order) {
      blk.block_idx = {static_cast<unsigned>(id % grid.x), static_cast<unsigned>((id / grid.x) % grid.y),
                       static_cast<unsigned>(id / (1ull * grid.x * grid.y))};
      run_block(blk, rng);
    }
  } catch (...) {
    g_block = outer;
    throw;
  }
  g_block = outer;
  return cudaSuccess;
}

}  // namespace emu
}  // namespace csfr
