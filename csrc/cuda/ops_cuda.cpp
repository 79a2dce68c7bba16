// CUDA implementations of the csfr kernel schemas (csrc/schemas.h): check inputs, allocate outputs,
// launch the raw-pointer kernels of kernels/csfr_kernels.cuh on torch's current stream, check the launch.
// Compiled with CSFR_EMULATION, the same file registers the emulated kernels on CPU tensors as the
// test library csfr_emulated (csrc/emulation/, csfr/ops/emulation.py).
// Label values are validated by the Python operators before they get here (a device-side check would
// need a host sync); the kernels treat any value outside [0, K) as ignored, so bad labels cannot write
// out of bounds.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../fused_autograd.h"
#include "../checks.h"
#include "../schemas.h"
#include "../shape_text.h"
#include "fused_state.h"
#include "csfr_kernels.cuh"
#include "device.h"

namespace {

using at::Tensor;

csfr::DType kernel_dtype(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return csfr::DType::kFloat32;
    case at::kHalf: return csfr::DType::kFloat16;
    case at::kBFloat16: return csfr::DType::kBFloat16;
    case at::kDouble: return csfr::DType::kFloat64;
    default: TORCH_CHECK(false, op, ": features must be float32/float16/bfloat16/float64, got ", t.scalar_type());
  }
}

using csfr::checks::acc_type;

// CUDA tensors, or CPU tensors standing in for them under the emulation (csrc/cuda/device.h).
const csfr::checks::Where kDevice{&csfr_glue::on_device, csfr_glue::kTensorKind};

void check_feats_labels(const Tensor& feats, const Tensor& labels, const char* op) {
  csfr::checks::check_feats_labels(feats, labels, kDevice, op);
}

void check_acc(const Tensor& t, const Tensor& feats, at::IntArrayRef shape, const char* op, const char* name) {
  csfr::checks::check_acc(t, feats, shape, kDevice, op, name);
}

using csfr_glue::stream;

// Under torch.use_deterministic_algorithms(True) the reductions take their atomics-free path, which
// needs a scratch buffer; the empty tensor (and a null pointer) otherwise.
bool deterministic() { return at::globalContext().deterministicAlgorithms(); }

Tensor workspace(const Tensor& feats, size_t bytes) {
  return at::empty({deterministic() ? static_cast<int64_t>(bytes) : 0}, feats.options().dtype(at::kByte));
}

std::tuple<Tensor, Tensor> segment_sum_cuda(const Tensor& feats, const Tensor& labels, int64_t K,
                                            int64_t ignore_index) {
  check_feats_labels(feats, labels, "segment_sum");
  csfr::checks::check_classes(K, "segment_sum");
  const csfr_glue::DeviceGuard guard(feats.device());
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2);
  auto opts = feats.options().dtype(acc_type(feats));
  Tensor sums = at::empty({B, K, D}, opts), counts = at::empty({B, K}, opts);
  const csfr::DType dtype = kernel_dtype(feats, "segment_sum");
  Tensor scratch = workspace(feats, csfr::segment_sum_workspace_bytes(dtype, B, D, N, K));
  CSFR_CUDA_CHECK(csfr::segment_sum(dtype, feats.data_ptr(), labels.data_ptr<int64_t>(), sums.data_ptr(),
                                    counts.data_ptr(), B, D, N, K, ignore_index, deterministic(),
                                    scratch.numel() ? scratch.data_ptr() : nullptr, stream()));
  return {sums, counts};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> cac_pixel_pass_cuda(const Tensor& feats, const Tensor& labels,
                                                               const Tensor& mu, double delta_v,
                                                               int64_t ignore_index) {
  check_feats_labels(feats, labels, "cac_pixel_pass");
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2);
  TORCH_CHECK(mu.dim() == 3, "cac_pixel_pass: mu must be [B, K, D], got ", csfr::shape_text(mu.sizes()));
  const int64_t K = mu.size(1);
  check_acc(mu, feats, {B, K, D}, "cac_pixel_pass", "mu");
  csfr::checks::check_margins(delta_v, 0, "cac_pixel_pass");
  const csfr_glue::DeviceGuard guard(feats.device());
  auto opts = feats.options().dtype(acc_type(feats));
  Tensor coef = at::empty({B, N}, opts), hinge = at::empty({B, K}, opts);
  Tensor wsum = at::empty({B, K, D}, opts), wcount = at::empty({B, K}, opts);
  const csfr::DType dtype = kernel_dtype(feats, "cac_pixel_pass");
  Tensor scratch = workspace(feats, csfr::cac_pixel_pass_workspace_bytes(dtype, B, D, N, K));
  CSFR_CUDA_CHECK(csfr::cac_pixel_pass(dtype, feats.data_ptr(), labels.data_ptr<int64_t>(), mu.data_ptr(), delta_v,
                                       coef.data_ptr(), hinge.data_ptr(), wsum.data_ptr(), wcount.data_ptr(), B, D,
                                       N, K, ignore_index, deterministic(),
                                       scratch.numel() ? scratch.data_ptr() : nullptr, stream()));
  return {coef, hinge, wsum, wcount};
}

