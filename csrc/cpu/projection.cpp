// CPU kernels of the hyperplane projections (FAB's step; contract: ops.cpp): per row, the active
// coordinates' slopes, drops and breakpoints are gathered once, then Newton's method finds lam in
// a few passes over them (no sort). Rows are spread over threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu/vec_helpers.h"
#include "projection_math.h"

namespace cwr_fast::cpu {
namespace {

using projection::Coordinate;

// lam >= 0 with sum_j min(lam * k_j, f_j) = c over the n active coordinates (r_j = f_j / k_j),
// by Newton's method (projection_math.h); each step one vectorised, branch-free pass.
double solve(const double* r, const double* k, const double* f, int64_t n, double c, double slope_sum) {
  using dVec = at::vec::Vectorized<double>;
  constexpr int64_t L = dVec::size();
  double lam = slope_sum > 0 ? c / slope_sum : 0.0;
  for (int step = 0; step < projection::kMaxNewtonSteps; ++step) {
    const dVec lam_v(lam);
    dVec drop_v(0), slope_v(0);
    int64_t j = 0;
    for (; j + L <= n; j += L) {
      const dVec kv = dVec::loadu(k + j);
      drop_v = drop_v + at::vec::minimum(lam_v * kv, dVec::loadu(f + j));
      slope_v = slope_v + (kv & (dVec::loadu(r + j) > lam_v));
    }
    double drop = at::vec::vec_reduce_all<double>(std::plus<dVec>(), drop_v);
    double slope = at::vec::vec_reduce_all<double>(std::plus<dVec>(), slope_v);
    for (; j < n; ++j) {
      drop += std::min(lam * k[j], f[j]);
      slope += r[j] > lam ? k[j] : 0.0;
    }
    const double next = projection::newton_step(lam, c, drop, slope);
    if (next == lam) break;
    lam = next;
  }
  return lam;
}

template <typename T, Norm norm>
void project_rows(const T* points, const T* w, const T* b, T* d, int64_t m, int64_t dim) {
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(dim, 1));
  at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> r(dim), k(dim), f(dim);
    for (int64_t row = begin; row < end; ++row) {
      const T* t = points + row * dim;
      const T* wr = w + row * dim;
      T* out = d + row * dim;
      double c = -double(b[row]);
      for (int64_t j = 0; j < dim; ++j) c += double(wr[j]) * double(t[j]);
      const T sign = c >= 0 ? T(1) : T(-1);
      c = std::abs(c);
      int64_t n = 0;
      double total = 0, slope_sum = 0;
      for (int64_t j = 0; j < dim; ++j) {
        const Coordinate<T, norm> q{sign * wr[j], t[j]};
        if (!q.active()) continue;
        r[n] = q.breakpoint(), k[n] = q.slope(), f[n] = q.full_drop();
        total += f[n], slope_sum += k[n];
        ++n;
      }
      const bool reachable = total >= c;
      const T lam = reachable ? static_cast<T>(solve(r.data(), k.data(), f.data(), n, c, slope_sum)) : T(0);
      for (int64_t j = 0; j < dim; ++j) out[j] = Coordinate<T, norm>{sign * wr[j], t[j]}.move(lam, reachable);
    }
  });
}

template <Norm norm>
at::Tensor hyperplane_projection_cpu(const at::Tensor& points_in, const at::Tensor& w_in, const at::Tensor& b_in) {
  check_projection_args(points_in, w_in, b_in);
  const at::Tensor points = points_in.contiguous(), w = w_in.contiguous(), b = b_in.contiguous();
  at::Tensor d = at::empty_like(points);
  if (points.numel() == 0) return d;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "hyperplane_projection_cpu", [&] {
    project_rows<scalar_t, norm>(points.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                 b.const_data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), points.size(0),
                                 points.size(1));
  });
  return d;
}

}  // namespace

TORCH_LIBRARY_IMPL(cwr_fast, CPU, m) {
  m.impl("hyperplane_projection_linf", &hyperplane_projection_cpu<Norm::kLinf>);
  m.impl("hyperplane_projection_l2", &hyperplane_projection_cpu<Norm::kL2>);
}

}  // namespace cwr_fast::cpu
