"""What every attack shares: the torchattacks-style base class (`atk = PGD(model, ...);
x_adv = atk(x, y)`), the checks of its inputs and settings, the model's attack mode (eval, no
parameter gradients, restored afterwards), float32 verdicts under mixed precision, and running
attacks one after another on the images no earlier one fooled."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType

import torch
from torch import Tensor, nn

from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.threat import ThreatModel, threat_model
from cwr_fast.runtime import amp_dtype, is_channels_last, to_channels_last

def check_pixel_range(x: Tensor) -> None:
    """Images must be finite and lie in [0, 1] (a NaN pixel fails every comparison, so it is
    named separately: it would otherwise count as fooled by any attack)."""
    if not x.numel():
        return
    low, high = (float(v) for v in torch.aminmax(x))  # NaN propagates, inf is an extreme: one pass
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("images hold NaN or infinite pixels: clean the data (cwr_fast attacks and "
                         "counts need finite images in [0, 1])")
    if low < 0.0 or high > 1.0:
        raise ValueError(f"images must lie in [0, 1] (normalisation belongs inside the model), got "
                         f"range [{low:.3g}, {high:.3g}]")


def check_inputs(x: Tensor, y: Tensor) -> None:
    """Clear errors for inputs an attack cannot work on."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"images must have a batch dimension, got shape {list(x.shape)}")
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be an int64 tensor of shape [{x.shape[0]}], got "
                         f"{(y.dtype, list(y.shape)) if isinstance(y, Tensor) else type(y).__name__}")
    check_pixel_range(x)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attacks need autograd: do not call them under torch.inference_mode()")


def check_budget(value, name: str, threat: ThreatModel | None = None) -> None:
    """A budget (eps, alpha): a finite number >= 0 or a [N] tensor of them; within the bound of
    `threat` when given (a Linf budget is at most 1)."""
    if isinstance(value, Tensor):
        if value.dim() > 1:
            raise ValueError(f"{name} must be a number or a [N] tensor, got shape {list(value.shape)}")
        low, high = float(value.min()) if value.numel() else 0.0, float(value.max()) if value.numel() else 0.0
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        low = high = float(value)
    else:
        raise TypeError(f"{name} must be a number or a [N] tensor, got {type(value).__name__}")
    if not low >= 0 or not math.isfinite(high):
        raise ValueError(f"{name} must be >= 0 and finite, got {low if not low >= 0 else high}")
    if threat is not None:
        threat.check_budget(name, high)


