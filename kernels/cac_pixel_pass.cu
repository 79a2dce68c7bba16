// cac_pixel_pass: per-pixel distance to its class centroid, hinge, coefficient, and the
// coefficient-weighted class sums (docs/kernels.md, docs/cuda.md).
//
// Block = kPix neighbouring pixels (the 32 lanes of each warp) x kGroups warps, and the block owns
// those pixels across all D channels. Why:
//  - A pixel's distance ||f_i - mu_k|| reduces over D, but features are [B, D, N] (pixel-contiguous).
//    Warp w reads channels w, w + kGroups, ... of the 32 pixels: each load is a coalesced 32-pixel
//    row segment, the partial squared distances stay in registers, and one shared-memory pass over
//    kGroups partials finishes each pixel's distance, in every warp (no serial section: warp 0 alone
//    then writes coef and the per-class hinge sums). No [N, D] transpose, no second kernel.
//  - The weighted sums re-read the very addresses this thread just read. The tile is kPix * D
//    elements (64 KiB at D = 512 fp32); with a few blocks per SM the live tiles of the whole GPU fit
//    in L2 (tens of MB), so the second read is an L2 hit, not DRAM traffic: two passes over the
//    features cost about one DRAM read. Images are visited in reverse order of segment_sum (which runs
//    just before) so the image segment_sum read last, still in L2, is the first one read here.
//  - The weighted values are folded per class kC channels at a time, the lanes turned from pixels to
//    channels (warp_segment_channels_add: 23 shuffles for 8 channels where 8 butterflies take 40), so a
//    warp's global atomics are one per class and channel, issued by kC lanes at once to consecutive
//    addresses; a warp of more than kButterflyClasses classes adds one atomic per lane instead.
//  - Warps whose 32 pixels all lie within the margin (coef = 0, common once training converges) skip
//    the second read entirely.
// Deterministic mode (no float atomics): the kernel only writes each pixel's coef and h^2; the class
// sums are then segment_sum_weighted's deterministic reductions (per-warp tables, per-tile partials
// reduced in a fixed order): wsum/wcount with weight coef and centre mu, hinge as the class sums of h^2.
#include "common.cuh"

