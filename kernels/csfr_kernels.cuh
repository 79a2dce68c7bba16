// Raw-pointer launchers of the csfr CUDA kernels (docs/kernels.md, docs/cuda.md).
//
// No torch headers: the .cu files that define these compile with nvcc alone, and the host glue in
// csrc/cuda/ includes only this header. Every launcher enqueues on `stream`, zero-fills the outputs
// it accumulates into, and returns cudaGetLastError() after its launches. Shapes follow the kernel
// contract: feats [B, D, N] contiguous in `dtype`, labels [B, N] int64; "acc" buffers are float32
// (float64 when dtype is kFloat64). Labels equal to ignore_index, or outside [0, K), count nowhere.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace csfr {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// sums [B,K,D] acc, counts [B,K] acc. deterministic: no float atomics, every result is bitwise
// reproducible; needs `workspace` of segment_sum_workspace_bytes() (ignored otherwise, may be null).
cudaError_t segment_sum(DType dtype, const void* feats, const int64_t* labels, void* sums, void* counts,
                        int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore_index, bool deterministic,
                        void* workspace, cudaStream_t stream);

// The general form: pixel i of class k adds weight_i * (f_i - center_k) to sums[k] and weight_i to
// counts[k]; weight [B,N] and center [B,K,D] (acc) may each be null (weight 1, center 0); counts may be
// null (not counted).
cudaError_t segment_sum_weighted(DType dtype, const void* feats, const int64_t* labels, const void* weight,
                                 const void* center, void* sums, void* counts, int64_t B, int64_t D, int64_t N,
                                 int64_t K, int64_t ignore_index, bool deterministic, void* workspace,
                                 cudaStream_t stream);

size_t segment_sum_workspace_bytes(DType dtype, int64_t B, int64_t D, int64_t N, int64_t K);

// mu [B,K,D] acc in; coef [B,N], hinge [B,K], wsum [B,K,D] (sum of coef_i (f_i - mu_k)), wcount [B,K]
// acc out. deterministic: as for segment_sum, with cac_pixel_pass_workspace_bytes() of workspace.
cudaError_t cac_pixel_pass(DType dtype, const void* feats, const int64_t* labels, const void* mu,
                           double delta_v, void* coef, void* hinge, void* wsum, void* wcount, int64_t B,
                           int64_t D, int64_t N, int64_t K, int64_t ignore_index, bool deterministic,
                           void* workspace, cudaStream_t stream);

size_t cac_pixel_pass_workspace_bytes(DType dtype, int64_t B, int64_t D, int64_t N, int64_t K);

// g [B,K,D] acc; mu [B,K,D], coef [B,N], a [B,K] acc, all three null or all three given.
// out [B,D,N] in `dtype`; feats is read only when mu/coef/a are given.
cudaError_t pixel_grad(DType dtype, const void* feats, const int64_t* labels, const void* g, const void* mu,
                       const void* coef, const void* a, void* out, int64_t B, int64_t D, int64_t N, int64_t K,
                       int64_t ignore_index, cudaStream_t stream);

// The fused cac_loss (kernels/cac_loss.cu): state [CacState{B,D,N,K}.total()] acc (kernels/fused_state.h),
// loss [] and terms [2] (intra, inter) acc out; loss = w_intra * intra + w_inter * inter, both terms NaN if a
// counted feature is not finite; a label outside [0, K) and not ignored is a device-side assertion. Four
// launches, no host read.
// deterministic: needs cac_pixel_pass_workspace_bytes() of workspace.
cudaError_t cac_loss_forward(DType dtype, const void* feats, const int64_t* labels, void* state, void* loss,
                             void* terms, int64_t B, int64_t D, int64_t N, int64_t K, int64_t ignore_index,
                             double delta_v, double delta_d, double w_intra, double w_inter, bool deterministic,
                             void* workspace, cudaStream_t stream);

// dF [B,D,N] in `dtype` from the forward's state and the upstream gradients, read on the device: grad_loss
// [] and grad_terms [2] (element j at j * terms_stride), acc, either may be null (no gradient reached it).
cudaError_t cac_loss_backward(DType dtype, const void* feats, const int64_t* labels, const void* state,
                              const void* grad_loss, const void* grad_terms, int64_t terms_stride, double w_intra,
                              double w_inter, void* out, int64_t B, int64_t D, int64_t N, int64_t K,
                              int64_t ignore_index, cudaStream_t stream);

// The fused class_centroids: state [CentroidState{B,D,K}.total()] acc (kernels/fused_state.h); mu [B,K,D] in
// `dtype` and counts [B,K] int64 out. Two launches (a clear, segment_sum finishing each image in its last
// block), no host read; a label outside [0, K) and not ignored is a device-side assertion.
cudaError_t class_centroids_forward(DType dtype, const void* feats, const int64_t* labels, void* state, void* mu,
                                    int64_t* counts, int64_t B, int64_t D, int64_t N, int64_t K,
                                    int64_t ignore_index, bool deterministic, void* workspace, cudaStream_t stream);

// dF [B,D,N] = grad_mu[y_i] / n_{y_i}; grad_mu [B,K,D] in `dtype` at strides (stride_b, stride_k, stride_d).
cudaError_t class_centroids_backward(DType dtype, const int64_t* labels, const void* grad_mu, int64_t stride_b,
                                     int64_t stride_k, int64_t stride_d, const void* state, void* out, int64_t B,
                                     int64_t D, int64_t N, int64_t K, int64_t ignore_index, cudaStream_t stream);

// How the gate of gated_blend broadcasts over x [B,C,N].
enum class GateMode : int { kFull = 0, kPixel = 1, kChannel = 2 };

// z = x + sigmoid(g) (s - x); x, s, z [B,C,N]; g [B,C,N] / [B,1,N] / [B,C,1] by `mode`.
cudaError_t blend_forward(DType dtype, GateMode mode, const void* x, const void* s, const void* g, void* z,
                          int64_t B, int64_t C, int64_t N, cudaStream_t stream);

// dx, ds like x; dg like g (its reductions over broadcast dims accumulate in acc).
cudaError_t blend_backward(DType dtype, GateMode mode, const void* grad_z, const void* x, const void* s,
                           const void* g, void* dx, void* ds, void* dg, int64_t B, int64_t C, int64_t N,
                           cudaStream_t stream);

}  // namespace csfr
