// Schemas of the csfr kernels (the kernel contract of docs/kernels.md), shared by the csfr library
// (csrc/ops.cpp) and the emulated CUDA test library (csfr_emulated, csrc/cuda/ops_cuda.cpp).
#pragma once
#include <torch/library.h>

namespace csfr {

inline void define_kernel_schemas(torch::Library& m) {
  m.def("segment_sum(Tensor feats, Tensor labels, int num_classes, int ignore_index)"
        " -> (Tensor sums, Tensor counts)");
  m.def("cac_pixel_pass(Tensor feats, Tensor labels, Tensor mu, float delta_v, int ignore_index)"
        " -> (Tensor coef, Tensor hinge, Tensor wsum, Tensor wcount)");
  m.def("pixel_grad(Tensor feats, Tensor labels, Tensor g, int ignore_index,"
        " Tensor? mu, Tensor? coef, Tensor? a) -> Tensor");
  // the fused ops (docs/kernels.md, "The fused ops"): state is a buffer of kernels/fused_state.h
  m.def("cac_loss(Tensor feats, Tensor labels, int num_classes, float delta_v, float delta_d, float w_intra,"
        " float w_inter, int ignore_index) -> (Tensor loss, Tensor terms, Tensor state)");
  m.def("cac_loss_backward(Tensor? grad_loss, Tensor? grad_terms, Tensor feats, Tensor labels, Tensor state,"
        " int num_classes, float w_intra, float w_inter, int ignore_index) -> Tensor");
  m.def("class_centroids_fused(Tensor feats, Tensor labels, int num_classes, int ignore_index)"
        " -> (Tensor mu, Tensor counts, Tensor state)");
  m.def("class_centroids_fused_backward(Tensor grad_mu, Tensor feats, Tensor labels, Tensor state, int num_classes,"
        " int ignore_index) -> Tensor");
  m.def("blend_forward(Tensor x, Tensor s, Tensor g) -> Tensor");
  m.def("blend_backward(Tensor grad_z, Tensor x, Tensor s, Tensor g) -> (Tensor, Tensor, Tensor)");
}

}  // namespace csfr
