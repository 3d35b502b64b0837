// CUDA kernels of the fused per-sample losses and their gradients: temperature_ce_fwd_bwd,
// margin_loss_fwd_bwd and dlr_loss_fwd_bwd (contract: ops.cpp).
//
// A group of threads handles one row of logits: a warp (8 rows per 256-thread block) when
// C <= kWarpRowMaxC, otherwise the whole 256-thread block, so that small batches of many-class
// logits (256 x 1000) still spread over the GPU. Rows are re-read from global memory for each
// sweep; after the first sweep they come from L1/L2.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "common.cuh"
#include "host.h"
#include "loss_math.h"

// The warp shuffle of a loss::Top4, in its namespace so that dev::warp_reduce finds it through
// argument-dependent lookup.
namespace cwr_fast::loss {
template <typename T>
__device__ __forceinline__ Top4<T> shfl_xor(const Top4<T>& a, int mask) {
  Top4<T> out;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    out.val[k] = dev::shfl_xor(a.val[k], mask);
    out.idx[k] = static_cast<int64_t>(
        __shfl_xor_sync(0xffffffffu, static_cast<long long>(a.idx[k]), mask));
  }
  out.count = __shfl_xor_sync(0xffffffffu, a.count, mask);
  return out;
}
}  // namespace cwr_fast::loss

namespace cwr_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kWarpRowMaxC = 512;

// Reduction over the threads of one row group: a warp, or the whole block.
template <int kGroup, typename T, typename Op>
__device__ __forceinline__ T group_reduce(T v, Op op, T identity) {
  if constexpr (kGroup == dev::kWarp) {
    return dev::warp_reduce(v, op);
  } else {
    return dev::block_reduce(v, op, identity);
  }
}

// ---- temperature-scaled cross-entropy -------------------------------------------------------

// loss_i = w_i * (logsumexp(z_i / T) - z_iy / T); grad_ij = w_i * (softmax(z_i / T)_j - [j == y_i]) / T
// from the row's max logit and sum of exponentials (loss_math.h); inv_t = 1 / T.
template <typename scalar_t, int kGroup>
__global__ void __launch_bounds__(kThreads)
temperature_ce_kernel(const scalar_t* logits, const int64_t* target,
                      const at::opmath_type<scalar_t>* weight, at::opmath_type<scalar_t> inv_t,
                      int64_t n, int64_t c, at::opmath_type<scalar_t>* loss_out, scalar_t* grad) {
  using T = at::opmath_type<scalar_t>;
  const int rows_per_block = blockDim.x / kGroup;
  const int lane = threadIdx.x % kGroup;
  for (int64_t row = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / kGroup; row < n;
       row += int64_t(gridDim.x) * rows_per_block) {
    const scalar_t* z = logits + row * c;
    scalar_t* dz = grad + row * c;
    const int64_t y = target[row];
    const bool y_ok = y >= 0 && y < c;
    CUDA_KERNEL_ASSERT_MSG(y_ok, "cwr_fast.temperature_ce_fwd_bwd: target out of range [0, C)");
    const T w = weight != nullptr ? weight[row] : T(1);

    T m = T(-INFINITY);
    for (int64_t j = lane; j < c; j += kGroup) m = dev::MaxOp()(m, T(z[j]));
    m = group_reduce<kGroup>(m, dev::MaxOp(), T(-INFINITY));
    T s = 0;
    for (int64_t j = lane; j < c; j += kGroup) {
      s += loss::exp_of(loss::softmax_exponent(T(z[j]), m, inv_t));
    }
    s = group_reduce<kGroup>(s, dev::SumOp(), T(0));
    const auto ce = loss::cross_entropy_row(m, s, y_ok ? T(z[y]) : T(NAN), inv_t, w);

    if (lane == 0) loss_out[row] = ce.loss;
    for (int64_t j = lane; j < c; j += kGroup) {
      const T e = loss::exp_of(loss::softmax_exponent(T(z[j]), m, inv_t));
      dz[j] = static_cast<scalar_t>(j == y ? ce.grad_at_target(e) : ce.grad(e));
    }
  }
}

// ---- margin (CW) loss -----------------------------------------------------------------------

template <typename T>
struct ArgMax {
  T val;
  int64_t idx;
};

