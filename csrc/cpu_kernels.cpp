// CPU implementations of the csfr kernels (docs/kernels.md), parallel with OpenMP.
//
// Features are [B, D, N] with pixels contiguous. Two access patterns keep every kernel to
// one streaming read of the features per pass:
//  - row kernels (segment_sum, pixel_grad, blend): one task per (image, channel) row; the
//    class-indexed operand is pre-transposed to [D, K] so a row reads one small K-vector;
//  - tile kernel (cac_pixel_pass): a task owns a tile of pixels of one image, reduces their
//    distances over all D, then re-reads the same tile (now in cache) to accumulate
//    coef * (f - mu) into per-thread [D, K] slots that are summed once per image in thread order.
// Every kernel is bitwise reproducible for a given thread count (no float atomics, no reduction in
// thread-arrival order).
// Nothing of size N x K or N x N is allocated; accumulation is fp32 (fp64 for fp64 inputs).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "../kernels/fused_state.h"
#include "checks.h"
#include "shape_text.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using at::Tensor;

// A CUDA operand among CPU ones would dispatch here (the CPU key wins for some mixes) and be read through
// its device pointer: the shared checks (csrc/checks.h) refuse it by name.
bool is_cpu(const Tensor& t) { return t.is_cpu(); }
const csfr::checks::Where kCpu{&is_cpu, "CPU"};

void check_feats_labels(const Tensor& feats, const Tensor& labels, const char* op) {
  csfr::checks::check_feats_labels(feats, labels, kCpu, op);
}

using csfr::checks::acc_type;

// Labels as int32 class indices with -1 for ignored pixels; rejects values outside [0, K).
std::vector<int32_t> compact_labels(const Tensor& labels, int64_t K, int64_t ignore_index) {
  const int64_t total = labels.numel();
  const int64_t* src = labels.data_ptr<int64_t>();
  std::vector<int32_t> out(total);
  for (int64_t i = 0; i < total; ++i) {
    const int64_t y = src[i];
    if (y == ignore_index) {
      out[i] = -1;
    } else {
      TORCH_CHECK(y >= 0 && y < K, "csfr: label value ", y, " is outside [0, ", K, ") and is not ignore_index=",
                  ignore_index);
      out[i] = static_cast<int32_t>(y);
    }
  }
  return out;
}

// [B, K, D] (acc dtype) -> contiguous [B, D, K] in acc dtype
Tensor class_major_to_row_major(const Tensor& t) {
  return t.transpose(1, 2).contiguous();
}

std::tuple<Tensor, Tensor> segment_sum_cpu(const Tensor& feats, const Tensor& labels, int64_t K,
                                           int64_t ignore_index) {
  check_feats_labels(feats, labels, "segment_sum");
  csfr::checks::check_classes(K, "segment_sum");
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2);
  const auto y = compact_labels(labels, K, ignore_index);
  Tensor sums = at::zeros({B, K, D}, feats.options().dtype(acc_type(feats)));
  Tensor counts = at::zeros({B, K}, sums.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "segment_sum", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* f = feats.data_ptr<scalar_t>();
    acc_t* s = sums.data_ptr<acc_t>();
    acc_t* c = counts.data_ptr<acc_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t i = 0; i < N; ++i)
          if (y[b * N + i] >= 0) c[b * K + y[b * N + i]] += 1;
    });
    // one task per (image, channel) row: each writes its own column sums[b, :, d]
    at::parallel_for(0, B * D, 1, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> acc(K);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / D, d = r % D;
        const scalar_t* row = f + r * N;
        const int32_t* yb = y.data() + b * N;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t i = 0; i < N; ++i)
          if (yb[i] >= 0) acc[yb[i]] += static_cast<acc_t>(row[i]);
        for (int64_t k = 0; k < K; ++k) s[(b * K + k) * D + d] = acc[k];
      }
    });
  });
  return {sums, counts};
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// The tile kernel behind cac_pixel_pass (a function of its own: OpenMP pragmas cannot sit
// inside the dtype-dispatch macro). Each thread accumulates its tiles (a static, contiguous
// share) into its own slot; the slots are then summed in thread order, so for a given thread
// count the result is bitwise reproducible (no reduction in thread-arrival order).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void cac_pixel_pass_kernel(const Tensor& feats, const std::vector<int32_t>& y, const Tensor& muT,
                           double delta_v, Tensor& coef, Tensor& hinge, Tensor& wsum, Tensor& wcount) {
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2), K = muT.size(2);
  const scalar_t* f = feats.data_ptr<scalar_t>();
  const acc_t* m = muT.data_ptr<acc_t>();
  acc_t* co = coef.data_ptr<acc_t>();
  acc_t* hi = hinge.data_ptr<acc_t>();
  acc_t* ws = wsum.data_ptr<acc_t>();
  acc_t* wc = wcount.data_ptr<acc_t>();
  // tile: T pixels x D channels stays in L2 between the distance and the accumulation loops
  const int64_t T = std::max<int64_t>(16, std::min<int64_t>(256, (64 * 1024) / std::max<int64_t>(D, 1)));
  const int64_t tiles = (N + T - 1) / T;
  const acc_t dv = static_cast<acc_t>(delta_v);
  // per-thread slot: wsum as [D, K], then hinge [K], then wcount [K]
  const int64_t slot = D * K + 2 * K;
  const int slots = max_threads();
  std::vector<acc_t> part(static_cast<size_t>(slots) * slot);
