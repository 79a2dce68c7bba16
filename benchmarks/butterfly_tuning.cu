// Times segment_sum and cac_pixel_pass (float32, atomic paths) on random and blocky label maps, to
// choose how many classes a warp may hold before the kernels stop folding by butterflies and add one
// atomic per lane instead (kButterflyClasses in kernels/segment_sum.cu and kernels/cac_pixel_pass.cu,
// docs/cuda.md). Build one binary per limit and run each; every run also checks its sums against a
// float64 host reference, so a limit that is fast but wrong shows.
//
//   for n in 2 4 8 32; do nvcc -std=c++17 -O3 -arch=sm_90 -Ikernels -DCSFR_SEGMENT_SUM_BUTTERFLY_CLASSES=$n \
//     -DCSFR_PIXEL_PASS_BUTTERFLY_CLASSES=$n benchmarks/butterfly_tuning.cu kernels/segment_sum.cu \
//     kernels/cac_pixel_pass.cu -o tune_$n && ./tune_$n; done
//
// Labels as in benchmarks/bench_ops.py: random (every pixel drawn on its own, 10 % ignored) or blocky
// (16x16 regions of one class, 10 % of the regions ignored). Prints one line per kernel, shape and
// label kind: the median of 20 timed launches (CUDA events) and the relative error of the sums.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "csfr_kernels.cuh"

// the limits this binary was built with, for the table (0: the kernels' defaults)
#ifndef CSFR_SEGMENT_SUM_BUTTERFLY_CLASSES
#define CSFR_SEGMENT_SUM_BUTTERFLY_CLASSES 0
#endif
#ifndef CSFR_PIXEL_PASS_BUTTERFLY_CLASSES
#define CSFR_PIXEL_PASS_BUTTERFLY_CLASSES 0
#endif

namespace {

constexpr int64_t kIgnore = 255;
constexpr int kRegion = 16;
constexpr double kDeltaV = 0.5;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "butterfly_tuning: %s: %s\n", what, cudaGetErrorString(err));
    std::exit(2);
  }
}

std::vector<int64_t> make_labels(int64_t B, int64_t H, int64_t W, int64_t K, bool blocky, std::mt19937& rng) {
  std::uniform_int_distribution<int64_t> cls(0, K - 1);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int64_t> y(B * H * W);
  const int64_t rh = (H + kRegion - 1) / kRegion, rw = (W + kRegion - 1) / kRegion;
  std::vector<int64_t> region(B * rh * rw);
  for (auto& r : region) r = u(rng) < 0.1 ? kIgnore : cls(rng);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j)
        y[(b * H + i) * W + j] = blocky ? region[(b * rh + i / kRegion) * rw + j / kRegion]
                                        : (u(rng) < 0.1 ? kIgnore : cls(rng));
  return y;
}

