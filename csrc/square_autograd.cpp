// The Square Attack's ops under autograd, as their contract in ops.cpp says: neither is
// differentiable (the attack is score-based and never needs a gradient), so an input that requires
// grad is refused while grad mode is on; otherwise the op runs below autograd, and square_accept_
// bumps the version counters of x_best and margin_best like any in-place op.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include <initializer_list>
#include <utility>

namespace cwr_fast {
namespace {

void refuse_grad(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> inputs) {
  if (!c10::GradMode::is_enabled()) return;
  for (const auto& [name, t] : inputs) {
    TORCH_CHECK(!t->requires_grad(), op, ": ", name,
                " requires grad, but the Square Attack's ops are not differentiable: call it under "
                "torch.no_grad() or on detached tensors");
  }
}

at::Tensor square_linf_query_autograd(const at::Tensor& x_nat, const at::Tensor& x_best, const at::Tensor& u,
                                      double eps, int64_t side) {
  static const auto op = c10::Dispatcher::singleton()
      .findSchemaOrThrow("cwr_fast::square_linf_query", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t)>();
  refuse_grad("cwr_fast::square_linf_query", {{"x_nat", &x_nat}, {"x_best", &x_best}, {"u", &u}});
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x_nat, x_best, u, eps, side);
}

at::Tensor square_accept_autograd(at::Tensor& x_best, at::Tensor& margin_best, const at::Tensor& x_new,
                                  const at::Tensor& logits, const at::Tensor& y) {
  static const auto op = c10::Dispatcher::singleton()
      .findSchemaOrThrow("cwr_fast::square_accept_", "")
      .typed<at::Tensor(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  refuse_grad("cwr_fast::square_accept_", {{"x_best", &x_best}, {"margin_best", &margin_best},
                                           {"x_new", &x_new}, {"logits", &logits}, {"y", &y}});
  at::Tensor pred;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    pred = op.call(x_best, margin_best, x_new, logits, y);
  }
  torch::autograd::increment_version(x_best);
  torch::autograd::increment_version(margin_best);
  return pred;
}

}  // namespace

TORCH_LIBRARY_IMPL(cwr_fast, Autograd, m) {
  m.impl("square_linf_query", &square_linf_query_autograd);
  m.impl("square_accept_", &square_accept_autograd);
}

}  // namespace cwr_fast