Tensor pixel_grad_cuda(const Tensor& feats, const Tensor& labels, const Tensor& g, int64_t ignore_index,
                       const std::optional<Tensor>& mu, const std::optional<Tensor>& coef,
                       const std::optional<Tensor>& a) {
  check_feats_labels(feats, labels, "pixel_grad");
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2);
  TORCH_CHECK(g.dim() == 3, "pixel_grad: g must be [B, K, D], got ", csfr::shape_text(g.sizes()));
  const int64_t K = g.size(1);
  check_acc(g, feats, {B, K, D}, "pixel_grad", "g");
  const bool direct = mu.has_value() && coef.has_value() && a.has_value();
  TORCH_CHECK(direct || (!mu.has_value() && !coef.has_value() && !a.has_value()),
              "pixel_grad: mu, coef and a must be given together");
  if (direct) {
    check_acc(*mu, feats, {B, K, D}, "pixel_grad", "mu");
    check_acc(*coef, feats, {B, N}, "pixel_grad", "coef");
    check_acc(*a, feats, {B, K}, "pixel_grad", "a");
  }
  const csfr_glue::DeviceGuard guard(feats.device());
  Tensor out = at::empty_like(feats);
  CSFR_CUDA_CHECK(csfr::pixel_grad(kernel_dtype(feats, "pixel_grad"), feats.data_ptr(), labels.data_ptr<int64_t>(),
                                  g.data_ptr(), direct ? mu->data_ptr() : nullptr,
                                  direct ? coef->data_ptr() : nullptr, direct ? a->data_ptr() : nullptr,
                                  out.data_ptr(), B, D, N, K, ignore_index, stream()));
  return out;
}

// The fused loss's state and its checks, shared with the backward (kernels/fused_state.h).
csfr::CacState cac_state_of(const Tensor& feats, int64_t K) {
  return csfr::CacState{feats.size(0), feats.size(1), feats.size(2), K};
}

std::tuple<Tensor, Tensor, Tensor> cac_loss_cuda(const Tensor& feats, const Tensor& labels, int64_t K, double delta_v,
                                                 double delta_d, double w_intra, double w_inter,
                                                 int64_t ignore_index) {
  check_feats_labels(feats, labels, "cac_loss");
  csfr::checks::check_classes(K, "cac_loss");
  csfr::checks::check_margins(delta_v, delta_d, "cac_loss");
  const csfr_glue::DeviceGuard guard(feats.device());
  const csfr::CacState L = cac_state_of(feats, K);
  auto opts = feats.options().dtype(acc_type(feats));
  Tensor state = at::empty({L.total()}, opts), loss = at::empty({}, opts), terms = at::empty({2}, opts);
  const csfr::DType dtype = kernel_dtype(feats, "cac_loss");
  Tensor scratch = workspace(feats, csfr::cac_pixel_pass_workspace_bytes(dtype, L.B, L.D, L.N, K));
  CSFR_CUDA_CHECK(csfr::cac_loss_forward(dtype, feats.data_ptr(), labels.data_ptr<int64_t>(), state.data_ptr(),
                                         loss.data_ptr(), terms.data_ptr(), L.B, L.D, L.N, K, ignore_index, delta_v,
                                         delta_d, w_intra, w_inter, deterministic(),
                                         scratch.numel() ? scratch.data_ptr() : nullptr, stream()));
  return {loss, terms, state};
}

