// gated_blend forward and backward: z = x + sigmoid(g) (s - x) over x, s [B, C, N] (docs/cuda.md).
//
// Elementwise work runs on a grid of (pixel tiles, rows b*C + c), so no per-element division by N.
// The gate gradient is reduced where it broadcasts, in one pass that also writes dx and ds:
//  - per channel g [B,C,1]: one block per row sums its N contributions (block reduction, no atomics);
//  - per pixel g [B,1,N]: one thread per pixel walks the C channels (coalesced across the warp);
//  - full g: plain elementwise.
#include "common.cuh"

namespace csfr {
namespace {

using namespace detail;

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t gate_index(GateMode mode, int64_t row, int64_t C, int64_t N, int64_t i) {
  return mode == GateMode::kFull ? row * N + i : mode == GateMode::kPixel ? (row / C) * N + i : row;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
blend_forward_kernel(GateMode mode, const T* __restrict__ x, const T* __restrict__ s, const T* __restrict__ g,
                     T* __restrict__ z, int64_t rows, int64_t C, int64_t N) {
  using A = acc_t<T>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= N) return;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t e = row * N + i;
    const A xv = to_acc(x[e]);
    z[e] = from_acc<T>(xv + sigmoid(to_acc(g[gate_index(mode, row, C, N, i)])) * (to_acc(s[e]) - xv));
  }
}

// One element's dx, ds; returns its gate-gradient contribution (s - x) sigma (1 - sigma) dz.
template <typename T>
__device__ __forceinline__ acc_t<T> element_backward(const T* dz, const T* x, const T* s, T* dx, T* ds, int64_t e,
                                                     acc_t<T> gate) {
  using A = acc_t<T>;
  const A grad = to_acc(dz[e]);
  ds[e] = from_acc<T>(gate * grad);
  dx[e] = from_acc<T>((A(1) - gate) * grad);
  return (to_acc(s[e]) - to_acc(x[e])) * gate * (A(1) - gate) * grad;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
blend_backward_full(const T* __restrict__ dz, const T* __restrict__ x, const T* __restrict__ s,
                    const T* __restrict__ g, T* __restrict__ dx, T* __restrict__ ds, T* __restrict__ dg,
                    int64_t rows, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= N) return;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t e = row * N + i;
    dg[e] = from_acc<T>(element_backward(dz, x, s, dx, ds, e, sigmoid(to_acc(g[e]))));
  }
}

// g [B,1,N]: thread per pixel, loop over the C channels of its image.
template <typename T>
__global__ void __launch_bounds__(kThreads)
blend_backward_pixel(const T* __restrict__ dz, const T* __restrict__ x, const T* __restrict__ s,
                     const T* __restrict__ g, T* __restrict__ dx, T* __restrict__ ds, T* __restrict__ dg,
                     int64_t B, int64_t C, int64_t N) {
  using A = acc_t<T>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= N) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const A gate = sigmoid(to_acc(g[b * N + i]));
    A total = 0;
    for (int64_t c = 0; c < C; ++c) total += element_backward(dz, x, s, dx, ds, (b * C + c) * N + i, gate);
    dg[b * N + i] = from_acc<T>(total);
  }
}

// g [B,C,1]: one block per row, block reduction of the row's N contributions.
template <typename T>
__global__ void __launch_bounds__(kThreads)
blend_backward_channel(const T* __restrict__ dz, const T* __restrict__ x, const T* __restrict__ s,
                       const T* __restrict__ g, T* __restrict__ dx, T* __restrict__ ds, T* __restrict__ dg,
                       int64_t rows, int64_t N) {
  using A = acc_t<T>;
  __shared__ A warp_totals[kThreads / 32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const A gate = sigmoid(to_acc(g[row]));
    A total = 0;
    for (int64_t i = threadIdx.x; i < N; i += kThreads)
      total += element_backward(dz, x, s, dx, ds, row * N + i, gate);
    total = warp_sum(total);
    if ((threadIdx.x & 31) == 0) warp_totals[threadIdx.x / 32] = total;
    __syncthreads();
    if (threadIdx.x < 32) {
      A v = threadIdx.x < kThreads / 32 ? warp_totals[threadIdx.x] : A(0);
      v = warp_sum(v);
      if (threadIdx.x == 0) dg[row] = from_acc<T>(v);
    }
    __syncthreads();
  }
}

