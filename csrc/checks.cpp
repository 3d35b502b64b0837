#include "checks.h"

#include <ATen/MemoryOverlap.h>

#include <algorithm>
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

// A batch of images [M, C, H, W] in a supported float dtype, and a second batch with its dtype,
// shape and device.
void check_image_pair(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(is_supported_float(a.scalar_type()), a_name,
              " must be float32, float16, bfloat16 or float64 (images in [0, 1]), got ", a.scalar_type());
  TORCH_CHECK(a.dim() == 4, a_name, " must have shape [M, C, H, W], got ", a.sizes());
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), b_name, " must have the dtype of ", a_name, " (",
              a.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(b.sizes() == a.sizes(), b_name, " must have the shape of ", a_name, " ", a.sizes(),
              ", got ", b.sizes());
  TORCH_CHECK(b.device() == a.device(), b_name, " must be on ", a.device(), " like ", a_name, ", got ",
              b.device());
}

// A tensor an op writes in place: two of its elements sharing memory would be written by two threads.
void check_writable(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, name,
              " is written in place, so its elements must not share memory (an expanded tensor?), "
              "got strides ", t.strides());
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

void check_square_query_args(const at::Tensor& x_nat, const at::Tensor& x_best, const at::Tensor& u,
                             double eps, int64_t side) {
  check_image_pair(x_nat, "x_nat", x_best, "x_best");
  const int64_t m = x_nat.size(0), c = x_nat.size(1), h = x_nat.size(2), w = x_nat.size(3);
  TORCH_CHECK(u.scalar_type() == at::kFloat, "u must be float32 (uniform draws in [0, 1)), got ",
              u.scalar_type());
  TORCH_CHECK(u.dim() == 2 && u.size(0) == m && u.size(1) == 2 + c, "u must have shape [M, 2 + C] = [",
              m, ", ", 2 + c, "] (the window's row and column, then one sign per channel), got ", u.sizes());
  TORCH_CHECK(u.device() == x_nat.device(), "u must be on ", x_nat.device(), " like x_nat, got ",
              u.device());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps must be a finite number >= 0, got ", eps);
  const int64_t max_side = std::min(h, w);
  TORCH_CHECK(side >= 1 && side <= max_side, "side must lie in [1, min(H, W)] = [1, ", max_side,
              "] for images of ", h, " x ", w, " pixels, got ", side);
  if (u.device().is_cpu() && u.numel() > 0) {  // on CUDA the check would synchronise every query
    TORCH_CHECK(at::logical_and(u >= 0, u <= 1).all().item<bool>(),
                "u must hold values in [0, 1] (uniform draws), got values outside it or NaN");
  }
}

void check_square_accept_args(const at::Tensor& x_best, const at::Tensor& margin_best,
                              const at::Tensor& x_new, const at::Tensor& logits, const at::Tensor& y) {
  check_image_pair(x_best, "x_best", x_new, "x_new");
  const int64_t m = x_best.size(0);
  TORCH_CHECK(is_supported_float(logits.scalar_type()),
              "logits must be float32, float16, bfloat16 or float64, got ", logits.scalar_type());
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == m, "logits must have shape [M, K] with M = ", m,
              " (one row per image), got ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 1, "logits must have at least one class (K >= 1), got ", logits.sizes());
  TORCH_CHECK(logits.device() == x_best.device(), "logits must be on ", x_best.device(),
              " like x_best, got ", logits.device());
  TORCH_CHECK(y.scalar_type() == at::kLong, "y must be int64 class indices, got ", y.scalar_type());
  TORCH_CHECK(y.dim() == 1 && y.size(0) == m, "y must have shape [M] = [", m, "], got ", y.sizes());
  TORCH_CHECK(y.device() == x_best.device(), "y must be on ", x_best.device(), " like x_best, got ",
              y.device());
  TORCH_CHECK(margin_best.scalar_type() == at::kFloat, "margin_best must be float32, got ",
              margin_best.scalar_type());
  TORCH_CHECK(margin_best.dim() == 1 && margin_best.size(0) == m, "margin_best must have shape [M] = [",
              m, "], got ", margin_best.sizes());
  TORCH_CHECK(margin_best.device() == x_best.device(), "margin_best must be on ", x_best.device(),
              " like x_best, got ", margin_best.device());
  check_writable(x_best, "x_best");
  check_writable(margin_best, "margin_best");
  TORCH_CHECK(at::get_overlap_status(x_best, x_new) != at::MemOverlapStatus::Partial,
              "x_new must not partly overlap x_best in memory (it is read while x_best is written)");
}

}  // namespace cwr_fast
