// CUDA kernels of the hyperplane projections (FAB's step): a block per row; Newton's method
// (projection_math.h) finds lam, each step one pass over the row with block reductions in double.
// Contract: ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "common.cuh"
#include "projection_math.h"

namespace cwr_fast {
namespace {

constexpr int kThreads = 256;

using projection::Coordinate;

template <typename T, Norm norm>
__global__ void __launch_bounds__(kThreads)
projection_kernel(const T* points, const T* w, const T* b, T* d, int64_t m, int64_t dim) {
  for (int64_t row = blockIdx.x; row < m; row += gridDim.x) {
    const T* t = points + row * dim;
    const T* wr = w + row * dim;
    T* out = d + row * dim;
    double c = 0;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) c += double(wr[j]) * double(t[j]);
    c = dev::block_reduce(c, dev::SumOp(), 0.0) - double(b[row]);
    const T sign = c >= 0 ? T(1) : T(-1);
    c = c < 0 ? -c : c;
    auto coordinate = [&](int64_t j) { return Coordinate<T, norm>{sign * wr[j], t[j]}; };
    double total = 0, slope_sum = 0;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const auto q = coordinate(j);
      if (!q.active()) continue;
      total += q.full_drop();
      slope_sum += q.slope();
    }
    total = dev::block_reduce(total, dev::SumOp(), 0.0);
    slope_sum = dev::block_reduce(slope_sum, dev::SumOp(), 0.0);
    const bool reachable = total >= c;
    double lam = slope_sum > 0 ? c / slope_sum : 0.0;
    for (int step = 0; reachable && step < projection::kMaxNewtonSteps; ++step) {
      double drop = 0, slope = 0;
      for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
        const auto q = coordinate(j);
        if (!q.active()) continue;
        drop += fmin(lam * double(q.slope()), double(q.full_drop()));
        if (double(q.breakpoint()) > lam) slope += q.slope();
      }
      drop = dev::block_reduce(drop, dev::SumOp(), 0.0);
      slope = dev::block_reduce(slope, dev::SumOp(), 0.0);
      const double next = projection::newton_step(lam, c, drop, slope);
      if (next == lam) break;  // uniform across the block: every thread holds the same sums
      lam = next;
    }
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) out[j] = coordinate(j).move(T(lam), reachable);
  }
}

template <Norm norm>
at::Tensor hyperplane_projection_cuda(const at::Tensor& points_in, const at::Tensor& w_in, const at::Tensor& b_in) {
  check_projection_args(points_in, w_in, b_in);
  const c10::cuda::CUDAGuard device_guard(points_in.device());
  const at::Tensor points = points_in.contiguous(), w = w_in.contiguous(), b = b_in.contiguous();
  at::Tensor d = at::empty_like(points);
  if (points.numel() == 0) return d;
  const int64_t m = points.size(0);
  const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(m, dev::blocks_per_wave(kThreads) * 4));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "hyperplane_projection_cuda", [&] {
    projection_kernel<scalar_t, norm><<<grid, kThreads, 0, stream>>>(
        points.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        d.data_ptr<scalar_t>(), m, points.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return d;
}

}  // namespace
}  // namespace cwr_fast

TORCH_LIBRARY_IMPL(cwr_fast, CUDA, m) {
  m.impl("hyperplane_projection_linf", &cwr_fast::hyperplane_projection_cuda<cwr_fast::Norm::kLinf>);
  m.impl("hyperplane_projection_l2", &cwr_fast::hyperplane_projection_cuda<cwr_fast::Norm::kL2>);
}
