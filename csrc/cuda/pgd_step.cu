// CUDA kernels of the in-place PGD steps: linf_pgd_step_ and l2_pgd_step_ (contract: ops.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common.cuh"
#include "host.h"
#include "step_math.h"

namespace cwr_fast {
namespace {

constexpr int kThreads = 256;

// ---- Linf -----------------------------------------------------------------------------------

// Elementwise over the flat memory of batch-major tensors: element k belongs to sample
// k / per_sample. kVec == 1 is the scalar fallback; for kVec > 1 the caller guarantees 16-byte
// aligned pointers and, with per-sample budgets, that kVec divides per_sample (so a vector never
// spans two samples). The budgets are float64, as on the CPU, and enter in T.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads)
linf_step_kernel(scalar_t* x_adv, const scalar_t* grad, const scalar_t* x_nat, int64_t numel,
                 int64_t per_sample, StepArgs<double> args) {
  using T = at::opmath_type<scalar_t>;
  const T lo = static_cast<T>(args.lo), hi = static_cast<T>(args.hi);
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t n_vec = numel / kVec;
  for (int64_t v = first; v < n_vec; v += stride) {
    const int64_t k0 = v * kVec;
    const int64_t sample = args.per_sample() ? k0 / per_sample : 0;
    const T alpha = static_cast<T>(args.alpha_of(sample)), eps = static_cast<T>(args.eps_of(sample));
    dev::update_vec<kVec, T>(x_adv, grad, x_nat, k0, [&](T x, T g, T xn) {
      return step::linf_update<step::ScalarOps>(x, g, xn, alpha, eps, lo, hi);
    });
  }
  // The numel % kVec < kVec elements after the last whole vector (none when kVec == 1): one
  // element for each of the first threads of the grid.
  const int64_t k = n_vec * kVec + first;
  if (k < numel) {
    const int64_t sample = args.per_sample() ? k / per_sample : 0;
    const T alpha = static_cast<T>(args.alpha_of(sample)), eps = static_cast<T>(args.eps_of(sample));
    dev::update_vec<1, T>(x_adv, grad, x_nat, k, [&](T x, T g, T xn) {
      return step::linf_update<step::ScalarOps>(x, g, xn, alpha, eps, lo, hi);
    });
  }
}

template <typename scalar_t>
void launch_linf(at::Tensor& x, const at::Tensor& g, const at::Tensor& xn, StepArgs<double> args) {
  constexpr int kVec = dev::vec_width<scalar_t>();
  const int64_t numel = x.numel(), per_sample = numel / x.size(0);
  scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const scalar_t* xnp = xn.const_data_ptr<scalar_t>();
  const bool vectorised = dev::is_aligned16(xp) && dev::is_aligned16(gp) &&
                          dev::is_aligned16(xnp) &&
                          (!args.per_sample() || per_sample % kVec == 0);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (vectorised) {
    linf_step_kernel<scalar_t, kVec><<<dev::grid_size(numel / kVec, kThreads), kThreads, 0, stream>>>(
        xp, gp, xnp, numel, per_sample, args);
  } else {
    linf_step_kernel<scalar_t, 1><<<dev::grid_size(numel, kThreads), kThreads, 0, stream>>>(
        xp, gp, xnp, numel, per_sample, args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- L2 -------------------------------------------------------------------------------------
// Pass 1 sums, per sample, ||d||^2, <d, g> and ||g||^2 with d = x_adv - x_nat; pass 2 derives
// the step size and projection factor from them (step_math.h) and writes x_adv. Each sample is
// split into `chunks` contiguous chunks; a block handles one (sample, chunk) unit at a time.
// Pass 1 writes one partial per unit to a [N, chunks, 3] float64 workspace and pass 2 adds them
// in a fixed order, so the result is deterministic (no atomics) and needs no zeroed memory.

// The step size and projection factor of one sample, computed in float64, used in T.
template <typename T>
struct L2Scale {
  T step_size;
  T factor;
};

template <typename T>
__device__ L2Scale<T> l2_scale(double dd, double dg, double gg, double alpha, double eps) {
  const double step_size = step::l2_step_size(alpha, gg);
  const double factor = step::l2_projection_factor(step::l2_delta_sq(dd, dg, gg, step_size), eps);
  return {static_cast<T>(step_size), static_cast<T>(factor)};
}

// The vectors [begin, end) of chunk `chunk` of a sample with n_vec vectors.
struct ChunkRange {
  int64_t begin, end;
};
__device__ __forceinline__ ChunkRange chunk_range(int64_t n_vec, int64_t chunks, int64_t chunk) {
  const int64_t len = dev::ceil_div(n_vec, chunks);
  const int64_t begin = chunk * len;
  return {begin, begin + len < n_vec ? begin + len : n_vec};
}

// kVec > 1 requires 16-byte aligned pointers and kVec dividing per_sample.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads)
l2_sums_kernel(const scalar_t* x_adv, const scalar_t* grad, const scalar_t* x_nat,
               int64_t n_samples, int64_t per_sample, int64_t chunks, double* partials) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n_vec = per_sample / kVec;
  for (int64_t unit = blockIdx.x; unit < n_samples * chunks; unit += gridDim.x) {
    const int64_t sample = unit / chunks;
    const ChunkRange r = chunk_range(n_vec, chunks, unit % chunks);
    double dd = 0, dg = 0, gg = 0;
    for (int64_t v = r.begin + threadIdx.x; v < r.end; v += blockDim.x) {
      const int64_t k0 = sample * per_sample + v * kVec;
      const auto x = dev::load_vec<kVec>(x_adv + k0);
      const auto g = dev::load_vec<kVec>(grad + k0);
      const auto xn = dev::load_vec<kVec>(x_nat + k0);
      // Products in float64: float32 squares overflow for |g| > 1.8e19 and lose the precision
      // that the expansion of ||delta||^2 needs when its terms nearly cancel.
      double vdd = 0, vdg = 0, vgg = 0;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const double d = static_cast<double>(T(x.v[k]) - T(xn.v[k]));
        const double gk = static_cast<double>(g.v[k]);
        vdd += d * d;
        vdg += d * gk;
        vgg += gk * gk;
      }
      dd += vdd;
      dg += vdg;
      gg += vgg;
    }
    dd = dev::block_reduce(dd, dev::SumOp(), 0.0);
    dg = dev::block_reduce(dg, dev::SumOp(), 0.0);
    gg = dev::block_reduce(gg, dev::SumOp(), 0.0);
    if (threadIdx.x == 0) {
      partials[unit * 3 + 0] = dd;
      partials[unit * 3 + 1] = dg;
      partials[unit * 3 + 2] = gg;
    }
  }
}

template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads)
l2_apply_kernel(scalar_t* x_adv, const scalar_t* grad, const scalar_t* x_nat, int64_t n_samples,
                int64_t per_sample, int64_t chunks, const double* partials, StepArgs<double> args) {
  using T = at::opmath_type<scalar_t>;
  __shared__ L2Scale<T> shared_scale;
  const T lo = static_cast<T>(args.lo), hi = static_cast<T>(args.hi);
  const int64_t n_vec = per_sample / kVec;
  for (int64_t unit = blockIdx.x; unit < n_samples * chunks; unit += gridDim.x) {
    const int64_t sample = unit / chunks;
    __syncthreads();  // everyone has read shared_scale of the previous unit
    if (threadIdx.x == 0) {
      double dd = 0, dg = 0, gg = 0;
#pragma unroll 1
      for (int64_t c = 0; c < chunks; ++c) {
        const double* p = partials + (sample * chunks + c) * 3;
        dd += p[0];
        dg += p[1];
        gg += p[2];
      }
      shared_scale = l2_scale<T>(dd, dg, gg, args.alpha_of(sample), args.eps_of(sample));
    }
    __syncthreads();
    const L2Scale<T> sc = shared_scale;
    const ChunkRange r = chunk_range(n_vec, chunks, unit % chunks);
    for (int64_t v = r.begin + threadIdx.x; v < r.end; v += blockDim.x) {
      dev::update_vec<kVec, T>(x_adv, grad, x_nat, sample * per_sample + v * kVec, [&](T x, T g, T xn) {
        return step::l2_update<step::ScalarOps>(x, g, xn, sc.step_size, sc.factor, lo, hi);
      });
    }
  }
}

template <typename scalar_t, int kVec>
void launch_l2_with(at::Tensor& x, const at::Tensor& g, const at::Tensor& xn, StepArgs<double> args) {
  const int64_t n = x.size(0), per_sample = x.numel() / n, n_vec = per_sample / kVec;
  // 256 threads, or fewer (a multiple of 32) when a sample has fewer vectors than that.
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, dev::ceil_div(n_vec, 32) * 32));
  // Split samples into chunks until about one wave of blocks is busy, keeping at least two
  // vectors per thread in a chunk.
  const int64_t wave = dev::blocks_per_wave(threads);
  const int64_t max_chunks = std::max<int64_t>(1, n_vec / (2 * threads));
  const int64_t chunks = std::clamp<int64_t>(dev::ceil_div(wave, n), 1, max_chunks);
  const int64_t units = n * chunks;
  const auto grid = static_cast<unsigned int>(std::min<int64_t>(units, 4 * wave));
  at::Tensor partials = at::empty({n, chunks, 3}, x.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const scalar_t* xnp = xn.const_data_ptr<scalar_t>();
  l2_sums_kernel<scalar_t, kVec><<<grid, threads, 0, stream>>>(
      xp, gp, xnp, n, per_sample, chunks, partials.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  l2_apply_kernel<scalar_t, kVec><<<grid, threads, 0, stream>>>(
      xp, gp, xnp, n, per_sample, chunks, partials.const_data_ptr<double>(), args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_l2(at::Tensor& x, const at::Tensor& g, const at::Tensor& xn, StepArgs<double> args) {
  constexpr int kVec = dev::vec_width<scalar_t>();
  const int64_t per_sample = x.numel() / x.size(0);
  const bool vectorised = dev::is_aligned16(x.const_data_ptr()) &&
                          dev::is_aligned16(g.const_data_ptr()) &&
                          dev::is_aligned16(xn.const_data_ptr()) && per_sample % kVec == 0;
  if (vectorised) {
    launch_l2_with<scalar_t, kVec>(x, g, xn, args);
  } else {
    launch_l2_with<scalar_t, 1>(x, g, xn, args);
  }
}

// ---- host side ------------------------------------------------------------------------------

template <Norm norm>
void pgd_step_cuda(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat, double alpha,
                   double eps, double lo, double hi, const std::optional<at::Tensor>& alpha_per_sample,
                   const std::optional<at::Tensor>& eps_per_sample) {
  // Scalars and budgets in double, as on the CPU: the L2 factors are computed in double, and the
  // kernels round alpha, eps, lo and hi to their compute type where they enter it.
  run_pgd_step(x_adv, grad, x_nat, alpha, eps, lo, hi, alpha_per_sample, eps_per_sample, at::kDouble,
               [&](at::Tensor& x, const at::Tensor& g, const at::Tensor& xn, const at::Tensor& alpha_ps,
                   const at::Tensor& eps_ps) {
    const c10::cuda::CUDAGuard device_guard(x.device());
    const auto args = make_step_args<double>(alpha, eps, lo, hi, alpha_ps, eps_ps);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pgd_step_cuda", [&] {
      if constexpr (norm == Norm::kLinf) {
        launch_linf<scalar_t>(x, g, xn, args);
      } else {
        launch_l2<scalar_t>(x, g, xn, args);
      }
    });
  });
}

}  // namespace
}  // namespace cwr_fast

TORCH_LIBRARY_IMPL(cwr_fast, CUDA, m) {
  m.impl("linf_pgd_step_", &cwr_fast::pgd_step_cuda<cwr_fast::Norm::kLinf>);
  m.impl("l2_pgd_step_", &cwr_fast::pgd_step_cuda<cwr_fast::Norm::kL2>);
}
