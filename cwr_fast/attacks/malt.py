"""MALT (Melamed, Yehudai and Shamir, *MALT Powers Up Adversarial Attacks*, NeurIPS 2024): targeted
APGD toward the classes whose decision boundary the model, linearised at the clean image, puts
nearest, instead of APGD-T's most likely classes.

For an image x of class y and a class t, the linearised model reaches the y/t boundary at the
distance (z_y - z_t) / ||grad_x (z_y - z_t)||_*, where ||.||_* is the dual norm of the threat
model (L1 for Linf, L2 for L2) and z the logits at x. MALT scores the `candidates` most likely
classes other than y once, at the clean image, and runs APGD-T's targeted APGD (the targeted DLR
loss, 100 steps) toward the `targets` nearest in turn, each only on the images no earlier target
fooled. The defaults are the authors' (github.com/odeliamel/MALT): 100 candidates (every class of
CIFAR-10 and CIFAR-100, the top 100 of ImageNet), 9 targets. The targeting costs one forward and
`candidates` backward passes per batch (about one APGD run), the attack k targeted runs where
APGD-T runs 9.

    atk = MALT(model, eps=8/255, targets=3)
    result = atk.run(x, y)
    result.broken_by          # 0: the nearest target fooled the image, 1: the second, ...; -1: none

Two choices of ours: the distances are taken from the label's logit (the authors' code takes the
predicted class's, the same on the clean-correct images the class-wise engine attacks), and a class
whose logit gap has a zero gradient ranks last (no linear step reaches it; the authors' code ranks
it first).
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch import Tensor, nn

from cwr_fast.attacks.apgd import APGDT
from cwr_fast.attacks.attack import check_count
from cwr_fast.attacks.threat import ThreatModel
from cwr_fast.runtime import amp_dtype, autocast

_TINY = 1e-12  # a zero gradient: the class ranks last


def boundary_distances(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, candidates: int,
                       amp: str | None = None) -> tuple[Tensor, Tensor]:
    """(classes, distances), both [N, a] with a = min(candidates, C - 1): the a most likely classes
    other than y (by clean logit, most likely first) and the distance of each one's boundary with y
    under the model linearised at x, (z_y - z_t) / ||grad_x (z_y - z_t)||_*. One forward pass and
    a backward passes, each over the whole batch (the images' gradients do not mix). FAB's
    untargeted step picks its boundary by the same distance (fab._boundary_gradients), but keeps
    every class's gradient for its projection; here only their norms are kept, so that the top 100
    of ImageNet's 1000 classes fit in memory."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), autocast(x.device, amp_dtype(amp)):
        logits = model(x)
    z = logits.float()
    a = min(candidates, z.shape[1] - 1)
    others = z.detach().scatter(1, y[:, None], float("-inf"))
    classes = others.topk(a, dim=1).indices
    gaps = z.gather(1, y[:, None]) - z.gather(1, classes)  # [N, a], differentiable
    distances = torch.empty_like(gaps, requires_grad=False)
    for j in range(a):
        (grad,) = torch.autograd.grad(gaps[:, j].sum(), x, retain_graph=j < a - 1)
        distances[:, j] = gaps[:, j].detach() / threat.dual_norm(grad.float()).clamp_min(_TINY)
    return classes, distances


def malt_targets(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, targets: int,
                 candidates: int = 100, amp: str | None = None) -> Tensor:
    """[N, min(targets, a)]: each image's target classes, nearest boundary first (ties: the more
    likely class first)."""
    classes, distances = boundary_distances(model, x, y, threat, candidates, amp)
    order = distances.argsort(dim=1, stable=True)[:, :targets]
    return classes.gather(1, order)


class MALT(APGDT):
    """MALT (module docstring): targeted APGD toward the `targets` classes of nearest linearised
    boundary among the `candidates` most likely. The result's broken_by says which target rank
    fooled each image (member_names "target-1", ...), for the report's per-class breakdown."""

    name = "malt"
    broken_at_unit = "member"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf", steps: int = 100,
                 targets: int = 9, candidates: int = 100, restarts: int = 1, rho: float = 0.75,
                 amp: str | None = None):
        super().__init__(model, eps=eps, norm=norm, steps=steps, targets=targets, restarts=restarts,
                         rho=rho, amp=amp)
        check_count(candidates, "candidates")
        self.candidates = candidates
        self.member_seconds = dict.fromkeys(self.member_names, 0.0)  # target-1's include the targeting

    @property
    def member_names(self) -> list[str]:
        return [f"target-{rank}" for rank in range(1, self.targets + 1)]

    def params(self) -> dict:
        return {**super().params(), "candidates": self.candidates}

    def target_classes(self, x: Tensor, y: Tensor) -> Tensor:
        started = time.perf_counter()
        chosen = malt_targets(self.model, x, y, self.threat, self.targets, self.candidates, self.amp)
        self.member_seconds["target-1"] += time.perf_counter() - started
        return chosen

    @contextlib.contextmanager
    def _timed(self, rank: int):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.member_seconds[f"target-{rank + 1}"] += time.perf_counter() - started
