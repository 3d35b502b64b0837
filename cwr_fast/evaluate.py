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
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from cwr_fast import runtime
from cwr_fast.attacks.attack import bf16_speedup
from cwr_fast.attacks.spec import parse_attacks
from cwr_fast.classwise.analysis import describe_outcomes
from cwr_fast.classwise.engine import BatchLog
from cwr_fast.classwise.calibration import OPTIONS_GROUP, CalibrationConfig, calibrate
from cwr_fast.classwise.outcomes import ROBUST_FILE
from cwr_fast.classwise.pipeline import ATTACKS, RUN, EvalSettings, Evaluation, resolve_eps
from cwr_fast.options import (add_options, at_least, check_options, fmt_budget, integer,
                              interrupt_on_signals, interrupted, number, option, threads_problem,
                              usage_error)
from cwr_fast.errors import ConfigError, RunError, UsageError
from cwr_fast.models.calibration import ClasswiseCalibration, calibrated_num_classes, is_calibrated_state
from cwr_fast.models.checkpoint import (CheckpointMismatchError, checkpoint_file_problem, load_weights,
                                        read_checkpoint)
from cwr_fast.models.registry import (build_model, call_factory, canonical_name, load_factory,
                                      materialize_lazy)
from cwr_fast.models.sources import build_from_source, is_source_spec, parse_source_spec
from cwr_fast.outputs import (check_output_dir, check_output_file, no_space_error, record_written_file,
                              same_file, write_text)
from cwr_fast.report import REPORT_KIND, format_summary, sweep_outcomes_file, write_report

MODEL, DATA = "model", "data"
CALIBRATION_NOTE = ("A checkpoint of a calibrated model (checkpoints/calibrated.pt of "
                    "`cwr_fast.train --calibrate`, the recommended source for such runs: fitted on "
                    "held-out images) is detected and evaluated as it is. --calibrate-split fits one "
                    "here first, on a split that is not the evaluated one (class-balanced; the train "
                    "split was usually trained on, so its robust accuracy is optimistic)")
FREE_ON_RESUME = ("--device", "--threads", "--no-progress", "--no-plots")  # what a resumed run may change


def _loader(v):
    from cwr_fast.data.loader import BACKENDS

    return None if v in BACKENDS else f"must be one of {', '.join(BACKENDS)}, got {v!r}"


def _threads(v):
    problem = threads_problem(v)
    return problem.removeprefix("--threads ") if problem else None