template <typename Launch>
float median_ms(Launch launch) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < 3; ++i) check(launch(), "warm-up launch");
  std::vector<float> ms(20);
  for (auto& t : ms) {
    check(cudaEventRecord(start), "cudaEventRecord");
    check(launch(), "launch");
    check(cudaEventRecord(stop), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// ||got - want|| / ||want||
double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

void run_case(int64_t B, int64_t D, int64_t H, int64_t W, int64_t K, bool blocky) {
  const int64_t N = H * W;
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> f(B * D * N), mu(B * K * D);
  for (auto& x : f) x = u(rng);
  for (auto& x : mu) x = 0.3f + 0.4f * u(rng);
  const std::vector<int64_t> y = make_labels(B, H, W, K, blocky, rng);

  float *df, *dmu, *dsums, *dcounts, *dcoef, *dhinge, *dwsum, *dwcount;
  int64_t* dy;
  check(cudaMalloc(&df, f.size() * 4), "cudaMalloc");
  check(cudaMalloc(&dmu, mu.size() * 4), "cudaMalloc");
  check(cudaMalloc(&dy, y.size() * 8), "cudaMalloc");
  check(cudaMalloc(&dsums, B * K * D * 4), "cudaMalloc");
  check(cudaMalloc(&dcounts, B * K * 4), "cudaMalloc");
  check(cudaMalloc(&dcoef, B * N * 4), "cudaMalloc");
  check(cudaMalloc(&dhinge, B * K * 4), "cudaMalloc");
  check(cudaMalloc(&dwsum, B * K * D * 4), "cudaMalloc");
  check(cudaMalloc(&dwcount, B * K * 4), "cudaMalloc");
  check(cudaMemcpy(df, f.data(), f.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(dmu, mu.data(), mu.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(dy, y.data(), y.size() * 8, cudaMemcpyHostToDevice), "cudaMemcpy");

  auto seg = [&] {
    return csfr::segment_sum(csfr::DType::kFloat32, df, dy, dsums, dcounts, B, D, N, K, kIgnore, false,
                             nullptr, nullptr);
  };
  auto pix = [&] {
    return csfr::cac_pixel_pass(csfr::DType::kFloat32, df, dy, dmu, kDeltaV, dcoef, dhinge, dwsum, dwcount, B,
                                D, N, K, kIgnore, false, nullptr, nullptr);
  };
  const float seg_ms = median_ms(seg), pix_ms = median_ms(pix);

  // float64 references: class sums of f; wsum[k] = sum of coef_i (f_i - mu_k), coef = 2 h / r
  std::vector<double> sums(B * K * D, 0), wsum(B * K * D, 0), dist(N);
  for (int64_t b = 0; b < B; ++b) {
    std::fill(dist.begin(), dist.end(), 0.0);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t k = y[b * N + i];
        if (k == kIgnore) continue;
        const double v = f[(b * D + d) * N + i], m = mu[(b * K + k) * D + d];
        sums[(b * K + k) * D + d] += v;
        dist[i] += (v - m) * (v - m);
      }
    for (int64_t d = 0; d < D; ++d)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t k = y[b * N + i];
        if (k == kIgnore) continue;
        const double r = std::sqrt(dist[i]), h = r > kDeltaV ? r - kDeltaV : 0.0;
        const double c = h > 0 ? 2 * h / r : 0.0;
        wsum[(b * K + k) * D + d] += c * (f[(b * D + d) * N + i] - mu[(b * K + k) * D + d]);
      }
  }
  std::vector<float> got(B * K * D);
  check(seg(), "segment_sum");
  check(cudaMemcpy(got.data(), dsums, got.size() * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
  const double seg_err = rel_error(got, sums);
  check(pix(), "cac_pixel_pass");
  check(cudaMemcpy(got.data(), dwsum, got.size() * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
  const double pix_err = rel_error(got, wsum);

  auto row = [&](int limit, const char* kernel, float ms, double err) {
    std::printf("| %d | %s | B=%lld D=%lld %lldx%lld K=%lld | %s | %.3f | %.1e |\n", limit, kernel, (long long)B,
                (long long)D, (long long)H, (long long)W, (long long)K, blocky ? "blocky" : "random", ms, err);
  };
  row(CSFR_SEGMENT_SUM_BUTTERFLY_CLASSES, "segment_sum", seg_ms, seg_err);
  row(CSFR_PIXEL_PASS_BUTTERFLY_CLASSES, "cac_pixel_pass", pix_ms, pix_err);
  for (void* p : {(void*)df, (void*)dmu, (void*)dy, (void*)dsums, (void*)dcounts, (void*)dcoef, (void*)dhinge,
                  (void*)dwsum, (void*)dwcount})
    check(cudaFree(p), "cudaFree");
}

}  // namespace

int main() {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "butterfly_tuning: no CUDA device (%s)\n", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 2;
  }
  for (bool blocky : {false, true}) {
    run_case(8, 512, 97, 97, 19, blocky);
    run_case(16, 512, 64, 64, 150, blocky);
  }
  return 0;
}
