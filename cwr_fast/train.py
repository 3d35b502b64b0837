"""`python -m cwr_fast.train`: adversarial training with per-epoch class-wise robustness tracking,
ending in the class-wise robustness report of the evaluation engine.

    python -m cwr_fast.train                                  # the default run: PGD-AT of a small
                                                              # CNN on embedded MNIST, CPU, minutes
    python -m cwr_fast.train --dataset cifar10 --method trades --amp bf16
    python -m cwr_fast.train --resume runs/<run>              # continue (bit-identical on the CPU)
    torchrun --nproc_per_node 8 -m cwr_fast.train --dataset imagenet --data-dir /data

`--help` lists every option and the per-dataset presets. The parts live in cwr_fast/training/.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

from cwr_fast import runtime
from cwr_fast.errors import ConfigError, RunError, UsageError
from cwr_fast.options import (INTERRUPTED, fmt_budget, interrupt_on_signals, interrupted, threads_problem,
                              usage_error)
from cwr_fast.outputs import (MANIFEST, OutputError, OutputExists, check_output_dir, check_writable,
                              no_space_error, write_manifest, write_text, writer_lock)
from cwr_fast.training import checkpoint as ckpt
from cwr_fast.training.config import (OVERRIDABLE_ON_RESUME, TRAJECTORY_KEYS, TrainConfig,
                                      build_parser, default_run, default_run_dir, given, resolve)

REDUCED_NOTE = (f"note: the default mnist-embedded preset is a REDUCED CPU budget ({default_run()}), "
                "not Madry et al.'s 40 steps x ~100k iterations; expect lower robust accuracy "
                "than published.")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_for_resume(options: dict, saved: TrainConfig) -> TrainConfig:
    """The saved configuration, with the options that may change on resume taken from the command
    line (options: those given); a conflicting trajectory option is an error."""
    wanted = resolve({"dataset": saved.dataset, "method": saved.method, "schedule": saved.schedule,
                      **options})
    conflicts = [k for k in TRAJECTORY_KEYS
                 if k in options and not _same(getattr(wanted, k), getattr(saved, k))]
    if conflicts:
        raise ConfigError("--resume continues a run with its own settings; these differ from the "
                          "checkpoint's: " + ", ".join(
                              f"--{k.replace('_', '-')} (checkpoint {getattr(saved, k)!r}, given "
                              f"{getattr(wanted, k)!r})" for k in conflicts))
    cfg = TrainConfig.from_dict(saved.to_dict())
    for k in OVERRIDABLE_ON_RESUME:
        if k in options:
            setattr(cfg, k, getattr(wanted, k))
    return cfg


RUN_KIND = "training run"  # its kind in cwr_fast.outputs
# what a fresh start (--overwrite) removes of an earlier run; everything else in the run stays
_REPLACED_ON_OVERWRITE = ("metrics.jsonl", "summary.txt", "train.log", "calibration.json")


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path, overwrite: bool, resuming: bool) -> str | None:
    try:
        if resuming:  # the checkpoint was read already; runs of older versions have no manifest
            check_writable(run_dir)
        else:
            check_output_dir(run_dir, RUN_KIND, overwrite)
    except OutputExists:
        return (f"run directory {run_dir} holds a run: continue it with --resume {run_dir}, or pass "
                "--overwrite to start over in it")
    except OutputError as err:
        return str(err)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_manifest(run_dir, RUN_KIND, ["config.json", "checkpoints", *_REPLACED_ON_OVERWRITE])
    if not resuming:
        write_text(json.dumps(cfg.to_dict(), indent=1) + "\n", run_dir / "config.json")
        for stale in _REPLACED_ON_OVERWRITE:
            (run_dir / stale).unlink(missing_ok=True)
        for stale in (run_dir / "checkpoints").glob("*.pt"):
            stale.unlink()
    return None


def _remove_unstarted_run(run_dir: Path) -> None:
    """Removes what _prepare_run_dir and the set-up wrote into a run that never trained (no
    checkpoint), so that the fixed command can be run again as it was, without --resume or
    --overwrite; the directory goes too if nothing else is in it."""
    checkpoints = run_dir / "checkpoints"
    if any(checkpoints.glob("*.pt")):
        return
    for name in ("config.json", MANIFEST, *_REPLACED_ON_OVERWRITE):
        (run_dir / name).unlink(missing_ok=True)
    for directory in (checkpoints, run_dir):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty


def kept_on_interrupt(run_dir: Path) -> str:
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        return (f"{run_dir} keeps the run up to its last checkpoint ({last}): continue it with "
                f"python -m cwr_fast.train --resume {run_dir}")
    return f"no checkpoint was written yet: nothing to resume in {run_dir}"


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def _short_report(report, max_rows: int = 12) -> tuple:
    """(report, note): for many classes, a copy of the report (a classwise.report_data.Report, or a
    report dict read as one) whose per-class lists keep only the worst and best classes by
    worst-case robust accuracy (the summary must fit one screen), and a note saying so."""
    from cwr_fast.classwise.report_data import as_report

    report = as_report(report)
    records = report.worst_case.per_class
    if len(records) <= 20:
        return report, ""
    scored = sorted((r.robust_acc if r.robust_acc is not None else 2.0, r.class_index) for r in records)
    half = max_rows // 2
    keep = sorted({c for _, c in scored[:half]} | {c for _, c in scored[-half:]})

    def cut(section):
        return section.replaced(per_class=[section.per_class[c] for c in keep])

    short = report.replaced(clean=cut(report.clean), worst_case=cut(report.worst_case),
                            attacks=[cut(a) for a in report.attacks])
    return short, (f"(the {half} worst and {half} best of {len(records)} classes by worst-case "
                   "robust accuracy; every class is in the report)")


def summary_text(trainer, report: dict | None, wall: float) -> str:
    from cwr_fast.report import format_summary

    cfg = trainer.cfg
    L = trainer.loaders
    lines = [f"== cwr_fast.train: {cfg.method} / {cfg.arch} / {cfg.dataset}: done in {_fmt_time(wall)} "
             f"(world size {trainer.dist.world_size}, {trainer.device}) ==",
             f"run directory: {trainer.run_dir}",
             f"data: {L.num_train} training images, {L.num_val} validation images "
             f"({'held out of the training split' if cfg.val_split == 'holdout' else cfg.val_split})",
             f"training: {cfg.epochs} epochs x {trainer.steps_per_epoch} steps of {cfg.batch_size}; "
             f"eps {fmt_budget(cfg.eps)}"
             + (f", {cfg.steps} steps of {fmt_budget(cfg.alpha)}" if cfg.method != "standard" else "")
             + (f", eps ramp {cfg.eps_warmup_epochs:g} epochs" if cfg.eps_warmup_epochs else "")
             + f"; lr {cfg.lr:g} {cfg.schedule}; amp {cfg.amp}"
             + (f"; EMA {cfg.ema:g}" if cfg.ema else "")]
    if cfg.dataset == "mnist-embedded":
        lines.append(REDUCED_NOTE)
    last = next((r for r in reversed(trainer.history) if r.get("val")), None)
    if last is not None:
        v = last["val"]
        lines.append(f"last validation ({v['attack']}, eps {fmt_budget(cfg.eps)}): clean {100 * v['clean_mean']:.1f}%, "
                     f"robust mean {100 * v['robust_mean']:.1f}%, worst class {v['worst_class_name']} "
                     f"{100 * v['robust_worst']:.1f}%")
        b = trainer.best
        lines.append(f"best checkpoints: mean robust {100 * b['mean']['value']:.1f}% (epoch "
                     f"{b['mean']['epoch']}) -> checkpoints/best_mean.pt; worst-class robust "
                     f"{100 * b['worst']['value']:.1f}% (epoch {b['worst']['epoch']}) -> "
                     "checkpoints/best_worst.pt")
    lines.append(f"per-epoch metrics: {trainer.run_dir / 'metrics.jsonl'}"
                 + (f"; plot: {trainer.run_dir / 'per_class_robust_acc.png'}" if trainer.plots else ""))
    if report is not None:
        short, note = _short_report(report)
        lines += ["", format_summary(short)] + ([note] if note else []) + ["",
                  f"class-wise report: {trainer.run_dir / 'report' / 'report.md'} "
                  f"(report.json, per_class.csv, confusion matrices, plots)"]
    return "\n".join(lines)


def _configuration(args) -> tuple[TrainConfig, dict | None, Path | None]:
    """(the run's configuration, the checkpoint state of --resume or None, the run directory a
    resumed run continues in or None)."""
    if args.resume is None:
        return resolve(args), None, None
    path = ckpt.resolve_resume_path(args.resume)
    state = ckpt.load(path)
    options = given(args)
    cfg = config_for_resume(options, TrainConfig.from_dict(state["config"]))
    default_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return cfg, state, Path(cfg.out) if "out" in options else default_dir


def _claim_run_dir(stack: contextlib.ExitStack, cfg: TrainConfig, run_dir: Path | None,
                   overwrite: bool, resuming: bool, dist) -> Path:
    """The run directory, locked by rank 0 (one writer per run directory, from before anything in it
    changes) and prepared; the same path on every process. ConfigError when it cannot be used."""
    if dist.is_main:
        run_dir = run_dir or (Path(cfg.out) if cfg.out else default_run_dir(cfg))
        try:
            stack.enter_context(writer_lock(run_dir, "cwr_fast.train"))
            error = _prepare_run_dir(cfg, run_dir, overwrite, resuming)
        except OutputError as err:
            error = str(err)
    else:
        error = None
    run_dir, error = runtime.broadcast_object((run_dir, error))
    if error:
        raise ConfigError(error)
    return run_dir


def _logger(log_file: Path):
    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(msg + "\n")
    return log


def run(args) -> int:
    from cwr_fast.training.trainer import Trainer

    started = time.perf_counter()
    if threads_problem(args.threads):
        raise ConfigError(threads_problem(args.threads))
    cfg, state, run_dir = _configuration(args)
    dist = runtime.init(cfg.device)
    threads, threads_before = args.threads, torch.get_num_threads()
    if threads is None and cfg.arch == "small_cnn" and dist.device.type == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    stack = contextlib.ExitStack()
    try:
        run_dir = _claim_run_dir(stack, cfg, run_dir, args.overwrite, state is not None, dist)
        log = _logger(run_dir / "train.log")
        progress = {"on": True, "off": False}.get(args.progress, sys.stderr.isatty())
        try:
            trainer = Trainer(cfg, run_dir, dist, resume=state, progress=progress,
                              plots=cfg.plots, final_eval=cfg.final_eval, log=log)
        except BaseException:  # refused while setting up (data, model): leave no run behind
            if dist.is_main and state is None:
                _remove_unstarted_run(run_dir)
            raise
        if state is not None and trainer.global_step >= trainer.total_steps and \
                (run_dir / "summary.txt").is_file():
            saved = TrainConfig.from_dict(state["config"])
            changed = sorted(k for k in set(given(args)) & set(OVERRIDABLE_ON_RESUME)
                             if not _same(getattr(cfg, k), getattr(saved, k)))
            if not changed:
                if dist.is_main:
                    print(f"{run_dir} is finished (all {cfg.epochs} epochs, summary in "
                          f"{run_dir / 'summary.txt'}): nothing to resume", flush=True)
                return 0
            trainer.log(f"{run_dir} is finished: only its final report is redone (with "
                        f"{', '.join('--' + c.replace('_', '-') for c in changed)} given)")
        if state is not None:
            trainer.log(f"resuming {run_dir} at epoch {trainer.epoch + 1}, batch {trainer.batch} "
                        f"(step {trainer.global_step} of {trainer.total_steps})")
        else:
            trainer.log(f"cwr_fast.train: {cfg.method} on {cfg.dataset} ({trainer.loaders.num_train} "
                        f"train / {trainer.loaders.num_val} val images), {cfg.arch}, {cfg.epochs} epochs "
                        f"x {trainer.steps_per_epoch} steps, eps {fmt_budget(cfg.eps)}, device {trainer.device}"
                        f", {dist.world_size} process(es) -> {run_dir}")
        try:
            trainer.train()
            report = trainer.final_report() if cfg.final_eval else None
        except KeyboardInterrupt:
            return interrupted("cwr_fast.train", kept_on_interrupt(run_dir)) if dist.is_main else INTERRUPTED
        if dist.is_main:
            text = summary_text(trainer, report, time.perf_counter() - started)
            write_text(text + "\n", run_dir / "summary.txt")
            print(text, flush=True)
    finally:
        stack.close()
        runtime.cleanup()
        torch.set_num_threads(threads_before)  # main() may be called from Python, several times
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupt_on_signals()
    runtime.die_with_parent()
    try:
        return run(args)
    except UsageError as err:
        return usage_error("cwr_fast.train", err)
    except Exception as err:  # a RunError (a diverged loss, the disk full, also as torch.save's
        reason = no_space_error(err) or (err if isinstance(err, RunError) else None)  # RuntimeError)
        if reason is None:
            raise
        print(f"cwr_fast.train: error: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
