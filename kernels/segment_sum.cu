// segment_sum: per-image class sums of the features and class pixel counts (docs/cuda.md).
//
// Grid (pixel tiles, channel tiles of kDT, images). Why this shape:
//  - A block owns kThreads * kItems pixels x kDT channels of one image. Lanes of a warp read 32
//    neighbouring pixels of one channel row, so every load is coalesced.
//  - Labels are spatially coherent: a warp usually sees one class for many consecutive steps. Each
//    thread keeps a register run (kDT partial sums) while its warp stays on one class, so the common
//    step is a load and an add; a run is folded into the block's K x kDT shared-memory table only
//    when the class changes, with one warp reduction per distinct class (warp_segment_add).
//  - Only after all its pixels does the block add its non-zero table entries to global memory:
//    K_present * kDT atomics per block instead of one per pixel.
//  - When K x kDT does not fit in shared memory (K in the many thousands), the same code adds the
//    folded runs straight to global memory (kShared = false).
#include "common.cuh"

namespace csfr {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kItems = 8;  // pixels per thread
constexpr int kDT = 8;     // channels per block

template <typename T, bool kShared>
__global__ void __launch_bounds__(kThreads)
segment_sum_kernel(const T* __restrict__ feats, const int64_t* __restrict__ labels, acc_t<T>* __restrict__ sums,
                   acc_t<T>* __restrict__ counts, int64_t D, int64_t N, int64_t K, int64_t ignore) {
  using A = acc_t<T>;
  const int64_t b = blockIdx.z;
  const int64_t d0 = static_cast<int64_t>(blockIdx.y) * kDT;
  const int dn = static_cast<int>(D - d0 < kDT ? D - d0 : kDT);
  const bool count = blockIdx.y == 0;  // one channel tile per pixel tile counts the pixels
  A* s_sum = dynamic_smem<A>();        // [K][kDT] then [K] counts
  A* s_cnt = s_sum + K * kDT;
  if (kShared) {
    for (int64_t j = threadIdx.x; j < K * (kDT + 1); j += kThreads) s_sum[j] = A(0);
    __syncthreads();
  }
  A* g_sum = sums + b * K * D;
  A* g_cnt = counts + b * K;
  auto add_sum = [&](int k, int c, A v) {
    if (kShared) atomicAdd(s_sum + k * kDT + c, v);
    else atomicAdd(g_sum + k * D + d0 + c, v);
  };
  auto add_cnt = [&](int k, A v) {
    if (kShared) atomicAdd(s_cnt + k, v);
    else atomicAdd(g_cnt + k, v);
  };
  // fold a per-lane value of class k (warp-wide, any mix of classes) into the table
  auto fold = [&](int k, const A* v, A n) {
#pragma unroll
    for (int c = 0; c < kDT; ++c)
      if (c < dn) warp_segment_add(k, v[c], [&](int kk, A t) { add_sum(kk, c, t); });
    if (count) warp_segment_add(k, n, [&](int kk, A t) { add_cnt(kk, t); });
  };

  const T* fb = feats + (b * D + d0) * N;
  const int64_t* yb = labels + b * N;
  A run[kDT] = {};
  A run_n = 0;
  int run_k = -1;  // warp-uniform class of the current run, -1 = none
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kItems + threadIdx.x;
  for (int it = 0; it < kItems; ++it) {
    const int64_t i = base + static_cast<int64_t>(it) * kThreads;
    const int k = i < N ? class_of(yb, i, K, ignore) : -1;
    const int k0 = __shfl_sync(kFullMask, k, 0);
    const bool uniform = __all_sync(kFullMask, k == k0);
    A v[kDT];
#pragma unroll
    for (int c = 0; c < kDT; ++c) v[c] = (k >= 0 && c < dn) ? to_acc(fb[c * N + i]) : A(0);
    if (uniform && k0 == run_k) {
#pragma unroll
      for (int c = 0; c < kDT; ++c) run[c] += v[c];
      run_n += A(1);
      continue;
    }
    if (run_k >= 0) fold(run_k, run, run_n);
    run_k = -1;
    if (uniform && k0 >= 0) {
#pragma unroll
      for (int c = 0; c < kDT; ++c) run[c] = v[c];
      run_n = A(1);
      run_k = k0;
    } else {
      fold(k, v, A(1));
    }
  }
  if (run_k >= 0) fold(run_k, run, run_n);

  if (kShared) {
    __syncthreads();
    for (int64_t j = threadIdx.x; j < K * kDT; j += kThreads) {
      const int64_t k = j / kDT, c = j % kDT;
      if (c < dn && s_sum[j] != A(0)) atomicAdd(g_sum + k * D + d0 + c, s_sum[j]);
    }
    if (count)
      for (int64_t k = threadIdx.x; k < K; k += kThreads)
        if (s_cnt[k] != A(0)) atomicAdd(g_cnt + k, s_cnt[k]);
  }
}

// Shared bytes the table needs, and whether the device can give them (opting in above 48 KiB).
template <typename T>
cudaError_t shared_table(int64_t K, size_t* bytes, bool* fits) {
  *bytes = static_cast<size_t>(K) * (kDT + 1) * sizeof(acc_t<T>);
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  *fits = *bytes <= static_cast<size_t>(optin);
  if (*fits && *bytes > 48 * 1024)
    err = cudaFuncSetAttribute(segment_sum_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(*bytes));
  return err;
}

template <typename T>
cudaError_t launch(const void* feats, const int64_t* labels, void* sums, void* counts, int64_t B, int64_t D,
                   int64_t N, int64_t K, int64_t ignore, cudaStream_t stream) {
  using A = acc_t<T>;
  cudaError_t err = cudaMemsetAsync(sums, 0, sizeof(A) * B * K * D, stream);
  if (err == cudaSuccess) err = cudaMemsetAsync(counts, 0, sizeof(A) * B * K, stream);
  if (err != cudaSuccess || B == 0 || N == 0 || D == 0) return err;
  size_t bytes = 0;
  bool fits = false;
  if ((err = shared_table<T>(K, &bytes, &fits)) != cudaSuccess) return err;
  const int64_t tiles = (N + kThreads * kItems - 1) / (kThreads * kItems);
  const int64_t dtiles = (D + kDT - 1) / kDT;
  if (dtiles > kMaxGridYZ || tiles > INT32_MAX) return cudaErrorInvalidValue;
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
    const int64_t nb = B - b0 < kMaxGridYZ ? B - b0 : kMaxGridYZ;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(dtiles), static_cast<unsigned>(nb));
    const T* f = static_cast<const T*>(feats) + b0 * D * N;
    A* s = static_cast<A*>(sums) + b0 * K * D;
    A* c = static_cast<A*>(counts) + b0 * K;
    if (fits)
      segment_sum_kernel<T, true><<<grid, kThreads, bytes, stream>>>(f, labels + b0 * N, s, c, D, N, K, ignore);
    else
      segment_sum_kernel<T, false><<<grid, kThreads, 0, stream>>>(f, labels + b0 * N, s, c, D, N, K, ignore);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t segment_sum(DType dtype, const void* feats, const int64_t* labels, void* sums, void* counts,
                        int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore_index,
                        cudaStream_t stream) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return launch<T>(feats, labels, sums, counts, B, D, N, K, ignore_index, stream);
  });
}

}  // namespace csfr
