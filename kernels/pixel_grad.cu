// pixel_grad: dF_i = g[y_i] + a[y_i] coef_i (f_i - mu[y_i]), the one backward pass over the features.
//
// Grid (pixel tiles, channel tiles of kDT, images). A thread owns one pixel across kDT channels: it
// loads the label (and a[y_i] * coef_i) once and then streams kDT coalesced channel rows. The
// class-indexed operands g and mu are [B, K, D], a few KiB per image, read through L1/L2.
#include "common.cuh"
#include "fused_state.h"

namespace csfr {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kDT = 8;

template <typename T, bool kDirect>
__global__ void __launch_bounds__(kThreads)
pixel_grad_kernel(const T* __restrict__ feats, const int64_t* __restrict__ labels, const acc_t<T>* __restrict__ g,
                  const acc_t<T>* __restrict__ mu, const acc_t<T>* __restrict__ coef,
                  const acc_t<T>* __restrict__ a, T* __restrict__ out, int64_t D, int64_t N, int64_t K,
                  int64_t ignore) {
  using A = acc_t<T>;
  const PixelRun r = pixel_run(kThreads, kDT, labels, D, N, K, ignore);
  if (r.i >= N) return;
  if (r.k < 0) return zero_run(out, r, N);
  const int64_t b = r.b, i = r.i, d0 = r.d0, row0 = r.row0;
  const int dn = r.dn, k = r.k;
  const A* gk = g + (b * K + k) * D + d0;
  const A ac = kDirect ? a[b * K + k] * coef[b * N + i] : A(0);
  const A* mk = kDirect ? mu + (b * K + k) * D + d0 : nullptr;
#pragma unroll
  for (int c = 0; c < kDT; ++c) {
    if (c >= dn) break;
    A v = gk[c];
    if (kDirect) v += ac * (to_acc(feats[row0 + c * N]) - mk[c]);
    out[row0 + c * N] = from_acc<T>(v);
  }
}

constexpr int kCentroidChannels = 64;  // the fused class_centroids' backward: a label read once per 64 channels

// dF_i = dmu[y_i] / n_{y_i}: the fused class_centroids' backward. dmu [B,K,D] in the features' dtype at any
// strides (the gradient of mu.sum() is one value broadcast: strides 0, nothing copied); counts from the state.
template <typename T>
__global__ void __launch_bounds__(kThreads)
centroid_grad_kernel(const int64_t* __restrict__ labels, const T* __restrict__ dmu, int64_t sb, int64_t sk,
                     int64_t sd, const acc_t<T>* __restrict__ counts, T* __restrict__ out, int64_t D, int64_t N,
                     int64_t K, int64_t ignore) {
  using A = acc_t<T>;
  const PixelRun r = pixel_run(kThreads, kCentroidChannels, labels, D, N, K, ignore);
  if (r.i >= N) return;
  if (r.k < 0) return zero_run(out, r, N);
  const A inv = mean_scale(counts, r.b * K + r.k);
  const T* g = dmu + r.b * sb + r.k * sk + r.d0 * sd;
#pragma unroll 4
  for (int c = 0; c < r.dn; ++c) out[r.row0 + c * N] = from_acc<T>(to_acc(g[c * sd]) * inv);
}

template <typename T>
cudaError_t launch(const void* feats, const int64_t* labels, const void* g, const void* mu, const void* coef,
                   const void* a, void* out, int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore,
                   cudaStream_t stream) {
  using A = acc_t<T>;
  const bool direct = mu != nullptr;
  if (direct != (coef != nullptr) || direct != (a != nullptr)) return cudaErrorInvalidValue;
  if (B == 0 || N == 0 || D == 0) return cudaSuccess;
  const int64_t tiles = (N + kThreads - 1) / kThreads, dtiles = (D + kDT - 1) / kDT;
  if (dtiles > kMaxGridYZ || tiles > INT32_MAX) return cudaErrorInvalidValue;
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
    const int64_t nb = B - b0 < kMaxGridYZ ? B - b0 : kMaxGridYZ;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(dtiles), static_cast<unsigned>(nb));
    const T* f = static_cast<const T*>(feats) + b0 * D * N;
    const A* gp = static_cast<const A*>(g) + b0 * K * D;
    T* o = static_cast<T*>(out) + b0 * D * N;
    if (direct)
      CSFR_LAUNCH(grid, kThreads, 0, stream, pixel_grad_kernel<T, true>)(
          f, labels + b0 * N, gp, static_cast<const A*>(mu) + b0 * K * D, static_cast<const A*>(coef) + b0 * N,
          static_cast<const A*>(a) + b0 * K, o, D, N, K, ignore);
    else
      CSFR_LAUNCH(grid, kThreads, 0, stream, pixel_grad_kernel<T, false>)(f, labels + b0 * N, gp, nullptr, nullptr,
                                                                  nullptr, o, D, N, K, ignore);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_centroid_grad(const int64_t* labels, const void* grad_mu, int64_t sb, int64_t sk, int64_t sd,
                                 const void* state, void* out, int64_t B, int64_t D, int64_t N, int64_t K,
                                 int64_t ignore, cudaStream_t stream) {
  using A = acc_t<T>;
  if (B == 0 || N == 0 || D == 0) return cudaSuccess;
  const int64_t tiles = (N + kThreads - 1) / kThreads, dtiles = (D + kCentroidChannels - 1) / kCentroidChannels;
  if (B > kMaxGridYZ || dtiles > kMaxGridYZ || tiles > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(dtiles), static_cast<unsigned>(B));
  const A* counts = static_cast<const A*>(state) + CentroidState{B, D, K}.counts();
  CSFR_LAUNCH(grid, kThreads, 0, stream, centroid_grad_kernel<T>)(labels, static_cast<const T*>(grad_mu), sb, sk, sd,
                                                                  counts, static_cast<T*>(out), D, N, K, ignore);
  return cudaGetLastError();
}

}  // namespace

cudaError_t pixel_grad(DType dtype, const void* feats, const int64_t* labels, const void* g, const void* mu,
                       const void* coef, const void* a, void* out, int64_t B, int64_t D, int64_t N, int64_t K,
                       int64_t ignore_index, cudaStream_t stream) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return launch<T>(feats, labels, g, mu, coef, a, out, B, D, N, K, ignore_index, stream);
  });
}

cudaError_t class_centroids_backward(DType dtype, const int64_t* labels, const void* grad_mu, int64_t stride_b,
                                     int64_t stride_k, int64_t stride_d, const void* state, void* out, int64_t B,
                                     int64_t D, int64_t N, int64_t K, int64_t ignore_index, cudaStream_t stream) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return launch_centroid_grad<T>(labels, grad_mu, stride_b, stride_k, stride_d, state, out, B, D, N, K,
                                   ignore_index, stream);
  });
}

}  // namespace csfr
