"""Attack specifications as text, for the CLI and the evaluator: "fgsm,pgd-20,tpgd-20:T=2,cw-30,aa".

One attack is `name[-steps][:key=value]...`:
  fgsm                         keys: eps, T, target
  pgd-STEPS    (Linf, CE)      keys: eps, alpha, restarts, rs (random start 0/1), T, target
  tpgd-STEPS   (Temperature)   same keys; T defaults to 1 (= pgd)
  cw-STEPS     (Linf, margin)  keys: eps, alpha, restarts, rs, target
  pgdl2-STEPS  (L2, CE)        keys: eps, alpha, restarts, rs, T, target; eps from --eps-l2 unless given
  aa           (AutoAttack, the reference protocol)  keys: eps, version (standard|plus|rand|malt),
                                                     norm (linf|l2), seed
  aa-ta        (torchattacks' AutoAttack, 10 iterations; for comparison)  same keys
AutoAttack's members on their own (STEPS: iterations, default 100; square: queries, default 5000):
  apgd-ce-STEPS, apgd-dlr-STEPS   keys: eps, norm, restarts, rho, eot
  apgd-t-STEPS                    keys: eps, norm, restarts, rho, targets (default 9)
  malt-STEPS                      keys: eps, norm, restarts, rho, targets (default 9), candidates
                                  (default 100): APGD-T toward the nearest linearised boundaries
  fab-STEPS, fab-t-STEPS          keys: eps, norm, restarts (fab-t: targets)
  square-QUERIES                  keys: eps, norm, restarts, p (the initial window fraction)
STEPS of the PGD family defaults to 10. Numbers may be fractions: eps=8/255. target: random,
least or next. An L2 attack (norm=l2) takes its eps from --eps-l2 unless given.
"""

from __future__ import annotations

import dataclasses
from argparse import ArgumentTypeError
from dataclasses import dataclass, field

from torch import nn

from cwr_fast.attacks.apgd import APGD, APGDT
from cwr_fast.attacks.attack import Attack
from cwr_fast.attacks.autoattack import VERSIONS, AutoAttack
from cwr_fast.attacks.fab import FAB, FABT
from cwr_fast.attacks.gradient import CW, FGSM, PGD, PGDL2, TARGET_MODES, TemperaturePGD
from cwr_fast.attacks.malt import MALT
from cwr_fast.attacks.square import Square
from cwr_fast.attacks.threat import L2, NORMS, ThreatModel, threat_model
from cwr_fast.attacks.torchattacks_aa import TorchattacksAutoAttack
from cwr_fast.errors import UsageError
from cwr_fast.options import MAX_SEED, number

_ITERATIVE_KEYS = {"eps", "alpha", "restarts", "rs", "T", "target"}
_AA_KEYS = {"eps", "version", "norm", "seed"}
KEYS = {
    "fgsm": {"eps", "T", "target"},
    "pgd": _ITERATIVE_KEYS,
    "tpgd": _ITERATIVE_KEYS,
    "cw": _ITERATIVE_KEYS - {"T"},
    "pgdl2": _ITERATIVE_KEYS,
    "aa": _AA_KEYS,
    "aa-ta": _AA_KEYS,
    "apgd-ce": {"eps", "norm", "restarts", "rho", "eot"},
    "apgd-dlr": {"eps", "norm", "restarts", "rho", "eot"},
    "apgd-t": {"eps", "norm", "restarts", "rho", "targets"},
    "malt": {"eps", "norm", "restarts", "rho", "targets", "candidates"},
    "fab": {"eps", "norm", "restarts"},
    "fab-t": {"eps", "norm", "restarts", "targets"},
    "square": {"eps", "norm", "restarts", "p"},
}
# AutoAttack's members as attacks of their own: (class, its fixed settings, keyword of STEPS)
MEMBERS = {
    "apgd-ce": (APGD, {"loss": "ce"}, "steps"),
    "apgd-dlr": (APGD, {"loss": "dlr"}, "steps"),
    "apgd-t": (APGDT, {}, "steps"),
    "malt": (MALT, {}, "steps"),
    "fab": (FAB, {}, "steps"),
    "fab-t": (FABT, {}, "steps"),
    "square": (Square, {}, "queries"),
}
_SPEC_KEYWORDS = {"restarts": "restarts", "rho": "rho", "eot": "eot", "targets": "targets", "p": "p_init",
                  "candidates": "candidates"}
_NO_STEPS = ("fgsm", "aa", "aa-ta")
_ALIASES = {"autoattack": "aa", "pgd_l2": "pgdl2", "l2pgd": "pgdl2", "cwlinf": "cw", "cw_linf": "cw",
            "autoattack-ta": "aa-ta"}
DEFAULT_STEPS = 10  # of the PGD family; AutoAttack's members have their own defaults


class AttackSpecError(UsageError):  # a ValueError too, as before: UsageError is one
    """An attack specification that cannot be understood."""


