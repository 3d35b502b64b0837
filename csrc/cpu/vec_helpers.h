// Small helpers that let one generic lambda run on both at::vec::Vectorized<T> and plain scalars,
// and a loop that applies such a lambda over three same-layout arrays in float32 (or float64).
#pragma once
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

namespace cwr_fast::cpu {

using at::vec::Vectorized;

template <typename T>
inline T vmin(T a, T b) { return std::min(a, b); }
template <typename T>
inline Vectorized<T> vmin(const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::minimum(a, b); }
template <typename T>
inline T vmax(T a, T b) { return std::max(a, b); }
template <typename T>
inline Vectorized<T> vmax(const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::maximum(a, b); }
template <typename V>
inline V vclamp(const V& v, const V& lo, const V& hi) { return vmin(vmax(v, lo), hi); }

template <typename T>
inline T vsign(T g) { return static_cast<T>((g > T(0)) - (g < T(0))); }
template <typename T>
inline Vectorized<T> vsign(const Vectorized<T>& g) {
  const Vectorized<T> zero(T(0)), one(T(1));
  return ((g > zero) & one) - ((g < zero) & one);
}

// x[j] <- f(x[j], g[j], xn[j]) for j in [0, n), computed in opmath (float32, or float64 for double)
// with vector loads; 16-bit dtypes are widened to float32 and rounded once on the store.
template <typename scalar_t, typename F>
inline void update3(scalar_t* x, const scalar_t* g, const scalar_t* xn, int64_t n, const F& f) {
  using opmath_t = at::opmath_type<scalar_t>;
  int64_t j = 0;
  if constexpr (at::vec::is_reduced_floating_point_v<scalar_t>) {
    using bVec = Vectorized<scalar_t>;
    for (; j + bVec::size() <= n; j += bVec::size()) {
      auto [x0, x1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(x + j));
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(g + j));
      auto [n0, n1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(xn + j));
      at::vec::convert_from_float<scalar_t>(f(x0, g0, n0), f(x1, g1, n1)).store(x + j);
    }
  } else {
    using Vec = Vectorized<scalar_t>;
    for (; j + Vec::size() <= n; j += Vec::size()) {
      f(Vec::loadu(x + j), Vec::loadu(g + j), Vec::loadu(xn + j)).store(x + j);
    }
  }
  for (; j < n; ++j) {
    x[j] = static_cast<scalar_t>(f(static_cast<opmath_t>(x[j]), static_cast<opmath_t>(g[j]),
                                   static_cast<opmath_t>(xn[j])));
  }
}

}  // namespace cwr_fast::cpu
