// The per-row and per-element arithmetic of the fused losses (ops.cpp: temperature_ce_fwd_bwd,
// margin_loss_fwd_bwd, dlr_loss_fwd_bwd), shared by the CPU and CUDA kernels so that both compute
// the same formulas in the same order: the CPU tests run the arithmetic the CUDA kernels run. The
// kernels keep the passes over a row and the reductions (the max and the sum of exponentials,
// the best other class, the four first logits), which each device does its own way, and the
// memory traffic. T is the compute type, at::opmath_type of the logits.
#pragma once
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "order_math.h"

namespace cwr_fast::loss {

// IEEE expf/logf (no fast-math intrinsics on the GPU).
C10_HOST_DEVICE inline float exp_of(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double exp_of(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float log_of(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double log_of(double x) { return ::log(x); }

// ---- temperature-scaled cross-entropy -----------------------------------------------------------
// With m the row's max logit, e_j = exp((z_j - m) / T) and s = sum_j e_j:
// loss = w (log s - (z_y - m) / T), dL/dz_j = w (e_j / s - [j == y]) / T.

// inv_t = 1 / T, divided in float64 and rounded once to the compute type.
template <typename T>
C10_HOST_DEVICE T inverse_temperature(double temperature) {
  return static_cast<T>(1.0 / temperature);
}

// The exponent (z_j - m) / T of e_j; V a scalar or a CPU vector, S broadcast to V.
template <typename V, typename S>
C10_HOST_DEVICE V softmax_exponent(V z, S m, S inv_t) {
  return (z - V(m)) * V(inv_t);
}

template <typename T>
struct CrossEntropyRow {
  T loss;
  T scale;         // w / (T s)
  T target_shift;  // w / T
  // dL/dz_j from e_j for j != y (V a scalar or a CPU vector).
  template <typename V>
  C10_HOST_DEVICE V grad(V e) const {
    return e * V(scale);
  }
  C10_HOST_DEVICE T grad_at_target(T e_y) const { return e_y * scale - target_shift; }
};

template <typename T>
C10_HOST_DEVICE CrossEntropyRow<T> cross_entropy_row(T m, T s, T z_y, T inv_t, T w) {
  return {w * (log_of(s) - (z_y - m) * inv_t), w * inv_t / s, w * inv_t};
}

// ---- margin (CW) loss ---------------------------------------------------------------------------
// loss = w (z_other - z_y) with z_other the best other class: the first arg-max (order_math.h) of
// the row with z_y replaced by -inf, as the reference computes it. dL/dz: w at the competitor,
// -w at y, 0 elsewhere. C == 1 has no competitor: loss 0 * w, gradient 0.

// Logit j of the row the competitor is the arg-max of.
template <typename T>
C10_HOST_DEVICE T other_class_logit(T z_j, int64_t j, int64_t y) {
  return j == y ? T(-INFINITY) : z_j;
}

template <typename T>
struct MarginRow {
  T loss;
  T grad_other;
  T grad_y;
  C10_HOST_DEVICE T grad_at(int64_t j, int64_t y, int64_t other) const {
    return j == y ? grad_y : (j == other ? grad_other : T(0));
  }
};

template <typename T>
C10_HOST_DEVICE MarginRow<T> margin_row(T z_other, T z_y, T w) {
  return {w * (z_other - z_y), w, -w};
}

template <typename T>
C10_HOST_DEVICE MarginRow<T> margin_row_without_competitor(T w) {
  return {T(0) * w, T(0), T(0)};
}

// ---- DLR loss -----------------------------------------------------------------------------------

// The four first logits of a row in the order of ranks_before (slots [0, count) are filled),
// built element by element from Top4<T>{} (empty); partial results of one row merge in any order
// with the same result. A trivial type, so that a GPU block can reduce it in shared memory.
template <typename T>
struct Top4 {
  T val[4];
  int64_t idx[4];
  int count;

  // (v, j) for any j (merging partial results).
  C10_HOST_DEVICE void insert(T v, int64_t j) {
    if (count == 4 && !ranks_before(v, j, val[3], idx[3])) return;
    place(v, j);
  }

  // (v, j) with j above every index kept (a scan in index order): then an element equal to the
  // 4th never ranks before it, and one comparison rejects most elements.
  C10_HOST_DEVICE void insert_next(T v, int64_t j) {
    if (count == 4 && !(v > val[3]) && !(is_nan(v) && !is_nan(val[3]))) return;
    place(v, j);
  }

  // Puts (v, j) into its slot, shifting the ones it ranks before (the last one drops out when
  // all four are filled). Written with fixed slot indices so that a GPU keeps them in registers.
  C10_HOST_DEVICE void place(T v, int64_t j) {
    int k = count < 4 ? count++ : 3;
    for (int m = 3; m > 0; --m) {
      if (m == k && ranks_before(v, j, val[m - 1], idx[m - 1])) {
        val[m] = val[m - 1];
        idx[m] = idx[m - 1];
        k = m - 1;
      }
    }
    val[k] = v;
    idx[k] = j;
  }
};

// The competitor of y in the untargeted loss: the first logit, or the second where y is first.
template <typename T>
C10_HOST_DEVICE int64_t dlr_competitor(const Top4<T>& top, int64_t y) {
  return top.idx[0] != y ? top.idx[0] : top.idx[1];
}

// loss = w * -N / D with N = z_y - z_other and D = pi1 - pi3 (untargeted; C >= 3) or
// pi1 - (pi3 + pi4) / 2 (targeted; C >= 4), plus 1e-12, pi_k the k-th logit. The gradient
// w (-(e_y - e_other) / D + (N / D^2) dD/dz) has five terms, at y, other, pi1, pi3, pi4.
template <typename T>
struct DlrRow {
  T loss;
  T w;
  int64_t where[5];  // y, other, pi1, pi3, pi4 (-1: no pi4 term, untargeted)
  T term[5];

  // dL/dz_j: the terms at j added in the order above (as the reference adds them), times w.
  C10_HOST_DEVICE T grad_at(int64_t j) const {
    T sum = T(0);
    bool hit = false;
    for (int k = 0; k < 5; ++k) {
      if (where[k] == j) {
        sum = hit ? sum + term[k] : term[k];
        hit = true;
      }
    }
    return hit ? w * sum : T(0);
  }
};

template <typename T>
C10_HOST_DEVICE DlrRow<T> dlr_row(const Top4<T>& top, int64_t y, T z_y, int64_t other, T z_other,
                                  bool targeted, T w) {
  const T denominator = targeted ? top.val[0] - T(0.5) * (top.val[2] + top.val[3]) + T(1e-12)
                                 : top.val[0] - top.val[2] + T(1e-12);
  const T ratio = (z_y - z_other) / denominator;
  const T d_num = T(1) / denominator, d_den = ratio / denominator;
  const T d_low = targeted ? T(-0.5) * d_den : -d_den;  // the pi3 (and pi4) terms
  return {w * -ratio,
          w,
          {y, other, top.idx[0], top.idx[2], targeted ? top.idx[3] : int64_t(-1)},
          {-d_num, d_num, d_den, d_low, targeted ? d_low : T(0)}};
}

}  // namespace cwr_fast::loss
