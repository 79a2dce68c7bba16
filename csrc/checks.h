// The argument checks of the kernel ops, shared by the CPU kernels (csrc/cpu_kernels.cpp) and the CUDA glue
// (csrc/cuda/ops_cuda.cpp), so that both refuse the same inputs with the same message. Each backend says
// where its kernels run (`Where`); everything else is common. Label values are checked before the ops
// (csfr/ops/checks.py) or by the kernels themselves (the fused ops on the CUDA code path).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "shape_text.h"

namespace csfr::checks {

using at::Tensor;

// Where a backend's kernels run: `here(t)` says whether t is there, `kind` names it in messages.
struct Where {
  bool (*here)(const Tensor&);
  const char* kind;
};

// Accumulation dtype: float64 for float64 features, float32 otherwise.
inline at::ScalarType acc_type(const Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_floating(const Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble, op, ": ", name,
              " must be float32/float16/bfloat16/float64, got ", s);
}

// t is where the kernels run, on the features' device, and contiguous.
inline void check_operand(const Tensor& t, const Tensor& like, const Where& where, const char* op, const char* name) {
  TORCH_CHECK(where.here(t), op, ": ", name, " must be a ", where.kind, " tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but features are on ",
              like.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// features [B, D, N] floating, labels [B, N] int64, both contiguous where the kernels run.
inline void check_feats_labels(const Tensor& feats, const Tensor& labels, const Where& where, const char* op) {
  TORCH_CHECK(feats.dim() == 3, op, ": features must be [B, D, N], got ", csfr::shape_text(feats.sizes()));
  check_operand(feats, feats, where, op, "features");
  check_operand(labels, feats, where, op, "labels");
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == feats.size(0) && labels.size(1) == feats.size(2), op,
              ": labels must be [B, N] = [", feats.size(0), ", ", feats.size(2), "], got ",
              csfr::shape_text(labels.sizes()));
  TORCH_CHECK(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ", labels.scalar_type());
  check_floating(feats, op, "features");
}

// An acc-dtype operand of shape `shape` beside the features.
inline void check_acc(const Tensor& t, const Tensor& feats, at::IntArrayRef shape, const Where& where, const char* op,
                      const char* name) {
  check_operand(t, feats, where, op, name);
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", csfr::shape_text(shape), ", got ",
              csfr::shape_text(t.sizes()));
  TORCH_CHECK(t.scalar_type() == acc_type(feats), op, ": ", name, " must be ", acc_type(feats), ", got ",
              t.scalar_type());
}

inline void check_classes(int64_t K, const char* op) { TORCH_CHECK(K >= 1, op, ": num_classes must be >= 1, got ", K); }

inline void check_margins(double delta_v, double delta_d, const char* op) {
  TORCH_CHECK(delta_v >= 0 && delta_d >= 0, op, ": margins must be >= 0, got delta_v=", delta_v, ", delta_d=",
              delta_d);
}

// How the gate of a blend broadcasts over x [B, C, N] (the values of csfr::GateMode in kernels/csfr_kernels.cuh).
enum class Gate : int { kFull = 0, kPixel = 1, kChannel = 2 };

inline Gate check_blend(const Tensor& x, const Tensor& s, const Tensor& g, const Where& where, const char* op) {
  TORCH_CHECK(x.dim() == 3 && x.sizes() == s.sizes(), op, ": x and s must be [B, C, N] of one shape, got ",
              csfr::shape_text(x.sizes()), " and ", csfr::shape_text(s.sizes()));
  check_operand(x, x, where, op, "x");
  check_operand(s, x, where, op, "s");
  check_operand(g, x, where, op, "g");
  TORCH_CHECK(x.scalar_type() == s.scalar_type() && x.scalar_type() == g.scalar_type(), op,
              ": x, s, g must share a dtype, got ", x.scalar_type(), ", ", s.scalar_type(), ", ", g.scalar_type());
  check_floating(x, op, "x");
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  TORCH_CHECK(g.dim() == 3 && g.size(0) == B, op, ": g must be [B, C, N], [B, 1, N] or [B, C, 1], got ",
              csfr::shape_text(g.sizes()));
  if (g.size(1) == C && g.size(2) == N) return Gate::kFull;
  if (g.size(1) == 1 && g.size(2) == N) return Gate::kPixel;
  TORCH_CHECK(g.size(1) == C && g.size(2) == 1, op, ": g must be [B, C, N], [B, 1, N] or [B, C, 1], got ",
              csfr::shape_text(g.sizes()));
  return Gate::kChannel;
}

inline void check_grad_like(const Tensor& grad, const Tensor& x, const Where& where, const char* op, const char* name) {
  check_operand(grad, x, where, op, name);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(), op, ": ", name, " must match x (",
              csfr::shape_text(x.sizes()), ", ", x.scalar_type(), "), got ", csfr::shape_text(grad.sizes()), ", ",
              grad.scalar_type());
}

}  // namespace csfr::checks
