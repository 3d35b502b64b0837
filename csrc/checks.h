// Argument validation shared by the CPU and CUDA kernels, so both reject bad input identically.
#pragma once
#include <ATen/ATen.h>
#include <optional>

namespace cwr_fast {

// x_adv/grad/x_nat: same floating dtype, shape and device; alpha, eps >= 0; lo <= hi;
// per-sample tensors 1-D of length N on the same device (values checked on the CPU only,
// since reading them on a GPU would synchronise the host).
void check_step_args(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                     double alpha, double eps, double lo, double hi,
                     const std::optional<at::Tensor>& alpha_per_sample,
                     const std::optional<at::Tensor>& eps_per_sample);

// logits [N, C] floating with C >= 1; target int64 [N] on the same device; weight floating [N];
// temperature > 0. Targets outside [0, C) are caught by the kernels, which read them anyway
// (the CPU kernels raise, the CUDA kernels assert on the device).
void check_loss_args(const at::Tensor& logits, const at::Tensor& target,
                     const std::optional<at::Tensor>& weight, double temperature = 1.0);

// The checks of check_loss_args, plus C >= 3 (C >= 4 with an attack target) and the attack
// target int64 [N] on the device of the logits (its values are checked by the kernels).
void check_dlr_args(const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& attack_target,
                    const std::optional<at::Tensor>& weight);

// points and w: [M, D], float32 or float64, one dtype and device; b: [M] of that dtype and device.
void check_projection_args(const at::Tensor& points, const at::Tensor& w, const at::Tensor& b);

// A per-sample tensor as a contiguous tensor of `dtype`, or an undefined tensor when absent.
at::Tensor per_sample_as(const std::optional<at::Tensor>& t, at::ScalarType dtype);
inline at::Tensor per_sample_float(const std::optional<at::Tensor>& t) { return per_sample_as(t, at::kFloat); }

// The dtype the kernels compute in for `t`: float64 for float64 tensors, float32 otherwise.
inline at::ScalarType opmath_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// True when the three tensors share one dense layout in which each sample's elements are one
// contiguous block of memory in sample order (contiguous and channels_last both qualify).
bool same_batch_major_layout(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c);

}  // namespace cwr_fast
