// segment_sum: per-image class sums of the features and class pixel counts (docs/cuda.md).
//
// Grid (pixel tiles, channel tiles of kDT, images). Why this shape:
//  - A block owns kThreads * kItems pixels x kDT channels of one image (kDT = 16; 8 in deterministic mode,
//    whose per-warp tables take 8x the shared memory). Lanes of a warp read 32 neighbouring pixels of one
//    channel row, so every load is coalesced; a pixel's label and its warp's class vote are taken once per
//    kDT channels. (32 channels would halve that again, but ptxas then gives a thread ~200 registers, one
//    block per SM; 16 keeps the ~75 of the 8-channel kernel it replaces: sm_90, fp32.)
//  - Labels are spatially coherent: a warp usually sees one class for many consecutive steps. Each
//    thread keeps a register run (kDT partial sums) while its warp stays on one class, so the common
//    step is a load and an add; a run is folded into the block's K x kDT shared-memory table only
//    when the class changes. A fold turns the lanes from pixels to channels (warp_segment_channels_add:
//    lane c ends with channel c's total), so its kDT adds are one per lane, to consecutive table entries;
//    a mixed warp folds once per distinct class, or, when it holds more than kButterflyClasses classes
//    and the table takes atomics, adds one shared atomic per lane and channel.
//  - Only after all its pixels does the block add its non-zero table entries to global memory:
//    K_present * kDT atomics per block instead of one per pixel.
//  - When K x kDT does not fit in shared memory (K in the many thousands), the same code adds the
//    folded runs straight to global memory (kShared = false).
#include "common.cuh"
#include "fused_state.h"

