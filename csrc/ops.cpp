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

TORCH_LIBRARY(cwr_fast, m) {
  // x_adv <- clamp(x_nat + clamp(x_adv + alpha*sign(grad) - x_nat, -eps, eps), lo, hi), in place.
  // alpha_per_sample / eps_per_sample ([N], float) replace the scalars when given.
  // Both steps are not differentiable: under grad mode, inputs that require grad are refused
  // (csrc/steps_autograd.cpp; the reference does the same).
  m.def(
      "linf_pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, float alpha, float eps, "
      "float lo, float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> ()");
  // Per sample: step alpha*grad/||grad||_2, project onto the L2 ball of radius eps around x_nat,
  // clamp to [lo, hi]; in place.
  m.def(
      "l2_pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, float alpha, float eps, "
      "float lo, float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> ()");
  // The losses below return the per-sample loss ([N], float32; float64 for float64 logits) and
  // its gradient dL/dz ([N, C], dtype of z), computed in float32 (float64) in one pass.
  // Per-sample loss w*CE(softmax(z/T), y).
  m.def(
      "temperature_ce_fwd_bwd(Tensor logits, Tensor target, float temperature, "
      "Tensor? weight=None) -> (Tensor, Tensor)");
  // Per-sample loss w*(max_{j!=y} z_j - z_y).
  m.def("margin_loss_fwd_bwd(Tensor logits, Tensor target, Tensor? weight=None) -> (Tensor, Tensor)");
  // The DLR loss of Croce & Hein (2020), with pi the order of torch.sort(z, descending=True,
  // stable=True) (NaN first, ties to the lower index):
  //   untargeted: w * -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3 + 1e-12)                  (C >= 3)
  //   targeted:   w * -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), t = attack_target (C >= 4)
  // dL/dz is nonzero at y, at the competitor (or t) and at pi1, pi3 (pi4).
  m.def(
      "dlr_loss_fwd_bwd(Tensor logits, Tensor target, Tensor? attack_target=None, "
      "Tensor? weight=None) -> (Tensor, Tensor)");
  // The same losses as differentiable functions, for training: the per-sample loss reduced
  // (reduction 0: none, 1: mean = weighted sum / N, 2: sum); the gradient to the logits is the
  // kernels' dz, computed in the forward pass (C++ autograd in csrc/losses_autograd.cpp). The
  // weights get no gradient.
  m.def(
      "temperature_cross_entropy(Tensor logits, Tensor target, float temperature, Tensor? weight, "
      "int reduction) -> Tensor");
  m.def("margin_loss(Tensor logits, Tensor target, Tensor? weight, int reduction) -> Tensor");
  m.def(
      "dlr_loss(Tensor logits, Tensor target, Tensor? attack_target, Tensor? weight, "
      "int reduction) -> Tensor");
  // FAB's projection: per row i, the smallest perturbation d_i (Linf or L2 norm) with
  // w_i . (points_i + d_i) = b_i and 0 <= points_i + d_i <= 1; where the hyperplane cannot be
  // reached inside the box, the box corner closest to it. points, w: [M, D] float32/float64 (one
  // dtype), b: [M]; returns d [M, D]. Coordinates with w = 0 (L2: |w| <= 1e-8) stay 0.
  m.def("hyperplane_projection_linf(Tensor points, Tensor w, Tensor b) -> Tensor");
  m.def("hyperplane_projection_l2(Tensor points, Tensor w, Tensor b) -> Tensor");
}