@dataclass
class EvaluateCommand:
    """The command's own options (which model, which data, where the report goes); how the model is
    evaluated is EvalSettings (the pipeline's), the calibration fit's settings CalibrationConfig."""

    arch: str | None = option(None, "zoo architecture: small_cnn, preact_resnet18, wrn34_10, resnet50",
                              MODEL)
    model: str | None = option(
        None, "any model: FILE.py:FACTORY, FACTORY(num_classes=, in_channels=, mean=, std=) -> "
        "nn.Module taking [0, 1] images; or a published one, never downloaded: robustbench:NAME "
        "(RobustBench's zoo, weights from --model-dir; robustbench:DATASET/NAME for an npz:/folder: "
        "copy of cifar10, cifar100 or imagenet), timm:NAME or torchvision:NAME (the architecture, "
        "weights from --checkpoint)", MODEL, metavar="SPEC")
    threat_model: str | None = option(None, "RobustBench's leaderboard of a robustbench:NAME model "
                                      "(default Linf)", MODEL, choices=("Linf", "L2", "corruptions"))
    model_dir: str | None = option(None, "RobustBench's weights folder, in its layout DIR/<dataset>/"
                                   "<threat model>/<NAME>.pt, as robustbench.utils.load_model(NAME, "
                                   "model_dir=DIR) saves them (default ./models, RobustBench's)", MODEL,
                                   metavar="DIR")
    checkpoint: str | None = option(None, "weights, read with torch.load(weights_only=True)", MODEL)
    checkpoint_key: str | None = option(None, "key of the state dict inside the checkpoint (default: "
                                        "found)", MODEL)
    normalize: str = option("dataset", "the input normalisation the weights were trained with, "
                            "applied inside the model: the dataset's channel statistics (default), "
                            "none (raw [0, 1] inputs, as TRADES' and MART's code train), or MEAN,STD "
                            "(one value each, or one per channel: m1,m2,m3,s1,s2,s3)", MODEL,
                            metavar="dataset|none|MEAN,STD", shown_default="")
    dataset: str = option("mnist", None, DATA, shown_default="")
    split: str = option("test", None, DATA, shown_default="")
    data_dir: str | None = option(None, None, DATA)
    loader: str = option("auto", "data backend: auto, gpu, ffcv, torch", DATA, shown_default="",
                         check=_loader)
    limit: int | None = option(None, "class-balanced limit: LIMIT // num_classes images per class",
                               DATA, type=integer, check=at_least(1, optional=True))
    calibrate_split: str | None = option(None, "fit a class-wise calibration on this split before "
                                         "the evaluation", OPTIONS_GROUP, metavar="SPLIT")
    calibrate_per_class: int = option(100, "calibration images per class", OPTIONS_GROUP, type=integer,
                                      check=at_least(1, optional=True))
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", RUN, shown_default="")
    threads: int | None = option(None, "CPU threads of torch (default: 1 for a small model on small "
                                 "images on the CPU, <= 32x32 and < 5M parameters, where more threads "
                                 "only contend; else torch's default)", RUN, type=integer, metavar="N",
                                 check=_threads)
    out: str | None = option(None, "output directory (written atomically once complete; until then "
                             "each evaluated batch is kept in OUT.partial/)", RUN)
    resume: str | None = option(None, "continue the interrupted evaluation of OUT with its own "
                                f"settings (only {', '.join(FREE_ON_RESUME)} may be given beside it); "
                                "the report equals an uninterrupted run's", RUN, metavar="OUT")
    overwrite: bool = option(False, "replace a non-empty --out, and start over an interrupted one", RUN,
                             action="store_true", shown_default="")
    save_adv: str | None = option(None, "save per image its index, label, clean prediction and, per "
                                  "attack, the adversarial prediction and the step (or AutoAttack "
                                  "member) that broke it (schema: cwr_fast/classwise/outcomes.py); read "
                                  "back by cwr_fast.compare", RUN, metavar="FILE.npz")
    plots: bool = option(True, None, RUN, flag="--no-plots", action="store_false", shown_default="")


DECLARED = (EvalSettings, EvaluateCommand, CalibrationConfig)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    """The parser, derived from DECLARED; the namespace holds every option (defaults included)."""
    p = argparse.ArgumentParser(prog="python -m cwr_fast.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {MODEL: p.add_argument_group(MODEL), DATA: p.add_argument_group(DATA),
              ATTACKS: p.add_argument_group(ATTACKS),
              OPTIONS_GROUP: p.add_argument_group(OPTIONS_GROUP, CALIBRATION_NOTE),
              RUN: p.add_argument_group(RUN)}
    for cls in DECLARED:
        add_options(p, cls, groups, suppress_defaults=False)
    return p


def _declared_problem(args) -> str | None:
    """The first failed declared check of the options given (cwr_fast.options)."""
    for cls in DECLARED:
        names = {f.name for f in dataclasses.fields(cls)}
        reason = check_options(cls(**{k: v for k, v in vars(args).items() if k in names}))
        if reason:
            return reason
    return None


# ---- an interrupted evaluation: OUT.partial/ holds the command, a lock and each evaluated batch ----
PARTIAL_SUFFIX = ".partial"
_COMMAND = "command.json"
_LOCK = "lock"          # the pid of the cwr_fast.evaluate writing OUT.partial/
_ERROR = "error.txt"    # the traceback of a run that failed after its first batch


def progress_dir(out: str | Path) -> Path:
    return Path(f"{Path(out)}{PARTIAL_SUFFIX}")