#pragma omp parallel num_threads(slots)
  {
    acc_t* lw = part.data() + thread_id() * slot;
    acc_t* lh = lw + D * K;
    acc_t* lc = lh + K;
    std::vector<acc_t> dist(T);
    for (int64_t b = 0; b < B; ++b) {
      std::fill(lw, lw + slot, acc_t(0));
      const int32_t* yb = y.data() + b * N;
      const scalar_t* fb = f + b * D * N;
      const acc_t* mb = m + b * D * K;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t i0 = t * T, i1 = std::min(N, i0 + T), n = i1 - i0;
        std::fill(dist.begin(), dist.begin() + n, acc_t(0));
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t* row = fb + d * N;
          const acc_t* md = mb + d * K;
          for (int64_t i = i0; i < i1; ++i) {
            if (yb[i] < 0) continue;
            const acc_t diff = static_cast<acc_t>(row[i]) - md[yb[i]];
            dist[i - i0] += diff * diff;
          }
        }
        for (int64_t i = i0; i < i1; ++i) {
          const int32_t k = yb[i];
          if (k < 0) continue;
          const acc_t r = std::sqrt(dist[i - i0]);
          const acc_t h = std::max(r - dv, acc_t(0));
          const acc_t c = r > 0 ? 2 * h / r : acc_t(0);
          co[b * N + i] = c;
          dist[i - i0] = c;  // reuse as the pixel's coefficient
          lh[k] += h * h;
          lc[k] += c;
        }
        // wsum from differences: sum coef (f - mu), exact for features with a large common offset
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t* row = fb + d * N;
          const acc_t* md = mb + d * K;
          acc_t* lwd = lw + d * K;
          for (int64_t i = i0; i < i1; ++i) {
            const int32_t k = yb[i];
            if (k >= 0) lwd[k] += dist[i - i0] * (static_cast<acc_t>(row[i]) - md[k]);
          }
        }
      }  // implicit barrier: every slot is complete
