// Calls every launcher of kernels/csfr_kernels.cuh on small inputs and checks each output against a
// float64 host reference: the program `make gpu-check` runs under compute-sanitizer (memcheck,
// racecheck, synccheck), so that every kernel path executes with its memory accesses, shared-memory
// hazards and barriers checked (docs/cuda.md, "make gpu-check").
//
// Cases: tail tiles (N, D not multiples of any tile), one pixel, several classes per warp, spatial runs
// and per-pixel mixes of labels, ignore labels (255 and -1), labels outside [0, K), an all-ignore
// image, a shared table above 48 KiB (opt-in) and one too large for shared memory (global path),
// N = 0; each in float32, float16, bfloat16 and float64; gated_blend in every gate mode.
// Outputs are poisoned with NaN before each launch, so an element a kernel does not write fails.
//
//   nvcc -std=c++17 -O3 -lineinfo -arch=sm_90 -Ikernels tests/native/kernel_driver.cu kernels/*.cu -o kernel_driver
//   ./kernel_driver            # prints one line per case, exits 1 on a wrong value, 2 on a CUDA error
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "csfr_kernels.cuh"

using csfr::DType;
using csfr::GateMode;
using Vec = std::vector<double>;

namespace {

[[noreturn]] void cuda_fail(const char* what, cudaError_t err) {
  std::fprintf(stderr, "kernel_driver: %s: %s\n", what, cudaGetErrorString(err));
  std::exit(2);
}

// Device memory. Under CSFR_EMULATION (kernels/ compiled by the host compiler against the CPU emulation
// of csrc/emulation, tests/test_kernel_driver.py) "device" memory is host memory.
#ifdef CSFR_EMULATION
cudaError_t device_alloc(void** ptr, size_t bytes) { return (*ptr = std::malloc(bytes)) ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t device_free(void* ptr) { std::free(ptr); return cudaSuccess; }
cudaError_t device_memset(void* ptr, int value, size_t bytes) { std::memset(ptr, value, bytes); return cudaSuccess; }
cudaError_t to_device(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); return cudaSuccess; }
cudaError_t to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); return cudaSuccess; }
cudaError_t synchronize() { return cudaSuccess; }
cudaError_t device_count(int* n) { *n = 1; return cudaSuccess; }
#else
cudaError_t device_alloc(void** ptr, size_t bytes) { return cudaMalloc(ptr, bytes); }
cudaError_t device_free(void* ptr) { return cudaFree(ptr); }
cudaError_t device_memset(void* ptr, int value, size_t bytes) { return cudaMemset(ptr, value, bytes); }
cudaError_t to_device(void* dst, const void* src, size_t bytes) {
  return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
}
cudaError_t to_host(void* dst, const void* src, size_t bytes) {
  return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
}
cudaError_t synchronize() { return cudaDeviceSynchronize(); }
cudaError_t device_count(int* n) { return cudaGetDeviceCount(n); }
#endif

#define CHECK_CUDA(call)                              \
  do {                                                \
    const cudaError_t err_ = (call);                  \
    if (err_ != cudaSuccess) cuda_fail(#call, err_);  \
  } while (0)

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    default: return "float64";
  }
}

size_t elem_size(DType t) { return t == DType::kFloat64 ? 8 : t == DType::kFloat32 ? 4 : 2; }
DType acc_of(DType t) { return t == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32; }

// Relative tolerance of a value stored in `t` and computed with float32 (float64) accumulation.
double tolerance(DType t) {
  switch (t) {
    case DType::kFloat32: return 2e-5;
    case DType::kFloat16: return 2e-3;
    case DType::kBFloat16: return 1.6e-2;
    default: return 1e-11;
  }
}

void encode(double v, DType t, unsigned char* out) {
  switch (t) {
    case DType::kFloat32: { const float f = static_cast<float>(v); std::memcpy(out, &f, 4); break; }
    case DType::kFloat16: { const __half h = __float2half_rn(static_cast<float>(v)); std::memcpy(out, &h, 2); break; }
    case DType::kBFloat16: {
      const __nv_bfloat16 h = __float2bfloat16_rn(static_cast<float>(v));
      std::memcpy(out, &h, 2);
      break;
    }
    default: std::memcpy(out, &v, 8);
  }
}

