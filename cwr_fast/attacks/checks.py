"""The reference AutoAttack's automatic checks (fra31/auto-attack, `checks.py`) as report flags.

Each check is a function returning a flag, {code, severity, attacks, message} (the shape of the
class-wise report's flags; `attacks` is filled in by the report), or None when the model passes:

    randomised_model      the outputs change between forward passes of the same images
    softmax_output        the outputs look like probabilities, not logits
    dynamic_model         the forward pass itself calls autograd (a test-time adaptive defense)
    zero_gradients        images whose input gradient of the DLR loss is exactly zero
    fewer_target_classes  fewer classes than APGD-T's / FAB-T's 9 targets + 1
    square_stronger       Square lowered the robust accuracy after the white-box members

AutoAttack runs the first five on the images of its first call (`first_batch_flags`, the
reference's first batch; the zero-gradient check on the DLR gradient at the clean images) and
keeps them in `AutoAttack.check_flags`; the report adds `square_stronger` from the per-member
breakdown of the whole evaluation, as the reference checks it after all members ran. The
thresholds are the reference's.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from cwr_fast import ops

RANDOMISED_PASSES = 5     # forward passes compared by the randomness check
RANDOMISED_TOL = 1e-4     # largest L2 distance of two L2-normalised outputs of a deterministic model
SOFTMAX_TOL = 1e-5        # outputs within [0, 1] and rows summing to 1 up to this: probabilities
SQUARE_TOL = 0.002        # Square may lower the robust accuracy by at most this fraction
_AUTOGRAD_CALLS = ("grad", "backward", "_make_grads")  # the reference's `checks.funcs`


def _flag(code: str, severity: str, message: str) -> dict:
    return {"code": code, "severity": severity, "attacks": [], "message": message}


def randomised_flag(outputs: Sequence[Tensor], y: Tensor, tol: float = RANDOMISED_TOL) -> dict | None:
    """outputs: the model's outputs [N, C] for the same images in several forward passes. The model
    is randomised when the number of correct predictions differs between passes or two outputs,
    each row divided by its L2 norm, differ by more than tol in L2 norm (the reference's rule)."""
    correct = {int((out.argmax(dim=1) == y).sum()) for out in outputs}
    unit = [out.float() / (out.float().norm(dim=1, keepdim=True) + 1e-10) for out in outputs]
    spread = max((float((a - b).norm(dim=1).max()) for i, a in enumerate(unit) for b in unit[i + 1:]),
                 default=0.0)
    if len(correct) == 1 and spread <= tol:
        return None
    return _flag("randomised_model", "warning",
                 f"the model's outputs change between forward passes of the same images (up to "
                 f"{spread:.3g} apart after normalising; {len(correct)} different accuracies in "
                 f"{len(outputs)} passes): a randomised defense, which the standard and plus "
                 "versions attack one random draw at a time and so overstate; use --attacks "
                 "aa:version=rand (from Python AutoAttack(model, version='rand'))")


def softmax_flag(outputs: Tensor, tol: float = SOFTMAX_TOL) -> dict | None:
    """outputs [N, C]: probabilities when every value lies in [0, 1] and every row sums to 1."""
    out = outputs.float()
    if not (float(out.max()) < 1 + tol and float(out.min()) > -tol
            and bool(((out.sum(dim=-1) - 1).abs() < tol).all())):
        return None
    return _flag("softmax_output", "warning",
                 "the model's outputs look like probabilities (all in [0, 1], each row summing to 1), "
                 "not logits: the attacks' losses saturate on them and overstate robustness; remove "
                 "the final softmax (evaluate the logits it is applied to)")


def zero_gradient_flag(grad: Tensor, logit_grad: Tensor | None = None) -> dict | None:
    """grad [N, ...]: the input gradient of the attack loss; flags images where it is all zero.
    logit_grad [N, C]: the loss's gradient at the logits; images where that is zero too are left
    out (the DLR loss is constant where the label is exactly the third most likely class: no
    fault of the model's, though the reference's check counts them)."""
    zero = grad.flatten(1).abs().sum(dim=1) == 0
    if logit_grad is not None:
        zero &= logit_grad.flatten(1).abs().sum(dim=1) > 0
    zero = int(zero.sum())
    if zero == 0:
        return None
    return _flag("zero_gradients", "warning",
                 f"{zero} of {grad.shape[0]} images of the first batch have an input gradient of "
                 "exactly zero (DLR loss): a non-differentiable or detached layer (rounding, "
                 "quantisation, a step function) masks the gradient and makes the gradient-based "
                 "members unreliable; evaluate with an adaptive attack (e.g. BPDA through that "
                 "layer) and compare with the gradient-free Square")


def dynamic_flag(model: nn.Module, x: Tensor) -> dict | None:
    """Runs one forward pass with a call tracer: a model whose forward calls autograd (grad,
    backward) adapts to its input at test time. The caller's trace function is restored."""
    calls = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name in _AUTOGRAD_CALLS:
            calls.append(frame.f_code.co_name)

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        sys.settrace(previous)
    if not calls:
        return None
    return _flag("dynamic_model", "warning",
                 f"the model's forward pass calls autograd ({', '.join(sorted(set(calls)))}): a "
                 "dynamic, test-time adaptive defense, which AutoAttack's fixed attacks may not "
                 "evaluate fully; evaluate it with an attack adapted to the defense")


def target_count_flag(num_classes: int, targets: Mapping[str, int]) -> dict | None:
    """targets {member: its number of target classes} (apgd-t, fab-t): the reference needs
    targets + 1 <= classes (and 3, targeted 4, classes for the DLR loss, which cwr_fast's APGD
    refuses below that); cwr_fast's targeted members then use the C - 1 classes there are."""
    over = {name: k for name, k in targets.items() if k + 1 > num_classes}
    if not over:
        return None
    members = " and ".join(name.upper() for name in over)
    return _flag("fewer_target_classes", "info",
                 f"the model has {num_classes} classes, fewer than {members} need for "
                 f"{max(over.values())} target classes: they attack the {num_classes - 1} other "
                 "classes instead (the reference AutoAttack stops here; its number is not comparable "
                 "to a 9-target run)")


def square_success_flag(total: int, clean_correct: int, fooled: Sequence[tuple[str, int]],
                        tol: float = SQUARE_TOL) -> dict | None:
    """total images, the clean-correct ones, and (member, images it fooled first) in the order the
    members ran. The reference's rule: Square's robust accuracy below the lowest of the clean and
    other members' by more than tol (a fraction of all images) is a sign of gradient masking."""
    if total <= 0:
        return None
    accuracy, left = {"clean": clean_correct / total}, clean_correct
    for name, count in fooled:
        left -= count
        accuracy[name] = left / total
    if "square" not in accuracy or len(accuracy) <= 2:
        return None
    others = min(v for k, v in accuracy.items() if k != "square")
    drop = others - accuracy["square"]
    if drop <= tol:
        return None
    return _flag("square_stronger", "warning",
                 f"Square, a gradient-free attack, lowered the robust accuracy by {100 * drop:.2f} "
                 f"points after the gradient-based members (the reference flags more than "
                 f"{100 * tol:.1f}): their gradients may be masked and the evaluation unreliable; run "
                 "Square with more queries and restarts (e.g. --attacks square-20000:restarts=3) or "
                 "an adaptive attack")


def dlr_gradient(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor] | None:
    """The gradient of the (untargeted) DLR loss at x, one fp32 pass: (at the input, at the
    logits); None below 3 classes."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
    if logits.shape[1] < 3:
        return None
    _, dz = ops.dlr_loss_fwd_bwd(logits.detach().float(), y)
    if not logits.requires_grad:  # the output does not depend on x through autograd at all
        return torch.zeros_like(x), dz
    (grad,) = torch.autograd.grad(logits, x, dz.to(logits.dtype), allow_unused=True)
    return (torch.zeros_like(x) if grad is None else grad), dz


def first_batch_flags(model: nn.Module, x: Tensor, y: Tensor, *, randomised: bool = True,
                      targets: Mapping[str, int] | None = None) -> list[dict]:
    """The reference's checks on one batch (the model in attack mode): randomness (unless
    randomised=False, as the reference skips it for version rand), probabilities, a dynamic
    forward pass, zero DLR gradients and the number of target classes. Leaves the global RNG
    state (CPU and x's device) as it was, so the attacks that follow draw what they would have."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        with torch.no_grad():
            outputs = [model(x) for _ in range(RANDOMISED_PASSES if randomised else 1)]
        grad = dlr_gradient(model, x, y)
        flags = [randomised_flag(outputs, y) if randomised else None,
                 softmax_flag(outputs[0]),
                 dynamic_flag(model, x),
                 zero_gradient_flag(*grad) if grad is not None else None,
                 target_count_flag(outputs[0].shape[1], targets or {})]
    return [flag for flag in flags if flag is not None]
