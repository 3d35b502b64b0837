// The per-element arithmetic of the Square Attack's Linf query loop (ops.cpp: square_linf_query,
// square_accept_), shared by the CPU and CUDA kernels so that both devices compute the same bits:
// where a query's window lies, the value written inside it, and the per-row margin and arg-max
// of the accept step (one accumulator that a thread fills element by element and that merges
// with other threads' accumulators in any order, with the same result).
#pragma once
#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

#include "order_math.h"

namespace cwr_fast::square {

// ---- the query ----------------------------------------------------------------------------------

// The first row (column) of a window: floor(u * span) with the product rounded to float32, as
// `(torch.rand(m) * span).long()` computes it, span = H - side (W - side). For u in [0, 1] that is
// in [0, span]; any other u (NaN included) is clamped into it, so a window never leaves the image.
C10_HOST_DEVICE inline int64_t window_start(float u, int64_t span) {
  const float t = u * static_cast<float>(span);
  if (!(t > 0.0f)) return 0;
  if (t >= static_cast<float>(span)) return span;
  return static_cast<int64_t>(t);
}

// The sign of channel c: +1 where its draw is >= 0.5 (NaN: -1), as `torch.rand(...) >= 0.5`.
C10_HOST_DEVICE inline bool sign_up(float u) { return u >= 0.5f; }

// The window of one image: rows [top, top + side) x cols [left, left + side).
struct Window {
  int64_t top, left, side;
  C10_HOST_DEVICE bool has_row(int64_t r) const { return r >= top && r < top + side; }
  C10_HOST_DEVICE bool has_col(int64_t c) const { return c >= left && c < left + side; }
  C10_HOST_DEVICE bool contains(int64_t r, int64_t c) const { return has_row(r) && has_col(c); }
};

// u_row: the 2 + C draws of one image (u[i, :]).
C10_HOST_DEVICE inline Window window_of(const float* u_row, int64_t h, int64_t w, int64_t side) {
  return {window_start(u_row[0], h - side), window_start(u_row[1], w - side), side};
}

// Inside the window: clamp(x_nat +- eps, 0, 1) in the compute type T (float32, float64 for
// float64 images), a NaN staying NaN as in torch.clamp. eps is T(eps): the float32 rounding of
// the op's float for every dtype but float64.
template <typename T>
C10_HOST_DEVICE inline T corner_value(T x_nat, T eps, bool up) {
  const T v = x_nat + (up ? eps : -eps);
  return v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
}

// ---- the accept step ------------------------------------------------------------------------------

// One row of logits, reduced in T (at::opmath_type of the logits: float32, or float64 for float64
// logits): the arg-max of torch.argmax (NaN beats every number, then the larger value, then the
// lower index) and the largest logit other than z_y (NaN if any of them is NaN, -inf if there is
// none, as torch.amax over the row with z_y set to -inf).
template <typename T>
struct RowMargin {
  T top_val;
  int64_t top_idx;
  T other;  // max_{j != y} z_j

  C10_HOST_DEVICE static RowMargin empty() {
    return {-std::numeric_limits<T>::infinity(), std::numeric_limits<int64_t>::max(),
            -std::numeric_limits<T>::infinity()};
  }

  C10_HOST_DEVICE static T nan_max(T a, T b) {
    if (a != a) return a;
    if (b != b) return b;
    return a < b ? b : a;
  }

  // Element j of the row, whose target class is y.
  C10_HOST_DEVICE void add(int64_t j, T z, int64_t y) {
    if (ranks_before(z, j, top_val, top_idx)) {
      top_val = z;
      top_idx = j;
    }
    if (j != y) other = nan_max(other, z);
  }

  C10_HOST_DEVICE void merge(const RowMargin& b) {
    if (ranks_before(b.top_val, b.top_idx, top_val, top_idx)) {
      top_val = b.top_val;
      top_idx = b.top_idx;
    }
    other = nan_max(other, b.other);
  }

  // z_y - max_{j != y} z_j in float32 (each term rounded to float32 first, as the attack's
  // logits.float()): +inf for a single class (K == 1) with a finite z_y.
  C10_HOST_DEVICE float margin(T z_y) const {
    return static_cast<float>(z_y) - static_cast<float>(other);
  }
};

// The accept rule: the new image replaces the best one where its margin is strictly smaller (a
// NaN margin, or a NaN best margin, never replaces).
C10_HOST_DEVICE inline bool accepts(float margin, float best) { return margin < best; }

}  // namespace cwr_fast::square