Tensor cac_loss_backward_cuda(const std::optional<Tensor>& grad_loss, const std::optional<Tensor>& grad_terms,
                              const Tensor& feats, const Tensor& labels, const Tensor& state, int64_t K,
                              double w_intra, double w_inter, int64_t ignore_index) {
  check_feats_labels(feats, labels, "cac_loss_backward");
  const csfr::CacState L = cac_state_of(feats, K);
  check_acc(state, feats, {L.total()}, "cac_loss_backward", "state");
  if (grad_loss) {
    csfr::checks::check_operand(*grad_loss, feats, kDevice, "cac_loss_backward", "grad_loss");
    TORCH_CHECK(grad_loss->dim() == 0 && grad_loss->scalar_type() == state.scalar_type(),
                "cac_loss_backward: grad_loss must be a ", state.scalar_type(), " scalar");
  }
  if (grad_terms) {
    TORCH_CHECK(kDevice.here(*grad_terms) && grad_terms->device() == feats.device(),
                "cac_loss_backward: grad_terms must be on ", feats.device());
    TORCH_CHECK(grad_terms->dim() == 1 && grad_terms->size(0) == 2 && grad_terms->scalar_type() == state.scalar_type(),
                "cac_loss_backward: grad_terms must be [2] ", state.scalar_type(), ", got ",
                csfr::shape_text(grad_terms->sizes()), " ", grad_terms->scalar_type());
  }
  const csfr_glue::DeviceGuard guard(feats.device());
  Tensor out = at::empty_like(feats);
  CSFR_CUDA_CHECK(csfr::cac_loss_backward(kernel_dtype(feats, "cac_loss_backward"), feats.data_ptr(),
                                          labels.data_ptr<int64_t>(), state.data_ptr(),
                                          grad_loss ? grad_loss->data_ptr() : nullptr,
                                          grad_terms ? grad_terms->data_ptr() : nullptr,
                                          grad_terms ? grad_terms->stride(0) : 0, w_intra, w_inter, out.data_ptr(),
                                          L.B, L.D, L.N, K, ignore_index, stream()));
  return out;
}

std::tuple<Tensor, Tensor, Tensor> class_centroids_fused_cuda(const Tensor& feats, const Tensor& labels, int64_t K,
                                                              int64_t ignore_index) {
  check_feats_labels(feats, labels, "class_centroids");
  csfr::checks::check_classes(K, "class_centroids");
  const csfr_glue::DeviceGuard guard(feats.device());
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2);
  const csfr::CentroidState L{B, D, K};
  Tensor state = at::empty({L.total()}, feats.options().dtype(acc_type(feats)));
  Tensor mu = at::empty({B, K, D}, feats.options()), counts = at::empty({B, K}, feats.options().dtype(at::kLong));
  const csfr::DType dtype = kernel_dtype(feats, "class_centroids");
  Tensor scratch = workspace(feats, csfr::segment_sum_workspace_bytes(dtype, B, D, N, K));
  CSFR_CUDA_CHECK(csfr::class_centroids_forward(dtype, feats.data_ptr(), labels.data_ptr<int64_t>(), state.data_ptr(),
                                                mu.data_ptr(), counts.data_ptr<int64_t>(), B, D, N, K, ignore_index,
                                                deterministic(), scratch.numel() ? scratch.data_ptr() : nullptr,
                                                stream()));
  return {mu, counts, state};
}

Tensor class_centroids_fused_backward_cuda(const Tensor& grad_mu, const Tensor& feats, const Tensor& labels,
                                           const Tensor& state, int64_t K, int64_t ignore_index) {
  check_feats_labels(feats, labels, "class_centroids_backward");
  const int64_t B = feats.size(0), D = feats.size(1), N = feats.size(2);
  check_acc(state, feats, {csfr::CentroidState{B, D, K}.total()}, "class_centroids_backward", "state");
  TORCH_CHECK(kDevice.here(grad_mu) && grad_mu.device() == feats.device(),
              "class_centroids_backward: grad_mu must be on ", feats.device());
  TORCH_CHECK(grad_mu.sizes() == at::IntArrayRef({B, K, D}) && grad_mu.scalar_type() == feats.scalar_type(),
              "class_centroids_backward: grad_mu must be [", B, ", ", K, ", ", D, "] ", feats.scalar_type(), ", got ",
              csfr::shape_text(grad_mu.sizes()), " ", grad_mu.scalar_type());
  const csfr_glue::DeviceGuard guard(feats.device());
  Tensor out = at::empty_like(feats);
  CSFR_CUDA_CHECK(csfr::class_centroids_backward(kernel_dtype(feats, "class_centroids_backward"),
                                                 labels.data_ptr<int64_t>(), grad_mu.data_ptr(), grad_mu.stride(0),
                                                 grad_mu.stride(1), grad_mu.stride(2), state.data_ptr(),
                                                 out.data_ptr(), B, D, N, K, ignore_index, stream()));
  return out;
}