#pragma omp for schedule(static)
      for (int64_t e = 0; e < slot; ++e) {
        acc_t total = 0;
        for (int j = 0; j < slots; ++j) total += part[static_cast<size_t>(j) * slot + e];
        if (e < D * K) ws[(b * K + e % K) * D + e / K] = total;
        else if (e < D * K + K) hi[b * K + e - D * K] = total;
        else wc[b * K + e - D * K - K] = total;
      }  // implicit barrier: the slots may be cleared for the next image
    }
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> cac_pixel_pass_cpu(const Tensor& feats, const Tensor& labels,
                                                              const Tensor& mu, double delta_v,
                                                              int64_t ignore_index) {
  check_feats_labels(feats, labels, "cac_pixel_pass");
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2);
  TORCH_CHECK(mu.dim() == 3, "cac_pixel_pass: mu must be [B, K, D], got ", csfr::shape_text(mu.sizes()));
  const int64_t K = mu.size(1);
  csfr::checks::check_acc(mu, feats, {B, K, D}, kCpu, "cac_pixel_pass", "mu");
  csfr::checks::check_margins(delta_v, 0, "cac_pixel_pass");
  const auto y = compact_labels(labels, K, ignore_index);
  const Tensor muT = class_major_to_row_major(mu);  // [B, D, K]
  auto opts = feats.options().dtype(acc_type(feats));
  Tensor coef = at::zeros({B, N}, opts), hinge = at::zeros({B, K}, opts);
  Tensor wsum = at::zeros({B, K, D}, opts), wcount = at::zeros({B, K}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "cac_pixel_pass", [&] {
    cac_pixel_pass_kernel<scalar_t>(feats, y, muT, delta_v, coef, hinge, wsum, wcount);
  });
  return {coef, hinge, wsum, wcount};
}

Tensor pixel_grad_cpu(const Tensor& feats, const Tensor& labels, const Tensor& g, int64_t ignore_index,
                      const std::optional<Tensor>& mu, const std::optional<Tensor>& coef,
                      const std::optional<Tensor>& a) {
  check_feats_labels(feats, labels, "pixel_grad");
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2);
  TORCH_CHECK(g.dim() == 3, "pixel_grad: g must be [B, K, D], got ", csfr::shape_text(g.sizes()));
  const int64_t K = g.size(1);
  csfr::checks::check_acc(g, feats, {B, K, D}, kCpu, "pixel_grad", "g");
  const bool direct = mu.has_value() && coef.has_value() && a.has_value();
  TORCH_CHECK(direct || (!mu.has_value() && !coef.has_value() && !a.has_value()),
              "pixel_grad: mu, coef and a must be given together");
  if (direct) {
    csfr::checks::check_acc(*mu, feats, {B, K, D}, kCpu, "pixel_grad", "mu");
    csfr::checks::check_acc(*coef, feats, {B, N}, kCpu, "pixel_grad", "coef");
    csfr::checks::check_acc(*a, feats, {B, K}, kCpu, "pixel_grad", "a");
  }
  const auto y = compact_labels(labels, K, ignore_index);
  const Tensor gT = class_major_to_row_major(g);
  Tensor muT, ac;  // ac[b, i] = a[b, y_i] * coef[b, i]
  if (direct) {
    muT = class_major_to_row_major(*mu);
    const Tensor safe = labels.clamp(0, K - 1);
    ac = (a->gather(1, safe) * *coef).masked_fill(labels == ignore_index, 0).contiguous();
  }
  Tensor out = at::empty_like(feats);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "pixel_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* f = feats.data_ptr<scalar_t>();
    const acc_t* gt = gT.data_ptr<acc_t>();
    const acc_t* mt = direct ? muT.data_ptr<acc_t>() : nullptr;
    const acc_t* acp = direct ? ac.data_ptr<acc_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * D, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / D, d = r % D;
        const int32_t* yb = y.data() + b * N;
        const acc_t* gd = gt + (b * D + d) * K;
        scalar_t* orow = o + r * N;
        if (direct) {
          const scalar_t* row = f + r * N;
          const acc_t* md = mt + (b * D + d) * K;
          const acc_t* acb = acp + b * N;
          for (int64_t i = 0; i < N; ++i) {
            const int32_t k = yb[i];
            orow[i] = k < 0 ? scalar_t(0)
                            : static_cast<scalar_t>(gd[k] + acb[i] * (static_cast<acc_t>(row[i]) - md[k]));
          }
        } else {
          for (int64_t i = 0; i < N; ++i) orow[i] = yb[i] < 0 ? scalar_t(0) : static_cast<scalar_t>(gd[yb[i]]);
        }
      }
    });
  });
  return out;
}

