// The CUDA execution model on the CPU, so that the unchanged sources in kernels/ compile with the
// host C++ compiler and run on CPU memory (docs/cuda.md, "Emulation").
//
// A launch runs the grid block by block in a seeded random order. Inside a block every CUDA thread
// is a cooperative fiber (ucontext, its own stack; never an OS thread) that runs until it reaches a
// barrier: __syncthreads() (block barrier) or a warp collective (__shfl*_sync, __ballot_sync,
// __all_sync, __any_sync, __syncwarp), where it yields to the block's scheduler. Runnable fibers are resumed in
// a seeded random order, so float atomics are summed in an order that changes with the seed, as on a
// GPU. A barrier is released only when every thread it needs has arrived; what compute-sanitizer's
// synccheck would report (a __syncthreads that a live thread of the block never reaches, or reaches
// at another call site; a warp collective whose mask names a lane that exited or waits elsewhere)
// raises csfr::emu::SyncError from the launch.
//
// Only what kernels/ uses is provided. Not emulated: memory ordering across blocks (blocks never
// overlap), __launch_bounds__ (nvcc checks it), texture/constant memory, streams (all work is
// synchronous on the calling thread).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers: the host compiler sees plain C++ -------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared arrays are function-local statics: one copy shared by the fibers of the running
// block (blocks run one at a time, launches are serialised by a lock).
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr unsigned long long count() const { return 1ull * x * y * z; }
};

using cudaStream_t = struct CUstream_st*;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchFailure = 719,
  cudaErrorInvalidConfiguration = 9,
};

enum cudaDeviceAttr : int {
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace csfr {
namespace emu {

// std::bit_cast without C++20: the emulation builds with the language standard torch was built with.
template <typename To, typename From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// The device the emulation models (H100, sm_90): what cudaDeviceGetAttribute answers and what a
// launch is checked against.
constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kDefaultDynamicSmem = 48 * 1024;
constexpr int kMaxSmemOptin = 227 * 1024;
constexpr unsigned kMaxGridX = 0x7fffffffu, kMaxGridYZ = 65535u;

// A synchronisation error (what compute-sanitizer --tool synccheck reports) or a deadlock.
struct SyncError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Per-thread (fiber) built-in variables of the running kernel.
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Block barrier; `site` identifies the call site (all threads must meet at one).
void syncthreads(const char* site);

enum class Collective : int { kShfl = 0, kShflXor = 1, kBallot = 2, kAll = 3, kAny = 4, kSyncWarp = 5 };
// A warp collective on a 64-bit payload: blocks until every lane of `mask` arrives, returns this lane's
// result (the source lane's payload for shuffles, the vote for ballot/all/any).
// `arg` is the source lane (kShfl) or the lane mask (kShflXor); shuffles work within groups of `width` lanes.
uint64_t warp_collective(Collective op, unsigned mask, uint64_t payload, int arg = 0, int width = kWarpSize);

void* dynamic_shared_memory();

// Calls `observer` with the name of each emulated runtime call that enqueues device work ("cudaLaunchKernel",
// "cudaMemsetAsync"), as a GPU profile lists them: the glue turns them into torch.profiler events, so a test
// counts the launches of an operator on the CPU.
void set_observer(void (*observer)(const char* call));
void observe(const char* call);

// What the kernels did since the last call, counted per lane: warp collectives (shuffles, votes, __syncwarp)
// and atomics. A measure of the kernels' work that a CPU can take (benchmarks/kernel_work.py), not a time.
struct WorkCounts {
  uint64_t collectives = 0, atomics = 0;
};
WorkCounts take_work_counts();
void count_atomic();

// Seed of the block and fiber schedule (also read from CSFR_EMULATION_SEED at start-up).
void set_seed(uint64_t seed);

// Runs `body` once per CUDA thread of the grid. Throws SyncError on synccheck errors; returns a CUDA
// error for an invalid configuration.
cudaError_t run_grid(dim3 grid, dim3 block, size_t smem, const void* kernel_id, const std::function<void()>& body);

cudaError_t set_max_dynamic_smem(const void* kernel_id, int bytes);
void set_last_error(cudaError_t err);
cudaError_t take_last_error();
const char* error_string(cudaError_t err);

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "collective payload too wide");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// `kernel<<<grid, block, smem, stream>>>(args...)` as `Launch(kernel, grid, block, smem, stream)(args...)`:
// the arguments are copied into the kernel's parameter types, as a CUDA launch does.
template <typename... Params>
class Launch {
 public:
  Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t)
      : kernel_(kernel), grid_(grid), block_(block), smem_(smem) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    auto kernel = kernel_;
    const cudaError_t err = run_grid(grid_, block_, smem_, reinterpret_cast<const void*>(kernel_),
                                     [&] { std::apply(kernel, params); });
    if (err != cudaSuccess) set_last_error(err);
  }

