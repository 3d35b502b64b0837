// Host-side helpers shared by the CPU and CUDA kernels, so that both devices prepare their
// inputs the same way and under the same names: the norm of an op, the arguments of a PGD step,
// the batch-major fallback, and the tensors of a loss op. The contracts are in ops.cpp.
#pragma once
#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include "checks.h"

#include <algorithm>
#include <array>
#include <optional>
#include <utility>

namespace cwr_fast {

// The norm of a PGD step or a hyperplane projection: a template parameter of the kernels, fixed
// once per op where the op registers its kernel.
enum class Norm { kLinf, kL2 };

// The dtype the kernels compute in for `t`: float64 for float64 tensors, float32 otherwise. It is
// also the dtype of a loss op's per-sample loss.
inline at::ScalarType opmath_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A per-sample tensor as a contiguous tensor of `dtype`, or an undefined tensor when absent.
inline at::Tensor per_sample_as(const std::optional<at::Tensor>& t, at::ScalarType dtype) {
  if (!t.has_value()) return at::Tensor();
  return t->to(dtype).contiguous();
}

// The data of `t`, or nullptr for an undefined tensor (an absent optional argument).
template <typename T>
const T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// ---- PGD steps ------------------------------------------------------------------------------

// The scalars of a step in the type T its kernel reads them in, and the per-sample budgets
// (nullptr: the scalar holds for every sample).
template <typename T>
struct StepArgs {
  T alpha, eps, lo, hi;
  const T* alpha_ps;  // [N] or nullptr
  const T* eps_ps;    // [N] or nullptr
  C10_HOST_DEVICE bool per_sample() const { return alpha_ps != nullptr || eps_ps != nullptr; }
  C10_HOST_DEVICE T alpha_of(int64_t i) const { return alpha_ps != nullptr ? alpha_ps[i] : alpha; }
  C10_HOST_DEVICE T eps_of(int64_t i) const { return eps_ps != nullptr ? eps_ps[i] : eps; }
};

// alpha_ps and eps_ps: per_sample_as(..., dtype of T) of the optional arguments; they must
// outlive the StepArgs, which points into them.
template <typename T>
StepArgs<T> make_step_args(double alpha, double eps, double lo, double hi, const at::Tensor& alpha_ps,
                           const at::Tensor& eps_ps) {
  return {static_cast<T>(alpha), static_cast<T>(eps), static_cast<T>(lo), static_cast<T>(hi),
          optional_ptr<T>(alpha_ps), optional_ptr<T>(eps_ps)};
}

// True when the three tensors share one dense layout in which each sample's elements are one
// contiguous block of memory in sample order (contiguous and channels_last both qualify).
inline bool same_batch_major_layout(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  if (a.strides() != b.strides() || a.strides() != c.strides()) return false;
  if (!a.is_non_overlapping_and_dense()) return false;
  // Dense with the batch dimension outermost: sample i occupies [i*per_sample, (i+1)*per_sample).
  if (a.dim() <= 1 || a.size(0) <= 1) return true;
  return a.stride(0) == a.numel() / a.size(0);
}

// Runs fn(x, g, xn) on tensors in one batch-major dense layout: the arguments themselves when
// they already share one, otherwise contiguous copies, with the result copied back into x_adv.
template <typename Fn>
void on_batch_major(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, Fn&& fn) {
  if (same_batch_major_layout(x_adv, grad, x_nat)) {
    fn(x_adv, grad, x_nat);
    return;
  }
  at::Tensor x = x_adv.contiguous();
  fn(x, grad.contiguous(), x_nat.contiguous());
  if (!x.is_same(x_adv)) x_adv.copy_(x);
}

// The host side of a PGD step, the same on both devices: checks the arguments and, unless the
// batch is empty, calls launch(x, g, xn, alpha_ps, eps_ps) on tensors in one batch-major layout
// (on_batch_major), with the per-sample budgets as contiguous tensors of `budget_dtype` (undefined
// when absent; make_step_args points into them).
template <typename Launch>
void run_pgd_step(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha,
                  double eps, double lo, double hi, const std::optional<at::Tensor>& alpha_per_sample,
                  const std::optional<at::Tensor>& eps_per_sample, at::ScalarType budget_dtype,
                  Launch&& launch) {
  check_step_args(x_adv, grad, x_nat, alpha, eps, lo, hi, alpha_per_sample, eps_per_sample);
  if (x_adv.numel() == 0) return;
  const at::Tensor alpha_ps = per_sample_as(alpha_per_sample, budget_dtype);
  const at::Tensor eps_ps = per_sample_as(eps_per_sample, budget_dtype);
  on_batch_major(x_adv, grad, x_nat, [&](at::Tensor& x, const at::Tensor& g, const at::Tensor& xn) {
    launch(x, g, xn, alpha_ps, eps_ps);
  });
}

// ---- losses ---------------------------------------------------------------------------------

// The inputs of a loss op, contiguous (the weights in the loss dtype, opmath_dtype(logits); absent
// optional arguments undefined), and its freshly allocated outputs.
struct LossTensors {
  at::Tensor logits, target, attack_target, weight;
  at::Tensor loss, grad;  // [N] in the loss dtype, [N, C] in the dtype of the logits
  int64_t n, c;
};

inline LossTensors prepare_loss(const at::Tensor& logits, const at::Tensor& target,
                                const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& attack_target = std::nullopt) {
  const at::ScalarType loss_dtype = opmath_dtype(logits);
  const int64_t n = logits.size(0), c = logits.size(1);
  return {logits.contiguous(),
          target.contiguous(),
          attack_target.has_value() ? attack_target->contiguous() : at::Tensor(),
          per_sample_as(weight, loss_dtype),
          at::empty({n}, logits.options().dtype(loss_dtype)),
          at::empty({n, c}, logits.options()),
          n,
          c};
}

// ---- batches of images [M, C, H, W] (the Square Attack's ops) ---------------------------------

// Dims 1, 2, 3 of the 4-d tensor `t` in its memory order, innermost (smallest stride) first:
// {3, 2, 1} for a contiguous tensor, {1, 3, 2} for channels_last. Dims of size 1 go outermost
// (their strides mean nothing); ties keep the logical order.
inline std::array<int, 3> image_dims_inner_first(const at::Tensor& t) {
  std::array<int, 3> dims{3, 2, 1};
  std::stable_sort(dims.begin(), dims.end(), [&](int a, int b) {
    const bool a_one = t.size(a) == 1, b_one = t.size(b) == 1;
    if (a_one != b_one) return b_one;
    return t.stride(a) < t.stride(b);
  });
  return dims;
}

// True when each image of `t` (dims 1..3) is one dense block of memory: C*H*W elements with no
// gaps, in some order of the dims.
inline bool images_dense(const at::Tensor& t) {
  int64_t expected = 1;
  for (const int d : image_dims_inner_first(t)) {
    if (t.size(d) == 1) continue;
    if (t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// True when image i of `b` can be copied onto image i of `a` as one flat block: both dense
// blocks with the same strides in dims 1..3 (the batch strides may differ).
inline bool same_dense_images(const at::Tensor& a, const at::Tensor& b) {
  for (int d = 1; d < 4; ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  }
  return images_dense(a) && images_dense(b);
}

}  // namespace cwr_fast