// The fused cac_loss on the CPU: the kernels above, then the class part below, into the same state as the
// CUDA code path (kernels/fused_state.h), so the backward and the tests read one layout. Labels are checked by
// compact_labels (an error naming the value); a non-finite class sum gives NaN terms, as on a GPU.
template <typename A>
void cac_class_part(A* st, const csfr::CacState& L, A delta_d, A w_intra, A w_inter, A* loss, A* terms) {
  const int64_t B = L.B, K = L.K, D = L.D;
  std::vector<char> non_finite(B, 0);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<A> g(D), diff(D);
    for (int64_t b = b0; b < b1; ++b) {
      const A* counts = st + L.counts() + b * K;
      const A* sums = st + L.sums() + b * K * D;
      A n = 0;
      for (int64_t k = 0; k < K; ++k) n += counts[k] > 0 ? 1 : 0;
      st[L.present() + b] = n;
      const A inv_n = A(1) / std::max(n, A(1)), has_intra = n >= 1 ? 1 : 0, has_inter = n >= 2 ? 1 : 0;
      const A pairs = std::max(n * (n - 1), A(1));
      for (int64_t a = 0; a < K; ++a) {
        A* ga = st + L.g_inter() + (b * K + a) * D;
        A row_intra = 0, row_inter = 0, present_a = counts[a] > 0 ? 1 : 0;
        std::fill(g.begin(), g.end(), A(0));
        const A inv_a = A(1) / std::max(counts[a], A(1));
        for (int64_t c = 0; c < K && present_a; ++c) {
          if (c == a || counts[c] <= 0) continue;
          const A inv_c = A(1) / std::max(counts[c], A(1));
          A d2 = 0;
          for (int64_t d = 0; d < D; ++d) {
            diff[d] = sums[a * D + d] * inv_a - sums[c * D + d] * inv_c;  // mu_a - mu_c, once for both uses
            d2 += diff[d] * diff[d];
          }
          const A dist = std::sqrt(d2), gap = std::max(2 * delta_d - dist, A(0));
          row_inter += gap * gap;
          const A w = dist > 0 ? gap / dist : A(0);
          for (int64_t d = 0; d < D; ++d) g[d] += w * diff[d];
        }
        if (present_a)
          for (int64_t d = 0; d < D; ++d) non_finite[b] |= !std::isfinite(sums[a * D + d]);
        const A scale = A(-4) * has_inter / pairs * inv_a * present_a;
        for (int64_t d = 0; d < D; ++d) ga[d] = scale * g[d];
        row_intra = st[L.hinge() + b * K + a] * inv_a * inv_n * has_intra * present_a;
        st[L.a() + b * K + a] = has_intra * inv_n * inv_a * present_a;
        st[L.row_intra() + b * K + a] = row_intra;
        st[L.row_inter() + b * K + a] = row_inter / pairs * has_inter;
      }
    }
  });
  A intra = 0, inter = 0, n_intra = 0, n_inter = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      intra += st[L.row_intra() + b * K + k];
      inter += st[L.row_inter() + b * K + k];
    }
    n_intra += st[L.present() + b] >= 1 ? 1 : 0;
    n_inter += st[L.present() + b] >= 2 ? 1 : 0;
    if (non_finite[b]) st[L.flags() + csfr::kFlagNonFinite] = 1;
  }
  n_intra = std::max(n_intra, A(1));
  n_inter = std::max(n_inter, A(1));
  intra /= n_intra;
  inter /= n_inter;
  if (st[L.flags() + csfr::kFlagNonFinite] != 0) intra = inter = std::nan("");
  terms[0] = intra;
  terms[1] = inter;
  *loss = w_intra * intra + w_inter * inter;
  st[L.scale()] = A(1) / n_intra;
  st[L.scale() + 1] = A(1) / n_inter;
}

// 1 / max(n, 1) of class counts: the factor of every class mean sums / n (the CUDA kernels' mean_scale).
Tensor inverse_counts(const Tensor& counts) { return counts.clamp_min(1).reciprocal(); }

