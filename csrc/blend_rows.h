// Row loops of the gated blend (z = x + sigmoid(g)(s - x) and its gradient), included twice by
// cpu_kernels.cpp: once compiled for AVX2 + FMA, once for the baseline ISA (no include guard).

// exp(v) for fp32 in plain branch-free arithmetic, so that GCC vectorises the blend loops (a
// std::exp call keeps them scalar, and the exponential dominates the blend's cost; setup.py
// passes -fno-trapping-math so the clamps if-convert): Cephes-style reduction v = n ln2 + r
// and a degree-6 polynomial, relative error below 3e-7 over the clamped range.
inline float vexp(float v) {
  v = v < -87.0f ? -87.0f : v;
  v = v > 88.0f ? 88.0f : v;
  const float nf = (v * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const int32_t n = static_cast<int32_t>(nf);
  const float r = (v - nf * 0.693359375f) + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * c10::bit_cast<float>((n + 127) << 23);
}

inline double vexp(double v) { return std::exp(v); }

template <typename acc_t>
inline acc_t sigmoid(acc_t v) {
  return acc_t(1) / (acc_t(1) + vexp(-v));
}

template <typename scalar_t, bool kPerChannel>
void blend_forward_row(const scalar_t* x, const scalar_t* s, const scalar_t* g, scalar_t* z, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t g0 = sigmoid<acc_t>(g[0]);
  for (int64_t i = 0; i < n; ++i) {
    const acc_t gate = kPerChannel ? g0 : sigmoid<acc_t>(g[i]);
    const acc_t xv = x[i];
    z[i] = static_cast<scalar_t>(xv + gate * (static_cast<acc_t>(s[i]) - xv));
  }
}

// ds, dx of n elements of one row; the gate gradient is stored (full gate), added to dg_sum
// (per-pixel gate, summed over channels by the caller) or returned summed (per-channel gate).
template <typename scalar_t, GateMode M>
at::opmath_type<scalar_t> blend_backward_row(const scalar_t* __restrict__ dz, const scalar_t* __restrict__ x,
                                             const scalar_t* __restrict__ s, const scalar_t* __restrict__ g,
                                             scalar_t* __restrict__ dx, scalar_t* __restrict__ ds,
                                             scalar_t* __restrict__ dg, at::opmath_type<scalar_t>* __restrict__ dg_sum,
                                             int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t g0 = sigmoid<acc_t>(g[0]);
  acc_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t gate = M == GateMode::kChannel ? g0 : sigmoid<acc_t>(g[i]);
    const acc_t grad = dz[i];
    ds[i] = static_cast<scalar_t>(gate * grad);
    dx[i] = static_cast<scalar_t>((acc_t(1) - gate) * grad);
    const acc_t contribution = (static_cast<acc_t>(s[i]) - static_cast<acc_t>(x[i])) * gate * (acc_t(1) - gate) * grad;
    if constexpr (M == GateMode::kFull) dg[i] = static_cast<scalar_t>(contribution);
    else if constexpr (M == GateMode::kPixel) dg_sum[i] += contribution;
    else total += contribution;
  }
  return total;
}
