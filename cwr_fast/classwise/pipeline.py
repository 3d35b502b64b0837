"""One evaluation pipeline: settings declared once, then attacks -> engine -> report (and the
per-image outcomes). `python -m cwr_fast.evaluate`, `cwr_fast.evaluate_model` and the trainer
(its per-epoch check and its final report) all run it, as RobustBench's CLI only calls its
`benchmark()`; writing the files is a separate call (cwr_fast.report.write_report).

    settings = EvalSettings(attacks="fgsm,pgd-20", eps=8 / 255)
    result = Evaluation(settings, num_classes=10).run(model, loader, class_names, config={...})
    result.report, result.outcomes

The settings are declared with cwr_fast.options (help, group, type, check), so the evaluate CLI's
parser and its simple checks are derived from them, as training's are from TrainConfig.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from cwr_fast.attacks.spec import AttackSpec, check_attacks, parse_attack, parse_attacks
from cwr_fast.classwise.analysis import build_report, clean_accuracy_flags, sweep_section
from cwr_fast.classwise.counts import ClasswiseCounts
from cwr_fast.classwise.engine import BatchLog, evaluate_classwise
from cwr_fast.classwise.report_data import Report
from cwr_fast.classwise.stats import class_summary
from cwr_fast.options import at_least, budget_problem, integer, number, numbers, option
from cwr_fast.options import seed as seed_type
from cwr_fast.runtime import AMP_MODES

# ---- the defaults, each declared once ------------------------------------------------------------
DEFAULT_ATTACKS = "fgsm,pgd-20,cw-30"  # evaluate, evaluate_model, and training's CIFAR-like presets
# The training CLI's default run (PGD-AT on embedded MNIST, minutes on a CPU) ends with CW at 20
# steps: its final report has always used it, and changing it would change that run's report.
TRAINING_FINAL_ATTACKS = "fgsm,pgd-20,cw-20"
# evaluate_model has no dataset to ask for its customary budget (the CLI takes the checkpoint's
# training eps, else DatasetInfo.budget: resolve_eps): CIFAR's Linf budget, the field's usual one.
API_EPS = 8 / 255
TRACKS = ("any", "final")
ATTACKS, RUN = "attacks", "run"  # the evaluate CLI's option groups of these settings


def _eps(v):
    return None if v is None else budget_problem(v)


def _eps_l2(v):
    return None if v is None or v >= 0 else f"must be >= 0, got {v:g}"


def _repeated(values) -> str | None:
    twice = sorted({f"{v:g}" for v in values or [] if values.count(v) > 1})
    return f"gives {', '.join(twice)} more than once: give each value once" if twice else None


def _temperatures(v):
    if v and any(t <= 0 for t in v):
        return f"temperatures must be > 0, got {v}"
    return _repeated(v)


def _eps_values(v):
    if v and any(not 0 <= e <= 1 for e in v):
        return f"values must lie in [0, 1], got {v}"
    return _repeated(v)


@dataclass
class EvalSettings:
    """How a model is evaluated (not which model, nor on which data). amp: off (or None), bf16 or
    fp16 when the evaluation runs; the CLI resolves 'auto' first (runtime.choose_amp)."""

    attacks: str = option(DEFAULT_ATTACKS, "comma-separated, e.g. fgsm,pgd-20,tpgd-20:T=2,cw-30,aa",
                          ATTACKS)
    eps: float | None = option(None, "Linf budget in [0, 1] pixel units, e.g. 8/255 (default: the "
                               "checkpoint's training eps when it was written by cwr_fast.train, "
                               "else the dataset's customary one, DatasetInfo.budget)", ATTACKS,
                               type=number, check=_eps)
    eps_l2: float | None = option(None, "default budget of L2 attacks", ATTACKS, type=number,
                                  check=_eps_l2)
    track: str = option("any", "a sample is fooled if any iterate fools it (default), or only the "
                        "last", ATTACKS, choices=TRACKS, shown_default="")
    tpgd_sweep: list | None = option(None, "Temperature-PGD sweep over these temperatures", ATTACKS,
                                     type=numbers, metavar="T,T,...", check=_temperatures)
    eps_sweep: list | None = option(None, "eps sweep", ATTACKS, type=numbers, metavar="EPS,EPS,...",
                                    check=_eps_values)
    sweep_steps: int = option(20, "PGD steps of the sweeps", ATTACKS, type=integer,
                              check=at_least(1, optional=True))
    eps_sweep_attack: str | None = option(None, "the attack of the eps sweep instead of PGD, e.g. "
                                          "aa:version=malt (AutoAttack strength at every eps, at a "
                                          "fraction of its time)", ATTACKS, metavar="SPEC",
                                          shown_default="pgd-{sweep-steps}")
    batch_size: int = option(256, None, RUN, type=integer, shown_default="",
                             check=at_least(1, optional=True))
    amp: str | None = option("off", "autocast dtype of the model during attacks, images stay float32 "
                             "(default %(default)s; auto: bf16 on CUDA, and on a CPU with AMX or "
                             "AVX-512 BF16 where it measures faster on the model; an image counts as "
                             "robust only where float32 agrees)", RUN, choices=AMP_MODES,
                             shown_default="")
    channels_last: bool = option(True, "keep the weights' layout (default: channels-last, faster "
                                 "convolutions)", RUN, flag="--no-channels-last", action="store_false",
                                 shown_default="")
    seed: int = option(0, None, RUN, type=seed_type, shown_default="")
    progress: bool = option(True, None, RUN, flag="--no-progress", action="store_false",
                            shown_default="")
    keep_adv: bool = option(False, "with --save-adv: the adversarial images too (float32: 4 bytes "
                            "per pixel and attack)", RUN, flag="--save-adv-images",
                            action="store_true", shown_default="")

    @classmethod
    def of(cls, values) -> "EvalSettings":
        """The settings among `values` (a namespace or an object with these attributes)."""
        return cls(**{f.name: getattr(values, f.name) for f in dataclasses.fields(cls)})


def resolve_eps(given: float | None, train_config: dict | None, info) -> tuple[float, str]:
    """(eps, where it comes from): the given one, else the checkpoint's training eps, else the
    dataset's customary one (DatasetInfo.budget)."""
    if given is not None:
        return given, "--eps"
    if train_config is not None and isinstance(train_config.get("eps"), (int, float)):
        return float(train_config["eps"]), "the checkpoint's training config"
    return info.budget.eps, f"the default of {info.name}"


