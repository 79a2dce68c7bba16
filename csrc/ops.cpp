// Schemas of the csfr kernels (the kernel contract of docs/kernels.md) and the Python module.
// Implementations register per dispatch key: CPU in csrc/cpu_kernels.cpp, CUDA in csrc/cuda/.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(csfr, m) {
  m.def("segment_sum(Tensor feats, Tensor labels, int num_classes, int ignore_index)"
        " -> (Tensor sums, Tensor counts)");
  m.def("cac_pixel_pass(Tensor feats, Tensor labels, Tensor mu, float delta_v, int ignore_index)"
        " -> (Tensor coef, Tensor hinge, Tensor wsum, Tensor wcount)");
  m.def("pixel_grad(Tensor feats, Tensor labels, Tensor g, int ignore_index,"
        " Tensor? mu, Tensor? coef, Tensor? a) -> Tensor");
  m.def("blend_forward(Tensor x, Tensor s, Tensor g) -> Tensor");
  m.def("blend_backward(Tensor grad_z, Tensor x, Tensor s, Tensor g) -> (Tensor, Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef CSFR_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}