namespace csfr {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kItems = 8;  // pixels per thread
// channels per block (see the header); 8 in deterministic mode, where each warp has a table of its own
// (K (kDT + 1) values), so that they fit in shared memory at K = 171 on sm_80
template <bool kDet> constexpr int kChannels = kDet ? 8 : 16;
// A mixed warp of at most this many classes folds by butterflies, one of more by one atomic per lane
// (warp_classes_at_most); benchmarks/butterfly_tuning.cu measures the choice on a GPU.
#ifndef CSFR_SEGMENT_SUM_BUTTERFLY_CLASSES
#define CSFR_SEGMENT_SUM_BUTTERFLY_CLASSES 4
#endif
constexpr int kButterflyClasses = CSFR_SEGMENT_SUM_BUTTERFLY_CLASSES;
constexpr int kWarps = kThreads / 32;

// One image's class means sums / max(n, 1) in the features' dtype, and its counts as int64, by the block's
// threads; a flagged label stops here (the fused class_centroids' device-side check). `volatile`: the sums
// were written by other blocks.
template <typename T>
__device__ void finish_means(const volatile acc_t<T>* sums, const volatile acc_t<T>* counts,
                             const volatile acc_t<T>* bad_label, T* mean_out, int64_t* count_out, int64_t D,
                             int64_t K) {
  using A = acc_t<T>;
  if (*bad_label != A(0))
    device_fail("class_centroids: a label value is outside [0, num_classes) and is not ignore_index (the "
                "device-side check of csfr::class_centroids; check the labels on the CPU to see which)");
  for (int64_t j = threadIdx.x; j < K * D; j += kThreads) {
    const A n = counts[j / D];
    mean_out[j] = from_acc<T>(sums[j] * (A(1) / (n > A(1) ? n : A(1))));
  }
  for (int64_t k = threadIdx.x; k < K; k += kThreads) count_out[k] = static_cast<int64_t>(counts[k]);
}

template <typename T, bool kShared, bool kDet>
__global__ void __launch_bounds__(kThreads)
segment_sum_kernel(const T* __restrict__ feats, const int64_t* __restrict__ labels,
                   const acc_t<T>* __restrict__ weight, const acc_t<T>* __restrict__ center,
                   const acc_t<T>* __restrict__ center_counts, acc_t<T>* __restrict__ sums,
                   acc_t<T>* __restrict__ counts, acc_t<T>* __restrict__ partial, acc_t<T>* __restrict__ bad_label,
                   T* __restrict__ mean_out, int64_t* __restrict__ count_out, unsigned* __restrict__ tickets,
                   int64_t D, int64_t N, int64_t K, int64_t ignore) {
  using A = acc_t<T>;
  static_assert(kShared || !kDet, "the deterministic path reduces through shared memory");
  constexpr int kDT = kChannels<kDet>;
  const int64_t b = blockIdx.z;
  const int64_t d0 = static_cast<int64_t>(blockIdx.y) * kDT;
  const int dn = static_cast<int>(D - d0 < kDT ? D - d0 : kDT);
  const bool count = blockIdx.y == 0 && counts != nullptr;  // one channel tile per pixel tile counts
  const int64_t table = K * (kDT + 1);  // [K][kDT] sums then [K] counts
  // deterministic: one table per warp, written only by that warp (in program order), no atomics
  A* s_sum = dynamic_smem<A>() + (kDet ? static_cast<int64_t>(threadIdx.x / 32) * table : 0);
  A* s_cnt = s_sum + K * kDT;
  if (kShared) {
    for (int64_t j = threadIdx.x; j < table * (kDet ? kWarps : 1); j += kThreads) dynamic_smem<A>()[j] = A(0);
    __syncthreads();
  }
  A* g_sum = sums + b * K * D;
  A* g_cnt = count ? counts + b * K : nullptr;
  auto add_sum = [&](int k, int c, A v) {
    if (kDet) s_sum[k * kDT + c] += v;
    else if (kShared) atomicAdd(s_sum + k * kDT + c, v);
    else atomicAdd(g_sum + k * D + d0 + c, v);
  };
  auto add_cnt = [&](int k, A v) {
    if (kDet) s_cnt[k] += v;
    else if (kShared) atomicAdd(s_cnt + k, v);
    else atomicAdd(g_cnt + k, v);
  };
  // fold per-lane values of class k (-1: none) into the table: per distinct class, lanes turned to channels
  // (warp_segment_channels_add) when `few` (a register run's one class, the deterministic path, or at most
  // kButterflyClasses classes in the warp), else one atomic per lane and channel
  auto fold = [&](int k, const A (&v)[kDT], A n, bool few) {
    if (few) {
      warp_segment_channels_add(k, v, [&](int kl, int c, A t) {
        if (c < dn) add_sum(kl, c, t);
      });
      if (count) warp_segment_add(k, n, [&](int kl, A t) { add_cnt(kl, t); });
    } else if (k >= 0) {
#pragma unroll
      for (int c = 0; c < kDT; ++c)
        if (c < dn) add_sum(k, c, v[c]);
      if (count) add_cnt(k, n);
    }
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
    if (bad_label && k < 0 && i < N && yb[i] != ignore) *bad_label = A(1);  // every writer stores the same 1
    const int k0 = __shfl_sync(kFullMask, k, 0);
    const bool uniform = __all_sync(kFullMask, k == k0);
    // a pixel adds w (f - center[k]) with w = weight_i, or plain f with weight 1
    const A w = k < 0 ? A(0) : weight ? weight[b * N + i] : A(1);
    const A* ck = k >= 0 && center ? center + (b * K + k) * D + d0 : nullptr;
    const A cs = ck ? mean_scale(center_counts, b * K + k) : A(1);
    A v[kDT];
#pragma unroll
    for (int c = 0; c < kDT; ++c)
      v[c] = (k >= 0 && c < dn) ? (ck ? w * (to_acc(fb[c * N + i]) - ck[c] * cs) : w * to_acc(fb[c * N + i]))
                                : A(0);
    if (uniform && k0 == run_k) {
#pragma unroll
      for (int c = 0; c < kDT; ++c) run[c] += v[c];
      run_n += w;
      continue;
    }
    if (run_k >= 0) fold(run_k, run, run_n, true);
    run_k = -1;
    if (uniform && k0 >= 0) {
#pragma unroll
      for (int c = 0; c < kDT; ++c) run[c] = v[c];
      run_n = w;
      run_k = k0;
    } else {
      fold(k, v, w, kDet || warp_classes_at_most<kButterflyClasses>(k));
    }
  }
  if (run_k >= 0) fold(run_k, run, run_n, true);

  if (kShared) {
    __syncthreads();
    const A* tables = dynamic_smem<A>();
    // deterministic: the warps' tables summed in warp order, every entry written to this tile's partial
    const int64_t tile = blockIdx.x, tiles = gridDim.x;
    A* p_sum = kDet ? partial + (b * tiles + tile) * K * D : nullptr;
    A* p_cnt = kDet ? partial + gridDim.z * tiles * K * D + (b * tiles + tile) * K : nullptr;
    for (int64_t j = threadIdx.x; j < K * kDT; j += kThreads) {
      const int64_t k = j / kDT, c = j % kDT;
      if (c >= dn) continue;
      if (kDet) {
        A total = 0;
        for (int w = 0; w < kWarps; ++w) total += tables[w * table + j];
        p_sum[k * D + d0 + c] = total;
      } else if (tables[j] != A(0)) {
        atomicAdd(g_sum + k * D + d0 + c, tables[j]);
      }
    }
    if (count)
      for (int64_t k = threadIdx.x; k < K; k += kThreads) {
        if (kDet) {
          A total = 0;
          for (int w = 0; w < kWarps; ++w) total += tables[w * table + K * kDT + k];
          p_cnt[k] = total;
        } else if (s_cnt[k] != A(0)) {
          atomicAdd(g_cnt + k, s_cnt[k]);
        }
      }
  }
  if (tickets == nullptr) return;
  // the fused class_centroids: the last block of image b to finish writes its means and int64 counts
  __threadfence();
  __shared__ int s_last;
  if (threadIdx.x == 0) s_last = atomicAdd(tickets + b, 1u) == gridDim.x * gridDim.y - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  finish_means<T>(sums + b * K * D, counts + b * K, bad_label, mean_out + b * K * D, count_out + b * K, D, K);
}

// The fused class_centroids' deterministic path: block b writes image b's means after the reductions.
template <typename T>
__global__ void __launch_bounds__(kThreads)
finish_means_kernel(const acc_t<T>* __restrict__ sums, const acc_t<T>* __restrict__ counts,
                    const acc_t<T>* __restrict__ bad_label, T* __restrict__ mean_out, int64_t* __restrict__ count_out,
                    int64_t D, int64_t K) {
  const int64_t b = blockIdx.x;
  finish_means<T>(sums + b * K * D, counts + b * K, bad_label, mean_out + b * K * D, count_out + b * K, D, K);
}

// Deterministic path, second step: out[b, e] = sum over pixel tiles t, in order, of partial[b, t, e].
template <typename A>
__global__ void __launch_bounds__(kThreads)
reduce_tiles_kernel(const A* __restrict__ partial, A* __restrict__ out, int64_t B, int64_t tiles, int64_t E) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= B * E) return;
  const int64_t b = e / E, j = e % E;
  A total = 0;
  for (int64_t t = 0; t < tiles; ++t) total += partial[(b * tiles + t) * E + j];
  out[e] = total;
}