std::tuple<Tensor, Tensor, Tensor> cac_loss_cpu(const Tensor& feats, const Tensor& labels, int64_t K, double delta_v,
                                                double delta_d, double w_intra, double w_inter, int64_t ignore_index) {
  check_feats_labels(feats, labels, "cac_loss");
  csfr::checks::check_classes(K, "cac_loss");
  csfr::checks::check_margins(delta_v, delta_d, "cac_loss");
  const csfr::CacState L{feats.size(0), feats.size(1), feats.size(2), K};
  auto [sums, counts] = segment_sum_cpu(feats, labels, K, ignore_index);
  const Tensor mu = sums * inverse_counts(counts).unsqueeze(-1);
  auto [coef, hinge, wsum, wcount] = cac_pixel_pass_cpu(feats, labels, mu, delta_v, ignore_index);
  Tensor state = at::zeros({L.total()}, sums.options());
  const std::pair<int64_t, const Tensor*> parts[] = {{L.sums(), &sums},   {L.wsum(), &wsum},     {L.counts(), &counts},
                                                     {L.hinge(), &hinge}, {L.wcount(), &wcount}, {L.coef(), &coef}};
  for (const auto& [offset, part] : parts) state.narrow(0, offset, part->numel()).copy_(part->reshape(-1));
  Tensor loss = at::empty({}, sums.options()), terms = at::empty({2}, sums.options());
  AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "cac_loss", [&] {
    cac_class_part<scalar_t>(state.data_ptr<scalar_t>(), L, static_cast<scalar_t>(delta_d),
                             static_cast<scalar_t>(w_intra), static_cast<scalar_t>(w_inter), loss.data_ptr<scalar_t>(),
                             terms.data_ptr<scalar_t>());
  });
  return {loss, terms, state};
}

// The backward reads the state's views: pixel_grad's direct operands (mu, coef, a) and its per-class g, scaled by
// the upstream gradients, as tensors (nothing is read on the host, as on the CUDA code path).
Tensor cac_loss_backward_cpu(const std::optional<Tensor>& grad_loss, const std::optional<Tensor>& grad_terms,
                             const Tensor& feats, const Tensor& labels, const Tensor& state, int64_t K, double w_intra,
                             double w_inter, int64_t ignore_index) {
  check_feats_labels(feats, labels, "cac_loss_backward");
  const csfr::CacState L{feats.size(0), feats.size(1), feats.size(2), K};
  csfr::checks::check_acc(state, feats, {L.total()}, kCpu, "cac_loss_backward", "state");
  const int64_t B = L.B, D = L.D;
  auto part = [&](int64_t offset, at::IntArrayRef shape) {
    int64_t n = 1;
    for (const int64_t s : shape) n *= s;
    return state.narrow(0, offset, n).view(shape);
  };
  Tensor go = at::zeros({2}, state.options());  // (intra, inter)
  if (grad_loss) go = go + grad_loss->reshape({1}) * at::tensor({w_intra, w_inter}, state.options());
  if (grad_terms) go = go + *grad_terms;
  const Tensor s = go * part(L.scale(), {2});
  const Tensor s_intra = s.narrow(0, 0, 1), s_inter = s.narrow(0, 1, 1);
  const Tensor inv = inverse_counts(part(L.counts(), {B, K}));
  const Tensor a = part(L.a(), {B, K}) * s_intra;
  const Tensor g = (-a * inv).unsqueeze(-1) * part(L.wsum(), {B, K, D}) + part(L.g_inter(), {B, K, D}) * s_inter;
  const Tensor mu = part(L.sums(), {B, K, D}) * inv.unsqueeze(-1);
  return pixel_grad_cpu(feats, labels, g.contiguous(), ignore_index, mu, part(L.coef(), {B, L.N}).contiguous(),
                        a.contiguous());
}

// The fused class_centroids on the CPU: segment_sum, the means in the features' dtype, int64 counts, and the
// same state as the CUDA code path (its sums and counts) for the backward.
std::tuple<Tensor, Tensor, Tensor> class_centroids_fused_cpu(const Tensor& feats, const Tensor& labels, int64_t K,
                                                             int64_t ignore_index) {
  check_feats_labels(feats, labels, "class_centroids");
  csfr::checks::check_classes(K, "class_centroids");
  auto [sums, counts] = segment_sum_cpu(feats, labels, K, ignore_index);
  const csfr::CentroidState L{feats.size(0), feats.size(1), K};
  Tensor state = at::zeros({L.total()}, sums.options());
  state.narrow(0, L.sums(), sums.numel()).copy_(sums.reshape(-1));
  state.narrow(0, L.counts(), counts.numel()).copy_(counts.reshape(-1));
  const Tensor mu = (sums * inverse_counts(counts).unsqueeze(-1)).to(feats.scalar_type());
  return {mu, counts.to(at::kLong), state};
}

