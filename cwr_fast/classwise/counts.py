"""The class-wise counts of one evaluation: integer tensors only, so that shards of the data can be
evaluated apart and summed (`all_reduce`) to exactly the counts of one process."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class ClasswiseCounts:
    """Counts over the evaluated images, for K attacks and C classes (all int64 unless noted).

    clean_confusion [C, C]: row = true class, column = prediction on the clean image.
    adv_confusion [K, C, C]: column = prediction on attack k's adversarial image; images the model
        already misclassifies are not attacked, their clean prediction stands. The diagonal is the
        number of robust images per class, each row sums to the images of that class.
    gain [K, K, C]: gain[i, j, c] = images of class c robust to attack i but not to attack j.
    worst_confusion [C, C]: worst case over the attacks (robust only if every attack fails);
        column = prediction under the first attack, in order, that fools the model.
    members {attack: [member names]}: for ensembles (AutoAttack) among the attacks.
    member_broken {attack: [M, C]}: images of class c that member m of the ensemble fooled first.
    seconds [K] (float64): time spent in each attack (summed over batches; max over processes).
    clean_seconds (float): time of the clean forward passes.
    outcomes: the per-image outcomes (classwise.outcomes.PerImageOutcomes) when asked for.
    """

    attack_names: list[str]
    num_classes: int
    clean_confusion: Tensor = None
    adv_confusion: Tensor = None
    gain: Tensor = None
    worst_confusion: Tensor = None
    seconds: Tensor = None
    clean_seconds: float = 0.0
    members: dict = field(default_factory=dict)
    member_broken: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    outcomes: object = None  # PerImageOutcomes, when the evaluation was asked for them

    def __post_init__(self):
        k, c = len(self.attack_names), self.num_classes
        if len(set(self.attack_names)) != k:
            raise ValueError(f"attack names must be distinct, got {self.attack_names}")
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.int64)  # noqa: E731
        if self.clean_confusion is None:
            self.clean_confusion = zeros(c, c)
        if self.adv_confusion is None:
            self.adv_confusion = zeros(k, c, c)
        if self.gain is None:
            self.gain = zeros(k, k, c)
        if self.worst_confusion is None:
            self.worst_confusion = zeros(c, c)
        if self.seconds is None:
            self.seconds = torch.zeros(k, dtype=torch.float64)
        unknown = set(self.members) - set(self.attack_names)
        if unknown:
            raise ValueError(f"members given for attacks that were not evaluated: {sorted(unknown)}")
        for attack, names in self.members.items():
            if attack not in self.member_broken:
                self.member_broken[attack] = zeros(len(names), c)

    # ---- derived quantities ----
    def index(self, attack: str) -> int:
        try:
            return self.attack_names.index(attack)
        except ValueError:
            raise KeyError(f"no attack {attack!r}; evaluated: {self.attack_names}") from None

    @property
    def n(self) -> Tensor:
        """[C] images per class."""
        return self.clean_confusion.sum(dim=1)

    @property
    def total(self) -> int:
        return int(self.clean_confusion.sum())

    @property
    def clean_correct(self) -> Tensor:
        return self.clean_confusion.diagonal()

    def robust(self, attack: str) -> Tensor:
        """[C] images per class that attack `attack` does not fool (and that are clean-correct)."""
        return self.adv_confusion[self.index(attack)].diagonal()

    @property
    def worst_robust(self) -> Tensor:
        return self.worst_confusion.diagonal()

    def clean_accuracy(self) -> Tensor:
        """[C] float64, NaN for classes without images."""
        return _ratio(self.clean_correct, self.n)

    def robust_accuracy(self, attack: str) -> Tensor:
        """[C] float64 robust accuracy per class, NaN for classes without images."""
        return _ratio(self.robust(attack), self.n)

    # ---- combining ----
    def _int_tensors(self) -> list[Tensor]:
        return [self.clean_confusion, self.adv_confusion, self.gain, self.worst_confusion] + \
            [self.member_broken[attack] for attack in sorted(self.members)]

    def add_(self, other: "ClasswiseCounts") -> "ClasswiseCounts":
        if other.attack_names != self.attack_names or other.num_classes != self.num_classes \
                or other.members != self.members:
            raise ValueError("cannot add counts of different attacks or class counts")
        for mine, theirs in zip(self._int_tensors(), other._int_tensors()):
            mine += theirs.to(mine.device)
        self.seconds += other.seconds
        self.clean_seconds += other.clean_seconds
        return self

    def all_reduce(self, group=None) -> "ClasswiseCounts":
        """Sums the counts over the processes of `group` (in place; timings: the maximum)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        backend = dist.get_backend(group)
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        tensors = self._int_tensors()
        flat = torch.cat([t.flatten() for t in tensors]).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t).cpu())
            offset += t.numel()
        times = torch.cat([self.seconds, torch.tensor([self.clean_seconds], dtype=torch.float64)]).to(device)
        dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
        times = times.cpu()
        self.seconds, self.clean_seconds = times[:-1].clone(), float(times[-1])
        return self

    def to_dict(self) -> dict:
        """Plain lists, for saving and for comparing runs."""
        return {"attack_names": list(self.attack_names), "num_classes": self.num_classes,
                "clean_confusion": self.clean_confusion.tolist(),
                "adv_confusion": self.adv_confusion.tolist(), "gain": self.gain.tolist(),
                "worst_confusion": self.worst_confusion.tolist(),
                "members": {a: list(names) for a, names in self.members.items()},
                "member_broken": {a: t.tolist() for a, t in self.member_broken.items()}}


def _ratio(k: Tensor, n: Tensor) -> Tensor:
    k, n = k.to(torch.float64), n.to(torch.float64)
    return torch.where(n > 0, k / n.clamp_min(1), torch.full_like(n, float("nan")))