@dataclass
class EvalResult:
    report: Report
    attacks: dict                 # {label: Attack} of the main evaluation
    counts: ClasswiseCounts
    sweep_outcomes: dict          # {"temperature": PerImageOutcomes or None}

    @property
    def outcomes(self):
        """What each attack did to each image (PerImageOutcomes), or None."""
        return getattr(self.counts, "outcomes", None)


class Evaluation:
    """An evaluation's settings bound to a number of classes and a budget. log_for(title): the
    BatchLog that keeps the batches of one part (attacks, temperature sweep, eps sweep) of an
    interruptible evaluation, or None; say(line): where the parts are announced (or None)."""

    def __init__(self, settings: EvalSettings, *, num_classes: int, eps: float | None = None,
                 distributed: bool = False, device=None,
                 log_for: Callable[[str], BatchLog | None] | None = None,
                 say: Callable[[str], None] | None = None):
        self.settings, self.num_classes = settings, num_classes
        self.eps = settings.eps if eps is None else eps
        self.amp = None if settings.amp in (None, "off") else settings.amp
        self.distributed, self.device = distributed, device
        self.log_for, self.say = log_for, say
        self.specs = parse_attacks(settings.attacks)
        base = {"T": parse_attack(f"tpgd-{settings.sweep_steps}"),
                "eps": parse_attack(settings.eps_sweep_attack or f"pgd-{settings.sweep_steps}")}
        self.sweep_labels = {key: spec.label for key, spec in base.items()}
        self.sweeps = {"T": [base["T"].with_params(T=t) for t in settings.tpgd_sweep or []],
                       "eps": [base["eps"].with_params(eps=e) for e in settings.eps_sweep or []]}

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.specs]

    def check(self) -> None:
        """Every attack setting, before any attack runs (AttackSpecError)."""
        check_attacks(self.specs + self.sweeps["T"] + self.sweeps["eps"], eps=self.eps,
                      eps_l2=self.settings.eps_l2, num_classes=self.num_classes)

    def build(self, model: nn.Module, specs: list[AttackSpec]) -> dict:
        return {s.label: s.build(model, eps=self.eps, eps_l2=self.settings.eps_l2,
                                 track=self.settings.track, amp=self.amp,
                                 num_classes=self.num_classes) for s in specs}

    def counts(self, model: nn.Module, batches: Iterable, specs: list[AttackSpec], title: str,
               per_image: bool) -> tuple[dict, ClasswiseCounts]:
        """({label: Attack}, the engine's counts) of one part of the evaluation."""
        attacks = self.build(model, specs)
        log = self.log_for(title) if self.log_for is not None else None
        if self.say is not None:
            kept = f" ({len(log)} batches from the interrupted run)" if log is not None and len(log) else ""
            self.say(f"{title}: {', '.join(attacks)}{kept}")
        s = self.settings
        return attacks, evaluate_classwise(
            model, batches, self.num_classes, attacks, amp=self.amp, seed=s.seed,
            distributed=self.distributed, progress=s.progress, channels_last=s.channels_last,
            device=self.device, per_image=per_image, keep_adv=s.keep_adv, log=log)

    def run(self, model: nn.Module, batches: Iterable, class_names, *, config: dict | None = None,
            dataset: dict | None = None, recorded_clean: tuple | None = None) -> EvalResult:
        """Every attack, then the sweeps, on `batches`; the report of them. config: the report's
        configuration section (its "seconds" is added); recorded_clean: (the clean accuracy the
        checkpoint recorded or None, where it comes from), for clean_accuracy_flags."""
        s = self.settings
        started = time.perf_counter()
        attacks, counts = self.counts(model, batches, self.specs, "attacks", per_image=True)
        sweeps, t_outcomes = {"temperature": None, "eps": None}, None
        if s.tpgd_sweep:  # per image too: findings pick T per class on some images, test it on others
            _, t_counts = self.counts(model, batches, self.sweeps["T"], "temperature sweep", True)
            sweeps["temperature"] = sweep_section(t_counts, "T", s.tpgd_sweep, self.sweep_labels["T"],
                                                  class_names)
            t_outcomes = t_counts.outcomes
        if s.eps_sweep:
            _, e_counts = self.counts(model, batches, self.sweeps["eps"], "eps sweep", False)
            sweeps["eps"] = sweep_section(e_counts, "eps", s.eps_sweep, self.sweep_labels["eps"],
                                          class_names)
        config = {**(config or {}), "seconds": round(time.perf_counter() - started, 3)}
        flags = [] if recorded_clean is None else clean_accuracy_flags(counts, *recorded_clean)
        report = build_report(counts, class_names, attacks=attacks, config=config, dataset=dataset,
                              temperature_sweep=sweeps["temperature"], eps_sweep=sweeps["eps"],
                              flags=flags)
        return EvalResult(report, attacks, counts, {"temperature": t_outcomes})




