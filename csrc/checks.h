// Argument validation shared by the CPU and CUDA kernels, so both reject bad input identically.
// Each check enforces the argument part of an op's contract in ops.cpp, with an error that names
// the argument; what a device can only check in its kernels is said below.
#pragma once
#include <ATen/ATen.h>
#include <optional>

namespace cwr_fast {

// The PGD steps. The values of per-sample tensors are checked on the CPU only (reading them on a
// GPU would synchronise the host).
void check_step_args(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                     double alpha, double eps, double lo, double hi,
                     const std::optional<at::Tensor>& alpha_per_sample,
                     const std::optional<at::Tensor>& eps_per_sample);

// The losses (temperature: the CE loss's; 1 for the others). Targets outside [0, C) are caught by
// the kernels, which read them anyway (the CPU kernels raise, the CUDA kernels assert on the
// device); the values of the weights are checked on the CPU only.
void check_loss_args(const at::Tensor& logits, const at::Tensor& target,
                     const std::optional<at::Tensor>& weight, double temperature = 1.0);

// The DLR loss: the checks of check_loss_args and its own (the values of attack_target are
// checked by the kernels, as those of target).
void check_dlr_args(const at::Tensor& logits, const at::Tensor& target,
                    const std::optional<at::Tensor>& attack_target,
                    const std::optional<at::Tensor>& weight);

// The hyperplane projections.
void check_projection_args(const at::Tensor& points, const at::Tensor& w, const at::Tensor& b);

// The Square Attack's Linf query. The values of u (in [0, 1]) are checked on the CPU only; the
// CUDA kernel clamps the window into the image instead (square_math.h).
void check_square_query_args(const at::Tensor& x_nat, const at::Tensor& x_best, const at::Tensor& u,
                             double eps, int64_t side);

// The Square Attack's accept step. The values of y are checked by the kernels (the CPU kernel
// before it writes anything, the CUDA kernel asserts on the device).
void check_square_accept_args(const at::Tensor& x_best, const at::Tensor& margin_best,
                              const at::Tensor& x_new, const at::Tensor& logits, const at::Tensor& y);

}  // namespace cwr_fast