 private:
  void (*kernel_)(Params...);
  dim3 grid_, block_;
  size_t smem_;
};

}  // namespace emu
}  // namespace csfr

#define threadIdx (::csfr::emu::thread_idx())
#define blockIdx (::csfr::emu::block_idx())
#define blockDim (::csfr::emu::block_dim())
#define gridDim (::csfr::emu::grid_dim())
#define warpSize (::csfr::emu::kWarpSize)

#define CSFR_EMU_STR2(x) #x
#define CSFR_EMU_STR(x) CSFR_EMU_STR2(x)
#define __syncthreads() ::csfr::emu::syncthreads(__FILE__ ":" CSFR_EMU_STR(__LINE__))

// ---- warp collectives -------------------------------------------------------------------------
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
  return csfr::emu::from_bits<T>(csfr::emu::warp_collective(csfr::emu::Collective::kShfl, mask,
                                                            csfr::emu::to_bits(v), src_lane, width));
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  return csfr::emu::from_bits<T>(csfr::emu::warp_collective(csfr::emu::Collective::kShflXor, mask,
                                                            csfr::emu::to_bits(v), lane_mask, width));
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(csfr::emu::warp_collective(csfr::emu::Collective::kBallot, mask, predicate != 0));
}
inline int __all_sync(unsigned mask, int predicate) {
  return static_cast<int>(csfr::emu::warp_collective(csfr::emu::Collective::kAll, mask, predicate != 0));
}
inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<int>(csfr::emu::warp_collective(csfr::emu::Collective::kAny, mask, predicate != 0));
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  csfr::emu::warp_collective(csfr::emu::Collective::kSyncWarp, mask, 0);
}
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }

// ---- atomics: fibers never yield inside one, so a plain read-modify-write is atomic -----------
inline float atomicAdd(float* address, float v) {
  csfr::emu::count_atomic();
  const float old = *address;
  *address = old + v;
  return old;
}
inline double atomicAdd(double* address, double v) {
  csfr::emu::count_atomic();
  const double old = *address;
  *address = old + v;
  return old;
}

inline unsigned atomicAdd(unsigned* address, unsigned v) {
  csfr::emu::count_atomic();
  const unsigned old = *address;
  *address = old + v;
  return old;
}
// Blocks run one after another, so every write of an earlier block is visible: a fence has nothing to order.
inline void __threadfence() {}

// ---- math ---------------------------------------------------------------------------------------
inline float __expf(float v) { return std::exp(v); }
using std::exp;
using std::isfinite;
using std::nan;
using std::sqrt;

// ---- host API the launchers use --------------------------------------------------------------
inline cudaError_t cudaGetLastError() { return csfr::emu::take_last_error(); }
inline const char* cudaGetErrorString(cudaError_t err) { return csfr::emu::error_string(err); }
inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t = nullptr) {
  csfr::emu::observe("cudaMemsetAsync");
  if (bytes != 0) std::memset(ptr, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = csfr::emu::kDefaultDynamicSmem; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = csfr::emu::kMaxSmemOptin; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return csfr::emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}
