"""The fused attack operators of cwr_fast.

    from cwr_fast import ops
    loss, dz = ops.temperature_ce_fwd_bwd(logits, y, temperature=2.0)   # per-sample loss, dL/dz
    logits.backward(dz)                                                  # gradient w.r.t. the input
    ops.linf_pgd_step_(x_adv, x_adv.grad, x_nat, alpha=2/255, eps=8/255) # in place

The kernels live in the compiled extension `cwr_fast._C` and are also reachable as
`torch.ops.cwr_fast.*`. Each op has a fake (meta) kernel, so `torch.compile(fullgraph=True)` traces
it, and the losses have autograd formulas. Without the extension, every function here falls back
to `cwr_fast.reference` (with one warning); `backend()` says which is in use. Set
`CWR_FAST_BACKEND=reference` to force the fallback.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from cwr_fast import reference

_BACKEND_ENV = "CWR_FAST_BACKEND"


def _load_extension() -> bool:
    if os.environ.get(_BACKEND_ENV, "") == "reference":
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
    """
    if not _COMPILED:
        return reference.linf_pgd_step_(x_adv, grad, x_nat, alpha, eps, lo, hi)
    a, a_ps = _scalar_or_per_sample(alpha, "alpha")
    e, e_ps = _scalar_or_per_sample(eps, "eps")
    torch.ops.cwr_fast.linf_pgd_step_(x_adv, grad, x_nat, a, e, float(lo), float(hi), a_ps, e_ps)
    return x_adv


def l2_pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, alpha, eps, lo: float = 0.0,
                 hi: float = 1.0) -> Tensor:
    """Per sample: x <- x_adv + alpha * grad / ||grad||_2, projected onto the L2 ball of radius eps
    around x_nat, clamped to [lo, hi]; in place. alpha, eps: numbers or [N] tensors."""
    if not _COMPILED:
        return reference.l2_pgd_step_(x_adv, grad, x_nat, alpha, eps, lo, hi)
    a, a_ps = _scalar_or_per_sample(alpha, "alpha")
    e, e_ps = _scalar_or_per_sample(eps, "eps")
    torch.ops.cwr_fast.l2_pgd_step_(x_adv, grad, x_nat, a, e, float(lo), float(hi), a_ps, e_ps)
    return x_adv


def temperature_ce_fwd_bwd(logits: Tensor, target: Tensor, temperature: float = 1.0,
                           weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One pass: per-sample loss w*CE(softmax(z/T), y) (float32, [N]) and dL/dz ([N, C], dtype of
    logits). In an attack: `logits.backward(dz)` gives the input gradient of sum(loss)."""
    if not _COMPILED:
        return reference.temperature_ce_fwd_bwd(logits, target, temperature, weight)
    return torch.ops.cwr_fast.temperature_ce_fwd_bwd(logits, target, float(temperature), weight)


def margin_loss_fwd_bwd(logits: Tensor, target: Tensor,
                        weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One pass: per-sample CW margin w*(max_{j!=y} z_j - z_y) (float32, [N]) and dL/dz."""
    if not _COMPILED:
        return reference.margin_loss_fwd_bwd(logits, target, weight)
    return torch.ops.cwr_fast.margin_loss_fwd_bwd(logits, target, weight)


def _check_weight_not_trained(weight: Tensor | None) -> None:
    if weight is not None and weight.requires_grad:
        raise ValueError("weight must not require grad: the fused losses give no gradient for the "
                         "per-sample weights (detach them)")


def temperature_cross_entropy(logits: Tensor, target: Tensor, temperature: float = 1.0,
                              weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Differentiable w*CE(softmax(z/T), y) on the fused kernels, for training.

    reduction: 'mean' (weighted sum / N), 'sum' or 'none'. The weights get no gradient.
    """
    _check_weight_not_trained(weight)
    if not _COMPILED:
        return reference.temperature_cross_entropy(logits, target, temperature, weight, reduction)
    loss, _ = torch.ops.cwr_fast.temperature_ce_fwd_bwd(logits, target, float(temperature), weight)
    return reference._reduce(loss, reduction)


def margin_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None,
                reduction: str = "mean") -> Tensor:
    """Differentiable CW margin w*(max_{j!=y} z_j - z_y) on the fused kernels."""
    _check_weight_not_trained(weight)
    if not _COMPILED:
        return reference.margin_loss(logits, target, weight, reduction)
    loss, _ = torch.ops.cwr_fast.margin_loss_fwd_bwd(logits, target, weight)
    return reference._reduce(loss, reduction)


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

    def setup_ce(ctx, inputs, output):
        ctx.n_inputs = 4
        _loss_setup_context(ctx, inputs, output)

    def setup_margin(ctx, inputs, output):
        ctx.n_inputs = 3
        _loss_setup_context(ctx, inputs, output)

    torch.library.register_autograd("cwr_fast::temperature_ce_fwd_bwd", _loss_backward,
                                    setup_context=setup_ce)
    torch.library.register_autograd("cwr_fast::margin_loss_fwd_bwd", _loss_backward,
                                    setup_context=setup_margin)


if _COMPILED:
    _register_python_side()