double decode(const unsigned char* in, DType t) {
  switch (t) {
    case DType::kFloat32: { float f; std::memcpy(&f, in, 4); return f; }
    case DType::kFloat16: { __half h; std::memcpy(&h, in, 2); return __half2float(h); }
    case DType::kBFloat16: { __nv_bfloat16 h; std::memcpy(&h, in, 2); return __bfloat162float(h); }
    default: { double d; std::memcpy(&d, in, 8); return d; }
  }
}

// A device buffer of n elements of dtype t (labels use their own int64 buffer).
struct Buf {
  void* ptr = nullptr;
  size_t n;
  DType t;
  Buf(size_t count, DType type) : n(count), t(type) { CHECK_CUDA(device_alloc(&ptr, n * elem_size(t) + 8)); }
  ~Buf() { device_free(ptr); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  void poison() { CHECK_CUDA(device_memset(ptr, 0xFF, n * elem_size(t))); }  // all-ones bytes: NaN in every dtype
  // Uploads v rounded to t, and returns the rounded values the device sees.
  Vec upload(const Vec& v) {
    std::vector<unsigned char> bytes(v.size() * elem_size(t));
    Vec seen(v.size());
    for (size_t j = 0; j < v.size(); ++j) {
      encode(v[j], t, bytes.data() + j * elem_size(t));
      seen[j] = decode(bytes.data() + j * elem_size(t), t);
    }
    if (!bytes.empty()) CHECK_CUDA(to_device(ptr, bytes.data(), bytes.size()));
    return seen;
  }
  Vec download() const {
    std::vector<unsigned char> bytes(n * elem_size(t));
    if (!bytes.empty()) CHECK_CUDA(to_host(bytes.data(), ptr, bytes.size()));
    Vec v(n);
    for (size_t j = 0; j < n; ++j) v[j] = decode(bytes.data() + j * elem_size(t), t);
    return v;
  }
};

struct Case {
  const char* name;
  int64_t B, D, N, K, ignore;
};

int g_failures = 0;

// Every element within rtol * (1 + scale[j]) of the reference; NaN (an unwritten element) fails.
void expect_close(const char* what, const Case& c, DType t, const Vec& got, const Vec& ref, const Vec& scale,
                  double rtol) {
  for (size_t j = 0; j < ref.size(); ++j) {
    const double err = std::fabs(got[j] - ref[j]);
    if (!(err <= rtol * (1.0 + scale[j]))) {
      std::printf("FAIL %s [%s, %s]: element %zu is %.9g, expected %.9g\n", what, c.name, dtype_name(t), j,
                  got[j], ref[j]);
      ++g_failures;
      return;
    }
  }
}

// Labels per image: runs of one class, a per-pixel mix, or all ignored, with ignore pixels and values
// outside [0, K) sprinkled in (the kernels count those nowhere).
std::vector<int64_t> make_labels(const Case& c, std::mt19937& rng) {
  std::vector<int64_t> y(c.B * c.N);
  std::uniform_int_distribution<int64_t> cls(0, c.K - 1);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t b = 0; b < c.B; ++b) {
    const int pattern = static_cast<int>(b % 3);  // 0: runs then a mix, 1: mix, 2: all ignored (B >= 3)
    int64_t run_left = 0, run_k = 0;
    for (int64_t i = 0; i < c.N; ++i) {
      int64_t v;
      if (pattern == 2) {
        v = c.ignore;
      } else if (pattern == 0 && i < c.N * 3 / 4) {
        if (run_left == 0) { run_left = 1 + static_cast<int64_t>(u(rng) * 400); run_k = cls(rng); }
        --run_left;
        v = run_k;
      } else {
        v = cls(rng);
      }
      const double r = u(rng);
      if (pattern != 2 && r < 0.08) v = c.ignore;
      else if (pattern != 2 && r < 0.09) v = r < 0.085 ? c.K : -7;  // out of range: counted nowhere
      y[b * c.N + i] = v;
    }
  }
  return y;
}

int label_class(int64_t v, const Case& c) { return (v == c.ignore || v < 0 || v >= c.K) ? -1 : static_cast<int>(v); }

Vec randn(size_t n, double scale, std::mt19937& rng) {
  std::normal_distribution<double> g(0, scale);
  Vec v(n);
  for (double& x : v) x = g(rng);
  return v;
}