def _file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_digest(root: str | Path) -> str:
    """A folder dataset: its files' relative paths, sizes and modification times (not their bytes:
    an image folder can hold terabytes); directory links are not followed."""
    h = hashlib.sha256()
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(parent) / name
            try:
                st = path.stat()
            except OSError:
                continue
            h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes and bytes): what a resumed
    evaluation compares, whatever file (checkpoint, factory, weights the factory loads) they came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        if t.device.type != "meta":
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _input_digests(args) -> dict:
    """{key: {"what", "path", "sha256"}} of the files the batches depend on besides the weights
    themselves (hashed after the model is built, state_digest): by content, not by name or date."""
    from cwr_fast.data import GENERIC_PREFIXES

    found = {}
    if args.checkpoint is not None and Path(args.checkpoint).is_file():
        found["checkpoint"] = ("the checkpoint", args.checkpoint, _file_digest(args.checkpoint))
    if args.model is not None and not is_source_spec(args.model):
        path = args.model.rpartition(":")[0]
        if path and Path(path).is_file():
            found["model file"] = ("the model file", path, _file_digest(path))
    if args.dataset.startswith(GENERIC_PREFIXES):
        path = Path(args.dataset.split(":", 1)[1])
        if path.is_file():
            found["dataset"] = ("the dataset", str(path), _file_digest(path))
        elif path.is_dir():
            found["dataset"] = ("the dataset folder", str(path), _tree_digest(path))
    return {k: {"what": what, "path": str(Path(p).resolve()), "sha256": digest}
            for k, (what, p, digest) in found.items()}


def _start_over(out) -> str:
    return (f"restore it to continue, or rerun the original command with --overwrite to start over "
            f"(which discards the batches kept in {progress_dir(out)})")


def _absolute(args) -> None:
    """--out, --resume and --checkpoint as absolute paths, resolved once when the run starts."""
    for name in ("out", "resume", "checkpoint"):
        if getattr(args, name, None) == "":  # abspath("") is the working folder
            raise ConfigError(f"--{name} is empty (an unset shell variable?): give a path")
        if getattr(args, name, None) is not None:
            setattr(args, name, os.path.abspath(getattr(args, name)))


def resumed_args(parser: argparse.ArgumentParser, argv: list[str], args):
    """args itself, or for --resume OUT the arguments of the interrupted command, with those of
    FREE_ON_RESUME given now. The interrupted command's relative paths are read from the folder it
    ran in (the process changes into it); OUT is where --resume found it, even if moved since."""
    _absolute(args)
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
    _check_not_locked(args.resume)
    cwd = saved.get("cwd")
    if cwd is not None:
        if not Path(cwd).is_dir():
            raise ConfigError(f"the interrupted evaluation of {args.resume} ran in {cwd}, which is gone: "
                              "its relative paths cannot be found there")
        os.chdir(cwd)
    free = [t for i, t in enumerate(argv) if t.split("=")[0] in FREE_ON_RESUME
            or (i and argv[i - 1] in ("--device", "--threads"))]
    resumed = parser.parse_args(saved["argv"] + free)
    resumed.resumed_from, resumed.command_argv = saved, saved["argv"]
    resumed.resume, resumed.out = None, args.resume
    _absolute(resumed)
    now = _input_digests(resumed)
    for key, before in (saved.get("inputs") or {}).items():
        after = now.get(key)
        if after is None or after["sha256"] != before["sha256"]:
            state = "is gone" if after is None else "has other content"
            raise ConfigError(f"{before['what']} {before['path']} {state} since the interrupted "
                              f"evaluation of {args.resume} began: {_start_over(args.resume)}")
    return resumed


