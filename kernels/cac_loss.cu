// The fused cac_loss (docs/kernels.md, "The fused cac_loss"): the whole loss in four launches forward and one
// backward, with nothing read back by the host, so its cost on a GPU is the bytes it moves, not launches.
//
// Forward, on one `state` buffer (kernels/fused_state.h):
//  1. one clear of the accumulated part;
//  2. segment_sum: class sums and counts, flagging labels outside [0, K) on the device;
//  3. cac_pixel_pass: distances to the means sums / n (formed where read), hinges, coef, wsum;
//  4. class_part_kernel: everything that lives on the classes. Block (a, b) owns class a of image b: it
//     forms mu_a in shared memory, then its warps take the other classes c, lanes along channels (each
//     class row is read coalesced), for ||mu_a - mu_c|| and the push gap; the same block then writes the
//     inter gradient's row a. Distances are taken from differences (never a Gram matrix), so the large
//     common offset of post-ReLU features cancels exactly. Each block writes its class's share of the
//     terms; the last block to finish (a ticket counter) sums the shares in a fixed order, so the loss is
//     bitwise reproducible, and writes the terms and the weighted loss: NaN if a class sum was not finite,
//     and a device-side assertion if a label was out of range.
// Backward: cac_grad_kernel, one pass over the features, reading the upstream gradients from device memory.
#include <cmath>

#include "fused_state.h"
#include "common.cuh"

namespace csfr {
namespace {

using namespace detail;

constexpr int kClassThreads = 256;
constexpr int kClassWarps = kClassThreads / 32;

// The block's total of each thread's v, the same bits in every thread and every run (a fixed order: the
// warps' butterflies, then the warps in index order). All threads must call.
template <typename A>
__device__ A block_sum(A v, A* scratch) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < kClassWarps; ++w) total += scratch[w];
  __syncthreads();  // scratch may be reused at once
  return total;
}

template <typename A>
__global__ void __launch_bounds__(kClassThreads)
class_part_kernel(A* __restrict__ st, CacState L, A delta_d, A w_intra, A w_inter, A* __restrict__ loss,
                  A* __restrict__ terms) {
  const int64_t K = L.K, D = L.D;
  const int64_t a = blockIdx.x, b = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid / 32;
  A* mu_a = dynamic_smem<A>();  // [D]
  A* wrow = mu_a + D;            // [K]: gap / distance to each class, 0 for a itself and absent classes
  A* inv = wrow + K;             // [K]: each partner class's 1 / n, for the second pass
  A* scratch = inv + K;          // [kClassWarps]
  __shared__ int s_last;
  const A* counts = st + L.counts() + b * K;
  const A* sums = st + L.sums() + b * K * D;

  A mine = 0;
  for (int64_t k = tid; k < K; k += kClassThreads) mine += counts[k] > A(0) ? A(1) : A(0);
  const A n = block_sum(mine, scratch);  // classes present in image b
  const A inv_n = A(1) / (n > A(1) ? n : A(1));
  const A has_intra = n >= A(1) ? A(1) : A(0), has_inter = n >= A(2) ? A(1) : A(0);
  const A pairs = n * (n - 1) > A(1) ? n * (n - 1) : A(1);
  if (a == 0 && tid == 0) st[L.present() + b] = n;

  A* g = st + L.g_inter() + (b * K + a) * D;
  A row_intra = 0, row_inter = 0;
  if (counts[a] > A(0)) {  // block-uniform
    const A inv_a = mean_scale(counts, a);
    bool finite = true;
    for (int64_t d = tid; d < D; d += kClassThreads) {
      const A s = sums[a * D + d];
      finite = finite && isfinite(s);
      mu_a[d] = s * inv_a;
    }
    if (!finite) st[L.flags() + kFlagNonFinite] = A(1);  // every writer stores the same 1
    __syncthreads();
    row_intra = st[L.hinge() + b * K + a] * inv_a * inv_n * has_intra;
    if (tid == 0) st[L.a() + b * K + a] = has_intra * inv_n * inv_a;
    A gap2 = 0;  // lane 0 of each warp: the squared gaps of its classes
    for (int64_t c = warp; c < K; c += kClassWarps) {
      if (c == a || !(counts[c] > A(0))) {  // warp-uniform
        if (lane == 0) wrow[c] = 0;
        continue;
      }
      const A inv_c = mean_scale(counts, c);
      if (lane == 0) inv[c] = inv_c;
      A d2 = 0;
      for (int64_t d = lane; d < D; d += 32) {
        const A diff = mu_a[d] - sums[c * D + d] * inv_c;
        d2 += diff * diff;
      }
      const A dist = sqrt(warp_sum(d2));
      const A gap = A(2) * delta_d - dist > A(0) ? A(2) * delta_d - dist : A(0);
      if (lane == 0) {
        wrow[c] = dist > A(0) ? gap / dist : A(0);
        gap2 += gap * gap;
      }
    }
    row_inter = block_sum(gap2, scratch) / pairs * has_inter;  // its barrier also publishes wrow and inv
    // d(inter)/d(mu_a) = -4 / pairs * sum_c gap / dist (mu_a - mu_c), reaching each pixel of a with 1 / n_a
    const A scale = A(-4) * has_inter / pairs * inv_a;
    for (int64_t d = tid; d < D; d += kClassThreads) {
      A acc = 0;
      for (int64_t c = 0; c < K; ++c)
        if (wrow[c] != A(0)) acc += wrow[c] * (mu_a[d] - sums[c * D + d] * inv[c]);
      g[d] = scale * acc;
    }
  } else {
    if (tid == 0) st[L.a() + b * K + a] = 0;
    for (int64_t d = tid; d < D; d += kClassThreads) g[d] = 0;
  }
  if (tid == 0) {
    st[L.row_intra() + b * K + a] = row_intra;
    st[L.row_inter() + b * K + a] = row_inter;
  }

  // the last block to finish sums the shares; the fences order every block's writes before its ticket
  __threadfence();
  if (tid == 0)
    s_last = atomicAdd(reinterpret_cast<unsigned*>(st + L.ticket()), 1u) == gridDim.x * gridDim.y - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const volatile A* done = st;  // written by other blocks: not from this block's cache
  A intra = 0, inter = 0, n_intra = 0, n_inter = 0;
  for (int64_t j = tid; j < L.B; j += kClassThreads) {
    for (int64_t k = 0; k < K; ++k) {
      intra += done[L.row_intra() + j * K + k];
      inter += done[L.row_inter() + j * K + k];
    }
    n_intra += done[L.present() + j] >= A(1) ? A(1) : A(0);
    n_inter += done[L.present() + j] >= A(2) ? A(1) : A(0);
  }
  intra = block_sum(intra, scratch);
  inter = block_sum(inter, scratch);
  n_intra = block_sum(n_intra, scratch);
  n_inter = block_sum(n_inter, scratch);
  if (tid != 0) return;
  n_intra = n_intra > A(1) ? n_intra : A(1);
  n_inter = n_inter > A(1) ? n_inter : A(1);
  intra /= n_intra;
  inter /= n_inter;
  if (done[L.flags() + kFlagBadLabel] != A(0))
    device_fail("cac_loss: a label value is outside [0, num_classes) and is not ignore_index (the device-side "
                "check of csfr::cac_loss; check the labels on the CPU to see which)");
  if (done[L.flags() + kFlagNonFinite] != A(0)) intra = inter = static_cast<A>(nan(""));
  terms[0] = intra;
  terms[1] = inter;
  *loss = w_intra * intra + w_inter * inter;
  st[L.scale()] = A(1) / n_intra;
  st[L.scale() + 1] = A(1) / n_inter;
}

