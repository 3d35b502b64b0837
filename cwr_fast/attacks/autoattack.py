"""AutoAttack (Croce & Hein, ICML 2020) as the reference implementation runs it (fra31/auto-attack,
`AutoAttack.set_version`): the members of each version are declared below, each runs only on the
samples that every earlier member failed on, and a sample is robust only if all of them fail.

    standard  APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes), Square (5,000 queries)
    plus      APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square, APGD-T, FAB-T
    rand      APGD-CE and APGD-DLR with the gradient averaged over 20 passes (EOT), for randomised
              defenses
    malt      not the reference's: APGD-CE, MALT (3 targets by linearised boundary distance, 2
              restarts each; attacks/malt.py), FAB-T (1 target), a fast stand-in for standard
              (bench/bench_malt.py: FAB-T caught what MALT missed on the 100-class model)

APGD and FAB run 100 iterations; targeted members use min(9, C - 1) target classes. The members
are cwr_fast's own implementations on the fused ops. The result says, per sample, which member
fooled it first (`AttackResult.broken_by`, an index into `member_names`), for the report's
per-class breakdown.

The model's mode: standard and plus put every module in eval mode while they attack (a dropout or
batch-norm layer is then deterministic, and that deterministic model is what they evaluate);
rand leaves each module's train/eval mode as the caller set it, as the reference does (which never
touches it), so a dropout left in train mode stays random. rand also scores as the reference does
on a randomised model: its APGD runs every step, keeps the last fooling iterate, and counts an
image as fooled only if a fresh forward pass there misclassifies it (`cwr_fast.attacks.apgd`). In
every version the parameters' requires_grad flags are off during the attack, and all flags are
restored afterwards.

On its first call, AutoAttack runs the reference's automatic checks on the images it was given
(`cwr_fast.attacks.checks`: randomised outputs, except under rand; probabilities instead of logits;
a forward pass that calls autograd; zero DLR gradients; too few classes for the targets) and keeps
the flags in `check_flags`; the class-wise report lists them with what to do.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from cwr_fast.attacks.apgd import APGD, APGDT
from cwr_fast.attacks.attack import Attack, check_budget, run_until_fooled
from cwr_fast.attacks.checks import first_batch_flags
from cwr_fast.attacks.fab import FAB, FABT
from cwr_fast.attacks.malt import MALT
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.square import Square
from cwr_fast.attacks.threat import threat_model
from cwr_fast.runtime import amp_dtype

# version: ((member name, attack class, its settings beyond eps, norm and amp), ...), in order
VERSIONS = {
    "standard": (("apgd-ce", APGD, {"loss": "ce"}),
                 ("apgd-t", APGDT, {"targets": 9}),
                 ("fab-t", FABT, {"targets": 9}),
                 ("square", Square, {"queries": 5000})),
    "plus": (("apgd-ce", APGD, {"loss": "ce", "restarts": 5}),
             ("apgd-dlr", APGD, {"loss": "dlr", "restarts": 5}),
             ("fab", FAB, {"restarts": 5}),
             ("square", Square, {"queries": 5000}),
             ("apgd-t", APGDT, {"targets": 9}),
             ("fab-t", FABT, {"targets": 9})),
    "rand": (("apgd-ce", APGD, {"loss": "ce", "eot": 20}),
             ("apgd-dlr", APGD, {"loss": "dlr", "eot": 20})),
    "malt": (("apgd-ce", APGD, {"loss": "ce"}),
             ("malt", MALT, {"targets": 3, "restarts": 2}),
             ("fab-t", FABT, {"targets": 1})),
}


class AutoAttack(Attack):
    """AutoAttack, `version` standard, plus or rand (above), Linf or L2. seed: when given, every
    member starts from this seed on every call (as the reference seeds each member's `perturb`),
    and the global RNG is left untouched; otherwise the members draw from the global RNG in turn.
    amp: autocast of the model in every member."""

    name = "aa"
    broken_at_unit = "member"  # AttackResult.broken_by: the member that fooled a sample first

    def __init__(self, model: nn.Module, eps: float = 8 / 255, norm: str = "linf",
                 version: str = "standard", seed: int | None = None, amp: str | None = None):
        super().__init__(model)
        self.threat = threat_model(norm, what="AutoAttack norm")
        if version not in VERSIONS:
            raise ValueError(f"AutoAttack version must be one of {tuple(VERSIONS)}, got {version!r}")
        check_budget(eps, "eps", self.threat)
        amp_dtype(amp)
        self.eps, self.norm, self.version = float(eps), self.threat.name, version
        self.seed, self.amp = seed, amp
        self.member_seconds = dict.fromkeys(self.member_names, 0.0)  # summed over calls: where the time goes
        self.check_flags: list[dict] | None = None  # the reference's checks, on the first call's images
        self._members: dict[str, Attack] = {}

    @property
    def member_names(self) -> list[str]:
        return [name for name, _, _ in VERSIONS[self.version]]

    def member(self, name: str) -> Attack:
        """The member `name`, built on first use, on the model the attack holds then (so that
        `set_normalization_used` reaches the members too)."""
        if name not in self._members:
            _, cls, settings = next(m for m in VERSIONS[self.version] if m[0] == name)
            self._members[name] = cls(self.model, eps=self.eps, norm=self.threat, amp=self.amp, **settings)
        return self._members[name]

    @property
    def members(self) -> dict[str, Attack]:
        """Every member by name, in the order they run."""
        return {name: self.member(name) for name in self.member_names}

    def set_normalization_used(self, mean, std) -> "AutoAttack":
        super().set_normalization_used(mean, std)
        self._members = {}  # rebuilt on the normalised model
        return self

    def params(self) -> dict:
        return {"eps": self.eps, "norm": self.norm, "version": self.version, "seed": self.seed,
                "amp": self.amp}

    @property
    def keeps_model_mode(self) -> bool:
        return self.version == "rand"

    @property
    def min_classes(self) -> int:
        """The reference cannot run a version with fewer classes either (its DLR members fail)."""
        return max(cls.classes_needed(**settings) for _, cls, settings in VERSIONS[self.version])

    def _run(self, x: Tensor, y: Tensor) -> AttackResult:
        if self.check_flags is None:
            targets = {name: settings["targets"] for name, _, settings in VERSIONS[self.version]
                       if "targets" in settings}
            self.check_flags = first_batch_flags(self.model, x, y, randomised=self.version != "rand",
                                                 targets=targets)

        def member(name: str):
            def run(x_todo: Tensor, y_todo: Tensor, _) -> AttackResult:
                atk = self.member(name)
                started = time.perf_counter()
                try:
                    if self.seed is None:
                        return atk.run(x_todo, y_todo)
                    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                        torch.manual_seed(self.seed)
                        return atk.run(x_todo, y_todo)
                finally:
                    self.member_seconds[name] += time.perf_counter() - started
            return run

        return run_until_fooled(x, y, [member(name) for name in self.member_names])
