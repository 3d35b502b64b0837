// CPU kernels of the Square Attack's Linf query loop: square_linf_query and square_accept_
// (contract: ops.cpp; per-element arithmetic: square_math.h). Images are spread over threads.
// Each image is walked in its memory order, with strides, so any layout works and contiguous and
// channels_last tensors are read and written sequentially.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "checks.h"
#include "host.h"
#include "square_math.h"

namespace cwr_fast::cpu {
namespace {

using square::RowMargin;
using square::Window;

// Images per task of at::parallel_for: about 16k elements.
int64_t image_grain(const at::Tensor& t) {
  const int64_t per_image = t.size(1) * t.size(2) * t.size(3);
  return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(per_image, 1));
}

std::array<int64_t, 4> strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

int64_t offset(const std::array<int64_t, 4>& strides, const std::array<int64_t, 4>& idx) {
  return idx[0] * strides[0] + idx[1] * strides[1] + idx[2] * strides[2] + idx[3] * strides[3];
}

// ---- the query ------------------------------------------------------------------------------------

// out = the query of x_best (ops.cpp). Within an image, the two outer dims of out's memory order
// are loops, and along the innermost one the window is one interval [lo, hi) of indices: x_best
// before and after it, the corner value inside.
template <typename scalar_t>
void query_images(const at::Tensor& x_nat, const at::Tensor& x_best, const float* u, at::Tensor& out,
                  double eps, int64_t side) {
  using T = at::opmath_type<scalar_t>;
  const T eps_t = static_cast<T>(eps);
  const int64_t m = out.size(0), c = out.size(1), h = out.size(2), w = out.size(3);
  const std::array<int, 3> inner_first = image_dims_inner_first(out);
  const int d0 = inner_first[2], d1 = inner_first[1], d2 = inner_first[0];  // outer to inner
  const scalar_t* xn = x_nat.const_data_ptr<scalar_t>();
  const scalar_t* xb = x_best.const_data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const std::array<int64_t, 4> os = strides_of(out), ns = strides_of(x_nat), bs = strides_of(x_best);
  const int64_t n0 = out.size(d0), n1 = out.size(d1), n2 = out.size(d2);
  const int64_t os2 = os[d2], ns2 = ns[d2], bs2 = bs[d2];
  // Where out and x_best are dense images of one layout (always, for the attack's tensors): each
  // image is one block copy of x_best, then only the window's side * side * C values are written.
  const bool block = same_dense_images(out, x_best);
  const int64_t per_image = c * h * w;
  at::parallel_for(0, m, image_grain(out), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* ui = u + i * (2 + c);
      const Window win = square::window_of(ui, h, w, side);
      if (block) {
        std::copy_n(xb + i * bs[0], per_image, o + i * os[0]);
        for (int64_t r = win.top; r < win.top + side; ++r) {
          for (int64_t q = win.left; q < win.left + side; ++q) {
            for (int64_t k = 0; k < c; ++k) {
              const std::array<int64_t, 4> at{i, k, r, q};
              o[offset(os, at)] = static_cast<scalar_t>(square::corner_value<T>(
                  static_cast<T>(xn[offset(ns, at)]), eps_t, square::sign_up(ui[2 + k])));
            }
          }
        }
        continue;
      }
      std::array<int64_t, 4> idx{i, 0, 0, 0};
      for (int64_t a = 0; a < n0; ++a) {
        idx[d0] = a;
        for (int64_t b = 0; b < n1; ++b) {
          idx[d1] = b;
          idx[d2] = 0;
          int64_t lo = 0, hi = 0;  // the window along d2
          if (d2 == 1) {
            if (win.contains(idx[2], idx[3])) hi = c;
          } else if (d2 == 2) {
            if (win.has_col(idx[3])) lo = win.top, hi = win.top + side;
          } else if (win.has_row(idx[2])) {
            lo = win.left, hi = win.left + side;
          }
          const bool up_fixed = d2 != 1 && square::sign_up(ui[2 + idx[1]]);
          scalar_t* op = o + offset(os, idx);
          const scalar_t* np = xn + offset(ns, idx);
          const scalar_t* bp = xb + offset(bs, idx);
          for (int64_t e = 0; e < lo; ++e) op[e * os2] = bp[e * bs2];
          for (int64_t e = lo; e < hi; ++e) {
            const bool up = d2 == 1 ? square::sign_up(ui[2 + e]) : up_fixed;
            op[e * os2] = static_cast<scalar_t>(square::corner_value<T>(static_cast<T>(np[e * ns2]), eps_t, up));
          }
          for (int64_t e = hi; e < n2; ++e) op[e * os2] = bp[e * bs2];
        }
      }
    }
  });
}

