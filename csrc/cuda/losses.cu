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

// loss_i = w_i * (logsumexp(z_i / T) - z_iy / T); grad_ij = w_i * (softmax(z_i / T)_j - [j == y_i]) / T.
template <typename scalar_t, int kGroup>
__global__ void __launch_bounds__(kThreads)
temperature_ce_kernel(const scalar_t* logits, const int64_t* target,
                      const at::opmath_type<scalar_t>* weight, at::opmath_type<scalar_t> temperature,
                      int64_t n, int64_t c, at::opmath_type<scalar_t>* loss, scalar_t* grad) {
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

    // log_softmax(u) with u = z / T, computed as torch does: (u - max) - log(sum(exp(u - max))).
    T u_max = T(-INFINITY);
    for (int64_t j = lane; j < c; j += kGroup) u_max = dev::MaxOp()(u_max, T(z[j]) / temperature);
    u_max = group_reduce<kGroup>(u_max, dev::MaxOp(), T(-INFINITY));
    T sum = 0;
    for (int64_t j = lane; j < c; j += kGroup) sum += dev::exp_(T(z[j]) / temperature - u_max);
    sum = group_reduce<kGroup>(sum, dev::SumOp(), T(0));
    const T log_sum = dev::log_(sum);

    if (lane == 0) {
      const T u_y = y_ok ? T(z[y]) / temperature : T(NAN);
      loss[row] = -((u_y - u_max) - log_sum) * w;
    }
    for (int64_t j = lane; j < c; j += kGroup) {
      const T p = dev::exp_((T(z[j]) / temperature - u_max) - log_sum);
      const T one_hot = j == y ? T(1) : T(0);
      dz[j] = static_cast<scalar_t>((p - one_hot) / temperature * w);
    }
  }
}

// ---- margin (CW) loss -----------------------------------------------------------------------

template <typename T>
struct ArgMax {
  T val;
  int64_t idx;
};

// The order of torch.max(dim): NaN beats any number, then the larger value, then the lower index.
template <typename T>
__device__ __forceinline__ bool beats(const ArgMax<T>& a, const ArgMax<T>& b) {
  const bool a_nan = a.val != a.val, b_nan = b.val != b.val;
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a.val != b.val) return a.val > b.val;
  return a.idx < b.idx;
}

struct ArgMaxOp {
  template <typename T>
  __device__ __forceinline__ ArgMax<T> operator()(const ArgMax<T>& a, const ArgMax<T>& b) const {
    return beats(b, a) ? b : a;
  }
};

// Found by dev::warp_reduce through argument-dependent lookup.
template <typename T>
__device__ __forceinline__ ArgMax<T> shfl_xor(const ArgMax<T>& a, int mask) {
  const long long idx = __shfl_xor_sync(0xffffffffu, static_cast<long long>(a.idx), mask);
  return {dev::shfl_xor(a.val, mask), static_cast<int64_t>(idx)};
}

// loss_i = w_i * (max_{j != y} z_ij - z_iy); grad: +w_i at the competitor, -w_i at y.
// The competitor is torch.max over the row with z_y replaced by -inf (what the reference does):
// the first arg-max j != y for finite logits. C == 1 has no competitor: loss and grad are 0 * w.
template <typename scalar_t, int kGroup>
__global__ void __launch_bounds__(kThreads)
margin_kernel(const scalar_t* logits, const int64_t* target,
              const at::opmath_type<scalar_t>* weight, int64_t n, int64_t c,
              at::opmath_type<scalar_t>* loss, scalar_t* grad) {
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
      const ArgMax<T> candidate{j == y ? T(-INFINITY) : T(z[j]), j};
      if (beats(candidate, best)) best = candidate;
    }
    best = group_reduce<kGroup>(best, ArgMaxOp(), none);

    if (lane == 0) {
      const T z_y = y_ok ? T(z[y]) : T(NAN);
      loss[row] = (c == 1 ? T(0) : best.val - z_y) * w;
    }
    for (int64_t j = lane; j < c; j += kGroup) {
      const T direction = c == 1 ? T(0) : (j == y ? T(-1) : (j == best.idx ? T(1) : T(0)));
      dz[j] = static_cast<scalar_t>(direction * w);
    }
  }
}

// ---- DLR loss -------------------------------------------------------------------------------

// The four first logits of a row in the order of torch.sort(descending=True, stable=True), the
// order of `beats`. Empty slots hold `none`, which every element beats.
template <typename T>
struct Top4 {
  T val[4];
  int64_t idx[4];
};

template <typename T>
__device__ __forceinline__ Top4<T> no_top4() {
  Top4<T> top;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    top.val[k] = T(-INFINITY);
    top.idx[k] = INT64_MAX;
  }
  return top;
}