void run_cac_kernels(const Case& c, DType t, std::mt19937& rng) {
  const DType at = acc_of(t);
  const double rt = tolerance(t), rta = tolerance(at);
  const int64_t B = c.B, D = c.D, N = c.N, K = c.K;
  std::vector<int64_t> y = make_labels(c, rng);
  int64_t* labels = nullptr;
  CHECK_CUDA(device_alloc(reinterpret_cast<void**>(&labels), y.size() * 8 + 8));
  if (!y.empty()) CHECK_CUDA(to_device(labels, y.data(), y.size() * 8));
  // image 1 is 100x smaller, so its pixels lie within the margin (coef = 0: the skip path)
  Vec f0 = randn(B * D * N, 1.0, rng);
  for (int64_t j = D * N; j < std::min<int64_t>(2 * D * N, B * D * N); ++j) f0[j] *= 0.01;
  Buf feats(B * D * N, t);
  const Vec f = feats.upload(f0);

  // references: class sums and counts, class means, then the pixel pass with those means
  Vec ref_s(B * K * D, 0), mag_s(B * K * D, 0), ref_n(B * K, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) {
      const int k = label_class(y[b * N + i], c);
      if (k < 0) continue;
      ref_n[b * K + k] += 1;
      for (int64_t d = 0; d < D; ++d) {
        ref_s[(b * K + k) * D + d] += f[(b * D + d) * N + i];
        mag_s[(b * K + k) * D + d] += std::fabs(f[(b * D + d) * N + i]);
      }
    }
  Vec mu0(B * K * D, 0);
  for (int64_t j = 0; j < B * K * D; ++j) mu0[j] = ref_n[j / D] > 0 ? ref_s[j] / ref_n[j / D] : 0;
  Buf mu(B * K * D, at), weight(B * N, at);
  const Vec m = mu.upload(mu0), w = weight.upload(randn(B * N, 1.0, rng));
  const double delta_v = 0.5;
  Vec ref_ws(B * K * D, 0), mag_ws(B * K * D, 0), ref_wn(B * K, 0), mag_wn(B * K, 0);
  Vec ref_c(B * N, 0), ref_h(B * K, 0), mag_h(B * K, 0), ref_w(B * K * D, 0), mag_w(B * K * D, 0),
      ref_wc(B * K, 0), mag_wc(B * K, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) {
      const int k = label_class(y[b * N + i], c);
      if (k < 0) continue;
      double sq = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double diff = f[(b * D + d) * N + i] - m[(b * K + k) * D + d];
        sq += diff * diff;
        ref_ws[(b * K + k) * D + d] += w[b * N + i] * diff;  // segment_sum_weighted, center = mu
        mag_ws[(b * K + k) * D + d] += std::fabs(w[b * N + i] * diff);
      }
      ref_wn[b * K + k] += w[b * N + i];
      mag_wn[b * K + k] += std::fabs(w[b * N + i]);
      const double r = std::sqrt(sq), h = r > delta_v ? r - delta_v : 0, cf = h > 0 ? 2 * h / r : 0;
      ref_c[b * N + i] = cf;
      ref_h[b * K + k] += h * h;
      mag_h[b * K + k] += h * h;
      ref_wc[b * K + k] += cf;
      mag_wc[b * K + k] += cf;
      for (int64_t d = 0; d < D; ++d) {  // weighted sums of differences from the centroid
        const double v = cf * (f[(b * D + d) * N + i] - m[(b * K + k) * D + d]);
        ref_w[(b * K + k) * D + d] += v;
        mag_w[(b * K + k) * D + d] += std::fabs(v);
      }
    }

  // the atomic path and the deterministic one (workspace poisoned: it must not need zeros), which must
  // also give the same bits twice
  const size_t ws_bytes = std::max(csfr::segment_sum_workspace_bytes(t, B, D, N, K),
                                   csfr::cac_pixel_pass_workspace_bytes(t, B, D, N, K));
  Buf workspace(ws_bytes, DType::kBFloat16 /* 2-byte elements */);
  Buf sums(B * K * D, at), counts(B * K, at), coef(B * N, at), hinge(B * K, at), wsum(B * K * D, at),
      wcount(B * K, at);
  // the deterministic path keeps one shared table per warp, so it takes K up to a few hundred
  // (segment_sum.cu); the large-K cases run the atomic path only
  const int modes = K <= 256 ? 2 : 1;
  for (int det = 0; det < modes; ++det) {
    const std::string mode = det ? " (deterministic)" : "";
    std::vector<Vec> runs;
    for (int repeat = 0; repeat < 1 + det; ++repeat) {
      for (Buf* out : {&workspace, &sums, &counts}) out->poison();
      CHECK_CUDA(csfr::segment_sum(t, feats.ptr, labels, sums.ptr, counts.ptr, B, D, N, K, c.ignore, det,
                                   workspace.ptr, 0));
      CHECK_CUDA(synchronize());
      expect_close(("segment_sum sums" + mode).c_str(), c, t, sums.download(), ref_s, mag_s, rta);
      expect_close(("segment_sum counts" + mode).c_str(), c, t, counts.download(), ref_n, Vec(B * K, 0), 0.0);

      for (Buf* out : {&workspace, &sums, &counts}) out->poison();
      CHECK_CUDA(csfr::segment_sum_weighted(t, feats.ptr, labels, weight.ptr, mu.ptr, sums.ptr, counts.ptr, B, D,
                                            N, K, c.ignore, det, workspace.ptr, 0));
      CHECK_CUDA(synchronize());
      expect_close(("segment_sum_weighted sums" + mode).c_str(), c, t, sums.download(), ref_ws, mag_ws, rta);
      expect_close(("segment_sum_weighted counts" + mode).c_str(), c, t, counts.download(), ref_wn, mag_wn, rta);

      for (Buf* out : {&workspace, &coef, &hinge, &wsum, &wcount}) out->poison();
      CHECK_CUDA(csfr::cac_pixel_pass(t, feats.ptr, labels, mu.ptr, delta_v, coef.ptr, hinge.ptr, wsum.ptr,
                                      wcount.ptr, B, D, N, K, c.ignore, det, workspace.ptr, 0));
      CHECK_CUDA(synchronize());
      // a pixel at the margin's edge may fall either side of it in float32: compare with room for that
      expect_close(("cac_pixel_pass coef" + mode).c_str(), c, t, coef.download(), ref_c, Vec(B * N, 0), 100 * rta);
      expect_close(("cac_pixel_pass hinge" + mode).c_str(), c, t, hinge.download(), ref_h, mag_h, 100 * rta);
      expect_close(("cac_pixel_pass wsum" + mode).c_str(), c, t, wsum.download(), ref_w, mag_w, 100 * rta);
      expect_close(("cac_pixel_pass wcount" + mode).c_str(), c, t, wcount.download(), ref_wc, mag_wc, 100 * rta);
      runs.push_back(wsum.download());
    }
    if (det && runs[0] != runs[1]) {
      std::printf("FAIL cac_pixel_pass (deterministic) [%s, %s]: two runs differ\n", c.name, dtype_name(t));
      ++g_failures;
    }
  }

  // pixel_grad: the gather-only form (class_centroids backward) and the direct form (cac_loss backward)
  Buf g(B * K * D, at), a(B * K, at), out(B * D * N, t);
  const Vec gv = g.upload(randn(B * K * D, 1.0, rng)), av = a.upload(randn(B * K, 1.0, rng));
  for (int direct = 0; direct < 2; ++direct) {
    out.poison();
    CHECK_CUDA(csfr::pixel_grad(t, feats.ptr, labels, g.ptr, direct ? mu.ptr : nullptr, direct ? coef.ptr : nullptr,
                                direct ? a.ptr : nullptr, out.ptr, B, D, N, K, c.ignore, 0));
    CHECK_CUDA(synchronize());
    const Vec cv = coef.download();
    Vec ref(B * D * N, 0), mag(B * D * N, 0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < N; ++i) {
        const int k = label_class(y[b * N + i], c);
        if (k < 0) continue;
        for (int64_t d = 0; d < D; ++d) {
          const double gk = gv[(b * K + k) * D + d];
          const double term = direct ? av[b * K + k] * cv[b * N + i] * (f[(b * D + d) * N + i] -
                                                                          m[(b * K + k) * D + d]) : 0.0;
          ref[(b * D + d) * N + i] = gk + term;
          mag[(b * D + d) * N + i] = std::fabs(gk) + std::fabs(term);
        }
      }
    expect_close(direct ? "pixel_grad direct" : "pixel_grad gather", c, t, out.download(), ref, mag, rt);
  }
  CHECK_CUDA(device_free(labels));
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

