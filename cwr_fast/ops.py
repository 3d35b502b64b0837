"""The fused attack operators of cwr_fast.

    from cwr_fast import ops
    loss, dz = ops.temperature_ce_fwd_bwd(logits, y, temperature=2.0)   # per-sample loss, dL/dz
    logits.backward(dz)                                                  # gradient w.r.t. the input
    ops.linf_pgd_step_(x_adv, x_adv.grad, x_nat, alpha=2/255, eps=8/255) # in place

The kernels live in the compiled extension `cwr_fast._C` and are also reachable as
`torch.ops.cwr_fast.*`: the Linf and L2 PGD steps; temperature CE, margin and DLR losses
(forward+backward in one pass, and as differentiable training losses whose autograd is C++);
FAB's hyperplane projections; the Square Attack's Linf query and accept step. Each op has a fake
(meta) kernel, so `torch.compile(fullgraph=True)` traces it, and the *_fwd_bwd losses also have
autograd formulas here.

Backends, one switch: `backend_module(name)` is the module of a backend's ops, "fused" (this
module) or "eager" (`cwr_fast.reference`: the same functions in plain PyTorch, the baseline of the
benchmarks). It is the one way code outside the op layer reaches the reference ops. Its two
spellings:
- training's `--ops eager` (`Method(ops_impl="eager")`): the method runs on `backend_module("eager")`;
- the environment variable `CWR_FAST_BACKEND=reference`, read once at import: the extension is not
  loaded and every function here delegates to `backend_module("eager")`, as it does (with one
  warning) when the extension is missing.
`backend()` says what this module runs: 'compiled (cpu, cuda)', 'compiled (cpu)' or 'reference'.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import ModuleType

import torch
from torch import Tensor

from cwr_fast import reference

BACKENDS = ("fused", "eager")  # the names of `--ops`
_BACKEND_ENV = "CWR_FAST_BACKEND"
_ENV_SPELLINGS = {"reference": "eager"}  # CWR_FAST_BACKEND's value -> the backend it selects


def backend_module(name: str) -> ModuleType:
    """The module of the ops of backend `name`: "fused" -> cwr_fast.ops (compiled kernels, or the
    eager ones where CWR_FAST_BACKEND=reference or the extension is missing), "eager" ->
    cwr_fast.reference. Both have the same functions with the same signatures."""
    if name not in BACKENDS:
        raise ValueError(f"ops must be fused or eager, got {name!r}")
    return reference if name == "eager" else sys.modules[__name__]


def _backend_from_environment() -> str:
    return _ENV_SPELLINGS.get(os.environ.get(_BACKEND_ENV, ""), "fused")


def _load_extension() -> bool:
    if _backend_from_environment() == "eager":
        return False
    try:
        import cwr_fast._C  # noqa: F401  (registers torch.ops.cwr_fast.*)
    except ImportError as err:
        warnings.warn(
            f"cwr_fast: compiled extension not available ({err}); using the pure-PyTorch reference "
            "ops, which are correct but slower. Build it with `pip install --no-build-isolation -e .`.",
            RuntimeWarning, stacklevel=3)
        return False
    return True


_COMPILED = _load_extension()


def backend() -> str:
    """'compiled (cpu, cuda)', 'compiled (cpu)' or 'reference'."""
    if not _COMPILED:
        return "reference"
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("cwr_fast::linf_pgd_step_", "CUDA")
    return "compiled (cpu, cuda)" if has_cuda else "compiled (cpu)"


def _scalar_or_per_sample(value, name: str) -> tuple[float, Tensor | None]:
    """Splits alpha/eps into the op's (scalar, per-sample tensor) pair."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return float(value), None
        return 0.0, value
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a [N] tensor, got {type(value).__name__}")
    return float(value), None


def linf_pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha, eps, lo: float = 0.0,
                   hi: float = 1.0) -> Tensor:
    """x_adv <- clamp(x_nat + clamp(x_adv + alpha*sign(grad) - x_nat, -eps, eps), lo, hi), in place.

    alpha, eps: numbers, or tensors of shape [N] (one budget per sample). Returns x_adv.
    Not differentiable: with grad mode on, an input that requires grad raises (pass detached
    tensors, or call it under torch.no_grad()).
    """
    return _step("linf_pgd_step_", x_adv, grad, x_nat, alpha, eps, lo, hi)


