// The autograd of the fused ops, in C++: each backward is one call of the op's backward op (one kernel on a
// GPU), with no Python and no host read in between. Registered at the Autograd key of the csfr library
// (csrc/ops.cpp) and of the emulated test library (csrc/cuda/ops_cuda.cpp) by `register_fused_autograd`;
// `Lib::kNamespace` names the library.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

namespace csfr {

// The op `name` of library Lib, typed.
template <typename Lib, typename Signature>
c10::TypedOperatorHandle<Signature> fused_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow((std::string(Lib::kNamespace) + "::" + name).c_str(), "")
      .template typed<Signature>();
}

template <typename Lib>
struct CacLossFunction : torch::autograd::Function<CacLossFunction<Lib>> {
  using Tensor = at::Tensor;

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& feats,
                                                const Tensor& labels, int64_t K, double delta_v, double delta_d,
                                                double w_intra, double w_inter, int64_t ignore_index) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op =
        fused_op<Lib, std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, double, double, double,
                                                         double, int64_t)>("cac_loss");
    auto [loss, terms, state] = op.call(feats, labels, K, delta_v, delta_d, w_intra, w_inter, ignore_index);
    ctx->save_for_backward({feats, labels, state});
    ctx->saved_data["K"] = K;
    ctx->saved_data["w_intra"] = w_intra;
    ctx->saved_data["w_inter"] = w_inter;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->mark_non_differentiable({state});
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined: nothing to read
    return {loss, terms, state};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(8);
    if (!grads[0].defined() && !grads[1].defined()) return out;
    static const auto op =
        fused_op<Lib, Tensor(const std::optional<Tensor>&, const std::optional<Tensor>&, const Tensor&, const Tensor&,
                             const Tensor&, int64_t, double, double, int64_t)>("cac_loss_backward");
    const auto saved = ctx->get_saved_variables();
    auto given = [](const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; };
    out[0] = op.call(given(grads[0]), given(grads[1]), saved[0], saved[1], saved[2], ctx->saved_data["K"].toInt(),
                     ctx->saved_data["w_intra"].toDouble(), ctx->saved_data["w_inter"].toDouble(),
                     ctx->saved_data["ignore_index"].toInt());
    return out;
  }

  static std::tuple<Tensor, Tensor, Tensor> apply_op(const Tensor& feats, const Tensor& labels, int64_t K,
                                                     double delta_v, double delta_d, double w_intra, double w_inter,
                                                     int64_t ignore_index) {
    auto out = CacLossFunction::apply(feats, labels, K, delta_v, delta_d, w_intra, w_inter, ignore_index);
    return {out[0], out[1], out[2]};
  }
};

// class_centroids_fused: (mu, counts, state); only mu is differentiable.
template <typename Lib>
struct CentroidsFunction : torch::autograd::Function<CentroidsFunction<Lib>> {
  using Tensor = at::Tensor;

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& feats,
                                                const Tensor& labels, int64_t K, int64_t ignore_index) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = fused_op<Lib, std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, int64_t,
                                                                             int64_t)>("class_centroids_fused");
    auto [mu, counts, state] = op.call(feats, labels, K, ignore_index);
    ctx->save_for_backward({feats, labels, state});  // feats for its shape and dtype: the kernel never reads it
    ctx->saved_data["K"] = K;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->mark_non_differentiable({counts, state});
    ctx->set_materialize_grads(false);
    return {mu, counts, state};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(4);
    if (!grads[0].defined()) return out;
    static const auto op = fused_op<Lib, Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                                                int64_t)>("class_centroids_fused_backward");
    const auto saved = ctx->get_saved_variables();
    out[0] = op.call(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["K"].toInt(),
                     ctx->saved_data["ignore_index"].toInt());
    return out;
  }

  static std::tuple<Tensor, Tensor, Tensor> apply_op(const Tensor& feats, const Tensor& labels, int64_t K,
                                                     int64_t ignore_index) {
    auto out = CentroidsFunction::apply(feats, labels, K, ignore_index);
    return {out[0], out[1], out[2]};
  }
};

template <typename Lib>
void register_fused_autograd(torch::Library& m) {
  m.impl("cac_loss", &CacLossFunction<Lib>::apply_op);
  m.impl("class_centroids_fused", &CentroidsFunction<Lib>::apply_op);
}

}  // namespace csfr