def check_count(value, name: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_member_settings(attack: str, eps, norm: str | ThreatModel, amp: str | None,
                          **counts: int) -> ThreatModel:
    """The settings of an AutoAttack member: norm linf or l2, one eps for the batch (a finite
    number >= 0, at most 1 for Linf), an autocast mode, and counts (steps, ...) that are ints >= 1.
    Returns the threat model of `norm`."""
    threat = threat_model(norm)
    check_budget(eps, "eps", threat)
    if isinstance(eps, Tensor):
        raise TypeError(f"{attack} takes one eps for the batch (a number)")
    for name, value in counts.items():
        check_count(value, name)
    amp_dtype(amp)
    return threat


# ---- the model during an attack -------------------------------------------------------------------

@contextlib.contextmanager
def attack_mode(model: nn.Module, channels_last: bool = False,
                eval_mode: bool = True) -> Iterator[nn.Module]:
    """Within the block: every module in eval mode and no parameter requires grad, so backward
    passes compute input gradients only; with channels_last, 4-D weights (convolutions) in the
    channels-last layout that oneDNN and cuDNN prefer. eval_mode=False leaves each module's
    train/eval flag as the caller set it (attacks on randomised models: a dropout left in train
    mode stays random, as the reference AutoAttack's version rand sees it). On exit, also on error,
    the caller's per-module training flags, per-parameter requires_grad flags and weight tensors
    are restored."""
    training = [(m, m.training) for m in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    relaid = []
    if eval_mode:
        model.eval()
    for p, _ in requires_grad:
        p.requires_grad_(False)
    if channels_last:
        for p in model.parameters():
            relaid_data = to_channels_last(p.data)
            if relaid_data is not p.data:
                relaid.append((p, p.data))
                p.data = relaid_data
    try:
        yield model
    finally:
        for p, original in relaid:
            p.data = original
        for m, flag in training:
            m.training = flag
        for p, flag in requires_grad:
            p.requires_grad_(flag)


def bf16_speedup(model: nn.Module, sample: torch.Tensor, channels_last: bool = True,
                 repeats: int = 7) -> float:
    """The float32 time over the bf16-autocast time of the attacks' unit of work on this device:
    one forward pass and one input-gradient backward pass of `model` in attack mode on `sample`
    (images in [0, 1]); medians of `repeats` after a warm-up, the two precisions interleaved so
    that a busy moment of the machine slows both. > 1: bf16 is faster."""
    import statistics
    import time

    sample = to_channels_last(sample) if channels_last else sample

    def seconds(dtype) -> float:
        x = sample.detach().requires_grad_(True)
        started = time.perf_counter()
        with torch.autocast(sample.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        torch.autograd.grad(logits.float().sum(), x)
        if sample.device.type == "cuda":
            torch.cuda.synchronize(sample.device)
        return time.perf_counter() - started

    with attack_mode(model, channels_last):
        seconds(None), seconds(torch.bfloat16)  # warm-up: oneDNN builds its primitives
        pairs = [(seconds(None), seconds(torch.bfloat16)) for _ in range(repeats)]
    return statistics.median(f32 for f32, _ in pairs) / statistics.median(bf16 for _, bf16 in pairs)


# ---- precision ------------------------------------------------------------------------------------
# Mixed precision may cost speed, never a rosier number. Under bf16 or fp16 autocast an attack
# steers by the reduced-precision model, but every verdict is float32's: a point counts as fooling
# only where the float32 model misclassifies it, and the best point a run found for an image it did
# not fool is re-checked in float32 before the image counts as robust.

@torch.no_grad()
def float32_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The float32 model's (no autocast) logits at x."""
    with torch.autocast(x.device.type, enabled=False):
        return model(x)


def float32_predict(model: nn.Module, x: Tensor) -> Tensor:
    """[N] classes the float32 model predicts at x."""
    return float32_logits(model, x).argmax(dim=1)


def confirm_fooled(model: nn.Module, x: Tensor, y: Tensor, fooled: Tensor, pred: Tensor,
                   dtype: torch.dtype | None, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(fooled, pred) as float32 sees them where the run is in reduced precision (dtype not None):
    the points the autocast model says fool are passed through the float32 model, and only those
    it misclassifies (as `target`, for a targeted attack) stay fooled, with its prediction.
    Without autocast: as given."""
    if dtype is None or not bool(fooled.any()):
        return fooled, pred
    at = fooled.nonzero().flatten()
    pred32 = float32_predict(model, x[at])
    fooled, pred = fooled.clone(), pred.clone()
    fooled[at] = pred32 == target[at] if target is not None else pred32 != y[at]
    pred[at] = pred32
    return fooled, pred


# ---- one attack after another ---------------------------------------------------------------------
# Attacks run one after another, each only on the samples that every earlier one failed on: the rule
# of AutoAttack for its members, and of APGD-T and FAB-T for their target classes and restarts. A
# sample counts as fooled if any run fools it.

Run = Callable[[Tensor, Tensor, Tensor], AttackResult]  # (x, y, index into the batch) -> result


def run_until_fooled(x: Tensor, y: Tensor, runs: Iterable[Run]) -> AttackResult:
    """Runs each of `runs` on the samples no earlier run fooled (their images, labels and positions
    in the batch). Returns the combined AttackResult with broken_by = the index of the run that
    fooled each sample first (-1: none; then x_adv is x and pred is y)."""
    n = x.shape[0]
    x_adv, pred = x.clone(), y.clone()
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    broken_by = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    todo = torch.arange(n, device=x.device)
    channels_last = is_channels_last(x)
    for k, run in enumerate(runs):
        if todo.numel() == 0:
            break
        x_todo = x[todo]
        result = run(to_channels_last(x_todo) if channels_last else x_todo, y[todo], todo)
        hit = result.success
        at = todo[hit]
        x_adv[at], pred[at], success[at], broken_by[at] = result.x_adv[hit], result.pred[hit], True, k
        todo = todo[~hit]
    return AttackResult(x_adv, pred, success, broken_by)


class Attack:
    """Base class. Subclasses implement `_run(x, y) -> AttackResult`.

    `atk(x, y)` returns the adversarial images; `atk.run(x, y)` the full AttackResult (with the
    prediction at x_adv and per-sample success) that the class-wise evaluator uses. During the
    attack the model is in eval mode with no parameter gradients; the caller's flags are restored.
    Attacks for randomised models (`keeps_model_mode` True: AutoAttack's version rand, APGD with
    eot > 1) leave each module's train/eval mode as the caller set it, as the reference does.

    What the class-wise engine reads from every attack: `broken_at_unit`, what the result says
    about when a sample was fooled ("member": `AttackResult.broken_by` indexes `member_names`;
    "step": `AttackResult.step` is the iterate; "fooled": neither); for an ensemble its
    `member_names` and `member_seconds` (seconds per member, summed over calls); `check_flags`
    (the automatic checks the attack ran, None if none); `keeps_model_mode`; `min_classes`.
    """

    name = "attack"
    keeps_model_mode = False
    min_classes = 2  # the fewest classes the attack can work with (spec.build refuses fewer)
    broken_at_unit = "fooled"
    member_seconds: Mapping[str, float] = MappingProxyType({})
    check_flags: list[dict] | None = None

    @property
    def member_names(self) -> list[str]:
        """The members of an ensemble, in the order they run (empty for a single attack)."""
        return []

    @classmethod
    def classes_needed(cls, **settings) -> int:
        """The fewest classes an attack of this class with these settings works with (its
        `min_classes`, known before it is built)."""
        return cls.min_classes

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    def set_normalization_used(self, mean, std) -> "Attack":
        """For a model that expects normalised inputs (torchattacks' convenience): the attack then
        runs on NormalizedModel(model, mean, std), so images stay in [0, 1] pixel space and the
        budget keeps its pixel units."""
        from cwr_fast.models.normalize import NormalizedModel
        from cwr_fast.runtime import model_device
        self.model = NormalizedModel(self.model, mean, std).to(model_device(self.model))
        return self

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.run(x, y).x_adv

    def run(self, x: Tensor, y: Tensor) -> AttackResult:
        check_inputs(x, y)
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        with attack_mode(self.model, eval_mode=not self.keeps_model_mode):
            if x.shape[0] == 0:
                empty = y.new_zeros(0)
                return AttackResult(x.clone(), empty, empty.bool())
            return self._run(x, y.detach())

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"

    def params(self) -> dict:
        return {}
