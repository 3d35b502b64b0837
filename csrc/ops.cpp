// Operator schemas of cwr_fast and the Python module stub of cwr_fast._C.
// Kernels register per dispatch key in cpu/*.cpp and cuda/*.cu; Python adds fake (meta) kernels
// and autograd formulas in cwr_fast/ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing cwr_fast._C runs the static TORCH_LIBRARY registrations below; no Python bindings.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// The contract of each op, on both devices, is the comment beside its schema: the one full
// statement of it, to which the kernels, checks.h and the README point; cwr_fast/reference.py is
// the same contract as code. An argument that breaks it raises an error naming the argument
// (checks.cpp), except where a rule below says otherwise.
TORCH_LIBRARY(cwr_fast, m) {
  // ---- PGD steps, in place on x_adv ----
  // x_adv, grad, x_nat: one dtype (float32, float16, bfloat16 or float64), one shape [N, ...]
  // and one device, any strides. Computed in float32 (float64 for float64 tensors) and rounded
  // once to the dtype of x_adv. alpha, eps: finite and >= 0; lo <= hi. alpha_per_sample /
  // eps_per_sample: [N], any floating dtype, on the device of x_adv, finite and >= 0 (values
  // checked on the CPU only); they replace the scalars when given.
  // Not differentiable: under grad mode an input that requires grad is refused
  // (steps_autograd.cpp; the reference does the same); otherwise x_adv's version counter is
  // bumped like any in-place op's.
  //
  // x_adv <- clamp(x_nat + clamp(x_adv + alpha*sign(grad) - x_nat, -eps, eps), lo, hi).
  m.def(
      "linf_pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, float alpha, float eps, "
      "float lo, float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> ()");
  // Per sample: step alpha*grad/(||grad||_2 + 1e-12), project onto the L2 ball of radius eps
  // around x_nat, clamp to [lo, hi].
  m.def(
      "l2_pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, float alpha, float eps, "
      "float lo, float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> ()");

  // ---- fused losses: the per-sample loss and its gradient in one pass ----
  // logits z: [N, C], float32, float16, bfloat16 or float64, C >= 1, any strides. target y:
  // int64 [N] on the device of z, values in [0, C) (out of range: the CPU kernels raise, the
  // CUDA kernels assert on the device). weight w: [N], any floating dtype, on the device of z,
  // finite and >= 0 (values checked on the CPU only); absent: 1.
  // Returns (loss, dz): loss [N] in float32 for float32, float16 and bfloat16 logits and in
  // float64 for float64 logits; dz = dL/dz [N, C] (contiguous) in the dtype of z. Computed in
  // float32 (float64 for float64 logits).
  //
  // loss = w*CE(softmax(z/T), y); temperature T finite and > 0.
  m.def(
      "temperature_ce_fwd_bwd(Tensor logits, Tensor target, float temperature, "
      "Tensor? weight=None) -> (Tensor, Tensor)");
  // loss = w*(max_{j!=y} z_j - z_y), the competitor j being the first arg-max of z with z_y set
  // to -inf (NaN wins), as torch.max; C == 1: loss and dz are 0.
  m.def("margin_loss_fwd_bwd(Tensor logits, Tensor target, Tensor? weight=None) -> (Tensor, Tensor)");
  // The DLR loss of Croce & Hein (2020), with pi the order of torch.sort(z, descending=True,
  // stable=True) (NaN first, ties to the lower index):
  //   untargeted: w * -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3 + 1e-12)                  (C >= 3)
  //   targeted:   w * -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), t = attack_target (C >= 4)
  // attack_target: int64 [N] on the device of z, values in [0, C) (checked as those of y).
  // dL/dz is nonzero at y, at the competitor (or t) and at pi1, pi3 (pi4).
  m.def(
      "dlr_loss_fwd_bwd(Tensor logits, Tensor target, Tensor? attack_target=None, "
      "Tensor? weight=None) -> (Tensor, Tensor)");
  // The same losses as differentiable functions, for training, with the same arguments: the
  // per-sample loss reduced (reduction 0: none, [N]; 1: mean = weighted sum / N, []; 2: sum, []),
  // in the loss dtype above. The gradient to the logits is the kernels' dz, computed in the
  // forward pass (C++ autograd in losses_autograd.cpp); target, attack_target and weight get none.
  m.def(
      "temperature_cross_entropy(Tensor logits, Tensor target, float temperature, Tensor? weight, "
      "int reduction) -> Tensor");
  m.def("margin_loss(Tensor logits, Tensor target, Tensor? weight, int reduction) -> Tensor");
  m.def(
      "dlr_loss(Tensor logits, Tensor target, Tensor? attack_target, Tensor? weight, "
      "int reduction) -> Tensor");

  // ---- FAB's hyperplane projections ----
  // Per row i, the smallest perturbation d_i (Linf or L2 norm) with w_i . (points_i + d_i) = b_i
  // and 0 <= points_i + d_i <= 1; where the hyperplane cannot be reached inside the box, the box
  // corner closest to it. points, w: [M, D], float32 or float64 (one dtype); b: [M] of that
  // dtype; one device, any strides. Returns d [M, D] (contiguous) in that dtype. Coordinates
  // with w = 0 (L2: |w| <= 1e-8) stay 0.
  m.def("hyperplane_projection_linf(Tensor points, Tensor w, Tensor b) -> Tensor");
  m.def("hyperplane_projection_l2(Tensor points, Tensor w, Tensor b) -> Tensor");

  // ---- the Square Attack's Linf query loop (cwr_fast/attacks/square.py) ----
  // Per-element arithmetic shared by both devices: square_math.h.
  //
  // One query per image. x_nat, x_best: [M, C, H, W], one dtype (float32, float16, bfloat16 or
  // float64), one device, any strides (each its own). u: [M, 2 + C] float32 on that device, any
  // strides: uniform draws in [0, 1] (one torch.rand call; a value outside [0, 1] or NaN: the CPU
  // kernel raises, the CUDA kernel clamps the window into the image). eps finite and >= 0;
  // 1 <= side <= min(H, W). Per image i, the window's first row and column
  //   top  = floor(u[i, 0] * (H - side)),  left = floor(u[i, 1] * (W - side))
  // with the products rounded to float32 (as (torch.rand(m) * (H - side)).long()), in [0, H - side]
  // and [0, W - side]; the sign of channel c is +1 where u[i, 2 + c] >= 0.5, else -1. Returns
  //   out[i, c, r, q] = clamp(x_nat + sign_c * eps, 0, 1)  for r in [top, top + side), q in [left, left + side)
  //                   = x_best[i, c, r, q]                 elsewhere,
  // a new tensor in x_best's dtype and memory layout (empty_like(x_best)). Computed in float32
  // (float64 for float64 images; eps rounded to that type) and rounded once to the dtype; equal
  // bit for bit to square.py's _linf_query in float32 given the same draws. Not differentiable.
  m.def("square_linf_query(Tensor x_nat, Tensor x_best, Tensor u, float eps, int side) -> Tensor");
  // The accept step, in place on x_best and margin_best. x_best, x_new: [M, C, H, W] as above
  // (one dtype, shape and device; any strides, each its own; x_new may be x_best itself but not
  // partly overlap it). logits: [M, K], float32, float16, bfloat16 or float64, K >= 1, any
  // strides. y: int64 [M], values in [0, K) (outside: the CPU kernel raises before writing
  // anything, the CUDA kernel asserts on the device). margin_best: float32 [M], any stride. Per row
  // i, in float32 (logits rounded to float32 first, as the attack's logits.float()):
  //   margin_i = z_iy - max_{j != y_i} z_ij    (NaN if a competitor is NaN; K == 1: z_iy - (-inf),
  //                                             i.e. +inf for a finite z_iy)
  //   if margin_i < margin_best_i:  margin_best_i = margin_i, x_best[i] = x_new[i] (the whole image)
  // (a NaN margin or NaN margin_best_i never accepts). Returns pred: int64 [M], the first index of
  // the largest logit of each row in the logits' own dtype, as torch.argmax (NaN is largest).
  // Equal bit for bit to square.py's _margin, torch.where(better, ...) and logits.argmax(dim=1).
  // Not differentiable (run it under torch.no_grad()).
  m.def(
      "square_accept_(Tensor(a!) x_best, Tensor(b!) margin_best, Tensor x_new, Tensor logits, "
      "Tensor y) -> Tensor");
}
