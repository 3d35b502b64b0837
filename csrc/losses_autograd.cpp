// The differentiable losses (ops.cpp): one C++ autograd node per call around the fused
// forward+backward kernels, so that training pays neither Python autograd code nor extra passes.
// For 'mean' the kernel gets the weights w / N, so its dz already is the gradient of the mean;
// a backward from `loss.backward()` (upstream gradient exactly 1) returns dz untouched.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace cwr_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

// The fused kernels, called below the autograd key.
std::tuple<at::Tensor, at::Tensor> fused(int kind, const at::Tensor& z, const at::Tensor& y, double temperature,
                                         const std::optional<at::Tensor>& attack_target,
                                         const std::optional<at::Tensor>& weight) {
  static const auto ce = c10::Dispatcher::singleton()
      .findSchemaOrThrow("cwr_fast::temperature_ce_fwd_bwd", "")
      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                const std::optional<at::Tensor>&)>();
  static const auto margin = c10::Dispatcher::singleton()
      .findSchemaOrThrow("cwr_fast::margin_loss_fwd_bwd", "")
      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                const std::optional<at::Tensor>&)>();
  static const auto dlr = c10::Dispatcher::singleton()
      .findSchemaOrThrow("cwr_fast::dlr_loss_fwd_bwd", "")
      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                const std::optional<at::Tensor>&,
                                                const std::optional<at::Tensor>&)>();
  if (kind == 0) return ce.call(z, y, temperature, weight);
  if (kind == 1) return margin.call(z, y, weight);
  return dlr.call(z, y, attack_target, weight);
}

void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction == kNone || reduction == kMean || reduction == kSum,
              "reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

// (reduced loss, dz): the loss and the gradient of the reduced loss w.r.t. the logits.
std::tuple<at::Tensor, at::Tensor> forward_reduced(int kind, const at::Tensor& logits, const at::Tensor& target,
                                                   double temperature,
                                                   const std::optional<at::Tensor>& attack_target,
                                                   const std::optional<at::Tensor>& weight, int64_t reduction) {
  check_reduction(reduction);
  const int64_t n = logits.dim() >= 1 ? logits.size(0) : 0;
  std::optional<at::Tensor> w = weight;
  if (reduction == kMean && n > 0) {
    w = weight.has_value() ? *weight / static_cast<double>(n)
                           : at::full({n}, 1.0 / static_cast<double>(n), logits.options().dtype(at::kFloat));
  }
  auto [loss, dz] = fused(kind, logits, target, temperature, attack_target, w);
  if (reduction == kNone) return {loss, dz};
  if (reduction == kMean && n == 0) return {loss.mean(), dz};
  return {loss.sum(), dz};
}

class FusedLoss : public torch::autograd::Function<FusedLoss> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                            double temperature, const std::optional<at::Tensor>& attack_target,
                            const std::optional<at::Tensor>& weight, int64_t reduction, int64_t kind) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, dz] = forward_reduced(static_cast<int>(kind), logits, target, temperature, attack_target,
                                      weight, reduction);
    ctx->save_for_backward({dz});
    ctx->saved_data["reduction"] = reduction;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor dz = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grads[0];
    at::Tensor grad_logits;
    if (ctx->saved_data["reduction"].toInt() == kNone) {
      grad_logits = dz * grad.unsqueeze(1).to(dz.scalar_type());
    } else if (grad.is_cpu() && !grad.key_set().has(c10::DispatchKey::Python) && grad.item<double>() == 1.0) {
      grad_logits = dz;  // the common loss.backward(): no pass over dz at all
    } else {
      grad_logits = dz * grad.to(dz.scalar_type());
    }
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor ce_autograd(const at::Tensor& logits, const at::Tensor& target, double temperature,
                       const std::optional<at::Tensor>& weight, int64_t reduction) {
  return FusedLoss::apply(logits, target, temperature, std::optional<at::Tensor>(), weight, reduction, 0);
}
at::Tensor margin_autograd(const at::Tensor& logits, const at::Tensor& target,
                           const std::optional<at::Tensor>& weight, int64_t reduction) {
  return FusedLoss::apply(logits, target, 1.0, std::optional<at::Tensor>(), weight, reduction, 1);
}
at::Tensor dlr_autograd(const at::Tensor& logits, const at::Tensor& target,
                        const std::optional<at::Tensor>& attack_target, const std::optional<at::Tensor>& weight,
                        int64_t reduction) {
  return FusedLoss::apply(logits, target, 1.0, attack_target, weight, reduction, 2);
}

// Below autograd (no gradient wanted, or under torch.compile's tracing): the reduced loss only.
at::Tensor ce_plain(const at::Tensor& logits, const at::Tensor& target, double temperature,
                    const std::optional<at::Tensor>& weight, int64_t reduction) {
  return std::get<0>(forward_reduced(0, logits, target, temperature, std::nullopt, weight, reduction));
}
at::Tensor margin_plain(const at::Tensor& logits, const at::Tensor& target,
                        const std::optional<at::Tensor>& weight, int64_t reduction) {
  return std::get<0>(forward_reduced(1, logits, target, 1.0, std::nullopt, weight, reduction));
}
at::Tensor dlr_plain(const at::Tensor& logits, const at::Tensor& target,
                     const std::optional<at::Tensor>& attack_target, const std::optional<at::Tensor>& weight,
                     int64_t reduction) {
  return std::get<0>(forward_reduced(2, logits, target, 1.0, attack_target, weight, reduction));
}

}  // namespace

TORCH_LIBRARY_IMPL(cwr_fast, Autograd, m) {
  m.impl("temperature_cross_entropy", &ce_autograd);
  m.impl("margin_loss", &margin_autograd);
  m.impl("dlr_loss", &dlr_autograd);
}

TORCH_LIBRARY_IMPL(cwr_fast, CompositeExplicitAutograd, m) {
  m.impl("temperature_cross_entropy", &ce_plain);
  m.impl("margin_loss", &margin_plain);
  m.impl("dlr_loss", &dlr_plain);
}

}  // namespace cwr_fast