// Shared bytes the table needs (one per warp when deterministic), and whether the device can give
// them (opting in above 48 KiB).
template <typename T, bool kDet>
cudaError_t shared_table(int64_t K, size_t* bytes, bool* fits) {
  *bytes = static_cast<size_t>(K) * (kChannels<kDet> + 1) * sizeof(acc_t<T>) * (kDet ? kWarps : 1);
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  *fits = *bytes <= static_cast<size_t>(optin);
  if (*fits && *bytes > 48 * 1024)
    err = cudaFuncSetAttribute(segment_sum_kernel<T, true, kDet>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(*bytes));
  return err;
}

template <typename T>
cudaError_t launch(const void* feats, const int64_t* labels, const void* weight, const void* center, void* sums,
                   void* counts, int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore, bool deterministic,
                   void* workspace, cudaStream_t stream, const Fused& fused) {
  using A = acc_t<T>;
  cudaError_t err = cudaSuccess;
  if (!fused.cleared) {
    err = cudaMemsetAsync(sums, 0, sizeof(A) * B * K * D, stream);
    if (err == cudaSuccess && counts) err = cudaMemsetAsync(counts, 0, sizeof(A) * B * K, stream);
  }
  if (err == cudaSuccess && fused.mean_out && N == 0 && B > 0) {  // no pixel: every mean 0, every count 0
    if (B > INT32_MAX) return cudaErrorInvalidValue;
    CSFR_LAUNCH(static_cast<unsigned>(B), kThreads, 0, stream, finish_means_kernel<T>)(
        static_cast<const A*>(sums), static_cast<const A*>(counts), static_cast<const A*>(fused.bad_label),
        static_cast<T*>(fused.mean_out), fused.count_out, D, K);
    return cudaGetLastError();
  }
  if (err != cudaSuccess || B == 0 || N == 0) return err;
  size_t bytes = 0;
  bool fits = false;
  err = deterministic ? shared_table<T, true>(K, &bytes, &fits) : shared_table<T, false>(K, &bytes, &fits);
  if (err != cudaSuccess) return err;
  if (deterministic && (!fits || workspace == nullptr)) return cudaErrorInvalidValue;
  const int64_t tiles = (N + kThreads * kItems - 1) / (kThreads * kItems);
  const int64_t kDT = deterministic ? kChannels<true> : kChannels<false>;
  const int64_t dtiles = D > 0 ? (D + kDT - 1) / kDT : 1;  // D = 0 still counts the pixels
  if (dtiles > kMaxGridYZ || tiles > INT32_MAX) return cudaErrorInvalidValue;
  const A* w = static_cast<const A*>(weight);
  const A* ctr = static_cast<const A*>(center);
  const A* ctr_n = static_cast<const A*>(fused.mean_counts);
  A* bad = static_cast<A*>(fused.bad_label);
  // the fused class_centroids: the last block of each image finishes it, or a kernel after the reductions
  T* means = static_cast<T*>(fused.mean_out);
  unsigned* tickets = means && !deterministic ? static_cast<unsigned*>(fused.tickets) : nullptr;
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
    const int64_t nb = B - b0 < kMaxGridYZ ? B - b0 : kMaxGridYZ;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(dtiles), static_cast<unsigned>(nb));
    const T* f = static_cast<const T*>(feats) + b0 * D * N;
    const int64_t* y = labels + b0 * N;
    const A* wb = w ? w + b0 * N : nullptr;
    const A* cb = ctr ? ctr + b0 * K * D : nullptr;
    const A* cn = ctr_n ? ctr_n + b0 * K : nullptr;
    A* s = static_cast<A*>(sums) + b0 * K * D;
    A* c = counts ? static_cast<A*>(counts) + b0 * K : nullptr;
    A* part = static_cast<A*>(workspace);
    T* mo = means ? means + b0 * K * D : nullptr;
    int64_t* co = means ? fused.count_out + b0 * K : nullptr;
    unsigned* tk = tickets ? tickets + b0 : nullptr;
    if (deterministic)
      CSFR_LAUNCH(grid, kThreads, bytes, stream, segment_sum_kernel<T, true, true>)(f, y, wb, cb, cn, s, c, part, bad, mo, co, tk, D,
                                                                                     N, K, ignore);
    else if (fits)
      CSFR_LAUNCH(grid, kThreads, bytes, stream, segment_sum_kernel<T, true, false>)(f, y, wb, cb, cn, s, c, nullptr,
                                                                                      bad, mo, co, tk, D, N, K, ignore);
    else
      CSFR_LAUNCH(grid, kThreads, 0, stream, segment_sum_kernel<T, false, false>)(f, y, wb, cb, cn, s, c, nullptr,
                                                                                   bad, mo, co, tk, D, N, K, ignore);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (deterministic) {
      const int64_t sum_elems = nb * K * D, cnt_elems = nb * K;
      if (sum_elems > 0)
        CSFR_LAUNCH(static_cast<unsigned>((sum_elems + kThreads - 1) / kThreads), kThreads, 0, stream,
                    reduce_tiles_kernel<A>)(part, s, nb, tiles, K * D);
      if (c)
        CSFR_LAUNCH(static_cast<unsigned>((cnt_elems + kThreads - 1) / kThreads), kThreads, 0, stream,
                    reduce_tiles_kernel<A>)(part + nb * tiles * K * D, c, nb, tiles, K);
      if (mo)
        CSFR_LAUNCH(static_cast<unsigned>(nb), kThreads, 0, stream, finish_means_kernel<T>)(s, c, bad, mo, co, D, K);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t segment_sum(DType dtype, const void* feats, const int64_t* labels, void* sums, void* counts,
                        int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore_index, bool deterministic,
                        void* workspace, cudaStream_t stream) {
  return segment_sum_weighted(dtype, feats, labels, nullptr, nullptr, sums, counts, B, D, N, K, ignore_index,
                              deterministic, workspace, stream);
}

cudaError_t segment_sum_weighted(DType dtype, const void* feats, const int64_t* labels, const void* weight,
                                 const void* center, void* sums, void* counts, int64_t B, int64_t D, int64_t N,
                                 int64_t K, int64_t ignore_index, bool deterministic, void* workspace,
                                 cudaStream_t stream) {
  return detail::segment_sum_fused(dtype, feats, labels, weight, center, sums, counts, B, D, N, K, ignore_index,
                                   deterministic, workspace, stream, detail::Fused{});
}

cudaError_t detail::segment_sum_fused(DType dtype, const void* feats, const int64_t* labels, const void* weight,
                                      const void* center, void* sums, void* counts, int64_t B, int64_t D, int64_t N,
                                      int64_t K, int64_t ignore_index, bool deterministic, void* workspace,
                                      cudaStream_t stream, const Fused& fused) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return launch<T>(feats, labels, weight, center, sums, counts, B, D, N, K, ignore_index, deterministic, workspace,
                     stream, fused);
  });
}