struct ArgMaxOp {
  template <typename T>
  __device__ __forceinline__ ArgMax<T> operator()(const ArgMax<T>& a, const ArgMax<T>& b) const {
    return ranks_before(b.val, b.idx, a.val, a.idx) ? b : a;
  }
};

// Found by dev::warp_reduce through argument-dependent lookup.
template <typename T>
__device__ __forceinline__ ArgMax<T> shfl_xor(const ArgMax<T>& a, int mask) {
  const long long idx = __shfl_xor_sync(0xffffffffu, static_cast<long long>(a.idx), mask);
  return {dev::shfl_xor(a.val, mask), static_cast<int64_t>(idx)};
}

// loss_i = w_i * (max_{j != y} z_ij - z_iy); grad: +w_i at the competitor, -w_i at y (loss_math.h).
template <typename scalar_t, int kGroup>
__global__ void __launch_bounds__(kThreads)
margin_kernel(const scalar_t* logits, const int64_t* target,
              const at::opmath_type<scalar_t>* weight, int64_t n, int64_t c,
              at::opmath_type<scalar_t>* loss_out, scalar_t* grad) {
  using T = at::opmath_type<scalar_t>;
  const ArgMax<T> none{T(-INFINITY), INT64_MAX};  // loses to every element
  const int rows_per_block = blockDim.x / kGroup;
  const int lane = threadIdx.x % kGroup;
  for (int64_t row = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / kGroup; row < n;
       row += int64_t(gridDim.x) * rows_per_block) {
    const scalar_t* z = logits + row * c;
    scalar_t* dz = grad + row * c;
    const int64_t y = target[row];
    const bool y_ok = y >= 0 && y < c;
    CUDA_KERNEL_ASSERT_MSG(y_ok, "cwr_fast.margin_loss_fwd_bwd: target out of range [0, C)");
    const T w = weight != nullptr ? weight[row] : T(1);

    ArgMax<T> best = none;
    for (int64_t j = lane; j < c; j += kGroup) {
      const ArgMax<T> candidate{loss::other_class_logit(T(z[j]), j, y), j};
      best = ArgMaxOp()(best, candidate);
    }
    best = group_reduce<kGroup>(best, ArgMaxOp(), none);

    const auto margin = c == 1 ? loss::margin_row_without_competitor(w)
                               : loss::margin_row(best.val, y_ok ? T(z[y]) : T(NAN), w);
    if (lane == 0) loss_out[row] = margin.loss;
    for (int64_t j = lane; j < c; j += kGroup) {
      dz[j] = static_cast<scalar_t>(margin.grad_at(j, y, best.idx));
    }
  }
}

// ---- DLR loss -------------------------------------------------------------------------------

// The four first logits of a row (loss::Top4): each thread scans its elements in index order,
// then the group merges the partial results.
struct Top4Merge {
  template <typename T>
  __device__ __forceinline__ loss::Top4<T> operator()(loss::Top4<T> a, const loss::Top4<T>& b) const {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (k < b.count) a.insert(b.val[k], b.idx[k]);
    }
    return a;
  }
};

// loss_i = w_i * -N / D with N = z_y - z_other and D the DLR denominator (ops.cpp, loss_math.h).
// attack_target == nullptr: untargeted.
template <typename scalar_t, int kGroup>
__global__ void __launch_bounds__(kThreads)
dlr_kernel(const scalar_t* logits, const int64_t* target, const int64_t* attack_target,
           const at::opmath_type<scalar_t>* weight, int64_t n, int64_t c,
           at::opmath_type<scalar_t>* loss_out, scalar_t* grad) {
  using T = at::opmath_type<scalar_t>;
  const int rows_per_block = blockDim.x / kGroup;
  const int lane = threadIdx.x % kGroup;
  for (int64_t row = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / kGroup; row < n;
       row += int64_t(gridDim.x) * rows_per_block) {
    const scalar_t* z = logits + row * c;
    scalar_t* dz = grad + row * c;
    loss::Top4<T> top{};
    for (int64_t j = lane; j < c; j += kGroup) top.insert_next(T(z[j]), j);
    top = group_reduce<kGroup>(top, Top4Merge(), loss::Top4<T>{});

    const int64_t y = target[row];
    const bool y_ok = y >= 0 && y < c;
    CUDA_KERNEL_ASSERT_MSG(y_ok, "cwr_fast.dlr_loss_fwd_bwd: target out of range [0, C)");
    const bool targeted = attack_target != nullptr;
    const int64_t other = targeted ? attack_target[row] : loss::dlr_competitor(top, y);
    CUDA_KERNEL_ASSERT_MSG(!targeted || (other >= 0 && other < c),
                           "cwr_fast.dlr_loss_fwd_bwd: attack_target out of range [0, C)");
    const bool ok = y_ok && other >= 0 && other < c;
    const T w = weight != nullptr ? weight[row] : T(1);
    const auto dlr = loss::dlr_row(top, y, ok ? T(z[y]) : T(NAN), other, ok ? T(z[other]) : T(NAN),
                                   targeted, w);
    if (lane == 0) loss_out[row] = dlr.loss;
    for (int64_t j = lane; j < c; j += kGroup) dz[j] = static_cast<scalar_t>(dlr.grad_at(j));
  }
}

