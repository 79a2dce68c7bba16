// Device helpers shared by the csfr kernels: accumulation types, conversions, labels, warp sums.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <type_traits>

#include "csfr_kernels.cuh"

namespace csfr {
namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxGridYZ = 65535;  // gridDim.y / gridDim.z limit: launchers chunk larger extents

// acc: float64 for double, float32 for everything else.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }
__device__ __forceinline__ double sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

// Class of a pixel, or -1 when it is ignored (ignore_index, or defensively any value outside [0, K)).
__device__ __forceinline__ int class_of(const int64_t* labels, int64_t idx, int64_t K, int64_t ignore) {
  const int64_t v = labels[idx];
  return (v == ignore || v < 0 || v >= K) ? -1 : static_cast<int>(v);
}

// 1 / max(n_k, 1) for the class at `bk` = b * K + k when means are formed from class sums where they are
// read (the fused cac_loss: no kernel spent on mu = sums / n), or 1 when `counts` is null (the operand
// holds the means already). Every reader of the fused op's means multiplies by this same value.
template <typename A> __device__ __forceinline__ A mean_scale(const A* counts, int64_t bk) {
  return counts ? A(1) / (counts[bk] > A(1) ? counts[bk] : A(1)) : A(1);
}

// A device-side assertion: on a GPU the thread prints `what` and stops the kernel (the error surfaces at the
// next CUDA call, as torch's own device asserts do, and leaves the context unusable); under the emulation the
// launch raises it.
__device__ __forceinline__ void device_fail(const char* what) {
#ifdef CSFR_EMULATION
  throw std::runtime_error(what);
#else
  printf("%s\n", what);
  __trap();
#endif
}

// A thread's share of a (pixel tiles, channel tiles, images) grid of `threads`-wide blocks and `channels`-deep
// tiles, as the backward kernels lay it out: pixel i of image b and its class k (-1: ignored, or a tail thread
// with i >= N, which has nothing to do), channels [d0, d0 + dn), and row0, the index of (b, d0, i) in [B, D, N].
struct PixelRun {
  int64_t b, i, d0, row0;
  int dn, k;
};
__device__ __forceinline__ PixelRun pixel_run(int threads, int channels, const int64_t* labels, int64_t D, int64_t N,
                                              int64_t K, int64_t ignore) {
  PixelRun r;
  r.b = blockIdx.z;
  r.i = static_cast<int64_t>(blockIdx.x) * threads + threadIdx.x;
  r.d0 = static_cast<int64_t>(blockIdx.y) * channels;
  r.dn = static_cast<int>(D - r.d0 < channels ? D - r.d0 : channels);
  r.row0 = (r.b * D + r.d0) * N + r.i;
  r.k = r.i < N ? class_of(labels, r.b * N + r.i, K, ignore) : -1;
  return r;
}

// An ignored pixel's gradient: zero in each of the run's channels.
template <typename T> __device__ __forceinline__ void zero_run(T* out, const PixelRun& r, int64_t N) {
  for (int c = 0; c < r.dn; ++c) out[r.row0 + c * N] = from_acc<T>(acc_t<T>(0));
}

// Sum over the 32 lanes; every lane gets the total.
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Sum over the 32 lanes of kC values per lane (channels c0 .. c0 + kC - 1), scattered back along the lanes:
// lane l returns the total of channel l % kC (lanes 0 .. kC - 1 then add their channel's total, one add per
// lane to consecutive addresses, instead of one lane adding kC totals in turn). Lanes farther apart than kC
// exchange all kC values; below that each step keeps the half of the channels the lane's bit selects and
// sends the other half: 31 shuffles at kC = 32 where kC butterflies take 5 kC. `v` is clobbered. All lanes
// must call; kC is a power of two <= 32.
template <int kC, typename A>
__device__ __forceinline__ A warp_channel_totals(A (&v)[kC]) {
  static_assert(kC >= 1 && kC <= 32 && (kC & (kC - 1)) == 0, "kC: a power of two <= 32");
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int off = 16; off >= kC; off >>= 1)
#pragma unroll
    for (int c = 0; c < kC; ++c) v[c] += __shfl_xor_sync(kFullMask, v[c], off);
#pragma unroll
  for (int half = kC / 2; half >= 1; half >>= 1) {
    const bool upper = (lane & half) != 0;
#pragma unroll
    for (int c = 0; c < half; ++c) {
      const A send = upper ? v[c] : v[c + half];
      v[c] = (upper ? v[c + half] : v[c]) + __shfl_xor_sync(kFullMask, send, half);
    }
  }
  return v[0];
}

// Segmented warp reduction of kC channels: the lanes holding the same class k >= 0 sum their kC values `v`, and
// lane c < kC calls add(k, c, total of channel c) for each distinct class: the adds of a class go out as one
// warp instruction to consecutive channels, not kC in turn from one lane. Channel c is always added by lane
// c, so a plain (non-atomic) `add` into a per-warp table needs no __syncwarp between calls. All lanes must call.
template <int kC, typename A, typename Add>
__device__ __forceinline__ void warp_segment_channels_add(int k, const A (&v)[kC], Add add) {
  const int lane = threadIdx.x & 31;
  unsigned todo = __ballot_sync(kFullMask, k >= 0);
  while (todo) {
    const int kl = __shfl_sync(kFullMask, k, __ffs(todo) - 1);
    A t[kC];
#pragma unroll
    for (int c = 0; c < kC; ++c) t[c] = k == kl ? v[c] : A(0);
    const A total = warp_channel_totals<kC>(t);
    if (lane < kC) add(kl, lane, total);
    todo &= ~__ballot_sync(kFullMask, k == kl);
  }
}