constexpr int kGradThreads = 256;
constexpr int kGradChannels = 64;  // channels per block: a pixel's label and class factors are loaded once per 64

// dF_i = s_i (a_k coef_i (f_i - mu_k) - a_k / n_k wsum_k) + s_e g_k, k = y_i, with s_i = go_intra / n_intra and
// s_e = go_inter / n_inter; go_* = the upstream gradient of the terms plus the loss's times the weights.
template <typename T>
__global__ void __launch_bounds__(kGradThreads)
cac_grad_kernel(const T* __restrict__ feats, const int64_t* __restrict__ labels, const acc_t<T>* __restrict__ st,
                CacState L, const acc_t<T>* __restrict__ grad_loss, const acc_t<T>* __restrict__ grad_terms,
                int64_t terms_stride, acc_t<T> w_intra, acc_t<T> w_inter, T* __restrict__ out, int64_t ignore) {
  using A = acc_t<T>;
  const int64_t D = L.D, N = L.N, K = L.K;
  const PixelRun r = pixel_run(kGradThreads, kGradChannels, labels, D, N, K, ignore);
  if (r.i >= N) return;
  if (r.k < 0) return zero_run(out, r, N);
  const int64_t b = r.b, i = r.i, d0 = r.d0, row0 = r.row0;
  const int dn = r.dn, k = r.k;
  A go_intra = 0, go_inter = 0;
  if (grad_loss) {
    go_intra += w_intra * grad_loss[0];
    go_inter += w_inter * grad_loss[0];
  }
  if (grad_terms) {
    go_intra += grad_terms[0];
    go_inter += grad_terms[terms_stride];
  }
  const A s_intra = go_intra * st[L.scale()], s_inter = go_inter * st[L.scale() + 1];
  const int64_t bk = b * K + k;
  const A inv = mean_scale(st + L.counts(), bk);
  const A ak = s_intra * st[L.a() + bk];
  const A direct = ak * st[L.coef() + b * N + i], through_mu = -ak * inv;
  const A* sk = st + L.sums() + bk * D + d0;
  const A* wk = st + L.wsum() + bk * D + d0;
  const A* gk = st + L.g_inter() + bk * D + d0;
#pragma unroll 4
  for (int c = 0; c < dn; ++c) {
    const A v = direct * (to_acc(feats[row0 + c * N]) - sk[c] * inv) + through_mu * wk[c] + s_inter * gk[c];
    out[row0 + c * N] = from_acc<T>(v);
  }
}

