// CPU kernels of the fused losses (contract: ops.cpp): per row of logits, the per-sample loss and
// dL/dz in one call (the row stays in L1 across its passes), rows spread over threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <utility>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "host.h"
#include "loss_math.h"
#include "cpu/vec_helpers.h"

namespace cwr_fast::cpu {
namespace {

constexpr int64_t kGrainElems = 1 << 14;

// The pointers a loss kernel reads and writes; rows are contiguous.
template <typename scalar_t>
struct LossRows {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* z;
  const int64_t* y;
  const opmath_t* w;  // nullptr: every weight is 1
  opmath_t* loss;
  scalar_t* grad;
  int64_t n, c;
  opmath_t weight(int64_t i) const { return w ? w[i] : opmath_t(1); }
  int64_t target(int64_t i) const {
    const int64_t yi = y[i];
    TORCH_CHECK(yi >= 0 && yi < c, "target must hold class indices in [0, ", c, "), got ", yi,
                " for sample ", i);
    return yi;
  }
};

template <typename scalar_t>
LossRows<scalar_t> loss_rows(const LossTensors& io) {
  using opmath_t = at::opmath_type<scalar_t>;
  return {io.logits.const_data_ptr<scalar_t>(), io.target.const_data_ptr<int64_t>(),
          optional_ptr<opmath_t>(io.weight), io.loss.data_ptr<opmath_t>(), io.grad.data_ptr<scalar_t>(),
          io.n, io.c};
}

// The exp of the vector paths (the formulas around it are loss_math.h's, run on vectors); the
// scalar tail, like the CUDA kernel, uses loss::exp_of.
template <typename T>
inline Vectorized<T> fast_exp(const Vectorized<T>& v) {
  return v.exp_u20();  // ~2 ulp, handles underflow to 0: enough for a softmax
}

// Few classes (C <= kFewClasses): each vector lane holds one row, so a block of rows needs C
// vector exps instead of C scalar ones, and no reduction across lanes.
constexpr int64_t kFewClasses = 16;

template <typename scalar_t>
void ce_rows_in_lanes(const LossRows<scalar_t>& r, at::opmath_type<scalar_t> inv_t, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  constexpr int64_t L = fVec::size();
  const int64_t c = r.c;
  opmath_t block[kFewClasses][L];  // block[j][lane]: class j of row (r0 + lane)
  opmath_t m_lane[L], s_lane[L];
  for (int64_t r0 = begin; r0 < end; r0 += L) {
    const int64_t rows = std::min<int64_t>(L, end - r0);
    for (int64_t lane = 0; lane < rows; ++lane) r.target(r0 + lane);
    for (int64_t j = 0; j < c; ++j) {
      for (int64_t lane = 0; lane < L; ++lane) {
        block[j][lane] = lane < rows ? static_cast<opmath_t>(r.z[(r0 + lane) * c + j]) : opmath_t(0);
      }
    }
    fVec m = fVec::loadu(block[0]);
    for (int64_t j = 1; j < c; ++j) m = at::vec::maximum(m, fVec::loadu(block[j]));
    fVec s(0);
    for (int64_t j = 0; j < c; ++j) {
      const fVec e = fast_exp(loss::softmax_exponent(fVec::loadu(block[j]), m, fVec(inv_t)));
      e.store(block[j]);
      s = s + e;
    }
    m.store(m_lane);
    s.store(s_lane);
    for (int64_t lane = 0; lane < rows; ++lane) {
      const int64_t i = r0 + lane, yi = r.y[i];
      const auto ce = loss::cross_entropy_row(m_lane[lane], s_lane[lane],
                                              static_cast<opmath_t>(r.z[i * c + yi]), inv_t, r.weight(i));
      r.loss[i] = ce.loss;
      scalar_t* g = r.grad + i * c;
      for (int64_t j = 0; j < c; ++j) g[j] = static_cast<scalar_t>(ce.grad(block[j][lane]));
      g[yi] = static_cast<scalar_t>(ce.grad_at_target(block[yi][lane]));
    }
  }
}

// Many classes: one row at a time, three vector passes over a row that stays in L1 (max; exp
// and sum; scale). float32 rows are read from the logits and built in the gradient itself;
// 16-bit rows are widened into a buffer first and narrowed on the way out.
template <typename scalar_t>
void ce_row_by_row(const LossRows<scalar_t>& r, at::opmath_type<scalar_t> inv_t, int64_t begin, int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  constexpr int64_t L = fVec::size();
  constexpr bool kWiden = !std::is_same_v<scalar_t, opmath_t>;
  const int64_t c = r.c;
  std::vector<opmath_t> buffer(kWiden ? c : 0);
  for (int64_t i = begin; i < end; ++i) {
    const opmath_t* z;
    opmath_t* e;  // receives exp((z - max) / T), then the gradient
    if constexpr (kWiden) {
      at::vec::convert(r.z + i * c, buffer.data(), c);
      z = e = buffer.data();
    } else {
      z = r.z + i * c;
      e = r.grad + i * c;
    }
    const int64_t yi = r.target(i);
    const opmath_t z_true = z[yi];
    const opmath_t m = at::vec::reduce_all<opmath_t>(
        [](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, z, c);
    fVec s_vec(0);
    int64_t j = 0;
    for (; j + L <= c; j += L) {
      const fVec v = fast_exp(loss::softmax_exponent(fVec::loadu(z + j), m, inv_t));
      v.store(e + j);
      s_vec = s_vec + v;
    }
    opmath_t s = at::vec::vec_reduce_all<opmath_t>(std::plus<fVec>(), s_vec);
    for (; j < c; ++j) {
      e[j] = loss::exp_of(loss::softmax_exponent(z[j], m, inv_t));
      s += e[j];
    }
    const auto ce = loss::cross_entropy_row(m, s, z_true, inv_t, r.weight(i));
    r.loss[i] = ce.loss;
    const opmath_t grad_true = ce.grad_at_target(e[yi]);
    at::vec::map([=](fVec v) { return ce.grad(v); }, e, e, c);
    e[yi] = grad_true;
    if constexpr (kWiden) at::vec::convert(e, r.grad + i * c, c);
  }
}

std::tuple<at::Tensor, at::Tensor> temperature_ce_fwd_bwd_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                              double temperature,
                                                              const std::optional<at::Tensor>& weight) {
  check_loss_args(logits, target, weight, temperature);
  LossTensors io = prepare_loss(logits, target, weight);
  if (io.n == 0) return {io.loss, io.grad};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "temperature_ce_cpu", [&] {
    const auto r = loss_rows<scalar_t>(io);
    const auto inv_t = loss::inverse_temperature<at::opmath_type<scalar_t>>(temperature);
    at::parallel_for(0, r.n, std::max<int64_t>(1, kGrainElems / r.c), [&](int64_t begin, int64_t end) {
      if (r.c <= kFewClasses) {
        ce_rows_in_lanes(r, inv_t, begin, end);
      } else {
        ce_row_by_row(r, inv_t, begin, end);
      }
    });
  });
  return {io.loss, io.grad};
}

// The competitor of the CW margin, as the reference computes it: the first arg-max of the row with
// z_y replaced by -inf (NaN wins, as in torch.max). A vectorised max over the two ranges beside y,
// then a scan for its first position. Returns the index and value.
template <typename scalar_t>
std::pair<int64_t, at::opmath_type<scalar_t>> best_other_class(const scalar_t* z, int64_t c, int64_t y,
                                                               at::opmath_type<scalar_t>* row) {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  at::vec::convert(z, row, c);
  if (c <= kFewClasses) {  // shorter than a vector: a scalar scan beats partial vector loads
    int64_t best = 0;
    opmath_t best_value = loss::other_class_logit(row[0], 0, y);
    for (int64_t j = 1; j < c && !std::isnan(best_value); ++j) {
      const opmath_t v = loss::other_class_logit(row[j], j, y);
      if (v > best_value || std::isnan(v)) {
        best = j;
        best_value = v;
      }
    }
    return {best, best_value};
  }
  auto range_max = [](const opmath_t* v, int64_t len) {
    return at::vec::reduce_all<opmath_t>([](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, v, len);
  };
  opmath_t m = -std::numeric_limits<opmath_t>::infinity();
  if (y > 0) m = range_max(row, y);
  if (y + 1 < c) {
    const opmath_t right = range_max(row + y + 1, c - y - 1);
    m = std::isnan(m) || std::isnan(right) ? std::numeric_limits<opmath_t>::quiet_NaN() : std::max(m, right);
  }
  for (int64_t j = 0; j < c; ++j) {
    const opmath_t v = loss::other_class_logit(row[j], j, y);
    if (v == m || (std::isnan(m) && std::isnan(v))) return {j, m};
  }
  return {0, m};  // unreachable: m is one of the values scanned
}

std::tuple<at::Tensor, at::Tensor> margin_loss_fwd_bwd_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                           const std::optional<at::Tensor>& weight) {
  check_loss_args(logits, target, weight);
  LossTensors io = prepare_loss(logits, target, weight);
  if (io.n == 0) return {io.loss, io.grad};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "margin_loss_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto r = loss_rows<scalar_t>(io);
    at::parallel_for(0, r.n, std::max<int64_t>(1, kGrainElems / r.c), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> row(r.c);
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* g = r.grad + i * r.c;
        std::fill(g, g + r.c, scalar_t(0));
        const int64_t yi = r.target(i);
        const opmath_t wi = r.weight(i);
        if (r.c == 1) {
          r.loss[i] = loss::margin_row_without_competitor(wi).loss;
          continue;
        }
        const auto [j, z_other] = best_other_class(r.z + i * r.c, r.c, yi, row.data());
        const auto margin = loss::margin_row(z_other, row[yi], wi);
        r.loss[i] = margin.loss;
        g[j] = static_cast<scalar_t>(margin.grad_other);
        g[yi] = static_cast<scalar_t>(margin.grad_y);
      }
    });
  });
  return {io.loss, io.grad};
}