dim3 elementwise_grid(int64_t N, int64_t rows) {
  return dim3(static_cast<unsigned>((N + kThreads - 1) / kThreads),
              static_cast<unsigned>(rows < kMaxGridYZ ? rows : kMaxGridYZ));
}

bool grid_ok(int64_t N) { return (N + kThreads - 1) / kThreads <= INT32_MAX; }

template <typename T>
cudaError_t forward(GateMode mode, const void* x, const void* s, const void* g, void* z, int64_t B, int64_t C,
                    int64_t N, cudaStream_t stream) {
  if (B * C == 0 || N == 0) return cudaSuccess;
  if (!grid_ok(N)) return cudaErrorInvalidValue;
  CSFR_LAUNCH(elementwise_grid(N, B * C), kThreads, 0, stream, blend_forward_kernel<T>)(
      mode, static_cast<const T*>(x), static_cast<const T*>(s), static_cast<const T*>(g), static_cast<T*>(z),
      B * C, C, N);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(GateMode mode, const void* grad_z, const void* x, const void* s, const void* g, void* dx,
                     void* ds, void* dg, int64_t B, int64_t C, int64_t N, cudaStream_t stream) {
  if (B * C == 0 || N == 0) {
    // an empty reduction: the gate gradient is zero
    const int64_t gsize = mode == GateMode::kFull ? B * C * N : mode == GateMode::kPixel ? B * N : B * C;
    return cudaMemsetAsync(dg, 0, sizeof(T) * gsize, stream);
  }
  if (!grid_ok(N)) return cudaErrorInvalidValue;
  const T *pz = static_cast<const T*>(grad_z), *px = static_cast<const T*>(x), *ps = static_cast<const T*>(s),
          *pg = static_cast<const T*>(g);
  T *pdx = static_cast<T*>(dx), *pds = static_cast<T*>(ds), *pdg = static_cast<T*>(dg);
  switch (mode) {
    case GateMode::kFull:
      CSFR_LAUNCH(elementwise_grid(N, B * C), kThreads, 0, stream, blend_backward_full<T>)(pz, px, ps, pg, pdx, pds, pdg,
                                                                                  B * C, N);
      break;
    case GateMode::kPixel:
      CSFR_LAUNCH(elementwise_grid(N, B), kThreads, 0, stream, blend_backward_pixel<T>)(pz, px, ps, pg, pdx, pds, pdg, B,
                                                                               C, N);
      break;
    case GateMode::kChannel: {
      const int64_t rows = B * C;
      const unsigned blocks = static_cast<unsigned>(rows < INT32_MAX ? rows : INT32_MAX);
      CSFR_LAUNCH(blocks, kThreads, 0, stream, blend_backward_channel<T>)(pz, px, ps, pg, pdx, pds, pdg, rows, N);
      break;
    }
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t blend_forward(DType dtype, GateMode mode, const void* x, const void* s, const void* g, void* z,
                          int64_t B, int64_t C, int64_t N, cudaStream_t stream) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    return forward<std::remove_pointer_t<decltype(tag)>>(mode, x, s, g, z, B, C, N, stream);
  });
}

cudaError_t blend_backward(DType dtype, GateMode mode, const void* grad_z, const void* x, const void* s,
                           const void* g, void* dx, void* ds, void* dg, int64_t B, int64_t C, int64_t N,
                           cudaStream_t stream) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    return backward<std::remove_pointer_t<decltype(tag)>>(mode, grad_z, x, s, g, dx, ds, dg, B, C, N, stream);
  });
}

}  // namespace csfr