namespace csfr {
namespace {

using namespace detail;

constexpr int kPix = 32;
constexpr int kGroups = 16;
constexpr int kC = 8;  // channels a warp folds at once in the second pass (lanes 0..7 then add one each)
// A warp of at most this many classes folds by butterflies, one of more by one global atomic per lane
// (warp_classes_at_most); benchmarks/butterfly_tuning.cu measures the choice on a GPU.
#ifndef CSFR_PIXEL_PASS_BUTTERFLY_CLASSES
#define CSFR_PIXEL_PASS_BUTTERFLY_CLASSES 8
#endif
constexpr int kButterflyClasses = CSFR_PIXEL_PASS_BUTTERFLY_CLASSES;

template <typename T, bool kDet>
__global__ void __launch_bounds__(kPix * kGroups)
cac_pixel_pass_kernel(const T* __restrict__ feats, const int64_t* __restrict__ labels,
                      const acc_t<T>* __restrict__ mu, const acc_t<T>* __restrict__ mu_counts, acc_t<T> delta_v,
                      acc_t<T>* __restrict__ coef,
                      acc_t<T>* __restrict__ hinge, acc_t<T>* __restrict__ wsum, acc_t<T>* __restrict__ wcount,
                      acc_t<T>* __restrict__ h2, int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore) {
  using A = acc_t<T>;
  __shared__ A partial[kGroups][kPix];
  const int lane = threadIdx.x, grp = threadIdx.y;
  const int64_t b = B - 1 - blockIdx.y;  // reverse image order: see the header comment
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kPix + lane;
  const int k = i < N ? class_of(labels, b * N + i, K, ignore) : -1;
  const T* fi = feats + b * D * N + i;

  // pass 1: partial squared distance over this warp's channels
  const A ms = k >= 0 ? mean_scale(mu_counts, b * K + k) : A(1);
  A acc = 0;
  if (k >= 0) {
    const A* m = mu + (b * K + k) * D;
#pragma unroll 4
    for (int64_t d = grp; d < D; d += kGroups) {
      const A diff = to_acc(fi[d * N]) - m[d] * ms;
      acc += diff * diff;
    }
  }
  partial[grp][lane] = acc;
  __syncthreads();
  // every warp finishes its pixels' distances itself (the same sum in the same order, so the same bits): no
  // warp waits for another's atomics behind a second barrier
  A sq = 0;
#pragma unroll
  for (int j = 0; j < kGroups; ++j) sq += partial[j][lane];
  const A r = sqrt(sq);
  const A h = k >= 0 && r > delta_v ? r - delta_v : A(0);
  const A c = h > A(0) ? 2 * h / r : A(0);
  if (grp == 0) {
    if (i < N) coef[b * N + i] = c;
    if (kDet) {
      if (i < N) h2[b * N + i] = h * h;
    } else {
      const bool few = warp_classes_at_most<kButterflyClasses>(k);
      warp_class_add(few, k, h * h, [&](int kk, A t) { atomicAdd(hinge + b * K + kk, t); });
      warp_class_add(few, k, c, [&](int kk, A t) { atomicAdd(wcount + b * K + kk, t); });
    }
  }
  if (kDet) return;  // every thread: the class sums are reduced by segment_sum_weighted

  // pass 2: wsum[k, d] += coef_i * (f_i[d] - mu_k[d]) (from differences), re-reading the tile from L1/L2
  if (!__any_sync(kFullMask, c != A(0))) return;
  const int kc = c != A(0) ? k : -1;  // pixels with zero weight add nothing
  const bool few = warp_classes_at_most<kButterflyClasses>(kc);
  A* ws = wsum + b * K * D;
  const A* mk = kc >= 0 ? mu + (b * K + kc) * D : nullptr;
  // warp grp takes channels kC at a time, [c0, c0 + kC) for c0 = grp kC, grp kC + kGroups kC, ...
  for (int64_t c0 = static_cast<int64_t>(grp) * kC; c0 < D; c0 += kGroups * kC) {
    A v[kC];
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      const int64_t d = c0 + j;
      v[j] = kc >= 0 && d < D ? c * (to_acc(fi[d * N]) - mk[d] * ms) : A(0);
    }
    if (few) {
      warp_segment_channels_add(kc, v, [&](int kk, int j, A t) {
        if (c0 + j < D) atomicAdd(ws + kk * D + c0 + j, t);
      });
    } else if (kc >= 0) {
#pragma unroll
      for (int j = 0; j < kC; ++j)
        if (c0 + j < D) atomicAdd(ws + kc * D + c0 + j, v[j]);
    }
  }
}

template <typename T>
cudaError_t launch(const void* feats, const int64_t* labels, const void* mu, double delta_v, void* coef,
                   void* hinge, void* wsum, void* wcount, int64_t B, int64_t D, int64_t N, int64_t K,
                   int64_t ignore, bool deterministic, void* workspace, cudaStream_t stream, const Fused& fused) {
  using A = acc_t<T>;
  cudaError_t err = cudaSuccess;
  const void* bufs[] = {coef, hinge, wsum, wcount};
  const int64_t sizes[] = {B * N, B * K, B * K * D, B * K};
  // a fused caller has cleared the accumulated outputs (coef is written whole either way)
  for (int j = 0; j < 4 && err == cudaSuccess && !fused.cleared; ++j)
    err = cudaMemsetAsync(const_cast<void*>(bufs[j]), 0, sizeof(A) * sizes[j], stream);
  if (err != cudaSuccess || B == 0 || N == 0) return err;
  if (deterministic && workspace == nullptr) return cudaErrorInvalidValue;
  A* h2 = deterministic ? static_cast<A*>(workspace) : nullptr;  // [B, N], then segment_sum's workspace
  const int64_t tiles = (N + kPix - 1) / kPix;
  if (tiles > INT32_MAX) return cudaErrorInvalidValue;
  // chunks of images are taken from the end so the reverse order holds across chunks too
  for (int64_t done = 0; done < B; done += kMaxGridYZ) {
    const int64_t nb = B - done < kMaxGridYZ ? B - done : kMaxGridYZ;
    const int64_t b0 = B - done - nb;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(nb));
    const T* f = static_cast<const T*>(feats) + b0 * D * N;
    const A* m = static_cast<const A*>(mu) + b0 * K * D;
    const A* mn = fused.mean_counts ? static_cast<const A*>(fused.mean_counts) + b0 * K : nullptr;
    A *co = static_cast<A*>(coef) + b0 * N, *hi = static_cast<A*>(hinge) + b0 * K;
    A *ws = static_cast<A*>(wsum) + b0 * K * D, *wc = static_cast<A*>(wcount) + b0 * K;
    if (deterministic)
      CSFR_LAUNCH(grid, dim3(kPix, kGroups), 0, stream, cac_pixel_pass_kernel<T, true>)(
          f, labels + b0 * N, m, mn, static_cast<A>(delta_v), co, hi, ws, wc, h2 + b0 * N, nb, D, N, K, ignore);
    else
      CSFR_LAUNCH(grid, dim3(kPix, kGroups), 0, stream, cac_pixel_pass_kernel<T, false>)(
          f, labels + b0 * N, m, mn, static_cast<A>(delta_v), co, hi, ws, wc, nullptr, nb, D, N, K, ignore);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (!deterministic) return cudaSuccess;
  const DType self = CSFR_DTYPE_OF(T), acc = CSFR_DTYPE_OF(A);
  void* scratch = h2 + B * N;
  const Fused centre{fused.mean_counts, nullptr, fused.cleared};
  err = segment_sum_fused(self, feats, labels, coef, mu, wsum, wcount, B, D, N, K, ignore, true, scratch, stream,
                          centre);
  if (err == cudaSuccess)  // hinge[b, k] = sum of h^2 over the pixels of class k: a one-channel segment sum
    err = segment_sum_fused(acc, h2, labels, nullptr, nullptr, hinge, nullptr, B, 1, N, K, ignore, true, scratch,
                            stream, Fused{nullptr, nullptr, fused.cleared});
  return err;
}

}  // namespace