// ---- host side ------------------------------------------------------------------------------

// Launches kernel<kGroup> with a warp or a block per row (see the top of the file).
template <typename Launch>
void launch_rows(int64_t n, int64_t c, Launch&& launch) {
  if (c <= kWarpRowMaxC) {
    launch(std::integral_constant<int, dev::kWarp>(), dev::grid_size(n * dev::kWarp, kThreads));
  } else {
    launch(std::integral_constant<int, kThreads>(), dev::grid_size(n * kThreads, kThreads));
  }
}

std::tuple<at::Tensor, at::Tensor> temperature_ce_fwd_bwd_cuda(
    const at::Tensor& logits, const at::Tensor& target, double temperature,
    const std::optional<at::Tensor>& weight) {
  check_loss_args(logits, target, weight, temperature);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  LossTensors io = prepare_loss(logits, target, weight);
  if (io.n == 0) return {io.loss, io.grad};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "temperature_ce_fwd_bwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    launch_rows(io.n, io.c, [&](auto group, unsigned int grid) {
      temperature_ce_kernel<scalar_t, decltype(group)::value><<<grid, kThreads, 0, stream>>>(
          io.logits.const_data_ptr<scalar_t>(), io.target.const_data_ptr<int64_t>(),
          optional_ptr<T>(io.weight), loss::inverse_temperature<T>(temperature), io.n, io.c,
          io.loss.data_ptr<T>(), io.grad.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {io.loss, io.grad};
}

std::tuple<at::Tensor, at::Tensor> margin_loss_fwd_bwd_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight) {
  check_loss_args(logits, target, weight);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  LossTensors io = prepare_loss(logits, target, weight);
  if (io.n == 0) return {io.loss, io.grad};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "margin_loss_fwd_bwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    launch_rows(io.n, io.c, [&](auto group, unsigned int grid) {
      margin_kernel<scalar_t, decltype(group)::value><<<grid, kThreads, 0, stream>>>(
          io.logits.const_data_ptr<scalar_t>(), io.target.const_data_ptr<int64_t>(),
          optional_ptr<T>(io.weight), io.n, io.c, io.loss.data_ptr<T>(),
          io.grad.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {io.loss, io.grad};
}

std::tuple<at::Tensor, at::Tensor> dlr_loss_fwd_bwd_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& attack_target,
    const std::optional<at::Tensor>& weight) {
  check_dlr_args(logits, target, attack_target, weight);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  LossTensors io = prepare_loss(logits, target, weight, attack_target);
  if (io.n == 0) return {io.loss, io.grad};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "dlr_loss_fwd_bwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    launch_rows(io.n, io.c, [&](auto group, unsigned int grid) {
      dlr_kernel<scalar_t, decltype(group)::value><<<grid, kThreads, 0, stream>>>(
          io.logits.const_data_ptr<scalar_t>(), io.target.const_data_ptr<int64_t>(),
          optional_ptr<int64_t>(io.attack_target), optional_ptr<T>(io.weight), io.n, io.c,
          io.loss.data_ptr<T>(), io.grad.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {io.loss, io.grad};
}

}  // namespace
}  // namespace cwr_fast

TORCH_LIBRARY_IMPL(cwr_fast, CUDA, m) {
  m.impl("dlr_loss_fwd_bwd", &cwr_fast::dlr_loss_fwd_bwd_cuda);
  m.impl("temperature_ce_fwd_bwd", &cwr_fast::temperature_ce_fwd_bwd_cuda);
  m.impl("margin_loss_fwd_bwd", &cwr_fast::margin_loss_fwd_bwd_cuda);
}