# ---- the per-epoch check: the same engine, and the report's per-class summary ----------------------

def validation_record(counts: ClasswiseCounts, label: str, class_names) -> dict:
    """The per-class numbers of a check with one attack `label`: counts, accuracies, and the mean
    and worst class from stats.class_summary (the report's per-class summary)."""
    clean = [_num(v) for v in counts.clean_accuracy().tolist()]
    robust = [_num(v) for v in counts.robust_accuracy(label).tolist()]
    nan = float("nan")
    clean_summary = class_summary([nan if v is None else v for v in clean], class_names)
    robust_summary = class_summary([nan if v is None else v for v in robust], class_names)
    worst = robust_summary["worst"]
    worst_class = 0 if worst is None else worst["class"]
    return {"n": counts.n.tolist(), "clean_correct": counts.clean_correct.tolist(),
            "robust": counts.robust(label).tolist(), "clean_acc": clean, "robust_acc": robust,
            "clean_mean": clean_summary["mean"], "robust_mean": robust_summary["mean"],
            "robust_worst": None if worst is None else worst["value"], "worst_class": worst_class,
            "worst_class_name": class_names[worst_class]}


def validate(evaluation: Evaluation, model: nn.Module, batches: Iterable,
             class_names) -> tuple[ClasswiseCounts, dict]:
    """(counts, record) of `evaluation`'s first attack on `batches`: the trainer's per-epoch check
    (what a defense reads through RunContext.validate). record: validation_record, with the
    attack, eps and seconds."""
    start = time.perf_counter()
    label = evaluation.labels[0]
    _, counts = evaluation.counts(model, batches, evaluation.specs[:1], "validation", per_image=False)
    return counts, {"attack": label, "eps": evaluation.eps,
                    **validation_record(counts, label, class_names),
                    "seconds": time.perf_counter() - start}


def _num(v) -> float | None:
    v = float(v)
    return None if v != v else v


__all__ = ["API_EPS", "DEFAULT_ATTACKS", "TRAINING_FINAL_ATTACKS", "EvalResult", "EvalSettings",
           "Evaluation", "resolve_eps", "validate", "validation_record"]
