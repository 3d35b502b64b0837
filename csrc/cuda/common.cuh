// Small device helpers shared by the CUDA kernels: 16-byte vector access, warp/block reductions
// and launch sizing. The arithmetic the CPU kernels share is in csrc/*_math.h.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace cwr_fast {
namespace dev {

constexpr int kWarp = 32;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- 16-byte vectors ------------------------------------------------------------------------

// Elements of T per 16-byte access: 4 floats, 8 halfs/bfloat16s, 2 doubles.
template <typename T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Vec {
  T v[kVec];
};

// p must be aligned to sizeof(Vec) (checked on the host before choosing a vector kernel).
template <int kVec, typename T>
__device__ __forceinline__ Vec<T, kVec> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, kVec>*>(p);
}

template <int kVec, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, kVec>& v) {
  *reinterpret_cast<Vec<T, kVec>*>(p) = v;
}

// x[k0, k0 + kVec) <- f(x, g, xn) elementwise in the compute type T: one vector load of each
// tensor, one vector store (kVec == 1 is the scalar case).
template <int kVec, typename T, typename scalar_t, typename F>
__device__ __forceinline__ void update_vec(scalar_t* x_adv, const scalar_t* grad,
                                           const scalar_t* x_nat, int64_t k0, const F& f) {
  auto x = load_vec<kVec>(x_adv + k0);
  const auto g = load_vec<kVec>(grad + k0);
  const auto xn = load_vec<kVec>(x_nat + k0);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    x.v[k] = static_cast<scalar_t>(f(T(x.v[k]), T(g.v[k]), T(xn.v[k])));
  }
  store_vec<kVec>(x_adv + k0, x);
}

inline bool is_aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- reductions -----------------------------------------------------------------------------

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a < b ? b : a; }
};

__device__ __forceinline__ float shfl_xor(float v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}
__device__ __forceinline__ double shfl_xor(double v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}

// Butterfly reduction over a full warp: every lane gets the result. op must be commutative and
// associative for the lanes to agree bit for bit (sum, max and arg-max with index tie-break are).
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int mask = kWarp / 2; mask > 0; mask /= 2) v = op(v, shfl_xor(v, mask));
  return v;
}

// Reduction over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. All threads of the block must call it; `identity` pads the unused warp slots.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity) {
  __shared__ T partial[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = blockDim.x / kWarp;
  v = warp_reduce(v, op);
  __syncthreads();  // partial[] may still be read by the previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  // Every warp reduces the per-warp partials itself, so no third barrier is needed.
  return warp_reduce(lane < n_warps ? partial[lane] : identity, op);
}

// ---- launch sizing --------------------------------------------------------------------------

// Blocks the GPU runs at once (one full wave) when each block has `threads` threads.
inline int64_t blocks_per_wave(int threads) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return int64_t(prop->multiProcessorCount) * std::max(1, prop->maxThreadsPerMultiProcessor / threads);
}

// Blocks for a grid-stride loop over `work` items, `threads` threads per block: one item per
// thread until the grid covers `waves` full waves of the GPU, then threads loop.
inline unsigned int grid_size(int64_t work, int threads, int waves = 4) {
  const int64_t blocks = std::min(ceil_div(work, threads), blocks_per_wave(threads) * waves);
  return static_cast<unsigned int>(std::max<int64_t>(blocks, 1));
}

}  // namespace dev
}  // namespace cwr_fast
