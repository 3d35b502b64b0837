// CUDA kernels of the Square Attack's Linf query loop (contract: ops.cpp; per-element arithmetic:
// square_math.h):
// - square_linf_query: one thread per output element, in the output's memory order (so writes are
//   coalesced for any layout); its (image, channel, row, column) come from the flat index by
//   division, and each tensor is read through its own strides.
// - square_accept_: one block per image: a block reduction of the row of logits (margin and
//   arg-max), then, where the margin drops, the block copies the image.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>

#include "checks.h"
#include "common.cuh"
#include "host.h"
#include "square_math.h"

namespace cwr_fast {
namespace square {

// Found by dev::warp_reduce through argument-dependent lookup.
template <typename T>
__device__ __forceinline__ RowMargin<T> shfl_xor(const RowMargin<T>& a, int mask) {
  const long long idx = __shfl_xor_sync(0xffffffffu, static_cast<long long>(a.top_idx), mask);
  return {dev::shfl_xor(a.top_val, mask), static_cast<int64_t>(idx), dev::shfl_xor(a.other, mask)};
}

struct MergeOp {
  template <typename T>
  __device__ __forceinline__ RowMargin<T> operator()(RowMargin<T> a, const RowMargin<T>& b) const {
    a.merge(b);
    return a;
  }
};

}  // namespace square

namespace {

constexpr int kThreads = 256;

using square::RowMargin;
using square::Window;

// ---- the query ------------------------------------------------------------------------------------

// The coordinates of an element of the dense output from its flat offset k, and the offsets of
// the same element in x_nat and x_best. index_t: uint32_t where every offset fits, else uint64_t.
template <typename index_t>
struct QueryIndexer {
  at::cuda::detail::IntDivider<index_t> size[4];  // out's dims, innermost first
  int dim[4];                                     // the logical dim of each
  index_t nat_stride[4], best_stride[4];          // logical order

  __device__ __forceinline__ void coords(index_t k, index_t (&idx)[4]) const {
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const auto qr = size[p].divmod(k);
      idx[dim[p]] = qr.mod;
      k = qr.div;
    }
  }
};

template <typename index_t>
QueryIndexer<index_t> make_query_indexer(const at::Tensor& out, const at::Tensor& x_nat, const at::Tensor& x_best) {
  QueryIndexer<index_t> q;
  // out is dense (empty_like): its flat offsets decompose by its dims in stride order. Dims of
  // size 1 (whose strides mean nothing) divide by 1 wherever they stand; they go last.
  std::array<int, 4> order{0, 1, 2, 3};
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    const bool a_one = out.size(a) == 1, b_one = out.size(b) == 1;
    if (a_one != b_one) return b_one;
    return out.stride(a) < out.stride(b);
  });
  for (int k = 0; k < 4; ++k) {
    q.size[k] = at::cuda::detail::IntDivider<index_t>(static_cast<index_t>(out.size(order[k])));
    q.dim[k] = order[k];
    q.nat_stride[k] = static_cast<index_t>(x_nat.stride(k));
    q.best_stride[k] = static_cast<index_t>(x_best.stride(k));
  }
  return q;
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
query_kernel(const scalar_t* x_nat, const scalar_t* x_best, const float* u, scalar_t* out, index_t numel,
             QueryIndexer<index_t> indexer, int64_t c, int64_t h, int64_t w, int64_t side,
             at::opmath_type<scalar_t> eps) {
  using T = at::opmath_type<scalar_t>;
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < numel; k += stride) {
    index_t idx[4];
    indexer.coords(k, idx);
    const float* ui = u + int64_t(idx[0]) * (2 + c);
    const Window win = square::window_of(ui, h, w, side);
    if (win.contains(int64_t(idx[2]), int64_t(idx[3]))) {
      index_t at_nat = 0;
#pragma unroll
      for (int d = 0; d < 4; ++d) at_nat += idx[d] * indexer.nat_stride[d];
      const bool up = square::sign_up(ui[2 + idx[1]]);
      out[k] = static_cast<scalar_t>(square::corner_value<T>(static_cast<T>(x_nat[at_nat]), eps, up));
    } else {
      index_t at_best = 0;
#pragma unroll
      for (int d = 0; d < 4; ++d) at_best += idx[d] * indexer.best_stride[d];
      out[k] = x_best[at_best];
    }
  }
}

// The largest offset of an element of t (strides are >= 0).
int64_t max_offset(const at::Tensor& t) {
  int64_t off = 0;
  for (int d = 0; d < t.dim(); ++d) off += (t.size(d) - 1) * t.stride(d);
  return off;
}

at::Tensor square_linf_query_cuda(const at::Tensor& x_nat, const at::Tensor& x_best, const at::Tensor& u_in,
                                  double eps, int64_t side) {
  check_square_query_args(x_nat, x_best, u_in, eps, side);
  const c10::cuda::CUDAGuard device_guard(x_best.device());
  at::Tensor out = at::empty_like(x_best);
  if (out.numel() == 0) return out;
  const at::Tensor u = u_in.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t numel = out.numel();
  const bool narrow = numel <= std::numeric_limits<int32_t>::max() &&
                      max_offset(x_nat) <= std::numeric_limits<int32_t>::max() &&
                      max_offset(x_best) <= std::numeric_limits<int32_t>::max();
  const unsigned int grid = dev::grid_size(numel, kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_best.scalar_type(), "square_linf_query_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto launch = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      query_kernel<scalar_t, index_t><<<grid, kThreads, 0, stream>>>(
          x_nat.const_data_ptr<scalar_t>(), x_best.const_data_ptr<scalar_t>(), u.const_data_ptr<float>(),
          out.data_ptr<scalar_t>(), static_cast<index_t>(numel), make_query_indexer<index_t>(out, x_nat, x_best),
          out.size(1), out.size(2), out.size(3), side, static_cast<T>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (narrow) {
      launch(uint32_t(0));
    } else {
      launch(uint64_t(0));
    }
  });
  return out;
}