// Segmented warp reduction of one value: lanes holding the same class k >= 0 sum `v`, and lane 0 calls
// add(k, total) for each distinct class. Pixels of a warp are 32 neighbours, so a warp usually holds one
// or two classes: this costs one butterfly per distinct class instead of 32 atomics. All lanes must call.
template <typename A, typename Add>
__device__ __forceinline__ void warp_segment_add(int k, A v, Add add) {
  A one[1] = {v};
  warp_segment_channels_add(k, one, [&](int kl, int, A total) { add(kl, total); });
}

// Whether the warp's lanes hold at most kLimit distinct classes k >= 0 (warp-uniform; one vote per
// class seen, at most kLimit). Then warp_segment_add's butterflies cost less than one atomic per lane
// (warp_class_add); where the two cost the same depends on the atomic's kind and contention, so each
// kernel sets its own limit (measured on a GPU by benchmarks/butterfly_tuning.cu). All lanes must call.
template <int kLimit>
__device__ __forceinline__ bool warp_classes_at_most(int k) {
  unsigned rest = __ballot_sync(kFullMask, k >= 0);
#pragma unroll
  for (int seen = 0; seen < kLimit && rest; ++seen) {
    const int kl = __shfl_sync(kFullMask, k, __ffs(rest) - 1);
    rest &= ~__ballot_sync(kFullMask, k == kl);
  }
  return rest == 0;
}

// Adds each lane's `v` to its class k >= 0 through `add`, which must be atomic: one butterfly per
// class when `few` (warp_classes_at_most(k), computed once for as many calls as the classes stay), else
// one add per lane. All lanes must call.
template <typename A, typename Add>
__device__ __forceinline__ void warp_class_add(bool few, int k, A v, Add add) {
  if (few) warp_segment_add(k, v, add);
  else if (k >= 0) add(k, v);
}

// Shared-memory buffer of dynamic size, aligned for double.
template <typename A> __device__ __forceinline__ A* dynamic_smem() {
#ifdef CSFR_EMULATION
  return reinterpret_cast<A*>(::csfr::emu::dynamic_shared_memory());
#else
  extern __shared__ __align__(16) unsigned char csfr_smem[];
  return reinterpret_cast<A*>(csfr_smem);
#endif
}

// What the fused cac_loss asks of the kernels beyond their plain form (kernels/cac_loss.cu): outputs that
// are already cleared (one clear of the whole state instead of a memset per output), means formed from
// class sums and counts where they are read (`mean_counts` [B,K] beside the sums passed as centre / mu),
// and labels outside [0, K) that are not ignored flagged on the device (`bad_label`, one acc value).
// The fused class_centroids also has segment_sum finish each image (the last of its blocks, by a ticket in
// `tickets` [B], cleared): means in the features' dtype to `mean_out` [B,K,D], counts to `count_out` [B,K]
// int64, and a flagged label stops there. `bad_label` is then required.
struct Fused {
  const void* mean_counts = nullptr;
  void* bad_label = nullptr;
  bool cleared = false;
  void* mean_out = nullptr;
  int64_t* count_out = nullptr;
  void* tickets = nullptr;
};

cudaError_t segment_sum_fused(DType dtype, const void* feats, const int64_t* labels, const void* weight,
                              const void* center, void* sums, void* counts, int64_t B, int64_t D, int64_t N,
                              int64_t K, int64_t ignore_index, bool deterministic, void* workspace,
                              cudaStream_t stream, const Fused& fused);

cudaError_t cac_pixel_pass_fused(DType dtype, const void* feats, const int64_t* labels, const void* mu,
                                 double delta_v, void* coef, void* hinge, void* wsum, void* wcount, int64_t B,
                                 int64_t D, int64_t N, int64_t K, int64_t ignore_index, bool deterministic,
                                 void* workspace, cudaStream_t stream, const Fused& fused);

}  // namespace detail
}  // namespace csfr

// Every launch is written CSFR_LAUNCH(grid, block, smem, stream, kernel)(args...), so that nvcc and the
// CPU emulation of csrc/emulation/ compile the same source (the kernel comes last: template arguments
// may contain commas).
#ifdef CSFR_EMULATION
#define CSFR_LAUNCH(grid, block, smem, stream, ...) ::csfr::emu::Launch(__VA_ARGS__, grid, block, smem, stream)
#else
#define CSFR_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

// The DType of a kernel element type.
#define CSFR_DTYPE_OF(T)                                                                              \
  (std::is_same_v<T, double> ? ::csfr::DType::kFloat64                                                \
   : std::is_same_v<T, __half> ? ::csfr::DType::kFloat16                                              \
   : std::is_same_v<T, __nv_bfloat16> ? ::csfr::DType::kBFloat16 : ::csfr::DType::kFloat32)

// Instantiates `launch<T>()` for the runtime dtype; `launch` is a generic lambda taking a T* tag.
#define CSFR_DISPATCH(dtype, launch)                                           \
  [&]() -> cudaError_t {                                                       \
    switch (dtype) {                                                           \
      case ::csfr::DType::kFloat32: return launch(static_cast<float*>(nullptr)); \
      case ::csfr::DType::kFloat16: return launch(static_cast<__half*>(nullptr)); \
      case ::csfr::DType::kBFloat16: return launch(static_cast<__nv_bfloat16*>(nullptr)); \
      case ::csfr::DType::kFloat64: return launch(static_cast<double*>(nullptr)); \
    }                                                                          \
    return cudaErrorInvalidValue;                                              \
  }()
