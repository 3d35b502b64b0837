// The PGD steps under autograd, as their contract in ops.cpp says: a step is not differentiable
// (its gradient through sign() is 0 almost everywhere, and attacks never need it), so an input
// that requires grad is refused while grad mode is on; otherwise the step runs below autograd and
// bumps x_adv's version counter.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include <string>

namespace cwr_fast {
namespace {

using StepFn = void(at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double, double,
                    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);

void refuse_grad(const char* op, const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                 const std::optional<at::Tensor>& alpha_per_sample,
                 const std::optional<at::Tensor>& eps_per_sample) {
  if (!c10::GradMode::is_enabled()) return;
  const std::pair<const char*, const at::Tensor*> inputs[] = {
      {"x_adv", &x_adv}, {"grad", &grad}, {"x_nat", &x_nat},
      {"alpha_per_sample", alpha_per_sample ? &*alpha_per_sample : nullptr},
      {"eps_per_sample", eps_per_sample ? &*eps_per_sample : nullptr}};
  for (const auto& [name, t] : inputs) {
    TORCH_CHECK(t == nullptr || !t->requires_grad(), op, ": ", name,
                " requires grad, but the PGD step is not differentiable: call it under "
                "torch.no_grad() or on detached tensors");
  }
}

template <const char* Name>
void step_autograd(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha,
                   double eps, double lo, double hi, const std::optional<at::Tensor>& alpha_per_sample,
                   const std::optional<at::Tensor>& eps_per_sample) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").typed<StepFn>();
  refuse_grad(Name, x_adv, grad, x_nat, alpha_per_sample, eps_per_sample);
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(x_adv, grad, x_nat, alpha, eps, lo, hi, alpha_per_sample, eps_per_sample);
  }
  torch::autograd::increment_version(x_adv);
}

constexpr char kLinf[] = "cwr_fast::linf_pgd_step_";
constexpr char kL2[] = "cwr_fast::l2_pgd_step_";

}  // namespace

TORCH_LIBRARY_IMPL(cwr_fast, Autograd, m) {
  m.impl("linf_pgd_step_", &step_autograd<kLinf>);
  m.impl("l2_pgd_step_", &step_autograd<kL2>);
}

}  // namespace cwr_fast