cudaError_t cac_pixel_pass(DType dtype, const void* feats, const int64_t* labels, const void* mu,
                           double delta_v, void* coef, void* hinge, void* wsum, void* wcount, int64_t B,
                           int64_t D, int64_t N, int64_t K, int64_t ignore_index, bool deterministic,
                           void* workspace, cudaStream_t stream) {
  return detail::cac_pixel_pass_fused(dtype, feats, labels, mu, delta_v, coef, hinge, wsum, wcount, B, D, N, K,
                                      ignore_index, deterministic, workspace, stream, detail::Fused{});
}

cudaError_t detail::cac_pixel_pass_fused(DType dtype, const void* feats, const int64_t* labels, const void* mu,
                                         double delta_v, void* coef, void* hinge, void* wsum, void* wcount,
                                         int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore_index,
                                         bool deterministic, void* workspace, cudaStream_t stream,
                                         const Fused& fused) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return launch<T>(feats, labels, mu, delta_v, coef, hinge, wsum, wcount, B, D, N, K, ignore_index, deterministic,
                     workspace, stream, fused);
  });
}

size_t cac_pixel_pass_workspace_bytes(DType dtype, int64_t B, int64_t D, int64_t N, int64_t K) {
  const size_t acc = dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(B * N) * acc + segment_sum_workspace_bytes(dtype, B, D, N, K);
}

}  // namespace csfr