Tensor class_centroids_fused_backward_cpu(const Tensor& grad_mu, const Tensor& feats, const Tensor& labels,
                                          const Tensor& state, int64_t K, int64_t ignore_index) {
  check_feats_labels(feats, labels, "class_centroids_backward");
  const int64_t B = feats.size(0), D = feats.size(1);
  const csfr::CentroidState L{B, D, K};
  csfr::checks::check_acc(state, feats, {L.total()}, kCpu, "class_centroids_backward", "state");
  TORCH_CHECK(grad_mu.sizes() == at::IntArrayRef({B, K, D}), "class_centroids_backward: grad_mu must be [B, K, D]");
  const Tensor inv = inverse_counts(state.narrow(0, L.counts(), B * K).view({B, K, 1}));
  const Tensor g = (grad_mu.to(state.scalar_type()) * inv).contiguous();
  return pixel_grad_cpu(feats, labels, g, ignore_index, std::nullopt, std::nullopt, std::nullopt);
}

using GateMode = csfr::checks::Gate;

GateMode check_blend(const Tensor& x, const Tensor& s, const Tensor& g, const char* op) {
  return csfr::checks::check_blend(x, s, g, kCpu, op);
}

// The blend's row loops are compiled twice, for AVX2 + FMA (8 fp32 lanes) and for the baseline
// ISA, and picked at run time as ATen picks its own kernels: the exponential makes the blend
// compute-bound enough that the wider vectors pay, and a wheel must still run on any x86-64.
#if defined(__x86_64__) && defined(__GNUC__)
#define CSFR_BLEND_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "blend_rows.h"
}  // namespace avx2
#pragma GCC pop_options
#endif
namespace baseline {
#include "blend_rows.h"
}  // namespace baseline

// CSFR_CPU_BASELINE=1 forces the baseline loops (tests use it to check them on AVX2 machines).
bool cpu_has_avx2() {
#ifdef CSFR_BLEND_AVX2
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          std::getenv("CSFR_CPU_BASELINE") == nullptr;
  return has;
#else
  return false;
#endif
}

template <typename scalar_t, bool kPerChannel>
void blend_forward_row(const scalar_t* x, const scalar_t* s, const scalar_t* g, scalar_t* z, int64_t n) {
#ifdef CSFR_BLEND_AVX2
  if (cpu_has_avx2()) return avx2::blend_forward_row<scalar_t, kPerChannel>(x, s, g, z, n);
#endif
  baseline::blend_forward_row<scalar_t, kPerChannel>(x, s, g, z, n);
}

template <typename scalar_t, GateMode M>
at::opmath_type<scalar_t> blend_backward_row(const scalar_t* dz, const scalar_t* x, const scalar_t* s,
                                             const scalar_t* g, scalar_t* dx, scalar_t* ds, scalar_t* dg,
                                             at::opmath_type<scalar_t>* dg_sum, int64_t n) {
#ifdef CSFR_BLEND_AVX2
  if (cpu_has_avx2()) return avx2::blend_backward_row<scalar_t, M>(dz, x, s, g, dx, ds, dg, dg_sum, n);
#endif
  return baseline::blend_backward_row<scalar_t, M>(dz, x, s, g, dx, ds, dg, dg_sum, n);
}


// The gate row of x's row r = b*C + c: per channel a single value, otherwise N values.
template <typename scalar_t>
const scalar_t* gate_row(const scalar_t* g, GateMode mode, int64_t r, int64_t C, int64_t N) {
  switch (mode) {
    case GateMode::kFull: return g + r * N;
    case GateMode::kPixel: return g + (r / C) * N;
    default: return g + r;
  }
}