def _lock_owner(partial: Path) -> int | None:
    """The pid of another live process holding partial's lock, or None (none, ours, or stale)."""
    try:
        pid = int((partial / _LOCK).read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid == os.getpid() or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a zombie (dead, not yet reaped) holds nothing
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except (OSError, IndexError):
        pass
    return pid


def _check_not_locked(out) -> None:
    """Refuses an OUT another live evaluate is writing (checked by the first process of a torchrun
    job only: the others see its own lock)."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        return
    pid = _lock_owner(progress_dir(out))
    if pid is not None:
        raise ConfigError(f"another cwr_fast.evaluate (pid {pid}) is writing {out}: wait for it to "
                          f"finish or stop it ({progress_dir(out) / _LOCK} holds its pid)")


def _take_lock(args, partial: Path) -> None:
    """Writes our pid into partial/lock (refused while another live evaluate holds it)."""
    lock = partial / _LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _check_not_locked(args.out)
            lock.unlink(missing_ok=True)  # stale: its process is dead
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        args.lock_held = lock
        return
    _check_not_locked(args.out)
    raise ConfigError(f"could not lock {partial}: another process keeps taking {lock}")


def _release_lock(args) -> None:
    lock = getattr(args, "lock_held", None)
    if lock is not None and _lock_owner(lock.parent) is None and lock.is_file():
        try:
            if int(lock.read_text(encoding="utf-8").split()[0]) == os.getpid():
                lock.unlink()
        except (OSError, ValueError, IndexError):
            pass
    args.lock_held = None


def _start_progress(args, argv_of_run: list[str] | None, rank: int, model_state: str) -> Path:
    """The OUT.partial/ directory of this evaluation, locked: made for a new one (refused when an
    interrupted one is there, unless --overwrite), continued for --resume (refused when the model's
    weights are not those the kept batches were evaluated with)."""
    partial = progress_dir(args.out)
    saved = getattr(args, "resumed_from", None)
    if rank != 0:
        return partial
    _check_not_locked(args.out)
    if saved is not None:
        if saved.get("model_state") not in (None, model_state):
            raise ConfigError(f"the model's weights (parameters and buffers) differ from those the "
                              f"kept batches of {args.out} were evaluated with: the checkpoint, the "
                              f"--model factory or the weights it loads changed; {_start_over(args.out)}")
        _take_lock(args, partial)
        return partial
    if partial.exists():
        if not args.overwrite:
            raise ConfigError(f"{partial} holds an interrupted evaluation of {args.out}: continue it "
                              f"with python -m cwr_fast.evaluate --resume {args.out}, or pass "
                              "--overwrite to start over")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    _take_lock(args, partial)
    write_text(json.dumps({"argv": argv_of_run, "cwd": os.getcwd(), "inputs": _input_digests(args),
                           "model_state": model_state}, indent=1) + "\n", partial / _COMMAND)
    return partial


def _remove_if_nothing_kept(args) -> None:
    """A new evaluation stopped before its first batch leaves no OUT.partial behind (only its own:
    never one another evaluate holds)."""
    partial = progress_dir(args.out) if getattr(args, "lock_held", None) is not None \
        and getattr(args, "resumed_from", None) is None else None
    if partial is not None and (partial / _COMMAND).is_file() and not any(partial.rglob("batch-*.pt")):
        shutil.rmtree(partial, ignore_errors=True)
        args.lock_held = None


def _kept_advice(args) -> str:
    """How to go on after a failure, when this run's batches are kept in OUT.partial/."""
    out = getattr(args, "out", None)
    if out is None or getattr(args, "lock_held", None) is None:
        return ""
    partial = progress_dir(out)
    if not any(partial.rglob("batch-*.pt")):
        return ""
    return (f"; the evaluated batches are kept in {partial}: rerun with python -m cwr_fast.evaluate "
            f"--resume {out} to continue, or the original command with --overwrite to start over")


SMALL_IMAGE_SIDE, SMALL_MODEL_PARAMS = 32, 5_000_000


def choose_threads(requested: int | None, device: torch.device, model: torch.nn.Module,
                   image_shape) -> tuple[int, str]:
    """(torch's CPU threads for this run, why): --threads, else 1 for a small model on small images
    on the CPU (its kernels are too short to share; with other jobs on the machine, torch's default
    of one thread per core made PGD-20 20x slower), else torch's default."""
    default = torch.get_num_threads()
    if requested is not None:
        return requested, "--threads"
    if device.type != "cpu":
        return default, f"torch's default (the model runs on {device})"
    params = sum(p.numel() for p in model.parameters())
    small = all(side <= SMALL_IMAGE_SIDE for side in image_shape[-2:]) and params < SMALL_MODEL_PARAMS
    if small and default > 1:
        return 1, (f"a small model ({params} parameters) on images of at most {SMALL_IMAGE_SIDE}x"
                   f"{SMALL_IMAGE_SIDE}: more threads contend (--threads N to change)")
    return default, "torch's default"


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
    """Every option, before any model or data is read: the declared checks, then the combinations."""
    parse_attacks(args.attacks)  # AttackSpecError names a bad one
    if args.keep_adv and args.save_adv is None:
        raise ConfigError("--save-adv-images needs --save-adv FILE.npz")
    if args.save_adv is not None:
        _check_save_adv(args)
    _check_model_options(args)
    if args.checkpoint is not None and checkpoint_file_problem(args.checkpoint):
        raise ConfigError(checkpoint_file_problem(args.checkpoint))
    if args.calibrate_split is not None and args.calibrate_split == args.split:
        raise ConfigError(f"--calibrate-split {args.calibrate_split} is the evaluated split: fit the "
                          "calibration on other images (e.g. --calibrate-split train)")
    problem = _declared_problem(args)
    if problem:
        raise ConfigError(problem)
    _check_not_locked(args.out)
    check_output_dir(args.out, REPORT_KIND, args.overwrite)


def _check_save_adv(args) -> None:
    if not args.save_adv.endswith(".npz"):
        raise ConfigError(f"--save-adv {args.save_adv}: give a .npz file name")
    own = {ROBUST_FILE, sweep_outcomes_file("temperature")}  # what the report writes as .npz
    if Path(args.save_adv).name in own and same_file(Path(args.save_adv).parent, args.out):
        raise ConfigError(f"--save-adv {args.save_adv} is the report's own "
                          f"{Path(args.save_adv).name} in --out {args.out}: choose another name")
    check_output_file(args.save_adv, args.overwrite, inputs=_run_inputs(args))


def _check_model_options(args) -> None:
    """--arch / --model and the options that belong to each."""
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


def calibration_config(args) -> CalibrationConfig:
    return CalibrationConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CalibrationConfig)})