template <typename T>
__device__ __forceinline__ void insert(Top4<T>& top, T v, int64_t j) {
  const ArgMax<T> candidate{v, j};
  if (!beats(candidate, ArgMax<T>{top.val[3], top.idx[3]})) return;
  int k = 3;
#pragma unroll
  for (int m = 3; m > 0; --m) {
    if (k == m && beats(candidate, ArgMax<T>{top.val[m - 1], top.idx[m - 1]})) {
      top.val[m] = top.val[m - 1];
      top.idx[m] = top.idx[m - 1];
      k = m - 1;
    }
  }
  top.val[k] = v;
  top.idx[k] = j;
}

struct Top4Merge {
  template <typename T>
  __device__ __forceinline__ Top4<T> operator()(Top4<T> a, const Top4<T>& b) const {
#pragma unroll
    for (int k = 0; k < 4; ++k) insert(a, b.val[k], b.idx[k]);
    return a;
  }
};

// Found by dev::warp_reduce through argument-dependent lookup.
template <typename T>
__device__ __forceinline__ Top4<T> shfl_xor(const Top4<T>& a, int mask) {
  Top4<T> out;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    out.val[k] = dev::shfl_xor(a.val[k], mask);
    out.idx[k] = static_cast<int64_t>(
        __shfl_xor_sync(0xffffffffu, static_cast<long long>(a.idx[k]), mask));
  }
  return out;
}

// loss_i = w_i * -N / D with N = z_y - z_other and D the DLR denominator (ops.cpp); the gradient
// -(e_y - e_other) / D + (N / D^2) dD/dz collects its terms at each index in the order y, other,
// pi1, pi3, pi4 (as the CPU kernel and the reference). attack_target == nullptr: untargeted.
template <typename scalar_t, int kGroup>
__global__ void __launch_bounds__(kThreads)
dlr_kernel(const scalar_t* logits, const int64_t* target, const int64_t* attack_target,
           const at::opmath_type<scalar_t>* weight, int64_t n, int64_t c,
           at::opmath_type<scalar_t>* loss, scalar_t* grad) {
  using T = at::opmath_type<scalar_t>;
  const int rows_per_block = blockDim.x / kGroup;
  const int lane = threadIdx.x % kGroup;
  for (int64_t row = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / kGroup; row < n;
       row += int64_t(gridDim.x) * rows_per_block) {
    const scalar_t* z = logits + row * c;
    scalar_t* dz = grad + row * c;
    Top4<T> top = no_top4<T>();
    for (int64_t j = lane; j < c; j += kGroup) insert(top, T(z[j]), j);
    top = group_reduce<kGroup>(top, Top4Merge(), no_top4<T>());

    const int64_t y = target[row];
    const bool y_ok = y >= 0 && y < c;
    CUDA_KERNEL_ASSERT_MSG(y_ok, "cwr_fast.dlr_loss_fwd_bwd: target out of range [0, C)");
    int64_t other;
    T denominator;
    if (attack_target != nullptr) {
      other = attack_target[row];
      CUDA_KERNEL_ASSERT_MSG(other >= 0 && other < c,
                             "cwr_fast.dlr_loss_fwd_bwd: attack_target out of range [0, C)");
      denominator = top.val[0] - T(0.5) * (top.val[2] + top.val[3]) + T(1e-12);
    } else {
      other = top.idx[0] != y ? top.idx[0] : top.idx[1];
      denominator = top.val[0] - top.val[2] + T(1e-12);
    }
    const bool ok = y_ok && other >= 0 && other < c;
    const T numerator = ok ? T(z[y]) - T(z[other]) : T(NAN);
    const T ratio = numerator / denominator;
    const T w = weight != nullptr ? weight[row] : T(1);
    if (lane == 0) loss[row] = w * -ratio;
    const T d_num = T(1) / denominator, d_den = ratio / denominator;
    const T d_third = attack_target != nullptr ? T(-0.5) * d_den : -d_den;
    const int64_t fourth = attack_target != nullptr ? top.idx[3] : -1;
    for (int64_t j = lane; j < c; j += kGroup) {
      T sum = T(0);
      bool hit = false;
      if (j == y) { sum += -d_num; hit = true; }
      if (j == other) { sum += d_num; hit = true; }
      if (j == top.idx[0]) { sum += d_den; hit = true; }
      if (j == top.idx[2]) { sum += d_third; hit = true; }
      if (j == fourth) { sum += d_third; hit = true; }
      dz[j] = hit ? static_cast<scalar_t>(w * sum) : scalar_t(0);
    }
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
          optional_ptr<T>(io.weight), static_cast<T>(temperature), io.n, io.c,
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