def l2_pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha, eps, lo: float = 0.0,
                 hi: float = 1.0) -> Tensor:
    """Per sample: x <- x_adv + alpha * grad / ||grad||_2, projected onto the L2 ball of radius eps
    around x_nat, clamped to [lo, hi]; in place. alpha, eps: numbers or [N] tensors. Not
    differentiable, like linf_pgd_step_."""
    return _step("l2_pgd_step_", x_adv, grad, x_nat, alpha, eps, lo, hi)


def _step(name: str, x_adv, grad, x_nat, alpha, eps, lo, hi) -> Tensor:
    if not _COMPILED:
        return getattr(reference, name)(x_adv, grad, x_nat, alpha, eps, lo, hi)
    a, a_ps = _scalar_or_per_sample(alpha, "alpha")
    e, e_ps = _scalar_or_per_sample(eps, "eps")
    getattr(torch.ops.cwr_fast, name)(x_adv, grad, x_nat, a, e, float(lo), float(hi), a_ps, e_ps)
    return x_adv


def temperature_ce_fwd_bwd(logits: Tensor, target: Tensor, temperature: float = 1.0,
                           weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One pass: per-sample loss w*CE(softmax(z/T), y) ([N], float32; float64 for float64 logits)
    and dL/dz ([N, C], dtype of logits). In an attack: `logits.backward(dz)` gives the input gradient of sum(loss)."""
    if not _COMPILED:
        return reference.temperature_ce_fwd_bwd(logits, target, temperature, weight)
    return torch.ops.cwr_fast.temperature_ce_fwd_bwd(logits, target, float(temperature), weight)


def margin_loss_fwd_bwd(logits: Tensor, target: Tensor,
                        weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One pass: per-sample CW margin w*(max_{j!=y} z_j - z_y) ([N], float32; float64 for float64
    logits) and dL/dz."""
    if not _COMPILED:
        return reference.margin_loss_fwd_bwd(logits, target, weight)
    return torch.ops.cwr_fast.margin_loss_fwd_bwd(logits, target, weight)


def dlr_loss_fwd_bwd(logits: Tensor, target: Tensor, attack_target: Tensor | None = None,
                     weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One pass: per-sample DLR loss (Croce & Hein, 2020) and dL/dz. Untargeted (C >= 3):
    -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3 + 1e-12); with attack_target t ([N] int64, C >= 4):
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12); pi sorts z in descending order."""
    if not _COMPILED:
        return reference.dlr_loss_fwd_bwd(logits, target, attack_target, weight)
    return torch.ops.cwr_fast.dlr_loss_fwd_bwd(logits, target, attack_target, weight)


def hyperplane_projection_linf(points: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """FAB's projection, per row: the smallest Linf perturbation d with w . (points + d) = b and
    points + d in [0, 1] (the closest box corner where the plane is out of reach). points, w:
    [M, D] float32/float64; b: [M]."""
    if not _COMPILED:
        return reference.hyperplane_projection_linf(points, w, b)
    return torch.ops.cwr_fast.hyperplane_projection_linf(points, w, b)


def hyperplane_projection_l2(points: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """As hyperplane_projection_linf, smallest in the L2 norm (|w_j| <= 1e-8 counts as 0)."""
    if not _COMPILED:
        return reference.hyperplane_projection_l2(points, w, b)
    return torch.ops.cwr_fast.hyperplane_projection_l2(points, w, b)


def square_linf_query(x_nat: Tensor, x_best: Tensor, u: Tensor, eps: float, side: int) -> Tensor:
    """One Linf Square Attack query per image, as a new tensor in x_best's dtype and memory layout:
    x_best, except in a side x side window where it is clamp(x_nat + sign_c * eps, 0, 1).

    x_nat, x_best: [M, C, H, W] (one float dtype and device, any strides). u: [M, 2 + C] float32
    uniform draws in [0, 1) (`torch.rand(m, 2 + c)`): the window's top row floor(u[:, 0] * (H - side)),
    its left column floor(u[:, 1] * (W - side)), and the sign of channel c, +1 where
    u[:, 2 + c] >= 0.5. 1 <= side <= min(H, W). Not differentiable (inputs that require grad are
    refused while grad mode is on)."""
    if not _COMPILED:
        return reference.square_linf_query(x_nat, x_best, u, eps, side)
    return torch.ops.cwr_fast.square_linf_query(x_nat, x_best, u, float(eps), int(side))


def square_accept_(x_best: Tensor, margin_best: Tensor, x_new: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """The Square Attack's accept step, in place: per image, margin = z_y - max_{j != y} z_j (float32;
    +inf for a single class); where margin < margin_best, margin_best <- margin and x_best[i] <- x_new[i].

    x_best, x_new: [M, C, H, W] (one dtype, any strides); margin_best: float32 [M]; logits: [M, K],
    any float dtype; y: int64 [M]. Returns the predictions logits.argmax(dim=1) (int64 [M]). Not
    differentiable, like square_linf_query."""
    if not _COMPILED:
        return reference.square_accept_(x_best, margin_best, x_new, logits, y)
    return torch.ops.cwr_fast.square_accept_(x_best, margin_best, x_new, logits, y)


def _check_weight_not_trained(weight: Tensor | None) -> None:
    if weight is not None and weight.requires_grad:
        raise ValueError("weight must not require grad: the fused losses give no gradient for the "
                         "per-sample weights (detach them)")


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # the int argument of the differentiable ops


def _reduction_code(reduction: str, weight: Tensor | None) -> int:
    _check_weight_not_trained(weight)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return _REDUCTIONS[reduction]


def temperature_cross_entropy(logits: Tensor, target: Tensor, temperature: float = 1.0,
                              weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Differentiable w*CE(softmax(z/T), y) on the fused kernels, for training.

    reduction: 'mean' (weighted sum / N), 'sum' or 'none'. The weights get no gradient.
    """
    code = _reduction_code(reduction, weight)
    if not _COMPILED:
        return reference.temperature_cross_entropy(logits, target, temperature, weight, reduction)
    return torch.ops.cwr_fast.temperature_cross_entropy(logits, target, float(temperature), weight, code)