cudaError_t class_centroids_forward(DType dtype, const void* feats, const int64_t* labels, void* state, void* mu,
                                    int64_t* counts, int64_t B, int64_t D, int64_t N, int64_t K,
                                    int64_t ignore_index, bool deterministic, void* workspace, cudaStream_t stream) {
  const CentroidState L{B, D, K};
  const size_t acc = dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  char* st = static_cast<char*>(state);
  cudaError_t err = cudaMemsetAsync(st, 0, acc * L.total(), stream);
  if (err != cudaSuccess) return err;
  detail::Fused fused{nullptr, st + acc * L.flag(), true, mu, counts, st + acc * L.ticket()};
  return detail::segment_sum_fused(dtype, feats, labels, nullptr, nullptr, st + acc * L.sums(), st + acc * L.counts(),
                                   B, D, N, K, ignore_index, deterministic, workspace, stream, fused);
}

size_t segment_sum_workspace_bytes(DType dtype, int64_t B, int64_t D, int64_t N, int64_t K) {
  const int64_t chunk = B < kMaxGridYZ ? B : kMaxGridYZ;  // the workspace is reused by each chunk of images
  const int64_t tiles = (N + kThreads * kItems - 1) / (kThreads * kItems);
  const size_t acc = dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(chunk * tiles * K * (D + 1)) * acc;
}

}  // namespace csfr