at::Tensor square_linf_query_cpu(const at::Tensor& x_nat, const at::Tensor& x_best, const at::Tensor& u_in,
                                 double eps, int64_t side) {
  check_square_query_args(x_nat, x_best, u_in, eps, side);
  at::Tensor out = at::empty_like(x_best);
  if (out.numel() == 0) return out;
  const at::Tensor u = u_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_best.scalar_type(), "square_linf_query_cpu", [&] {
    query_images<scalar_t>(x_nat, x_best, u.const_data_ptr<float>(), out, eps, side);
  });
  return out;
}

// ---- the accept step --------------------------------------------------------------------------------

// x_best[i] <- x_new[i]: one flat block where both images are dense blocks of one layout,
// otherwise element by element in x_best's memory order.
template <typename scalar_t>
struct ImageCopy {
  scalar_t* dst;
  const scalar_t* src;
  std::array<int64_t, 4> size, ds, ss;  // sizes and strides of dst and src, dims 1..3 outer to inner
  int64_t per_image;
  bool flat;

  ImageCopy(at::Tensor& x_best, const at::Tensor& x_new)
      : dst(x_best.data_ptr<scalar_t>()), src(x_new.const_data_ptr<scalar_t>()),
        per_image(x_best.size(1) * x_best.size(2) * x_best.size(3)),
        flat(same_dense_images(x_best, x_new)) {
    const std::array<int, 3> inner_first = image_dims_inner_first(x_best);
    size[0] = 1, ds[0] = x_best.stride(0), ss[0] = x_new.stride(0);
    for (int p = 0; p < 3; ++p) {
      const int d = inner_first[2 - p];
      size[p + 1] = x_best.size(d), ds[p + 1] = x_best.stride(d), ss[p + 1] = x_new.stride(d);
    }
  }

  void operator()(int64_t i) const {
    scalar_t* d = dst + i * ds[0];
    const scalar_t* s = src + i * ss[0];
    if (d == s) return;  // x_new is x_best
    if (flat) {
      std::copy_n(s, per_image, d);
      return;
    }
    for (int64_t a = 0; a < size[1]; ++a) {
      for (int64_t b = 0; b < size[2]; ++b) {
        scalar_t* dp = d + a * ds[1] + b * ds[2];
        const scalar_t* sp = s + a * ss[1] + b * ss[2];
        for (int64_t e = 0; e < size[3]; ++e) dp[e * ds[3]] = sp[e * ss[3]];
      }
    }
  }
};

template <typename scalar_t, typename logit_t>
void accept_rows(at::Tensor& x_best, float* margin_best, int64_t mb_stride, const at::Tensor& x_new,
                 const logit_t* logits, const int64_t* y, int64_t* pred, int64_t m, int64_t k) {
  using T = at::opmath_type<logit_t>;
  const ImageCopy<scalar_t> copy(x_best, x_new);
  at::parallel_for(0, m, image_grain(x_best), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const logit_t* z = logits + i * k;
      const int64_t yi = y[i];
      RowMargin<T> row = RowMargin<T>::empty();
      for (int64_t j = 0; j < k; ++j) row.add(j, static_cast<T>(z[j]), yi);
      pred[i] = row.top_idx;
      const float margin = row.margin(static_cast<T>(z[yi]));
      float& best = margin_best[i * mb_stride];
      if (square::accepts(margin, best)) {
        best = margin;
        copy(i);
      }
    }
  });
}

at::Tensor square_accept_cpu(at::Tensor& x_best, at::Tensor& margin_best, const at::Tensor& x_new,
                             const at::Tensor& logits_in, const at::Tensor& y_in) {
  check_square_accept_args(x_best, margin_best, x_new, logits_in, y_in);
  const int64_t m = x_best.size(0), k = logits_in.size(1);
  at::Tensor pred = at::empty({m}, logits_in.options().dtype(at::kLong));
  if (m == 0) return pred;
  const at::Tensor logits = logits_in.contiguous(), y = y_in.contiguous();
  const int64_t* yp = y.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < m; ++i) {  // before anything is written
    TORCH_CHECK(yp[i] >= 0 && yp[i] < k, "y must hold class indices in [0, ", k, "), got ", yp[i],
                " for image ", i);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_best.scalar_type(), "square_accept_cpu", [&] {
    using image_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "square_accept_cpu_logits", [&] {
      accept_rows<image_t, scalar_t>(x_best, margin_best.data_ptr<float>(), margin_best.stride(0), x_new,
                                     logits.const_data_ptr<scalar_t>(), yp, pred.data_ptr<int64_t>(), m, k);
    });
  });
  return pred;
}

}  // namespace

TORCH_LIBRARY_IMPL(cwr_fast, CPU, m) {
  m.impl("square_linf_query", &square_linf_query_cpu);
  m.impl("square_accept_", &square_accept_cpu);
}

}  // namespace cwr_fast::cpu