def _load_model(args, info, device: torch.device) -> tuple[torch.nn.Module, bool, dict | None]:
    """(model, whether the checkpoint held a class-wise calibrated model, now wrapped, the
    training configuration saved in the checkpoint or None)."""
    model = _build_model(args, info)
    materialize_lazy(model, info.image_shape)  # nn.LazyLinear & co. need their shapes first
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
        try:
            load_weights(model, args.checkpoint, key=args.checkpoint_key, arch_name=args.model_label,
                         state=state)
        except CheckpointMismatchError as err:
            if not err.shapes_differ:
                raise
            # a stray label (12 among 0..9) makes a dataset of 13 classes: say where the count came from
            raise CheckpointMismatchError(f"{err}; the model was built for the {info.num_classes} classes "
                                          f"of {info.name} (labels 0..{info.num_classes - 1})",
                                          shapes_differ=True) from None
    return model.to(device), calibrated, train_config


def _build_model(args, info) -> torch.nn.Module:
    """The model --arch or --model names, without weights (those of a published one aside); sets
    args.model_label (how errors name it) and args.model_source (the report config's "source")."""
    in_channels = info.image_shape[0]
    mean, std = normalization(args.normalize, info)
    args.model_source = None
    if args.arch is not None:
        args.model_label = f"architecture {canonical_name(args.arch)!r}"
        return build_model(args.arch, info.num_classes, mean, std, in_channels)
    if is_source_spec(args.model):
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
        args.model_label = args.model
        return model
    args.model_label = f"the model of {args.model}"
    return call_factory(load_factory(args.model), num_classes=info.num_classes, in_channels=in_channels,
                        mean=mean, std=std)


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
    summary = ("clean_mean", "robust_mean", "robust_worst", "worst_class")
    return model, {"calibrated": True, "calibration": {
        "fitted_on": args.calibrate_split, "per_class": args.calibrate_per_class,
        **{k: fit[k] for k in ("params", "eps", "steps", "rounds", "max_mean_drop", "num_images",
                               "chosen_round", "scale", "bias", "seconds")},
        "before": {k: fit["before"][k] for k in summary}, "after": {k: fit["after"][k] for k in summary}}}


