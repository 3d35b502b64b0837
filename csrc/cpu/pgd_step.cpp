// CPU kernels of the in-place PGD steps (contract: ops.cpp): one vectorised pass for Linf, two for
// L2 (a per-sample reduction, then the update), on flat batch-major memory (on_batch_major).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "host.h"
#include "step_math.h"
#include "cpu/vec_helpers.h"

namespace cwr_fast::cpu {
namespace {

constexpr int64_t kGrainElems = 1 << 15;  // elements per task: enough to amortise thread wake-up

// The clamp and sign of step_math.h's updates: at::vec's on vectors, and on the scalar tail
// step::ScalarOps, the ones the CUDA kernels run.
struct VecOps {
  template <typename T>
  static T clamp(T v, T lo, T hi) { return step::ScalarOps::clamp(v, lo, hi); }
  template <typename T>
  static T sign(T g) { return step::ScalarOps::sign(g); }
  template <typename T>
  static Vectorized<T> clamp(const Vectorized<T>& v, const Vectorized<T>& lo, const Vectorized<T>& hi) {
    return vclamp(v, lo, hi);
  }
  template <typename T>
  static Vectorized<T> sign(const Vectorized<T>& g) { return vsign(g); }
};

template <typename scalar_t>
void linf_step(scalar_t* x, const scalar_t* g, const scalar_t* xn, int64_t numel, int64_t n,
               const StepArgs<double>& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t per_sample = numel / n;
  at::parallel_for(0, numel, kGrainElems, [&](int64_t begin, int64_t end) {
    // Split the range at sample boundaries: alpha and eps are constant within a segment.
    for (int64_t i = begin; i < end;) {
      const int64_t sample = i / per_sample;
      const int64_t seg_end = std::min(end, (sample + 1) * per_sample);
      const auto a = static_cast<opmath_t>(args.alpha_of(sample));
      const auto e = static_cast<opmath_t>(args.eps_of(sample));
      const auto lo = static_cast<opmath_t>(args.lo), hi = static_cast<opmath_t>(args.hi);
      update3(x + i, g + i, xn + i, seg_end - i, [=](auto xv, auto gv, auto nv) {
        return step::linf_update<VecOps>(xv, gv, nv, a, e, lo, hi);
      });
      i = seg_end;
    }
  });
}

// Per-sample sums of d*d, d*g and g*g with d = x - xn, accumulated in float32 vectors over short
// blocks and in double across blocks (long images would otherwise lose precision).
template <typename scalar_t>
void l2_sums(const scalar_t* x, const scalar_t* g, const scalar_t* xn, int64_t len, double out[3]) {
  using opmath_t = at::opmath_type<scalar_t>;
  using fVec = Vectorized<opmath_t>;
  constexpr int64_t kBlock = 4096;
  out[0] = out[1] = out[2] = 0.0;
  for (int64_t b = 0; b < len; b += kBlock) {
    const int64_t b_end = std::min(len, b + kBlock);
    fVec dd(0), dg(0), gg(0);
    auto accumulate = [&](const fVec& xv, const fVec& gv, const fVec& nv) {
      const fVec d = xv - nv;
      dd = at::vec::fmadd(d, d, dd);
      dg = at::vec::fmadd(d, gv, dg);
      gg = at::vec::fmadd(gv, gv, gg);
    };
    int64_t j = b;
    if constexpr (at::vec::is_reduced_floating_point_v<scalar_t>) {
      using bVec = Vectorized<scalar_t>;
      for (; j + bVec::size() <= b_end; j += bVec::size()) {
        auto [x0, x1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(x + j));
        auto [g0, g1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(g + j));
        auto [n0, n1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(xn + j));
        accumulate(x0, g0, n0);
        accumulate(x1, g1, n1);
      }
    } else {
      for (; j + fVec::size() <= b_end; j += fVec::size()) {
        accumulate(fVec::loadu(x + j), fVec::loadu(g + j), fVec::loadu(xn + j));
      }
    }
    double sdd = at::vec::vec_reduce_all<opmath_t>(std::plus<fVec>(), dd);
    double sdg = at::vec::vec_reduce_all<opmath_t>(std::plus<fVec>(), dg);
    double sgg = at::vec::vec_reduce_all<opmath_t>(std::plus<fVec>(), gg);
    for (; j < b_end; ++j) {
      const double d = static_cast<double>(x[j]) - static_cast<double>(xn[j]);
      const double gj = static_cast<double>(g[j]);
      sdd += d * d;
      sdg += d * gj;
      sgg += gj * gj;
    }
    out[0] += sdd;
    out[1] += sdg;
    out[2] += sgg;
  }
}

// The same sums with float64 products, one element at a time: the fallback when the fast sums
// overflowed (|g| > ~1e19) or when ||delta||^2 = dd + 2s*dg + s^2*gg nearly cancels.
template <typename scalar_t>
void l2_sums_exact(const scalar_t* x, const scalar_t* g, const scalar_t* xn, int64_t len, double out[3]) {
  using opmath_t = at::opmath_type<scalar_t>;
  out[0] = out[1] = out[2] = 0.0;
  for (int64_t j = 0; j < len; ++j) {
    const double d = static_cast<opmath_t>(x[j]) - static_cast<opmath_t>(xn[j]);
    const double gj = static_cast<opmath_t>(g[j]);
    out[0] += d * d;
    out[1] += d * gj;
    out[2] += gj * gj;
  }
}

template <typename scalar_t>
void l2_step(scalar_t* x, const scalar_t* g, const scalar_t* xn, int64_t numel, int64_t n,
             const StepArgs<double>& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t per_sample = numel / n;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(per_sample, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t off = i * per_sample;
      double s[3];
      l2_sums(x + off, g + off, xn + off, per_sample, s);
      const double a = args.alpha_of(i);
      double step_size = step::l2_step_size(a, s[2]);
      double delta_sq = step::l2_delta_sq(s[0], s[1], s[2], step_size);
      const double magnitude = s[0] + step_size * step_size * s[2];
      if (!std::isfinite(magnitude) || !std::isfinite(delta_sq) || delta_sq < 1e-3 * magnitude) {
        l2_sums_exact(x + off, g + off, xn + off, per_sample, s);
        step_size = step::l2_step_size(a, s[2]);
        delta_sq = step::l2_delta_sq(s[0], s[1], s[2], step_size);
      }
      const double factor = step::l2_projection_factor(delta_sq, args.eps_of(i));
      const auto st = static_cast<opmath_t>(step_size), f = static_cast<opmath_t>(factor);
      const auto lo = static_cast<opmath_t>(args.lo), hi = static_cast<opmath_t>(args.hi);
      update3(x + off, g + off, xn + off, per_sample, [=](auto xv, auto gv, auto nv) {
        return step::l2_update<VecOps>(xv, gv, nv, st, f, lo, hi);
      });
    }
  });
}

