"""The extension point for class-wise defenses (the paper's reweighting/re-margining,
FRL, CFA, WAT, ...). Nothing here changes training by itself: the default policy "none" is
plain training with the method's uniform budget and weights.

A defense is a `ClasswisePolicy` subclass registered under a name; `--defense NAME` picks it and
`--defense-opt KEY=VALUE` (repeatable) passes keyword arguments to its constructor. Its contract
with the trainer is this file: the hooks below (each a no-op by default; override what you need)
and `RunContext`, all a defense may read of the run. The trainer calls, in this order:

    policy = build_defense(name, options, method=method, num_classes=C, eps=eps, alpha=alpha,
                           beta=beta)        # checks the options and the method (check_method):
                                             # an incompatible pair fails at start-up
    model = policy.modify_model(model)       # once, before the optimiser and before a resume loads
                                             # weights: e.g. add a per-class logit bias
    avg = policy.averaged_model(model)       # once: a module to validate, keep and report instead
                                             # of the training weights (CFA's FAWA), or None
    every step:  batch = policy.batch_policy(y, eps_t, alpha_t, beta)   # per-sample knobs
    every epoch: policy.before_validation(epoch, context)
                 log = policy.update(epoch, val_counts, train_counts, context)  # re-estimate from
                                             # the held-out validation counts (ClasswiseCounts of the
                                             # per-epoch PGD check, None without one) and the
                                             # epoch's training counts; returns what to log
    checkpoints: policy.state_dict() / policy.load_state_dict(state)

The per-class state lives in three [C] tensors that `batch_policy` indexes by label:
class_weight (loss weight), class_eps_scale (eps_y = scale_y * eps, alpha scaled alike) and
class_beta (TRADES/MART regulariser weight). Subclasses set them in `update`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cwr_fast.errors import ConfigError
from cwr_fast.methods import BatchPolicy, Method


@dataclass(frozen=True)
class RunContext:
    """What a defense may read of the training run (the trainer builds it once)."""

    method: Method                # the training method: its beta, steps, per-sample loss
    eps: float                    # the run's budget and step (before any ramp or class scale)
    alpha: float
    num_classes: int
    device: torch.device
    amp: str | None               # autocast mode of the run (None: float32)
    seed: int                     # the run's seed (derive per-epoch seeds from it)
    val_attack: str               # the label of the per-epoch check's attack in val_counts
    val_loader: object            # the held-out validation batches (never trained on)
    model: nn.Module              # the training weights
    eval_model: nn.Module         # the module the trainer validates, keeps as best and reports
    validate: Callable            # validate(model) -> (ClasswiseCounts, record): the per-epoch
                                  # check, the evaluation pipeline's (classwise.pipeline.validate)


class ClasswisePolicy:
    """The identity policy ("none"): uniform weights, budget and beta."""

    name = "none"

    def __init__(self, num_classes: int, eps: float, alpha: float, beta: float | None, **options):
        if options:
            raise ConfigError(f"defense {self.name!r} takes no options, got {sorted(options)}")
        self.num_classes = num_classes
        self.eps, self.alpha, self.beta = eps, alpha, beta
        self.class_weight: Tensor | None = None      # [C] or None (uniform)
        self.class_eps_scale: Tensor | None = None   # [C] or None (uniform)
        self.class_beta: Tensor | None = None        # [C] or None (the method's beta)

    def check_method(self, method: str) -> None:
        """Hook: raise a ConfigError if this defense cannot work with the training method."""

    def modify_model(self, model: nn.Module) -> nn.Module:
        """Hook to change the model (e.g. the final layer) before training starts."""
        return model

    def averaged_model(self, model: nn.Module) -> nn.Module | None:
        """Hook: a module the trainer validates, keeps as best and reports instead of the training
        weights (updated by the defense, its weights in state_dict()), or None."""
        return None

    def before_validation(self, epoch: int, context: RunContext) -> None:
        """Hook at the end of every epoch, before its validation."""

    def batch_policy(self, y: Tensor, eps: float, alpha: float, beta: float | None) -> BatchPolicy:
        weight = None if self.class_weight is None else self.class_weight.to(y.device)[y]
        if self.class_eps_scale is not None:
            scale = self.class_eps_scale.to(y.device, torch.float32)[y]
            eps_b, alpha_b = scale * eps, scale * alpha
        else:
            eps_b, alpha_b = eps, alpha
        beta_b = beta if self.class_beta is None else self.class_beta.to(y.device)[y]
        return BatchPolicy(eps=eps_b, alpha=alpha_b, weight=weight, beta=beta_b)

    def update(self, epoch: int, val_counts, train_counts: dict,
               context: RunContext | None = None) -> dict:
        """Re-estimate the per-class state after epoch `epoch`. val_counts: ClasswiseCounts of the
        validation check (None on epochs without one); train_counts: {'n': [C], 'correct': [C]}
        int64 tensors of the epoch's training inputs; context: the run (None in unit tests of a
        policy alone). Returns what to log in metrics.jsonl."""
        return {}

    def state_dict(self) -> dict:
        return {"name": self.name, "class_weight": self.class_weight,
                "class_eps_scale": self.class_eps_scale, "class_beta": self.class_beta}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint was trained with defense {state.get('name')!r}, "
                             f"this run uses {self.name!r}")
        self.class_weight = state.get("class_weight")
        self.class_eps_scale = state.get("class_eps_scale")
        self.class_beta = state.get("class_beta")

    def describe(self) -> dict:
        return {"name": self.name}


# ---- option checks shared by the defenses (a bad option is a ConfigError: one line, exit 2) ----

def float_option(defense: str, name: str, value, *, low=None, high=None, low_open=False,
                 high_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"defense {defense!r}: option {name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"defense {defense!r}: option {name} must be {'>' if low_open else '>='} "
                          f"{low:g}, got {value:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"defense {defense!r}: option {name} must be {'<' if high_open else '<='} "
                          f"{high:g}, got {value:g}")
    return value


def int_option(defense: str, name: str, value, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"defense {defense!r}: option {name} must be an int >= {low}, got {value!r}")
    return value


def bool_option(defense: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"defense {defense!r}: option {name} must be true or false, got {value!r}")
    return value


def choice_option(defense: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(f"defense {defense!r}: option {name} must be one of {', '.join(choices)}, "
                          f"got {value!r}")
    return value


def check_options(defense: str, options: dict, allowed) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"defense {defense!r} has no option(s) {', '.join(unknown)}; "
                          f"options: {', '.join(sorted(allowed))}")


DEFENSES: dict[str, type[ClasswisePolicy]] = {"none": ClasswisePolicy}


def register_defense(cls: type[ClasswisePolicy]) -> type[ClasswisePolicy]:
    """Class decorator: makes `--defense cls.name` available."""
    if not (isinstance(cls, type) and issubclass(cls, ClasswisePolicy)):
        raise TypeError("register_defense expects a ClasswisePolicy subclass")
    DEFENSES[cls.name] = cls
    return cls


def build_defense(name: str, options: dict, method: Method | None = None,
                  **kwargs) -> ClasswisePolicy:
    """The policy `name` with its options; with `method`, also checks that they fit together."""
    if name not in DEFENSES:
        raise ConfigError(f"unknown defense {name!r}; available: {', '.join(sorted(DEFENSES))}")
    try:
        policy = DEFENSES[name](**kwargs, **options)
    except TypeError as err:
        raise ConfigError(f"defense {name!r}: {err}") from None
    if method is not None:
        policy.check_method(method.name)
    return policy


def parse_options(items: list[str] | None) -> dict:
    """['lr=0.1', 'mode=weights'] -> {'lr': 0.1, 'mode': 'weights'}."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--defense-opt expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


PolicyFactory = Callable[..., ClasswisePolicy]