def _per_class(limit: int | None, info) -> int | None:
    if limit is None:
        return None
    if limit // info.num_classes < 1:
        raise ConfigError(f"--limit {limit} is below the number of classes ({info.num_classes})")
    return limit // info.num_classes


def _setup(args):
    """The dataset, the process group and the model, as the run evaluates them: (info, per_class,
    the runtime's DistInfo, model, calibration config entries, train_config)."""
    from cwr_fast.data import dataset_info

    info = dataset_info(args.dataset)
    info.check_split(args.split)
    if args.calibrate_split is not None:
        info.check_split(args.calibrate_split)
    per_class = _per_class(args.limit, info)
    dist_info = runtime.init(args.device)
    with torch.random.fork_rng(devices=[]):  # a factory's random initialisation: the same on --resume
        torch.manual_seed(args.seed)
        model, from_checkpoint, train_config = _load_model(args, info, dist_info.device)
    calibration = {"calibrated": from_checkpoint,
                   "calibration": "from the checkpoint" if from_checkpoint else None}
    return info, per_class, dist_info, model, calibration, train_config


def _report_config(args, info, evaluation: Evaluation, eps_source: str, amp_choice: str, device,
                   threads: tuple, world: int, per_class, calibration: dict) -> dict:
    """report.json's config (the pipeline adds its "seconds")."""
    return {"dataset": info.name, "split": args.split, "arch": args.arch, "model": args.model,
            "checkpoint": args.checkpoint, "normalize": args.normalize,
            "source": getattr(args, "model_source", None),
            "attacks": evaluation.labels, "eps": evaluation.eps, "eps_source": eps_source,
            "eps_l2": args.eps_l2, "track": args.track, "tpgd_sweep": args.tpgd_sweep,
            "eps_sweep": args.eps_sweep, "sweep_steps": args.sweep_steps,
            **({"eps_sweep_attack": args.eps_sweep_attack} if args.eps_sweep_attack else {}),
            "batch_size": args.batch_size, "amp": evaluation.amp or "off", "amp_choice": amp_choice,
            "device": str(device), "threads": threads[0], "threads_choice": threads[1],
            "channels_last": args.channels_last,
            "world_size": world, "limit": args.limit, "per_class": per_class, "seed": args.seed,
            **calibration}


def run(args) -> dict:
    """Evaluates and returns the report dict (written to args.out on rank 0)."""
    from cwr_fast.data import make_loader

    _check_args(args)
    info, per_class, dist_info, model, calibration, train_config = _setup(args)
    device, rank, world = dist_info.device, dist_info.rank, dist_info.world_size
    threads = choose_threads(args.threads, device, model, info.image_shape)
    torch.set_num_threads(threads[0])
    model_state = state_digest(model)
    eps, eps_source = resolve_eps(args.eps, train_config, info)
    Evaluation(EvalSettings.of(args), num_classes=info.num_classes, eps=eps).check()
    sample = torch.rand(min(args.batch_size, 64), *info.image_shape, device=device)
    amp, amp_choice = runtime.choose_amp(
        args.amp, device, lambda: bf16_speedup(model, sample, args.channels_last))
    if rank == 0 and args.amp in ("auto", "bf16"):
        print(f"[cwr_fast.evaluate] {amp_choice}", file=sys.stderr)
    if args.calibrate_split is not None:
        model, calibration = _fit_calibration(args, info, model, eps, amp, device,
                                              progress=rank == 0 and args.progress)
    loader = make_loader(args.dataset, args.split, args.batch_size, train=False,
                         loader=args.loader, device=device, data_dir=args.data_dir,
                         per_class=per_class)
    partial = _start_progress(args, getattr(args, "command_argv", None), rank, model_state)
    if world > 1:
        torch.distributed.barrier()  # OUT.partial/ is ready before any process writes a batch there
    say = (lambda line: print(f"[cwr_fast.evaluate] {line}", file=sys.stderr)) \
        if rank == 0 and args.progress else None
    evaluation = Evaluation(dataclasses.replace(EvalSettings.of(args), amp=amp or "off"),
                            num_classes=info.num_classes, eps=eps, distributed=world > 1,
                            log_for=lambda title: BatchLog(partial / title.replace(" ", "-")), say=say)
    config = _report_config(args, info, evaluation, eps_source, amp_choice, device, threads, world,
                            per_class, calibration)
    result = evaluation.run(model, loader, info.class_names, config=config,
                            dataset={"name": info.name, "split": args.split},
                            recorded_clean=args.recorded_clean or (None, ""))
    if rank == 0:
        _write(args, result, partial, f"eps {fmt_budget(eps)}: {eps_source}")
    return result.report


