// Probe kernels for tests/test_emulation.py: each exercises one rule of the CUDA execution model as the
// emulation (csrc/emulation/) implements it, or breaks one on purpose to see it reported. Compiled only
// with the emulation (csfr.ops.emulation.compile_emulated), registered as torch ops csfr_probe::*.
#include <cuda_runtime.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include <string>

#include "common.cuh"

namespace {

using at::Tensor;

void check(cudaError_t err) { TORCH_CHECK(err == cudaSuccess, "probe launch: ", cudaGetErrorString(err)); }

// Every thread writes which thread is lane 0 of its warp (linear ids, x fastest): shows how threads
// are grouped into warps for 2-D and 3-D blocks.
__global__ void lane0_kernel(int64_t* out) {
  const int t = threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
  out[t] = __shfl_sync(0xffffffffu, t, 0);
}

Tensor lane0_of_warp(int64_t bx, int64_t by, int64_t bz) {
  Tensor out = at::full({bx * by * bz}, -1, at::kLong);
  CSFR_LAUNCH(1, dim3(bx, by, bz), 0, nullptr, lane0_kernel)(out.data_ptr<int64_t>());
  check(cudaGetLastError());
  return out;
}

__global__ void shfl_xor_kernel(const float* v, float* out, int lane_mask) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  out[t] = __shfl_xor_sync(0xffffffffu, v[t], lane_mask);
}

Tensor shfl_xor(const Tensor& v, int64_t lane_mask) {
  Tensor out = at::empty_like(v);
  CSFR_LAUNCH(v.numel() / 64, 64, 0, nullptr, shfl_xor_kernel)(v.data_ptr<float>(), out.data_ptr<float>(),
                                                                static_cast<int>(lane_mask));
  check(cudaGetLastError());
  return out;
}

// out[t] = (ballot, all, any) of pred over the warp of thread t
__global__ void votes_kernel(const int* pred, int64_t* out) {
  const int t = threadIdx.x;
  out[3 * t] = __ballot_sync(0xffffffffu, pred[t]);
  out[3 * t + 1] = __all_sync(0xffffffffu, pred[t]);
  out[3 * t + 2] = __any_sync(0xffffffffu, pred[t]);
}

// Each lane writes its slot of a warp-shared buffer, __syncwarp, then reads its neighbour's: only the
// barrier makes every write land before any read (without it a lane may run ahead of the writer).
__global__ void syncwarp_kernel(int* out, int base) {
  __shared__ int slot[64];  // a static in the emulation: it keeps the last launch's values
  const int t = threadIdx.x;
  slot[t] = base + t;
  __syncwarp();
  out[t] = slot[(t & ~31) + ((t + 1) & 31)];
}

Tensor syncwarp_neighbours(int64_t seed) {
  csfr::emu::set_seed(static_cast<uint64_t>(seed));
  Tensor out = at::empty({64}, at::kInt);
  CSFR_LAUNCH(1, 64, 0, nullptr, syncwarp_kernel)(out.data_ptr<int>(), static_cast<int>(1000 * (seed + 1)));
  check(cudaGetLastError());
  return out;
}

Tensor votes(const Tensor& pred) {
  Tensor out = at::empty({pred.numel(), 3}, at::kLong);
  CSFR_LAUNCH(1, pred.numel(), 0, nullptr, votes_kernel)(pred.data_ptr<int>(), out.data_ptr<int64_t>());
  check(cudaGetLastError());
  return out;
}