void run_blend(const Case& c, DType t, GateMode mode, std::mt19937& rng) {
  const int64_t B = c.B, C = c.D, N = c.N, n = B * C * N;
  const int64_t gn = mode == GateMode::kFull ? n : mode == GateMode::kPixel ? B * N : B * C;
  auto gate_at = [&](int64_t b, int64_t ch, int64_t i) {
    return mode == GateMode::kFull ? (b * C + ch) * N + i : mode == GateMode::kPixel ? b * N + i : b * C + ch;
  };
  Buf x(n, t), s(n, t), g(gn, t), z(n, t), dz(n, t), dx(n, t), ds(n, t), dg(gn, t);
  const Vec xv = x.upload(randn(n, 1.0, rng)), sv = s.upload(randn(n, 1.0, rng)), gv = g.upload(randn(gn, 2.0, rng));
  const Vec dzv = dz.upload(randn(n, 1.0, rng));
  for (Buf* o : {&z, &dx, &ds, &dg}) o->poison();
  CHECK_CUDA(csfr::blend_forward(t, mode, x.ptr, s.ptr, g.ptr, z.ptr, B, C, N, 0));
  CHECK_CUDA(csfr::blend_backward(t, mode, dz.ptr, x.ptr, s.ptr, g.ptr, dx.ptr, ds.ptr, dg.ptr, B, C, N, 0));
  CHECK_CUDA(synchronize());
  Vec rz(n), mz(n), rdx(n), rds(n), mdz(n), rdg(gn, 0), mdg(gn, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t e = (b * C + ch) * N + i, ge = gate_at(b, ch, i);
        const double sg = sigmoid(gv[ge]);
        rz[e] = xv[e] + sg * (sv[e] - xv[e]);
        mz[e] = std::fabs(xv[e]) + std::fabs(sv[e]);
        rds[e] = sg * dzv[e];
        rdx[e] = (1 - sg) * dzv[e];
        mdz[e] = std::fabs(dzv[e]);
        const double term = (sv[e] - xv[e]) * sg * (1 - sg) * dzv[e];
        rdg[ge] += term;
        mdg[ge] += std::fabs(term);
      }
  static const char* names[] = {"full", "pixel", "channel"};
  char what[64];
  const double rt = tolerance(t);
  std::snprintf(what, sizeof what, "blend_forward (%s gate)", names[static_cast<int>(mode)]);
  expect_close(what, c, t, z.download(), rz, mz, rt);
  std::snprintf(what, sizeof what, "blend_backward dx (%s gate)", names[static_cast<int>(mode)]);
  expect_close(what, c, t, dx.download(), rdx, mdz, rt);
  std::snprintf(what, sizeof what, "blend_backward ds (%s gate)", names[static_cast<int>(mode)]);
  expect_close(what, c, t, ds.download(), rds, mdz, rt);
  std::snprintf(what, sizeof what, "blend_backward dg (%s gate)", names[static_cast<int>(mode)]);
  expect_close(what, c, t, dg.download(), rdg, mdg, rt);
}

}  // namespace