// The four first logits of a row (C >= 3; a fourth only when C >= 4), in one scan.
template <typename scalar_t>
loss::Top4<at::opmath_type<scalar_t>> top4(const scalar_t* z, int64_t c) {
  using T = at::opmath_type<scalar_t>;
  loss::Top4<T> top{};
  for (int64_t j = 0; j < c; ++j) top.insert_next(static_cast<T>(z[j]), j);
  return top;
}

std::tuple<at::Tensor, at::Tensor> dlr_loss_fwd_bwd_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                        const std::optional<at::Tensor>& attack_target,
                                                        const std::optional<at::Tensor>& weight) {
  check_dlr_args(logits, target, attack_target, weight);
  LossTensors io = prepare_loss(logits, target, weight, attack_target);
  if (io.n == 0) return {io.loss, io.grad};
  const bool targeted = attack_target.has_value();
  const int64_t* t_ptr = optional_ptr<int64_t>(io.attack_target);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "dlr_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto r = loss_rows<scalar_t>(io);
    at::parallel_for(0, r.n, std::max<int64_t>(1, kGrainElems / r.c), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* z = r.z + i * r.c;
        scalar_t* g = r.grad + i * r.c;
        const int64_t yi = r.target(i);
        const loss::Top4<T> top = top4(z, r.c);
        // The competitor of y: the best other class, or the attack's target.
        const int64_t other = targeted ? t_ptr[i] : loss::dlr_competitor(top, yi);
        if (targeted) {
          TORCH_CHECK(other >= 0 && other < r.c, "attack_target must hold class indices in [0, ",
                      r.c, "), got ", other, " for sample ", i);
        }
        const auto dlr = loss::dlr_row(top, yi, static_cast<T>(z[yi]), other, static_cast<T>(z[other]),
                                       targeted, r.weight(i));
        r.loss[i] = dlr.loss;
        std::fill(g, g + r.c, scalar_t(0));
        for (const int64_t j : dlr.where) {
          if (j >= 0) g[j] = static_cast<scalar_t>(dlr.grad_at(j));
        }
      }
    });
  });
  return {io.loss, io.grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(cwr_fast, CPU, m) {
  m.impl("temperature_ce_fwd_bwd", &temperature_ce_fwd_bwd_cpu);
  m.impl("margin_loss_fwd_bwd", &margin_loss_fwd_bwd_cpu);
  m.impl("dlr_loss_fwd_bwd", &dlr_loss_fwd_bwd_cpu);
}

}  // namespace cwr_fast::cpu