// Block reduction through static and dynamic shared memory, one block per 128 values.
__global__ void block_sums_kernel(const float* v, float* out) {
  __shared__ float partial[128];
  float* staged = csfr::detail::dynamic_smem<float>();
  const int t = threadIdx.x;
  staged[t] = v[blockIdx.x * 128 + t];
  __syncthreads();
  partial[t] = staged[t] + staged[127 - t];  // reads another thread's write: needs the barrier
  __syncthreads();
  for (int stride = 32; stride > 0; stride /= 2) {
    if (t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

Tensor block_sums(const Tensor& v) {
  Tensor out = at::empty({v.numel() / 128}, v.options());
  CSFR_LAUNCH(v.numel() / 128, 128, 128 * sizeof(float), nullptr, block_sums_kernel)(v.data_ptr<float>(),
                                                                                       out.data_ptr<float>());
  check(cudaGetLastError());
  return out;
}

__global__ void atomic_sum_kernel(const float* v, float* out) { atomicAdd(out, v[blockIdx.x * blockDim.x + threadIdx.x]); }

Tensor atomic_sum(const Tensor& v) {
  Tensor out = at::zeros({1}, v.options());
  CSFR_LAUNCH(v.numel() / 32, 32, 0, nullptr, atomic_sum_kernel)(v.data_ptr<float>(), out.data_ptr<float>());
  check(cudaGetLastError());
  return out;
}

// Programs that break a rule.
__global__ void divergent_syncthreads_kernel() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void exit_before_barrier_kernel() {
  if (threadIdx.x == 3) return;
  __syncthreads();
}

__global__ void shfl_exited_lane_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void divergent_collective_kernel(int* out) {
  if (threadIdx.x < 8) out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
  else out[threadIdx.x] = __any_sync(0xffffffffu, 1);
}

__global__ void divergent_syncwarp_kernel(int* out) {
  if (threadIdx.x < 8) __syncwarp();
  else out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
}

__global__ void smem_kernel(float* out) { out[threadIdx.x] = csfr::detail::dynamic_smem<float>()[threadIdx.x]; }

__global__ void oob_write_kernel(float* out, int n) { out[n + threadIdx.x] = 1.f; }  // n + t: past the end

void fault(const std::string& kind) {
  Tensor buf = at::zeros({64}, at::kInt);
  Tensor floats = at::zeros({32}, at::kFloat);
  if (kind == "divergent_syncthreads") CSFR_LAUNCH(1, 32, 0, nullptr, divergent_syncthreads_kernel)();
  else if (kind == "exit_before_barrier") CSFR_LAUNCH(1, 64, 0, nullptr, exit_before_barrier_kernel)();
  else if (kind == "shfl_exited_lane") CSFR_LAUNCH(1, 32, 0, nullptr, shfl_exited_lane_kernel)(buf.data_ptr<int>());
  else if (kind == "divergent_collective")
    CSFR_LAUNCH(1, 32, 0, nullptr, divergent_collective_kernel)(buf.data_ptr<int>());
  else if (kind == "divergent_syncwarp")
    CSFR_LAUNCH(1, 32, 0, nullptr, divergent_syncwarp_kernel)(buf.data_ptr<int>());
  else if (kind == "smem_without_optin")
    CSFR_LAUNCH(1, 32, 64 * 1024, nullptr, smem_kernel)(floats.data_ptr<float>());
  else if (kind == "oob_write") CSFR_LAUNCH(1, 32, 0, nullptr, oob_write_kernel)(floats.data_ptr<float>(), 31);
  else TORCH_CHECK(false, "unknown fault ", kind);
  check(cudaGetLastError());
}

}  // namespace

TORCH_LIBRARY(csfr_probe, m) {
  m.def("lane0_of_warp(int bx, int by, int bz) -> Tensor", &lane0_of_warp);
  m.def("shfl_xor(Tensor v, int lane_mask) -> Tensor", &shfl_xor);
  m.def("votes(Tensor pred) -> Tensor", &votes);
  m.def("syncwarp_neighbours(int seed) -> Tensor", &syncwarp_neighbours);
  m.def("block_sums(Tensor v) -> Tensor", &block_sums);
  m.def("atomic_sum(Tensor v) -> Tensor", &atomic_sum);
  m.def("fault(str kind) -> ()", &fault);
  m.def("set_seed(int seed) -> ()", [](int64_t seed) { csfr::emu::set_seed(static_cast<uint64_t>(seed)); });
}