def _write(args, result, partial: Path, budget_line: str) -> None:
    """The report's files, the per-image outcomes (--save-adv), and the summary on stdout."""
    report = result.report
    write_report(report, args.out, plots=args.plots, overwrite=args.overwrite,
                 outcomes=result.outcomes, sweep_outcomes=result.sweep_outcomes)
    if args.save_adv is not None:
        record_written_file(describe_outcomes(result.outcomes, report, result.attacks).save(args.save_adv))
    shutil.rmtree(partial, ignore_errors=True)
    print(format_summary(report))
    print(budget_line)
    print(f"report written to {args.out}"
          + (f"; per-image outcomes to {args.save_adv}" if args.save_adv else ""))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    interrupt_on_signals()  # SIGTERM, SIGHUP: as Ctrl-C (what was kept, how to resume)
    started_group = not runtime.is_initialized()
    cwd, threads = os.getcwd(), torch.get_num_threads()  # main() may be called from Python, several times
    try:
        args = resumed_args(parser, argv, args)
        run(args)
    except UsageError as err:
        advice = _kept_advice(args)
        _remove_if_nothing_kept(args)
        return usage_error("cwr_fast.evaluate", f"{err}{advice}")
    except KeyboardInterrupt:
        return _interrupted(args)
    except Exception as err:  # a failure after the first batch: one line, the traceback kept beside the batches
        return _failed(args, err)
    finally:
        _release_lock(args)
        os.chdir(cwd)
        torch.set_num_threads(threads)
        if started_group:
            runtime.cleanup()
    return 0


def _interrupted(args) -> int:
    _remove_if_nothing_kept(args)
    partial = progress_dir(args.out) if args.out and getattr(args, "lock_held", None) else None
    if partial is not None and partial.is_dir():
        return interrupted("cwr_fast.evaluate", f"the evaluated batches are kept in {partial}: "
                           f"continue with python -m cwr_fast.evaluate --resume {args.out}")
    return interrupted("cwr_fast.evaluate", "nothing was written: run the same command again")


def _failed(args, err: Exception) -> int:
    """A RunError (the disk full, ...): one line, exit 1. Anything else is a bug: re-raised with
    its traceback, or, once batches are kept, the traceback written beside them and one line."""
    advice = _kept_advice(args)
    reason = no_space_error(err) or (err if isinstance(err, RunError) else None)
    if reason is not None:  # disk full: no error.txt (no room for it); what was written is intact
        if not advice:
            _remove_if_nothing_kept(args)
        print(f"cwr_fast.evaluate: error: {reason}{advice}", file=sys.stderr)
        return 1
    if not advice:
        _remove_if_nothing_kept(args)
        raise err
    error_file = progress_dir(args.out) / _ERROR
    error_file.write_text(traceback.format_exc(), encoding="utf-8")
    print(f"cwr_fast.evaluate: error: {type(err).__name__}: {' '.join(str(err).split())} "
          f"(traceback in {error_file}){advice}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