int main() {
  int devices = 0;
  const cudaError_t err = device_count(&devices);
  if (err != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "kernel_driver: no CUDA device (%s)\n", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 2;
  }
  const Case cases[] = {
      {"tail tiles", 2, 13, 2048 + 37, 5, 255},      // N, D past every tile size; runs and mixes
      {"one pixel", 1, 1, 1, 1, 255},
      {"all-ignore image", 3, 40, 33 * 33, 19, 255},  // image 2 all ignored
      {"ignore -1, K 1500", 2, 8, 700, 1500, -1},    // shared table > 48 KiB: opt-in
      {"K 7000", 1, 8, 300, 7000, 255},              // table beyond shared memory: global atomics
      {"N 0", 2, 4, 0, 3, 255},
  };
  const DType dtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64};
  std::mt19937 rng(1234);
  for (const Case& c : cases)
    for (DType t : dtypes) {
      const int before = g_failures;
      run_cac_kernels(c, t, rng);
      for (GateMode mode : {GateMode::kFull, GateMode::kPixel, GateMode::kChannel}) run_blend(c, t, mode, rng);
      std::printf("%s %s: B=%lld D=%lld N=%lld K=%lld %s\n", g_failures == before ? "ok  " : "FAIL", c.name,
                  static_cast<long long>(c.B), static_cast<long long>(c.D), static_cast<long long>(c.N),
                  static_cast<long long>(c.K), dtype_name(t));
    }
  std::printf("kernel_driver: %d failure(s)\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
