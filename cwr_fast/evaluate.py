"""`python -m cwr_fast.evaluate`: class-wise robustness of a model under a set of attacks.

    python -m cwr_fast.evaluate --dataset mnist --arch small_cnn --checkpoint model.pt \\
        --attacks fgsm,pgd-20,tpgd-20:T=2,cw-30 --eps 0.3 --tpgd-sweep 0.1,0.5,1,2,5,10 \\
        --eps-sweep 0.1,0.2,0.3 --limit 1000 --out reports/mnist

Writes report.json, per_class.csv, confusion CSVs, report.md and plots to --out (atomically) and
prints a one-screen summary. Under torchrun, batches are sharded over the processes and the
per-class counts all-reduced; the result equals a single process exactly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from cwr_fast import runtime
from cwr_fast.attacks.model_mode import bf16_speedup
from cwr_fast.attacks.spec import AttackSpecError, check_attacks, parse_attack, parse_attacks
from cwr_fast.classwise.analysis import build_report, clean_accuracy_flags, sweep_section
from cwr_fast.classwise.batch_log import BatchLog
from cwr_fast.classwise.engine import evaluate_classwise
from cwr_fast.cli_types import (ConfigError, budget_problem, fmt_budget, integer, interrupted, number,
                                numbers, usage_error)
from cwr_fast.defenses.calibration import OPTIONS_GROUP, CalibrationConfig, calibrate
from cwr_fast.models.calibration import ClasswiseCalibration, calibrated_num_classes, is_calibrated_state
from cwr_fast.models.checkpoint import CheckpointMismatchError, load_weights, read_checkpoint
from cwr_fast.models.registry import build_model, call_factory, canonical_name, load_factory
from cwr_fast.models.sources import build_from_source, is_source_spec, parse_source_spec
from cwr_fast.options import add_options, check_options, given_options
from cwr_fast.outputs import check_output_dir, check_output_file, record_written_file, write_text
from cwr_fast.report import REPORT_KIND, format_summary, write_report

DEFAULT_ATTACKS = "fgsm,pgd-20,cw-30"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cwr_fast.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--arch", help="zoo architecture: small_cnn, preact_resnet18, wrn34_10, resnet50")
    g.add_argument("--model", metavar="SPEC",
                   help="any model: FILE.py:FACTORY, FACTORY(num_classes=, in_channels=, mean=, std=) "
                        "-> nn.Module taking [0, 1] images; or a published one, never downloaded: "
                        "robustbench:NAME (RobustBench's zoo, weights from --model-dir; "
                        "robustbench:DATASET/NAME for an npz:/folder: copy of cifar10, cifar100 or "
                        "imagenet), timm:NAME or torchvision:NAME (the architecture, weights from "
                        "--checkpoint)")
    g.add_argument("--threat-model", choices=("Linf", "L2", "corruptions"),
                   help="RobustBench's leaderboard of a robustbench:NAME model (default Linf)")
    g.add_argument("--model-dir", metavar="DIR",
                   help="RobustBench's weights folder, in its layout DIR/<dataset>/<threat model>/"
                        "<NAME>.pt, as robustbench.utils.load_model(NAME, model_dir=DIR) saves them "
                        "(default ./models, RobustBench's)")
    g.add_argument("--checkpoint", help="weights, read with torch.load(weights_only=True)")
    g.add_argument("--checkpoint-key", help="key of the state dict inside the checkpoint (default: found)")
    g.add_argument("--normalize", default="dataset", metavar="dataset|none|MEAN,STD",
                   help="the input normalisation the weights were trained with, applied inside "
                        "the model: the dataset's channel statistics (default), none (raw [0, 1] "
                        "inputs, as TRADES' and MART's code train), or MEAN,STD (one value each, "
                        "or one per channel: m1,m2,m3,s1,s2,s3)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist")
    g.add_argument("--split", default="test")
    g.add_argument("--data-dir")
    g.add_argument("--loader", default="auto", help="data backend: auto, gpu, ffcv, torch")
    g.add_argument("--limit", type=integer, help="class-balanced limit: LIMIT // num_classes images per class")
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help="comma-separated, e.g. fgsm,pgd-20,tpgd-20:T=2,cw-30,aa (default %(default)s)")
    g.add_argument("--eps", type=number, help="Linf budget in [0, 1] pixel units, e.g. 8/255 "
                   "(default: the checkpoint's training eps when it was written by cwr_fast.train, "
                   "else the dataset's customary one, DatasetInfo.budget)")
    g.add_argument("--eps-l2", type=number, help="default budget of L2 attacks")
    g.add_argument("--track", choices=("any", "final"), default="any",
                   help="a sample is fooled if any iterate fools it (default), or only the last")
    g.add_argument("--tpgd-sweep", type=numbers, metavar="T,T,...",
                   help="Temperature-PGD sweep over these temperatures")
    g.add_argument("--eps-sweep", type=numbers, metavar="EPS,EPS,...", help="eps sweep")
    g.add_argument("--sweep-steps", type=integer, default=20, help="PGD steps of the sweeps (default 20)")
    g = p.add_argument_group(OPTIONS_GROUP,
                             "A checkpoint of a calibrated model (checkpoints/calibrated.pt of "
                             "`cwr_fast.train --calibrate`, the recommended source for such runs: "
                             "fitted on held-out images) is detected and evaluated as it is. "
                             "--calibrate-split fits one here first, on a split that is not the "
                             "evaluated one (class-balanced; the train split was usually trained on, "
                             "so its robust accuracy is optimistic)")
    g.add_argument("--calibrate-split", metavar="SPLIT",
                   help="fit a class-wise calibration on this split before the evaluation")
    g.add_argument("--calibrate-per-class", type=integer, default=100,
                   help="calibration images per class (default %(default)s)")
    add_options(p, CalibrationConfig, {OPTIONS_GROUP: g})
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=integer, default=256)
    g.add_argument("--amp", choices=runtime.AMP_MODES, default="off",
                   help="autocast dtype of the model during attacks, images stay float32 (default "
                        "%(default)s; auto: bf16 on CUDA, and on a CPU with AMX or AVX-512 BF16 "
                        "where it measures faster on the model; an image counts as robust only "
                        "where float32 agrees)")
    g.add_argument("--no-channels-last", action="store_true",
                   help="keep the weights' layout (default: channels-last, faster convolutions)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--seed", type=integer, default=0)
    g.add_argument("--out", help="output directory (written atomically once complete; until then "
                   "each evaluated batch is kept in OUT.partial/)")
    g.add_argument("--resume", metavar="OUT",
                   help="continue the interrupted evaluation of OUT with its own settings (only "
                        f"{', '.join(FREE_ON_RESUME)} may be given beside it); the report equals an "
                        "uninterrupted run's")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out, and start over an interrupted one")
    g.add_argument("--save-adv", metavar="FILE.npz",
                   help="save per image its index, label, clean prediction and, per attack, the "
                        "adversarial prediction and the step (or AutoAttack member) that broke it "
                        "(schema: cwr_fast/classwise/outcomes.py); read back by cwr_fast.compare")
    g.add_argument("--save-adv-images", action="store_true",
                   help="with --save-adv: the adversarial images too (float32: 4 bytes per pixel "
                        "and attack)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    return p


# ---- an interrupted evaluation: OUT.partial/ holds the command and each evaluated batch ----
PARTIAL_SUFFIX = ".partial"
FREE_ON_RESUME = ("--device", "--no-progress", "--no-plots")  # what a resumed run may change
_COMMAND = "command.json"


def progress_dir(out: str | Path) -> Path:
    return Path(f"{Path(out)}{PARTIAL_SUFFIX}")


def _fingerprint(checkpoint: str | None) -> dict | None:
    """What identifies the weights file: a resumed evaluation must read the same one."""
    if checkpoint is None:
        return None
    stat = Path(checkpoint).stat()
    return {"path": str(Path(checkpoint).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def resumed_args(parser: argparse.ArgumentParser, argv: list[str], args):
    """args itself, or for --resume OUT the arguments of the interrupted command, with those of
    FREE_ON_RESUME given now."""
    if args.resume is None:
        if args.out is None:
            raise ConfigError("give --out DIR (or --resume OUT to continue an interrupted evaluation)")
        args.command_argv = argv
        return args
    flags = [t.split("=")[0] for t in argv if t.startswith("--")]
    fixed = sorted(set(flags) - {"--resume", *FREE_ON_RESUME})
    if fixed:
        raise ConfigError(f"--resume continues an evaluation with its own settings: drop "
                          f"{', '.join(fixed)} (only {', '.join(FREE_ON_RESUME)} may change)")
    partial = progress_dir(args.resume)
    try:
        saved = json.loads((partial / _COMMAND).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = (Path(args.resume) / "report.json").is_file()
        raise ConfigError(f"{args.resume} holds a complete report: nothing to resume" if done else
                          f"no interrupted evaluation to resume at {args.resume} ({partial / _COMMAND} "
                          "is missing)") from None
    free = [t for i, t in enumerate(argv) if t.split("=")[0] in FREE_ON_RESUME
            or (i and argv[i - 1] == "--device")]
    resumed = parser.parse_args(saved["argv"] + free)
    resumed.resumed_from, resumed.command_argv = saved, saved["argv"]
    if _fingerprint(resumed.checkpoint) != saved.get("checkpoint"):
        raise ConfigError(f"{resumed.checkpoint} changed since the interrupted evaluation began: "
                          f"remove {partial} and evaluate again")
    return resumed


def _start_progress(args, argv_of_run: list[str] | None, rank: int) -> Path:
    """The OUT.partial/ directory of this evaluation: made for a new one (refused when an
    interrupted one is there, unless --overwrite), continued for --resume."""
    partial = progress_dir(args.out)
    resuming = getattr(args, "resumed_from", None) is not None
    if rank == 0 and partial.exists() and not resuming:
        if not args.overwrite:
            raise ConfigError(f"{partial} holds an interrupted evaluation of {args.out}: continue it "
                              f"with python -m cwr_fast.evaluate --resume {args.out}, or pass "
                              "--overwrite to start over")
        shutil.rmtree(partial)
    if rank == 0 and not resuming:
        partial.mkdir(parents=True, exist_ok=True)
        write_text(json.dumps({"argv": argv_of_run, "checkpoint": _fingerprint(args.checkpoint)},
                              indent=1) + "\n", partial / _COMMAND)
    return partial


def _remove_if_nothing_kept(args) -> None:
    """A new evaluation stopped before its first batch leaves no OUT.partial behind."""
    partial = progress_dir(args.out) if args.out and args.resume is None else None
    if partial is not None and (partial / _COMMAND).is_file() and not any(partial.rglob("batch-*.pt")):
        shutil.rmtree(partial, ignore_errors=True)


def _run_inputs(args) -> dict:
    """{what: path} of the files this run reads, which no output of it may replace."""
    from cwr_fast.data import GENERIC_PREFIXES

    inputs = {"the checkpoint": args.checkpoint}
    if args.dataset.startswith(GENERIC_PREFIXES):
        inputs["the dataset"] = args.dataset.split(":", 1)[1]
    if args.model is not None and not is_source_spec(args.model):
        inputs["the model file"] = args.model.rpartition(":")[0] or None
    return inputs


def _check_args(args) -> None:
    if args.save_adv_images and args.save_adv is None:
        raise ConfigError("--save-adv-images needs --save-adv FILE.npz")
    if args.save_adv is not None:
        if not args.save_adv.endswith(".npz"):
            raise ConfigError(f"--save-adv {args.save_adv}: give a .npz file name")
        check_output_file(args.save_adv, args.overwrite, inputs=_run_inputs(args))
    if (args.arch is None) == (args.model is None):
        raise ConfigError("give exactly one of --arch NAME (with --checkpoint) or --model FILE.py:FACTORY "
                          "(or --model robustbench:NAME, timm:NAME, torchvision:NAME)")
    if args.arch is not None:
        canonical_name(args.arch)
        if args.checkpoint is None:
            raise ConfigError("--arch needs --checkpoint (a zoo model without weights is untrained)")
    source = parse_source_spec(args.model) if is_source_spec(args.model) else None
    if (source is None or source.source != "robustbench") and (args.threat_model or args.model_dir):
        raise ConfigError("--threat-model and --model-dir belong to --model robustbench:NAME")
    if source is not None and source.source == "robustbench":
        if args.checkpoint is not None or args.checkpoint_key is not None:
            raise ConfigError(f"--model {args.model} reads its weights from --model-dir "
                              f"(DIR/<dataset>/<threat model>/{source.name}.pt): drop --checkpoint")
        if args.normalize != "dataset":
            raise ConfigError(f"--normalize {args.normalize}: RobustBench models normalise their "
                              "inputs inside their own definition (they take [0, 1] images): drop it")
    elif source is not None and args.checkpoint is None:
        raise ConfigError(f"--model {args.model} needs --checkpoint: the architecture is built without "
                          "pretrained weights (cwr_fast never downloads), and an untrained model's "
                          "robustness means nothing")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise ConfigError(f"checkpoint not found: {args.checkpoint}")
    if args.eps is not None and budget_problem(args.eps):
        raise ConfigError(f"--eps {budget_problem(args.eps)}")
    if args.eps_l2 is not None and args.eps_l2 < 0:
        raise ConfigError(f"--eps-l2 must be >= 0, got {args.eps_l2:g}")
    if args.eps_sweep and any(not 0 <= e <= 1 for e in args.eps_sweep):
        raise ConfigError(f"--eps-sweep values must lie in [0, 1], got {args.eps_sweep}")
    if args.tpgd_sweep and any(t <= 0 for t in args.tpgd_sweep):
        raise ConfigError(f"--tpgd-sweep temperatures must be > 0, got {args.tpgd_sweep}")
    if args.calibrate_split is not None and args.calibrate_split == args.split:
        raise ConfigError(f"--calibrate-split {args.calibrate_split} is the evaluated split: fit the "
                       "calibration on other images (e.g. --calibrate-split train)")
    reason = check_options(calibration_config(args))
    if reason:
        raise ConfigError(reason)
    for name in ("calibrate_per_class", "batch_size", "sweep_steps", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    check_output_dir(args.out, REPORT_KIND, args.overwrite)


def calibration_config(args) -> CalibrationConfig:
    return CalibrationConfig(**given_options(args, CalibrationConfig))


def _load_model(args, info, device: torch.device) -> tuple[torch.nn.Module, bool, dict | None]:
    """(model, whether the checkpoint held a class-wise calibrated model, now wrapped, the
    training configuration saved in the checkpoint or None)."""
    in_channels = info.image_shape[0]
    mean, std = normalization(args.normalize, info)
    args.model_source = None  # the report config's "source": what a published model loaded
    if args.arch is not None:
        model = build_model(args.arch, info.num_classes, mean, std, in_channels)
        label = f"architecture {canonical_name(args.arch)!r}"
    elif is_source_spec(args.model):
        from cwr_fast.data import dataset_info

        dataset = info.name  # a copy of CIFAR-10/100 (npz:, folder:) is known by its class names
        if dataset.startswith(("npz:", "folder:")):
            dataset = next((n for n in ("cifar10", "cifar100")
                            if list(info.class_names) == list(dataset_info(n).class_names)), dataset)
        model, args.model_source = build_from_source(
            args.model, dataset=dataset, num_classes=info.num_classes, in_channels=in_channels,
            image_size=info.image_shape[1:], mean=mean, std=std,
            threat_model=args.threat_model or "Linf", model_dir=args.model_dir)
        if args.checkpoint is not None:
            args.model_source["weights"] = args.checkpoint
        label = args.model
    else:
        factory = load_factory(args.model)
        model = call_factory(factory, num_classes=info.num_classes, in_channels=in_channels,
                             mean=mean, std=std)
        label = f"the model of {args.model}"
    calibrated, train_config, args.recorded_clean = False, None, None
    if args.checkpoint is not None:
        state, train_config, args.recorded_clean = read_checkpoint(args.checkpoint, args.checkpoint_key)
        if args.normalize != "dataset" and any(k in state for k in ("mean", "model.mean")):
            raise ConfigError(f"{args.checkpoint} carries its own normalisation (the mean/std "
                              "buffers of a cwr_fast model), which is what it was trained with: "
                              "drop --normalize")
        if is_calibrated_state(state):
            if calibrated_num_classes(state) != info.num_classes:
                raise ConfigError(f"the calibrated checkpoint has {calibrated_num_classes(state)} "
                               f"classes, {info.name} has {info.num_classes}")
            if args.calibrate_split is not None:
                raise ConfigError(f"{args.checkpoint} is already calibrated: drop --calibrate-split, "
                               "or fit on the uncalibrated weights")
            model, calibrated = ClasswiseCalibration(model, info.num_classes), True
        load_weights(model, args.checkpoint, key=args.checkpoint_key, arch_name=label, state=state)
    return model.to(device), calibrated, train_config


def normalization(text: str, info) -> tuple[tuple | None, tuple | None]:
    """--normalize -> (mean, std) per channel, or (None, None) for raw [0, 1] inputs."""
    if text == "dataset":
        return tuple(info.mean), tuple(info.std)
    if text == "none":
        return None, None
    channels = info.image_shape[0]
    try:
        values = [number(t) for t in text.split(",")]
    except argparse.ArgumentTypeError:
        values = []
    if len(values) == 2:
        values = [values[0]] * channels + [values[1]] * channels
    if len(values) != 2 * channels or any(s <= 0 for s in values[channels:]):
        raise ConfigError(f"--normalize {text!r}: give dataset, none, or MEAN,STD (one value each "
                          f"or {channels} each, std > 0)")
    return tuple(values[:channels]), tuple(values[channels:])


def _budget(args, info, train_config: dict | None) -> tuple[float, str]:
    """(eps, where it comes from): --eps, else the checkpoint's training eps, else the dataset's."""
    if args.eps is not None:
        return args.eps, "--eps"
    if train_config is not None and isinstance(train_config.get("eps"), (int, float)):
        return float(train_config["eps"]), "the checkpoint's training config"
    return info.budget.eps, f"the default of {info.name}"


def _fit_calibration(args, info, model, eps: float, amp, device, progress: bool):
    """Fits a calibration on --calibrate-split (class-balanced, seeded) and returns (the calibrated
    model, the report config's calibration entries)."""
    from cwr_fast.data import make_loader

    loader = make_loader(args.dataset, args.calibrate_split, args.batch_size, train=False,
                         loader=args.loader, device=device, data_dir=args.data_dir,
                         per_class=args.calibrate_per_class, subset_seed=args.seed)
    say = (lambda msg: print(f"[cwr_fast.evaluate] {msg}", file=sys.stderr, flush=True)) if progress \
        else (lambda msg: None)
    model, fit = calibrate(model, loader, info.num_classes, eps, calibration_config(args), amp=amp,
                           seed=args.seed, device=device, log=say)
    return model, {"calibrated": True, "calibration": {
        "fitted_on": args.calibrate_split, "per_class": args.calibrate_per_class,
        **{k: fit[k] for k in ("params", "eps", "steps", "rounds", "max_mean_drop", "num_images",
                               "chosen_round", "scale", "bias", "seconds")},
        "before": {k: fit["before"][k] for k in ("clean_mean", "robust_mean", "robust_worst", "worst_class")},
        "after": {k: fit["after"][k] for k in ("clean_mean", "robust_mean", "robust_worst", "worst_class")}}}


def run(args) -> dict:
    """Evaluates and returns the report dict (written to args.out on rank 0)."""
    from cwr_fast.data import dataset_info, make_loader

    _check_args(args)
    specs = parse_attacks(args.attacks)
    info = dataset_info(args.dataset)
    info.check_split(args.split)
    if args.calibrate_split is not None:
        info.check_split(args.calibrate_split)
    per_class = None
    if args.limit is not None:
        per_class = args.limit // info.num_classes
        if per_class < 1:
            raise ConfigError(f"--limit {args.limit} is below the number of classes ({info.num_classes})")
    dist_info = runtime.init(args.device)
    device, rank, world = dist_info.device, dist_info.rank, dist_info.world_size
    model, from_checkpoint, train_config = _load_model(args, info, device)
    eps, eps_source = _budget(args, info, train_config)
    sweep_base = {"T": parse_attack(f"tpgd-{args.sweep_steps}"), "eps": parse_attack(f"pgd-{args.sweep_steps}")}
    sweeps = {"T": [sweep_base["T"].with_params(T=t) for t in args.tpgd_sweep or []],
              "eps": [sweep_base["eps"].with_params(eps=e) for e in args.eps_sweep or []]}
    check_attacks(specs + sweeps["T"] + sweeps["eps"], eps=eps, eps_l2=args.eps_l2,
                  num_classes=info.num_classes)  # every setting, before any attack runs
    sample = torch.rand(min(args.batch_size, 64), *info.image_shape, device=device)
    amp, amp_choice = runtime.choose_amp(
        args.amp, device, lambda: bf16_speedup(model, sample, not args.no_channels_last))
    if rank == 0 and args.amp in ("auto", "bf16"):
        print(f"[cwr_fast.evaluate] {amp_choice}", file=sys.stderr)
    calibration = {"calibrated": from_checkpoint,
                   "calibration": "from the checkpoint" if from_checkpoint else None}
    if args.calibrate_split is not None:
        model, calibration = _fit_calibration(args, info, model, eps, amp, device,
                                              progress=rank == 0 and not args.no_progress)
    loader = make_loader(args.dataset, args.split, args.batch_size, train=False, loader=args.loader,
                         device=device, data_dir=args.data_dir, per_class=per_class)
    common = {"num_classes": info.num_classes, "amp": amp, "seed": args.seed,
              "distributed": world > 1, "progress": not args.no_progress,
              "channels_last": not args.no_channels_last}
    build = {"eps": eps, "eps_l2": args.eps_l2, "track": args.track, "amp": amp,
             "num_classes": info.num_classes}

    def evaluate(attack_specs, title, per_image=False):
        attacks = {s.label: s.build(model, **build) for s in attack_specs}
        log = BatchLog(partial / title.replace(" ", "-"))
        if rank == 0 and not args.no_progress:
            kept = f" ({len(log)} batches from the interrupted run)" if len(log) else ""
            print(f"[cwr_fast.evaluate] {title}: {', '.join(attacks)}{kept}", file=sys.stderr)
        return attacks, evaluate_classwise(model, loader, attacks=attacks, log=log,
                                           per_image=per_image, keep_adv=args.save_adv_images,
                                           **common)

    partial = _start_progress(args, getattr(args, "command_argv", None), rank)
    if world > 1:
        torch.distributed.barrier()  # OUT.partial/ is ready before any process writes a batch there
    started = time.perf_counter()
    attacks, counts = evaluate(specs, "attacks", per_image=True)
    t_sweep = e_sweep = t_outcomes = None
    if args.tpgd_sweep:  # per image too: findings pick T per class on some images, test it on others
        _, sweep_counts = evaluate(sweeps["T"], "temperature sweep", per_image=True)
        t_sweep = sweep_section(sweep_counts, "T", args.tpgd_sweep, sweep_base["T"].label, info.class_names)
        t_outcomes = sweep_counts.outcomes
    if args.eps_sweep:
        _, sweep_counts = evaluate(sweeps["eps"], "eps sweep")
        e_sweep = sweep_section(sweep_counts, "eps", args.eps_sweep, sweep_base["eps"].label,
                                info.class_names)
    config = {"dataset": info.name, "split": args.split, "arch": args.arch, "model": args.model,
              "checkpoint": args.checkpoint, "normalize": args.normalize,
              "source": getattr(args, "model_source", None),
              "attacks": [s.label for s in specs], "eps": eps,
              "eps_source": eps_source,
              "eps_l2": args.eps_l2, "track": args.track, "tpgd_sweep": args.tpgd_sweep,
              "eps_sweep": args.eps_sweep, "sweep_steps": args.sweep_steps,
              "batch_size": args.batch_size, "amp": amp or "off", "amp_choice": amp_choice,
              "device": str(device),
              "channels_last": not args.no_channels_last,
              "world_size": world, "limit": args.limit, "per_class": per_class, "seed": args.seed,
              **calibration,
              "seconds": round(time.perf_counter() - started, 3)}
    report = build_report(counts, info.class_names, attacks=attacks, config=config,
                          dataset={"name": info.name, "split": args.split},
                          temperature_sweep=t_sweep, eps_sweep=e_sweep)
    expected, where = args.recorded_clean or (None, "")
    report["flags"] += clean_accuracy_flags(counts, expected, where)
    if rank == 0:
        write_report(report, args.out, plots=not args.no_plots, overwrite=args.overwrite,
                     outcomes=counts.outcomes, sweep_outcomes={"temperature": t_outcomes})
        if args.save_adv is not None:
            record_written_file(counts.outcomes.describe(report, attacks).save(args.save_adv))
        shutil.rmtree(partial, ignore_errors=True)
        print(format_summary(report))
        print(f"eps {fmt_budget(eps)}: {eps_source}")
        print(f"report written to {args.out}"
              + (f"; per-image outcomes to {args.save_adv}" if args.save_adv else ""))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from cwr_fast.data import DatasetError

    started_group = not runtime.is_initialized()
    try:
        args = resumed_args(parser, argv, args)
        run(args)
    except (ConfigError, AttackSpecError, CheckpointMismatchError, DatasetError, FileNotFoundError,
            FileExistsError, ValueError, TypeError) as err:
        _remove_if_nothing_kept(args)
        return usage_error("cwr_fast.evaluate", err)
    except KeyboardInterrupt:
        _remove_if_nothing_kept(args)
        partial = progress_dir(args.out) if args.out else None
        if partial is not None and partial.is_dir():
            return interrupted("cwr_fast.evaluate", f"the evaluated batches are kept in {partial}: "
                               f"continue with python -m cwr_fast.evaluate --resume {args.out}")
        return interrupted("cwr_fast.evaluate", "nothing was written: run the same command again")
    finally:
        if started_group:
            runtime.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