@dataclass(frozen=True)
class AttackSpec:
    """One parsed attack: name (fgsm, pgd, tpgd, cw, pgdl2, aa), steps, params, and its label."""

    name: str
    steps: int | None = None
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        head = self.name if self.steps is None else f"{self.name}-{self.steps}"
        return ":".join([head] + [f"{k}={_format(v)}" for k, v in self.params.items()])

    def with_params(self, **params) -> "AttackSpec":
        return dataclasses.replace(self, params={**self.params, **params})

    @property
    def threat(self) -> ThreatModel:
        """The threat model the attack searches: L2 for pgdl2, else its norm (default Linf)."""
        try:
            return threat_model("l2" if self.name == "pgdl2" else self.params.get("norm", "linf"))
        except ValueError as err:
            raise AttackSpecError(f"attack {self.label!r}: {err}") from err

    def eps(self, eps: float, eps_l2: float | None = None) -> float:
        """The budget this attack will use, given the global defaults."""
        if "eps" in self.params:
            return self.params["eps"]
        if isinstance(self.threat, L2):
            if eps_l2 is None:
                raise AttackSpecError(f"attack {self.label!r} is an L2 attack: give it its budget, e.g. "
                                      f"{self.label}:eps=0.5 (cwr_fast.evaluate also takes --eps-l2)")
            return eps_l2
        return eps

    def build(self, model: nn.Module, *, eps: float, eps_l2: float | None = None,
              track: str = "any", amp: str | None = None, num_classes: int = 10) -> Attack:
        """The attack object; eps/eps_l2 are the defaults for a spec that gives no eps."""
        atk = self._build(model, eps=eps, eps_l2=eps_l2, track=track, amp=amp, num_classes=num_classes)
        if num_classes < atk.min_classes:
            raise AttackSpecError(
                f"attack {self.label!r} needs at least {atk.min_classes} classes and the data has "
                f"{num_classes}: {_FEW_CLASSES.get(atk.min_classes, '')}")
        return atk

    def _build(self, model: nn.Module, *, eps, eps_l2, track, amp, num_classes) -> Attack:
        p = self.params
        budget = self.eps(eps, eps_l2)
        try:
            if self.name == "aa":
                return AutoAttack(model, eps=budget, norm=p.get("norm", "linf"),
                                  version=p.get("version", "standard"), seed=p.get("seed"), amp=amp)
            if self.name == "aa-ta":
                return TorchattacksAutoAttack(model, eps=budget, norm=p.get("norm", "linf"),
                                              version=p.get("version", "standard"),
                                              num_classes=num_classes, seed=p.get("seed", 0))
            if self.name in MEMBERS:
                cls, fixed, steps_keyword = MEMBERS[self.name]
                kwargs = {_SPEC_KEYWORDS[k]: v for k, v in p.items() if k in _SPEC_KEYWORDS}
                if self.steps is not None:
                    kwargs[steps_keyword] = self.steps
                return cls(model, eps=budget, norm=p.get("norm", "linf"), amp=amp, **fixed, **kwargs)
            common = {"target": p.get("target"), "track": track, "amp": amp}
            if self.name == "fgsm":
                return FGSM(model, eps=budget, temperature=p.get("T", 1.0), **common)
            cls = {"pgd": PGD, "tpgd": TemperaturePGD, "cw": CW, "pgdl2": PGDL2}[self.name]
            kwargs = {"alpha": p.get("alpha"), "steps": self.steps, "restarts": p.get("restarts", 1),
                      "random_start": bool(p.get("rs", 1)), **common}
            if self.name != "cw":
                kwargs["temperature"] = p.get("T", 1.0)
            return cls(model, eps=budget, **kwargs)
        except (ValueError, TypeError) as err:
            raise AttackSpecError(f"attack {self.label!r}: {err}") from err


_FEW_CLASSES = {  # what to run instead, by the number of classes an attack needs
    2: "with a single class there is nothing to misclassify an image as: check the labels of the "
       "data (every label is 0?)",
    3: "the DLR loss reads the 3rd largest logit; use apgd-ce (or aa with C >= 4)",
    4: "APGD-T's targeted DLR loss reads the 4th largest logit, and the reference AutoAttack cannot "
       "run either; use --attacks apgd-ce,fab-t,square (AutoAttack's members that work with "
       "2 or 3 classes)",
}


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parse_number(key: str, text: str, label: str) -> float:
    try:
        return number(text)
    except ArgumentTypeError as err:
        raise AttackSpecError(f"attack {label!r}: {key}={text!r} is {str(err).split(':')[0]}") from None


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone accepts '²'