template <Norm norm>
void pgd_step_cpu(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha,
                  double eps, double lo, double hi, const std::optional<at::Tensor>& alpha_per_sample,
                  const std::optional<at::Tensor>& eps_per_sample) {
  // Scalars and budgets in double: per-sample values then enter the opmath computation exactly
  // as scalars do.
  run_pgd_step(x_adv, grad, x_nat, alpha, eps, lo, hi, alpha_per_sample, eps_per_sample, at::kDouble,
               [&](at::Tensor& x, const at::Tensor& g, const at::Tensor& xn, const at::Tensor& alpha_ps,
                   const at::Tensor& eps_ps) {
    const auto args = make_step_args<double>(alpha, eps, lo, hi, alpha_ps, eps_ps);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pgd_step_cpu", [&] {
      auto* px = x.data_ptr<scalar_t>();
      const auto* pg = g.const_data_ptr<scalar_t>();
      const auto* pn = xn.const_data_ptr<scalar_t>();
      if constexpr (norm == Norm::kLinf) {
        linf_step(px, pg, pn, x.numel(), x.size(0), args);
      } else {
        l2_step(px, pg, pn, x.numel(), x.size(0), args);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(cwr_fast, CPU, m) {
  m.impl("linf_pgd_step_", &pgd_step_cpu<Norm::kLinf>);
  m.impl("l2_pgd_step_", &pgd_step_cpu<Norm::kL2>);
}

}  // namespace cwr_fast::cpu
