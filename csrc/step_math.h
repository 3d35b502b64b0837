// The per-element arithmetic of the PGD steps (ops.cpp: linf_pgd_step_, l2_pgd_step_), shared by
// the CPU and CUDA kernels so that both compute the same formula in the same order: the CPU tests
// run the arithmetic the CUDA kernels run. The kernels keep the memory access and the per-sample
// sums of the L2 step (reductions each device does its own way).
//
// The updates are templates over the value type V and a policy Ops with clamp (torch.clamp: NaN
// stays NaN) and sign (torch.sign: 0 for 0 and NaN). ScalarOps serves scalars on both devices;
// the CPU kernel also runs them on at::vec::Vectorized through its own Ops (cpu/pgd_step.cpp).
#pragma once
#include <c10/macros/Macros.h>

#include <cmath>

namespace cwr_fast::step {

constexpr double kL2Tiny = 1e-12;  // keeps g / ||g|| finite for a zero gradient

struct ScalarOps {
  // lo <= hi (checked on the host).
  template <typename T>
  C10_HOST_DEVICE static T clamp(T v, T lo, T hi) {
    return v < lo ? lo : (v > hi ? hi : v);
  }
  template <typename T>
  C10_HOST_DEVICE static T sign(T g) {
    return T(T(0) < g) - T(g < T(0));
  }
};

// ---- Linf ---------------------------------------------------------------------------------------

// One element: a signed step of alpha, the perturbation clamped to [-eps, eps], the image to
// [lo, hi]. The scalars S are broadcast to V.
template <typename Ops, typename V, typename S>
C10_HOST_DEVICE V linf_update(V x, V g, V xn, S alpha, S eps, S lo, S hi) {
  const V delta = Ops::clamp(x + V(alpha) * Ops::sign(g) - xn, V(-eps), V(eps));
  return Ops::clamp(xn + delta, V(lo), V(hi));
}

// ---- L2 -----------------------------------------------------------------------------------------
// From the per-sample sums dd = ||d||^2, dg = <d, g>, gg = ||g||^2 (d = x - xn, in float64): the
// step s = alpha / (||g|| + tiny), so that delta = d + s g, and the factor that projects delta
// onto the eps-ball. No pass over the sample is needed for ||delta||.

C10_HOST_DEVICE inline double l2_step_size(double alpha, double gg) {
  return alpha / (::sqrt(gg) + kL2Tiny);
}

// ||d + s g||^2 = ||d||^2 + 2 s <d, g> + s^2 ||g||^2 (the terms can nearly cancel: the kernels'
// sums must be accurate enough, in float64).
C10_HOST_DEVICE inline double l2_delta_sq(double dd, double dg, double gg, double step) {
  return dd + 2.0 * step * dg + step * step * gg;
}

// eps / ||delta|| when ||delta|| > eps, else 1 (a NaN norm gives 1, as in the reference).
C10_HOST_DEVICE inline double l2_projection_factor(double delta_sq, double eps) {
  const double norm = ::sqrt(delta_sq > 0.0 ? delta_sq : 0.0);
  return norm > eps ? eps / norm : 1.0;
}

// One element: xn + (x + s g - xn) * factor, clamped to [lo, hi]. The scalars S are broadcast to V.
template <typename Ops, typename V, typename S>
C10_HOST_DEVICE V l2_update(V x, V g, V xn, S step, S factor, S lo, S hi) {
  return Ops::clamp(xn + (x + V(step) * g - xn) * V(factor), V(lo), V(hi));
}

}  // namespace cwr_fast::step
