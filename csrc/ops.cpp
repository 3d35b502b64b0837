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
  m.def(
      "linf_pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, float alpha, float eps, "
      "float lo, float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> ()");
  // Per sample: step alpha*grad/||grad||_2, project onto the L2 ball of radius eps around x_nat,
  // clamp to [lo, hi]; in place.
  m.def(
      "l2_pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, float alpha, float eps, "
      "float lo, float hi, Tensor? alpha_per_sample=None, Tensor? eps_per_sample=None) -> ()");
  // Per-sample loss w*CE(softmax(z/T), y) (float32 [N]) and its gradient dL/dz ([N, C], dtype of z).
  m.def(
      "temperature_ce_fwd_bwd(Tensor logits, Tensor target, float temperature, "
      "Tensor? weight=None) -> (Tensor, Tensor)");
  // Per-sample loss w*(max_{j!=y} z_j - z_y) (float32 [N]) and its gradient dL/dz.
  m.def("margin_loss_fwd_bwd(Tensor logits, Tensor target, Tensor? weight=None) -> (Tensor, Tensor)");
}