csfr::GateMode check_blend(const Tensor& x, const Tensor& s, const Tensor& g, const char* op) {
  return static_cast<csfr::GateMode>(csfr::checks::check_blend(x, s, g, kDevice, op));
}

Tensor blend_forward_cuda(const Tensor& x, const Tensor& s, const Tensor& g) {
  const csfr::GateMode mode = check_blend(x, s, g, "blend_forward");
  const csfr_glue::DeviceGuard guard(x.device());
  Tensor z = at::empty_like(x);
  CSFR_CUDA_CHECK(csfr::blend_forward(kernel_dtype(x, "blend_forward"), mode, x.data_ptr(), s.data_ptr(),
                                     g.data_ptr(), z.data_ptr(), x.size(0), x.size(1), x.size(2), stream()));
  return z;
}

std::tuple<Tensor, Tensor, Tensor> blend_backward_cuda(const Tensor& grad_z, const Tensor& x, const Tensor& s,
                                                       const Tensor& g) {
  const csfr::GateMode mode = check_blend(x, s, g, "blend_backward");
  csfr::checks::check_grad_like(grad_z, x, kDevice, "blend_backward", "grad_z");
  const csfr_glue::DeviceGuard guard(x.device());
  Tensor dx = at::empty_like(x), ds = at::empty_like(s), dg = at::empty_like(g);
  CSFR_CUDA_CHECK(csfr::blend_backward(kernel_dtype(x, "blend_backward"), mode, grad_z.data_ptr(), x.data_ptr(),
                                      s.data_ptr(), g.data_ptr(), dx.data_ptr(), ds.data_ptr(), dg.data_ptr(),
                                      x.size(0), x.size(1), x.size(2), stream()));
  return {dx, ds, dg};
}

void register_kernels(torch::Library& m) {
  m.impl("segment_sum", &segment_sum_cuda);
  m.impl("cac_pixel_pass", &cac_pixel_pass_cuda);
  m.impl("pixel_grad", &pixel_grad_cuda);
  m.impl("cac_loss", &cac_loss_cuda);
  m.impl("cac_loss_backward", &cac_loss_backward_cuda);
  m.impl("class_centroids_fused", &class_centroids_fused_cuda);
  m.impl("class_centroids_fused_backward", &class_centroids_fused_backward_cuda);
  m.impl("blend_forward", &blend_forward_cuda);
  m.impl("blend_backward", &blend_backward_cuda);
}

}  // namespace

#ifdef CSFR_EMULATION
#include <ATen/record_function.h>

namespace {
// Each emulated launch and memset becomes a torch.profiler event of the name a GPU profile gives it, so the
// launches of an operator on the CUDA code path are counted on the CPU (tests/test_ops_host_cost.py).
void record_call(const char* call) { RECORD_FUNCTION(call, std::vector<c10::IValue>()); }
const bool kObserved = (csfr::emu::set_observer(&record_call), true);
}  // namespace

TORCH_LIBRARY(csfr_emulated, m) {
  csfr::define_kernel_schemas(m);
  m.def("set_schedule_seed(int seed) -> ()", [](int64_t seed) { csfr::emu::set_seed(static_cast<uint64_t>(seed)); });
  // [warp collectives, atomics] since the last call, per lane (csrc/emulation/emulation.h, WorkCounts)
  m.def("take_work_counts() -> int[]", []() {
    const auto w = csfr::emu::take_work_counts();
    return std::vector<int64_t>{static_cast<int64_t>(w.collectives), static_cast<int64_t>(w.atomics)};
  });
}
TORCH_LIBRARY_IMPL(csfr_emulated, CPU, m) { register_kernels(m); }
namespace {
struct EmulatedLib {
  static constexpr const char* kNamespace = "csfr_emulated";
};
}  // namespace
TORCH_LIBRARY_IMPL(csfr_emulated, Autograd, m) { csfr::register_fused_autograd<EmulatedLib>(m); }
#else
TORCH_LIBRARY_IMPL(csfr, CUDA, m) { register_kernels(m); }
#endif
