// What the CUDA glue (ops_cuda.cpp) needs of the device runtime: a real GPU through c10/cuda, or,
// when compiled with CSFR_EMULATION, the CPU emulation of csrc/emulation/ on CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#ifdef CSFR_EMULATION
#include <cuda_runtime.h>  // csrc/emulation/cuda_runtime.h: first on the emulation build's include path

namespace csfr_glue {
constexpr const char* kTensorKind = "CPU (emulated CUDA)";
inline bool on_device(const at::Tensor& t) { return t.is_cpu(); }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
inline cudaStream_t stream() { return nullptr; }
}  // namespace csfr_glue

#define CSFR_CUDA_CHECK(expr)                                                                   \
  do {                                                                                          \
    const cudaError_t csfr_err_ = (expr);                                                       \
    TORCH_CHECK(csfr_err_ == cudaSuccess, "csfr emulated CUDA: ", cudaGetErrorString(csfr_err_)); \
  } while (0)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace csfr_glue {
constexpr const char* kTensorKind = "CUDA";
inline bool on_device(const at::Tensor& t) { return t.is_cuda(); }
using DeviceGuard = c10::cuda::CUDAGuard;
// torch's current stream (what at::cuda::getCurrentCUDAStream returns; the c10 header avoids cuSPARSE/cuBLAS)
inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
}  // namespace csfr_glue

#define CSFR_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#endif