def margin_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None,
                reduction: str = "mean") -> Tensor:
    """Differentiable CW margin w*(max_{j!=y} z_j - z_y) on the fused kernels."""
    code = _reduction_code(reduction, weight)
    if not _COMPILED:
        return reference.margin_loss(logits, target, weight, reduction)
    return torch.ops.cwr_fast.margin_loss(logits, target, weight, code)


def dlr_loss(logits: Tensor, target: Tensor, attack_target: Tensor | None = None,
             weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Differentiable DLR loss (untargeted, or targeted toward attack_target) on the fused kernels."""
    code = _reduction_code(reduction, weight)
    if not _COMPILED:
        return reference.dlr_loss(logits, target, attack_target, weight, reduction)
    return torch.ops.cwr_fast.dlr_loss(logits, target, attack_target, weight, code)


# ---- fake kernels (shapes for torch.compile / meta tensors) and autograd formulas ----------------

def _loss_fake(logits: Tensor) -> tuple[Tensor, Tensor]:
    loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty(logits.shape[0], dtype=loss_dtype), logits.new_empty(logits.shape)


def _loss_setup_context(ctx, inputs, output):
    _, dz = output
    ctx.mark_non_differentiable(dz)
    ctx.save_for_backward(dz)


def _loss_backward(ctx, grad_loss: Tensor, _grad_dz):
    (dz,) = ctx.saved_tensors
    grad_logits = (grad_loss[:, None] * dz.to(grad_loss.dtype)).to(dz.dtype)
    return (grad_logits,) + (None,) * (ctx.n_inputs - 1)


def _check_same_device(first_name: str, first: Tensor, **others: Tensor | None) -> None:
    """The device check of the C++ kernels, for fake tensors (a mix of meta and real tensors
    dispatches to the fake kernel, which would otherwise accept it)."""
    for name, t in others.items():
        if t is not None:
            torch._check(t.device == first.device,
                         lambda: f"{name} must be on {first.device} like {first_name}, got {t.device}")


def _register_python_side() -> None:
    def step_fake(x_adv, grad, x_nat, alpha, eps, lo, hi, alpha_per_sample=None, eps_per_sample=None):
        _check_same_device("x_adv", x_adv, grad=grad, x_nat=x_nat, alpha_per_sample=alpha_per_sample,
                           eps_per_sample=eps_per_sample)
        return None

    torch.library.register_fake("cwr_fast::linf_pgd_step_", step_fake)
    torch.library.register_fake("cwr_fast::l2_pgd_step_", step_fake)

    @torch.library.register_fake("cwr_fast::temperature_ce_fwd_bwd")
    def _(logits, target, temperature, weight=None):
        _check_same_device("logits", logits, target=target, weight=weight)
        return _loss_fake(logits)

    @torch.library.register_fake("cwr_fast::margin_loss_fwd_bwd")
    def _(logits, target, weight=None):
        _check_same_device("logits", logits, target=target, weight=weight)
        return _loss_fake(logits)

    @torch.library.register_fake("cwr_fast::dlr_loss_fwd_bwd")
    def _(logits, target, attack_target=None, weight=None):
        _check_same_device("logits", logits, target=target, attack_target=attack_target, weight=weight)
        torch._check(logits.shape[1] >= (3 if attack_target is None else 4),
                     lambda: "logits must have at least 3 classes (4 with attack_target) for the DLR loss")
        return _loss_fake(logits)

    def projection_fake(points, w, b):
        _check_same_device("points", points, w=w, b=b)
        return points.new_empty(points.shape)  # contiguous, as the kernels return it

    torch.library.register_fake("cwr_fast::hyperplane_projection_linf", projection_fake)
    torch.library.register_fake("cwr_fast::hyperplane_projection_l2", projection_fake)

    @torch.library.register_fake("cwr_fast::square_linf_query")
    def _(x_nat, x_best, u, eps, side):
        _check_same_device("x_nat", x_nat, x_best=x_best, u=u)
        torch._check(x_best.shape == x_nat.shape,
                     lambda: f"x_best must have the shape of x_nat {list(x_nat.shape)}, got {list(x_best.shape)}")
        return torch.empty_like(x_best)  # the kernels' output: x_best's dtype and memory layout

    @torch.library.register_fake("cwr_fast::square_accept_")
    def _(x_best, margin_best, x_new, logits, y):
        _check_same_device("x_best", x_best, margin_best=margin_best, x_new=x_new, logits=logits, y=y)
        return logits.new_empty(logits.shape[0], dtype=torch.int64)

    def reduced_fake(logits, reduction):
        loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        shape = (logits.shape[0],) if reduction == _REDUCTIONS["none"] else ()
        return logits.new_empty(shape, dtype=loss_dtype)

    @torch.library.register_fake("cwr_fast::temperature_cross_entropy")
    def _(logits, target, temperature, weight, reduction):
        _check_same_device("logits", logits, target=target, weight=weight)
        return reduced_fake(logits, reduction)

    @torch.library.register_fake("cwr_fast::margin_loss")
    def _(logits, target, weight, reduction):
        _check_same_device("logits", logits, target=target, weight=weight)
        return reduced_fake(logits, reduction)

    @torch.library.register_fake("cwr_fast::dlr_loss")
    def _(logits, target, attack_target, weight, reduction):
        _check_same_device("logits", logits, target=target, attack_target=attack_target, weight=weight)
        return reduced_fake(logits, reduction)

    def setup_with(n_inputs: int):
        def setup(ctx, inputs, output):
            ctx.n_inputs = n_inputs
            _loss_setup_context(ctx, inputs, output)
        return setup

    for op, n_inputs in (("dlr_loss_fwd_bwd", 4), ("temperature_ce_fwd_bwd", 4), ("margin_loss_fwd_bwd", 3)):
        torch.library.register_autograd(f"cwr_fast::{op}", _loss_backward, setup_context=setup_with(n_inputs))


if _COMPILED:
    _register_python_side()