template <typename scalar_t>
void blend_forward_impl(const Tensor& x, const Tensor& s, const Tensor& g, GateMode mode, Tensor& z) {
  const int64_t C = x.size(1), N = x.size(2);
  const scalar_t *xp = x.data_ptr<scalar_t>(), *sp = s.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
  scalar_t* zp = z.data_ptr<scalar_t>();
  at::parallel_for(0, x.size(0) * C, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* grow = gate_row(gp, mode, r, C, N);
      if (mode == GateMode::kChannel) blend_forward_row<scalar_t, true>(xp + r * N, sp + r * N, grow, zp + r * N, N);
      else blend_forward_row<scalar_t, false>(xp + r * N, sp + r * N, grow, zp + r * N, N);
    }
  });
}

Tensor blend_forward_cpu(const Tensor& x, const Tensor& s, const Tensor& g) {
  const GateMode mode = check_blend(x, s, g, "blend_forward");
  Tensor z = at::empty_like(x);
  if (x.numel() == 0) return z;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blend_forward",
                                  [&] { blend_forward_impl<scalar_t>(x, s, g, mode, z); });
  return z;
}


template <typename scalar_t>
void blend_backward_impl(const Tensor& dz, const Tensor& x, const Tensor& s, const Tensor& g, GateMode mode,
                         Tensor& dx, Tensor& ds, Tensor& dg) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  const scalar_t *xp = x.data_ptr<scalar_t>(), *sp = s.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
  const scalar_t* dzp = dz.data_ptr<scalar_t>();
  scalar_t *dxp = dx.data_ptr<scalar_t>(), *dsp = ds.data_ptr<scalar_t>(), *dgp = dg.data_ptr<scalar_t>();
  if (mode == GateMode::kPixel) {
    // the gate of pixel i is shared by the C channels: one task per (image, pixel chunk)
    const int64_t chunk = 1024, chunks = (N + chunk - 1) / chunk;
    at::parallel_for(0, B * chunks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> acc(chunk);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / chunks, i0 = (t % chunks) * chunk, n = std::min(N, i0 + chunk) - i0;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const int64_t e = (b * C + c) * N + i0;
          blend_backward_row<scalar_t, GateMode::kPixel>(dzp + e, xp + e, sp + e, gp + b * N + i0, dxp + e,
                                                         dsp + e, nullptr, acc.data(), n);
        }
        for (int64_t i = 0; i < n; ++i) dgp[b * N + i0 + i] = static_cast<scalar_t>(acc[i]);
      }
    });
    return;
  }
  at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t e = r * N;
      if (mode == GateMode::kFull) {
        blend_backward_row<scalar_t, GateMode::kFull>(dzp + e, xp + e, sp + e, gp + e, dxp + e, dsp + e, dgp + e,
                                                      nullptr, N);
      } else {
        dgp[r] = static_cast<scalar_t>(blend_backward_row<scalar_t, GateMode::kChannel>(
            dzp + e, xp + e, sp + e, gp + r, dxp + e, dsp + e, nullptr, nullptr, N));
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> blend_backward_cpu(const Tensor& dz, const Tensor& x, const Tensor& s,
                                                      const Tensor& g) {
  const GateMode mode = check_blend(x, s, g, "blend_backward");
  csfr::checks::check_grad_like(dz, x, kCpu, "blend_backward", "grad_z");
  Tensor dx = at::empty_like(x), ds = at::empty_like(s), dg = at::empty_like(g);  // every mode writes all of dg
  if (x.numel() == 0) return {dx, ds, dg};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blend_backward",
                                  [&] { blend_backward_impl<scalar_t>(dz, x, s, g, mode, dx, ds, dg); });
  return {dx, ds, dg};
}

}  // namespace

TORCH_LIBRARY_IMPL(csfr, CPU, m) {
  m.impl("segment_sum", &segment_sum_cpu);
  m.impl("cac_pixel_pass", &cac_pixel_pass_cpu);
  m.impl("pixel_grad", &pixel_grad_cpu);
  m.impl("cac_loss", &cac_loss_cpu);
  m.impl("cac_loss_backward", &cac_loss_backward_cpu);
  m.impl("class_centroids_fused", &class_centroids_fused_cpu);
  m.impl("class_centroids_fused_backward", &class_centroids_fused_backward_cpu);
  m.impl("blend_forward", &blend_forward_cpu);
  m.impl("blend_backward", &blend_backward_cpu);
}