def _parse_value(key: str, text: str, label: str):
    if key in ("eps", "alpha", "T", "rho", "p"):
        value = _parse_number(key, text, label)
        if key == "eps" and value < 0:
            raise AttackSpecError(f"attack {label!r}: eps must be >= 0, got {text}")
        if key in ("alpha", "T") and not value > 0:
            raise AttackSpecError(f"attack {label!r}: {key} must be > 0, got {text}")
        if key in ("rho", "p") and not 0 < value <= 1:
            raise AttackSpecError(f"attack {label!r}: {key} must lie in (0, 1], got {text}")
        return value
    if key in ("restarts", "seed", "rs", "eot", "targets", "candidates"):
        if not _is_count(text):
            raise AttackSpecError(f"attack {label!r}: {key} must be a non-negative integer, got {text!r}")
        value = int(text)
        if key == "seed" and value >= MAX_SEED:
            raise AttackSpecError(f"attack {label!r}: seed must be < 2**63, got {text}")
        if key in ("restarts", "eot", "targets", "candidates") and value < 1:
            raise AttackSpecError(f"attack {label!r}: {key} must be >= 1")
        if key == "rs" and value not in (0, 1):
            raise AttackSpecError(f"attack {label!r}: rs must be 0 or 1")
        return value
    if key == "target" and text not in TARGET_MODES:
        raise AttackSpecError(f"attack {label!r}: target must be one of {TARGET_MODES}, got {text!r}")
    if key == "version" and text not in VERSIONS:
        raise AttackSpecError(f"attack {label!r}: version must be one of {tuple(VERSIONS)}, got {text!r}")
    if key == "norm" and text not in NORMS:
        raise AttackSpecError(f"attack {label!r}: norm must be linf or l2, got {text!r}")
    return text


def _split_name(head: str) -> tuple[str, str]:
    """'apgd-t-50' -> ('apgd-t', '50'): the longest known (or aliased) name, then the steps."""
    parts = head.split("-")
    for k in range(len(parts), 0, -1):
        name = "-".join(parts[:k])
        name = _ALIASES.get(name, name)
        if name in KEYS:
            return name, "-".join(parts[k:])
    return _ALIASES.get(parts[0], parts[0]), "-".join(parts[1:])


def parse_attack(text: str) -> AttackSpec:
    """'tpgd-20:T=2' -> AttackSpec('tpgd', 20, {'T': 2.0})."""
    label = text.strip()
    head, *assignments = label.split(":")
    name, steps_text = _split_name(head.strip().lower())
    if name not in KEYS:
        raise AttackSpecError(f"unknown attack {label!r}; known attacks: {', '.join(KEYS)} "
                              "(e.g. fgsm,pgd-20,tpgd-20:T=2,cw-30,aa)")
    steps = None
    if name not in _NO_STEPS:
        if steps_text and (not _is_count(steps_text) or int(steps_text) < 1):
            raise AttackSpecError(f"attack {label!r}: steps must be a positive integer, got {steps_text!r}")
        if steps_text:
            steps = int(steps_text)
        elif name not in MEMBERS:
            steps = DEFAULT_STEPS
    elif steps_text:
        raise AttackSpecError(f"attack {label!r}: {name} takes no step count")
    params = {}
    for assignment in assignments:
        key, eq, value = assignment.strip().partition("=")
        key = "T" if key.lower() in ("t", "temperature") else key.lower()
        if not eq or not value:
            raise AttackSpecError(f"attack {label!r}: expected key=value, got {assignment!r}")
        if key not in KEYS[name]:
            raise AttackSpecError(f"attack {label!r}: unknown parameter {key!r} for {name}; "
                                  f"allowed: {', '.join(sorted(KEYS[name]))}")
        params[key] = _parse_value(key, value.strip(), label)
    return AttackSpec(name, steps, params)


def parse_attacks(text: str) -> list[AttackSpec]:
    """'fgsm,pgd-20,tpgd-20:T=2,cw-30,aa' -> [AttackSpec, ...]; labels must be distinct."""
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    if not parts:
        raise AttackSpecError("no attacks given (e.g. --attacks fgsm,pgd-20,cw-30)")
    specs = [parse_attack(p) for p in parts]
    labels = [s.label for s in specs]
    duplicates = sorted({lab for lab in labels if labels.count(lab) > 1})
    if duplicates:
        raise AttackSpecError(f"attacks listed twice: {duplicates}")
    return specs


def build_attacks(specs: str | list[AttackSpec], model: nn.Module, **kwargs) -> dict[str, Attack]:
    """{label: Attack} for the evaluator; kwargs as AttackSpec.build (eps, eps_l2, track, amp,
    num_classes)."""
    if isinstance(specs, str):
        specs = parse_attacks(specs)
    return {spec.label: spec.build(model, **kwargs) for spec in specs}


def check_attacks(specs: list[AttackSpec], *, eps: float, eps_l2: float | None = None,
                  num_classes: int = 10) -> None:
    """Builds every attack on a stand-in model, so that each setting an attack refuses (its
    budget, step size, temperature: the rules the kernels apply) is reported now, as one
    AttackSpecError, before any model, data or training step."""
    stand_in = nn.Sequential(nn.Flatten(), nn.Linear(1, num_classes))
    for spec in specs:
        spec.build(stand_in, eps=eps, eps_l2=eps_l2, num_classes=num_classes)
