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
}
