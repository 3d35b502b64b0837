// The per-coordinate arithmetic of the hyperplane projections (ops.cpp), shared by the CPU and
// CUDA kernels. With w oriented so that c = w . t - b >= 0, the projection lowers w . (t + d) by c:
// coordinate j moves against w_j by min(s_j, cap_j), s_j = lam (Linf) or lam |w_j| (L2), and
// lowers the product by F_j(lam) = min(lam * slope_j, full_drop_j), which saturates at
// lam = breakpoint_j. lam solves F(lam) = sum_j F_j(lam) = c (see cwr_fast/reference.py).
//
// F is piecewise linear, increasing and concave, so Newton's method from lam_0 = c / sum_j slope_j
// (a lower bound) stays below the solution and reaches it exactly once it is on the right
// segment: a handful of passes over the row (FAB's rows need 1 to 10).
#pragma once
#include <c10/macros/Macros.h>

#include "host.h"

namespace cwr_fast::projection {

constexpr double kL2ZeroW = 1e-8;  // L2: |w| at or below this counts as 0 (as the reference does)
constexpr double kNewtonTolerance = 1e-12;  // relative: F(lam) within this of c is the solution
constexpr int kMaxNewtonSteps = 100;

// One coordinate of a row. The sign of w enters as arithmetic, not as branches: FAB's gradients
// have random signs, and mispredicted branches cost more than the rest of the CPU kernel.
template <typename T, Norm norm>
struct Coordinate {
  static constexpr bool kL2 = norm == Norm::kL2;
  T w;  // oriented
  T t;

  C10_HOST_DEVICE T up() const { return static_cast<T>(w < T(0)); }  // 1: moves up, to 1
  C10_HOST_DEVICE T abs_w() const { return w * (T(1) - T(2) * static_cast<T>(w < T(0))); }
  C10_HOST_DEVICE bool active() const { return kL2 ? abs_w() > T(kL2ZeroW) : w != T(0); }
  C10_HOST_DEVICE T cap() const { return t + up() * (T(1) - T(2) * t); }  // t, or 1 - t moving up
  C10_HOST_DEVICE T slope() const { return kL2 ? w * w : abs_w(); }
  C10_HOST_DEVICE T full_drop() const { return abs_w() * cap(); }
  C10_HOST_DEVICE T breakpoint() const { return kL2 ? cap() / abs_w() : cap(); }

  // The move d_j for the solution lam; the box corner against w where the plane is out of reach.
  C10_HOST_DEVICE T move(T lam, bool reachable) const {
    if (!active()) return T(0);
    const T c = cap();
    T m = c;
    if (reachable) {
      const T s = kL2 ? lam * abs_w() : lam;
      m = s < c ? s : c;
    }
    return m * (T(2) * up() - T(1));
  }
};

// One Newton step from lam (with the row's F(lam) and slope F'(lam+) summed by the caller): the
// next lam, or lam itself when the solution is reached (up to rounding) or nothing moves.
C10_HOST_DEVICE inline double newton_step(double lam, double c, double drop, double slope) {
  if (!(slope > 0) || !(c - drop > kNewtonTolerance * c)) return lam;
  const double next = lam + (c - drop) / slope;
  return next > lam ? next : lam;
}

}  // namespace cwr_fast::projection
