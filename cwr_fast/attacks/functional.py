"""The functional core of the gradient attacks: one loop for FGSM, PGD (Linf, L2), Temperature-PGD
and CW-Linf, untargeted or targeted, on the fused ops of `cwr_fast.ops`.

Each step: forward (optionally under autocast), the fused loss forward+backward gives dL/dlogits,
one backward gives the input gradient, the fused in-place step moves and projects x_adv. The model
must already be in attack mode (eval, no parameter gradients; see `attack_mode`).

track="final": every sample takes all steps and the last iterate counts (torchattacks semantics).
track="any": a sample counts as fooled at the first iterate that fools the model (AutoAttack
semantics); it then leaves the active batch, so no more compute is spent on it.

The training methods run their inner maximisation on the same loop: a caller may give the start
point (`start`, a function of x) and the gradient of the loss to ascend (`loss_grad`, a function of
the logits), as TRADES does (start x + 0.001 N(0, I), KL gradient). `ops` is the module of the
steps and loss gradients, as `cwr_fast.ops.backend_module` selects it: `cwr_fast.ops` (fused, the
default) or the eager backend (the same functions in plain PyTorch, the baseline of the
benchmarks). The norm ball is a `ThreatModel` (`cwr_fast.attacks.threat`): its step op and random
start.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor, nn

from cwr_fast import ops as fused_ops
from cwr_fast.attacks.attack import confirm_fooled
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.threat import ThreatModel, threat_model
from cwr_fast.runtime import amp_dtype, autocast, fp16_loss_scale, is_channels_last, to_channels_last

LOSSES = ("ce", "margin")
TRACKS = ("final", "any")


def loss_gradient(logits: Tensor, y: Tensor, target: Tensor | None, loss: str,
                  temperature: float, ops: ModuleType = fused_ops) -> Tensor:
    """dL/dlogits of the loss the attack ascends: the loss on y (untargeted), or minus the loss on
    the target class (targeted: ascending -L(target) moves toward the target)."""
    labels = y if target is None else target
    logits = logits.detach()  # the fused op gives dL/dz itself: no autograd node needed
    if loss == "ce":
        _, dz = ops.temperature_ce_fwd_bwd(logits, labels, temperature)
    else:
        _, dz = ops.margin_loss_fwd_bwd(logits, labels)
    return dz if target is None else dz.neg_()


def _take(value: float | Tensor, keep: Tensor) -> float | Tensor:
    return value[keep] if isinstance(value, Tensor) else value


def _run_once(model: nn.Module, x_nat: Tensor, y: Tensor, target: Tensor | None, *, threat: ThreatModel,
              eps: float | Tensor, alpha: float | Tensor, steps: int, loss: str, temperature: float,
              use_random_start: bool, track: str, dtype: torch.dtype | None,
              score: bool = True, start: Callable[[Tensor], Tensor] | None = None,
              loss_grad: Callable[[Tensor], Tensor] | None = None,
              ops: ModuleType = fused_ops) -> AttackResult:
    """One run (one restart): `steps` gradient steps plus a final forward pass that scores the
    last iterate (skipped when score=False: pred and success are then None). With track="any",
    samples are recorded at the first iterate that fools the model and dropped from the batch
    (x, grad, x_nat, y, target, eps, alpha are compacted together)."""
    if track == "any":  # the results of the samples that leave the batch
        out_x, out_pred = x_nat.clone(), y.clone()
        out_success = torch.zeros(x_nat.shape[0], dtype=torch.bool, device=x_nat.device)
        out_step = torch.full((x_nat.shape[0],), -1, dtype=torch.int64, device=x_nat.device)
    step_ = threat.step_op(ops)
    scale = fp16_loss_scale(dtype)

    channels_last = is_channels_last(x_nat)  # keep the caller's layout through compaction
    if start is not None:
        x = start(x_nat).detach().clone()
    else:
        x = threat.random_start(x_nat, eps) if use_random_start else x_nat.clone()
    index = None  # positions of the active samples in the batch; None while all are active
    for step in range(steps + 1):
        last = step == steps
        if last and not score:
            return AttackResult(x.detach(), None, None)
        if not last:
            x.requires_grad_(True)
        # the last iterate is scored in float32 under any amp (attacks/precision.py)
        with torch.set_grad_enabled(not last), autocast(x.device, None if last else dtype):
            logits = model(x)
        if last or track == "any":
            pred = logits.argmax(dim=1)
            success = pred == target if target is not None else pred != y
        if last:
            break
        if loss_grad is None:
            dz = loss_gradient(logits, y, target, loss, temperature, ops)
        else:
            dz = loss_grad(logits.detach())
        if scale is not None:
            dz = dz * scale
        (grad,) = torch.autograd.grad(logits, x, dz.to(logits.dtype))
        x = x.detach()
        del logits, dz
        if track == "any":
            done, pred = confirm_fooled(model, x, y, success, pred, dtype, target)
            if bool(done.any()):
                at = done.nonzero().squeeze(1) if index is None else index[done]
                out_x[at], out_pred[at], out_success[at], out_step[at] = x[done], pred[done], True, step
                keep = ~done
                index = keep.nonzero().squeeze(1) if index is None else index[keep]
                if index.numel() == 0:
                    return AttackResult(out_x, out_pred, out_success, step=out_step)
                x, grad, x_nat = x[keep], grad[keep], x_nat[keep]
                if channels_last:
                    x, grad, x_nat = to_channels_last(x), to_channels_last(grad), to_channels_last(x_nat)
                y = y[keep]
                target = target[keep] if target is not None else None
                eps, alpha = _take(eps, keep), _take(alpha, keep)
        step_(x, grad, x_nat, alpha, eps)
        del grad
    x = x.detach()
    last_step = torch.where(success, steps, -1)
    if index is None:  # no sample left the batch early
        return AttackResult(x, pred, success, step=last_step)
    out_x[index], out_pred[index], out_success[index], out_step[index] = x, pred, success, last_step
    return AttackResult(out_x, out_pred, out_success, step=out_step)


def _per_sample(value: float | Tensor, name: str, n: int, device: torch.device) -> float | Tensor:
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return float(value)
        if value.shape != (n,):
            raise ValueError(f"{name} as a tensor must have shape [N]=[{n}], got {list(value.shape)}")
        return value.to(device=device, dtype=torch.float32)
    return float(value)


def perturb(model: nn.Module, x: Tensor, y: Tensor, *, norm: str | ThreatModel = "linf",
            eps: float | Tensor, alpha: float | Tensor, steps: int, loss: str = "ce",
            temperature: float = 1.0, random_start: bool = True, restarts: int = 1, target: Tensor | None = None,
            track: str = "final", amp: str | None = None, score: bool = True,
            start: Callable[[Tensor], Tensor] | None = None,
            loss_grad: Callable[[Tensor], Tensor] | None = None,
            ops: ModuleType = fused_ops) -> AttackResult:
    """Runs the attack on (x, y); x in [0, 1], float32. eps/alpha: numbers or [N] tensors.

    score=False skips the forward pass that scores the last iterate (training needs only x_adv):
    the result's pred and success are None. It needs track="final" and one restart.

    start: None (random_start decides: a random point of the eps-ball, or x itself), or a function
    x -> the first iterate. loss_grad: None (the `loss` at `temperature`), or a function
    logits -> dL/dlogits of the loss to ascend (float32 or the logits' dtype); it sees the whole
    batch every step, so it needs track="final" and one restart. ops: a backend's module
    (`cwr_fast.ops.backend_module`). norm: "linf", "l2" or a ThreatModel.

    target: None (untargeted) or [N] target classes. restarts: later restarts run only on the
    samples that earlier ones did not fool. Returns AttackResult (x_adv float32).
    """
    threat = threat_model(norm)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if track not in TRACKS:
        raise ValueError(f"track must be one of {TRACKS}, got {track!r}")
    if not score and (track != "final" or restarts != 1):
        raise ValueError("score=False needs track='final' and restarts=1 (both need the scores)")
    if loss_grad is not None and (track != "final" or restarts != 1):
        raise ValueError("loss_grad needs track='final' and restarts=1 (it sees the whole batch)")
    n = x.shape[0]
    eps = _per_sample(eps, "eps", n, x.device)
    alpha = _per_sample(alpha, "alpha", n, x.device)
    dtype = amp_dtype(amp)
    result = None
    todo = None  # positions not fooled yet (None: all)
    for restart in range(restarts):
        sub = (lambda t: t) if todo is None else (lambda t: t[todo] if isinstance(t, Tensor) else t)
        run = _run_once(model, sub(x), sub(y), None if target is None else sub(target), threat=threat,
                        eps=sub(eps), alpha=sub(alpha), steps=steps, loss=loss,
                        temperature=temperature, use_random_start=random_start, track=track,
                        dtype=dtype, score=score, start=start, loss_grad=loss_grad, ops=ops)
        if not score:
            return run
        if todo is None:
            result = run
            todo = (~run.success).nonzero().squeeze(1)
        else:
            result.x_adv[todo], result.pred[todo], result.success[todo] = run.x_adv, run.pred, run.success
            result.step[todo] = torch.where(run.success, run.step + restart * (steps + 1), -1)
            todo = todo[~run.success]
        if todo.numel() == 0 or (start is None and not random_start):
            break  # without random start, a restart would repeat the same deterministic run
    return result
