// The order in which torch.max(dim), torch.argmax and torch.sort(descending=True, stable=True)
// rank the logits of a row: NaN first, then the larger value, then the lower index. Shared by the
// loss and Square Attack kernels on both devices (loss_math.h, square_math.h).
#pragma once
#include <c10/macros/Macros.h>

#include <cstdint>

namespace cwr_fast {

template <typename T>
C10_HOST_DEVICE bool is_nan(T v) {
  return v != v;
}

// Whether (a, ia) comes before (b, ib): a strict total order on (value, index) pairs.
template <typename T>
C10_HOST_DEVICE bool ranks_before(T a, int64_t ia, T b, int64_t ib) {
  const bool a_nan = is_nan(a), b_nan = is_nan(b);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a != b) return a > b;
  return ia < ib;
}

}  // namespace cwr_fast