// ---- the accept step --------------------------------------------------------------------------------

// x_best[i] <- x_new[i]: a flat block where both images are dense blocks of one layout
// (same_dense_images), otherwise element by element in the logical order (c, r, q).
struct ImageCopy {
  int64_t best_stride[4], new_stride[4];
  int64_t c, h, w, per_image;
  bool flat;
};

template <typename scalar_t>
__device__ __forceinline__ void copy_image(scalar_t* x_best, const scalar_t* x_new, const ImageCopy& g, int64_t i) {
  scalar_t* dst = x_best + i * g.best_stride[0];
  const scalar_t* src = x_new + i * g.new_stride[0];
  if (dst == src) return;  // x_new is x_best
  if (g.flat) {
    for (int64_t j = threadIdx.x; j < g.per_image; j += blockDim.x) dst[j] = src[j];
    return;
  }
  for (int64_t j = threadIdx.x; j < g.per_image; j += blockDim.x) {
    const int64_t q = j % g.w, r = (j / g.w) % g.h, ch = j / (g.w * g.h);
    dst[ch * g.best_stride[1] + r * g.best_stride[2] + q * g.best_stride[3]] =
        src[ch * g.new_stride[1] + r * g.new_stride[2] + q * g.new_stride[3]];
  }
}

template <typename scalar_t, typename logit_t>
__global__ void __launch_bounds__(kThreads)
accept_kernel(scalar_t* x_best, float* margin_best, int64_t mb_stride, const scalar_t* x_new,
              const logit_t* logits, const int64_t* y, int64_t* pred, int64_t m, int64_t k, ImageCopy copy) {
  using T = at::opmath_type<logit_t>;
  for (int64_t i = blockIdx.x; i < m; i += gridDim.x) {
    const logit_t* z = logits + i * k;
    const int64_t yi = y[i];
    const bool y_ok = yi >= 0 && yi < k;
    CUDA_KERNEL_ASSERT_MSG(y_ok, "cwr_fast.square_accept_: y out of range [0, K)");
    // Every thread reads the best margin before the reduction's barriers, thread 0 writes it after.
    const float best = margin_best[i * mb_stride];
    RowMargin<T> row = RowMargin<T>::empty();
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) row.add(j, static_cast<T>(z[j]), yi);
    row = dev::block_reduce(row, square::MergeOp(), RowMargin<T>::empty());
    const float margin = row.margin(y_ok ? static_cast<T>(z[yi]) : T(NAN));
    const bool better = square::accepts(margin, best);  // the same in every thread of the block
    if (threadIdx.x == 0) {
      pred[i] = row.top_idx;
      if (better) margin_best[i * mb_stride] = margin;
    }
    if (better) copy_image(x_best, x_new, copy, i);
  }
}

at::Tensor square_accept_cuda(at::Tensor& x_best, at::Tensor& margin_best, const at::Tensor& x_new,
                              const at::Tensor& logits_in, const at::Tensor& y_in) {
  check_square_accept_args(x_best, margin_best, x_new, logits_in, y_in);
  const c10::cuda::CUDAGuard device_guard(x_best.device());
  const int64_t m = x_best.size(0), k = logits_in.size(1);
  at::Tensor pred = at::empty({m}, logits_in.options().dtype(at::kLong));
  if (m == 0) return pred;
  const at::Tensor logits = logits_in.contiguous(), y = y_in.contiguous();
  ImageCopy copy{};
  for (int d = 0; d < 4; ++d) copy.best_stride[d] = x_best.stride(d), copy.new_stride[d] = x_new.stride(d);
  copy.c = x_best.size(1), copy.h = x_best.size(2), copy.w = x_best.size(3);
  copy.per_image = copy.c * copy.h * copy.w;
  copy.flat = same_dense_images(x_best, x_new);
  const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(m, dev::blocks_per_wave(kThreads) * 8));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_best.scalar_type(), "square_accept_cuda", [&] {
    using image_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "square_accept_cuda_logits", [&] {
      accept_kernel<image_t, scalar_t><<<grid, kThreads, 0, stream>>>(
          x_best.data_ptr<image_t>(), margin_best.data_ptr<float>(), margin_best.stride(0),
          x_new.const_data_ptr<image_t>(), logits.const_data_ptr<scalar_t>(), y.const_data_ptr<int64_t>(),
          pred.data_ptr<int64_t>(), m, k, copy);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return pred;
}

}  // namespace
}  // namespace cwr_fast

TORCH_LIBRARY_IMPL(cwr_fast, CUDA, m) {
  m.impl("square_linf_query", &cwr_fast::square_linf_query_cuda);
  m.impl("square_accept_", &cwr_fast::square_accept_cuda);
}