template <typename T>
cudaError_t forward(const void* feats, const int64_t* labels, void* state, void* loss, void* terms,
                    const CacState& L, int64_t ignore, double delta_v, double delta_d, double w_intra,
                    double w_inter, bool deterministic, void* workspace, cudaStream_t stream) {
  using A = acc_t<T>;
  A* st = static_cast<A*>(state);
  if (L.B == 0) {  // no image: both terms 0, nothing to launch
    cudaError_t err = cudaMemsetAsync(loss, 0, sizeof(A), stream);
    return err == cudaSuccess ? cudaMemsetAsync(terms, 0, 2 * sizeof(A), stream) : err;
  }
  if (L.B > kMaxGridYZ || L.K > INT32_MAX) return cudaErrorInvalidValue;
  const DType self = CSFR_DTYPE_OF(T);
  cudaError_t err = cudaMemsetAsync(st, 0, sizeof(A) * L.cleared(), stream);
  if (err == cudaSuccess)
    err = segment_sum_fused(self, feats, labels, nullptr, nullptr, st + L.sums(), st + L.counts(), L.B, L.D, L.N,
                            L.K, ignore, deterministic, workspace, stream,
                            Fused{nullptr, st + L.flags() + kFlagBadLabel, true});
  if (err == cudaSuccess)
    err = cac_pixel_pass_fused(self, feats, labels, st + L.sums(), delta_v, st + L.coef(), st + L.hinge(),
                               st + L.wsum(), st + L.wcount(), L.B, L.D, L.N, L.K, ignore, deterministic, workspace,
                               stream, Fused{st + L.counts(), nullptr, true});
  if (err != cudaSuccess) return err;
  const size_t smem = sizeof(A) * (L.D + 2 * L.K + kClassWarps);
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(class_part_kernel<A>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(L.K), static_cast<unsigned>(L.B));
  CSFR_LAUNCH(grid, kClassThreads, smem, stream, class_part_kernel<A>)(
      st, L, static_cast<A>(delta_d), static_cast<A>(w_intra), static_cast<A>(w_inter), static_cast<A*>(loss),
      static_cast<A*>(terms));
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const void* feats, const int64_t* labels, const void* state, const void* grad_loss,
                     const void* grad_terms, int64_t terms_stride, double w_intra, double w_inter, void* out,
                     const CacState& L, int64_t ignore, cudaStream_t stream) {
  using A = acc_t<T>;
  if (L.B == 0 || L.N == 0 || L.D == 0) return cudaSuccess;
  const int64_t tiles = (L.N + kGradThreads - 1) / kGradThreads;
  const int64_t dtiles = (L.D + kGradChannels - 1) / kGradChannels;
  if (L.B > kMaxGridYZ || dtiles > kMaxGridYZ || tiles > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(dtiles), static_cast<unsigned>(L.B));
  CSFR_LAUNCH(grid, kGradThreads, 0, stream, cac_grad_kernel<T>)(
      static_cast<const T*>(feats), labels, static_cast<const A*>(state), L, static_cast<const A*>(grad_loss),
      static_cast<const A*>(grad_terms), terms_stride, static_cast<A>(w_intra), static_cast<A>(w_inter),
      static_cast<T*>(out), ignore);
  return cudaGetLastError();
}

}  // namespace

cudaError_t cac_loss_forward(DType dtype, const void* feats, const int64_t* labels, void* state, void* loss,
                             void* terms, int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore_index,
                             double delta_v, double delta_d, double w_intra, double w_inter, bool deterministic,
                             void* workspace, cudaStream_t stream) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return forward<T>(feats, labels, state, loss, terms, CacState{B, D, N, K}, ignore_index, delta_v, delta_d,
                      w_intra, w_inter, deterministic, workspace, stream);
  });
}

cudaError_t cac_loss_backward(DType dtype, const void* feats, const int64_t* labels, const void* state,
                              const void* grad_loss, const void* grad_terms, int64_t terms_stride, double w_intra,
                              double w_inter, void* out, int64_t B, int64_t D, int64_t N, int64_t K,
                              int64_t ignore_index, cudaStream_t stream) {
  return CSFR_DISPATCH(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return backward<T>(feats, labels, state, grad_loss, grad_terms, terms_stride, w_intra, w_inter, out,
                       CacState{B, D, N, K}, ignore_index, stream);
  });
}

}  // namespace csfr
