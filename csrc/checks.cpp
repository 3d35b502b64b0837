#include "checks.h"

#include <cmath>
#include <string>

namespace cwr_fast {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// Values of a per-sample tensor (budgets, loss weights): finite and >= 0, like their scalar forms.
// Checked on the CPU only: on CUDA the check would synchronise every call.
void check_finite_non_negative(const at::Tensor& v, const char* name) {
  if (!v.device().is_cpu() || v.numel() == 0) return;
  const bool finite = at::isfinite(v).all().item<bool>();
  const double low = v.min().item<double>();
  TORCH_CHECK(finite && low >= 0.0, name, " must be finite and >= 0 everywhere, got ",
              finite ? "min " + std::to_string(low) : std::string("NaN or inf values"));
}

void check_per_sample(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value()) return;
  const at::Tensor& v = *t;
  TORCH_CHECK(v.dim() == 1 && v.size(0) == x.size(0), name, " must have shape [N] = [", x.size(0),
              "] (one value per sample), got ", v.sizes());
  TORCH_CHECK(at::isFloatingType(v.scalar_type()), name, " must be a floating tensor, got ",
              v.scalar_type());
  TORCH_CHECK(v.device() == x.device(), name, " must be on ", x.device(), " like x_adv, got ",
              v.device());
  check_finite_non_negative(v, name);
}

}  // namespace

void check_step_args(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                     double alpha, double eps, double lo, double hi,
                     const std::optional<at::Tensor>& alpha_per_sample,
                     const std::optional<at::Tensor>& eps_per_sample) {
  TORCH_CHECK(is_supported_float(x_adv.scalar_type()),
              "x_adv must be float32, float16, bfloat16 or float64 (images in [0, 1]), got ",
              x_adv.scalar_type());
  TORCH_CHECK(x_adv.dim() >= 1, "x_adv must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(grad.scalar_type() == x_adv.scalar_type(), "grad must have the dtype of x_adv (",
              x_adv.scalar_type(), "), got ", grad.scalar_type());
  TORCH_CHECK(x_nat.scalar_type() == x_adv.scalar_type(), "x_nat must have the dtype of x_adv (",
              x_adv.scalar_type(), "), got ", x_nat.scalar_type());
  TORCH_CHECK(grad.sizes() == x_adv.sizes(), "grad must have the shape of x_adv ", x_adv.sizes(),
              ", got ", grad.sizes());
  TORCH_CHECK(x_nat.sizes() == x_adv.sizes(), "x_nat must have the shape of x_adv ", x_adv.sizes(),
              ", got ", x_nat.sizes());
  TORCH_CHECK(grad.device() == x_adv.device(), "grad must be on ", x_adv.device(),
              " like x_adv, got ", grad.device());
  TORCH_CHECK(x_nat.device() == x_adv.device(), "x_nat must be on ", x_adv.device(),
              " like x_adv, got ", x_nat.device());
  TORCH_CHECK(std::isfinite(alpha) && alpha >= 0, "alpha must be a finite number >= 0, got ", alpha);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps must be a finite number >= 0, got ", eps);
  TORCH_CHECK(lo <= hi, "lo must be <= hi, got lo=", lo, " hi=", hi);
  check_per_sample(alpha_per_sample, "alpha_per_sample", x_adv);
  check_per_sample(eps_per_sample, "eps_per_sample", x_adv);
}

void check_loss_args(const at::Tensor& logits, const at::Tensor& target,
                     const std::optional<at::Tensor>& weight, double temperature) {
  TORCH_CHECK(is_supported_float(logits.scalar_type()),
              "logits must be float32, float16, bfloat16 or float64, got ", logits.scalar_type());
  TORCH_CHECK(logits.dim() == 2, "logits must have shape [N, C], got ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 1, "logits must have at least one class (C >= 1), got ",
              logits.sizes());
  TORCH_CHECK(target.scalar_type() == at::kLong, "target must be int64 class indices, got ",
              target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0),
              "target must have shape [N] = [", logits.size(0), "], got ", target.sizes());
  TORCH_CHECK(target.device() == logits.device(), "target must be on ", logits.device(),
              " like logits, got ", target.device());
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0,
              "temperature must be a finite number > 0, got ", temperature);
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == logits.size(0), "weight must have shape [N] = [",
                logits.size(0), "] (one weight per sample), got ", w.sizes());
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), "weight must be a floating tensor, got ",
                w.scalar_type());
    TORCH_CHECK(w.device() == logits.device(), "weight must be on ", logits.device(),
                " like logits, got ", w.device());
    check_finite_non_negative(w, "weight");
  }
}

void check_dlr_args(const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& attack_target,
                    const std::optional<at::Tensor>& weight) {
  check_loss_args(logits, target, weight);
  const int64_t min_classes = attack_target.has_value() ? 4 : 3;
  TORCH_CHECK(logits.size(1) >= min_classes, "logits must have at least ", min_classes,
              " classes for the ", attack_target.has_value() ? "targeted" : "untargeted",
              " DLR loss (its denominator uses the ", min_classes == 4 ? "4th" : "3rd",
              " largest logit), got ", logits.sizes());
  if (attack_target.has_value()) {
    const at::Tensor& t = *attack_target;
    TORCH_CHECK(t.scalar_type() == at::kLong, "attack_target must be int64 class indices, got ",
                t.scalar_type());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), "attack_target must have shape [N] = [",
                logits.size(0), "], got ", t.sizes());
    TORCH_CHECK(t.device() == logits.device(), "attack_target must be on ", logits.device(),
                " like logits, got ", t.device());
  }
}

void check_projection_args(const at::Tensor& points, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
              "points must be float32 or float64, got ", points.scalar_type());
  TORCH_CHECK(points.dim() == 2, "points must have shape [M, D], got ", points.sizes());
  TORCH_CHECK(w.sizes() == points.sizes(), "w must have the shape of points ", points.sizes(),
              ", got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == points.scalar_type(), "w must have the dtype of points (",
              points.scalar_type(), "), got ", w.scalar_type());
  TORCH_CHECK(b.dim() == 1 && b.size(0) == points.size(0), "b must have shape [M] = [",
              points.size(0), "], got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == points.scalar_type(), "b must have the dtype of points (",
              points.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(w.device() == points.device(), "w must be on ", points.device(), " like points, got ",
              w.device());
  TORCH_CHECK(b.device() == points.device(), "b must be on ", points.device(), " like points, got ",
              b.device());
}

}  // namespace cwr_fast
