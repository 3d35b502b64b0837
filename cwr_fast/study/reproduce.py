"""`python -m cwr_fast.reproduce`: the paper's findings, measured end to end by this tool.

    python -m cwr_fast.reproduce --dataset mnist --data-dir ../shared/data      # CPU
    python -m cwr_fast.reproduce --dataset mnist,npz:../shared/data/cifar10-subset/cifar10_subset.npz \
        --data-dir ../shared/data --seeds 0,1,2                                 # CPU, < 90 min
    python -m cwr_fast.reproduce --dataset cifar10 --full                       # paper scale, GPU

Trains PGD-AT, TRADES and every class-wise defense (`python -m cwr_fast.train`, each in its own
process, `--jobs` at a time), evaluates each final model with FGSM, PGD, CW and AutoAttack on
the same class-balanced test images, runs the Temperature-PGD sweep on the two baselines, then
writes OUT/FINDINGS.md, its plots and findings.json (cwr_fast.study.findings computes every number
and verdict; cwr_fast.compare makes the defense table).

Several datasets (comma-separated) make one study each, in OUT/<dataset>/, and one FINDINGS.md
in OUT with all of them. --seeds trains the two baselines and the best defense (the highest
worst-class AutoAttack accuracy at the first seed) once more per further seed, in
runs/NAME@seedS, and the findings report mean +- std over the seeds and use the paired tests.

--val-attack aa:version=malt gives every training's per-epoch check, by which the class-wise
defenses (CWR, FRL) steer, AutoAttack's strength at a quarter of its cost or less (bench/bench_malt.py).
The findings' numbers stay on the final attacks, and the T sweep is Temperature-PGD by definition.

Interrupt it at any time and run the same command again: finished runs are kept, an unfinished
training resumes from its last checkpoint, and the evaluations that are missing are redone.

Budgets. The default (CPU) mode trains on a class-balanced subset with short PGD and fewer
epochs than the papers, and attacks 100 test images per class (MNIST) or the whole test split
(the CIFAR-10 subset, 87-114 per class), so that MNIST and the CIFAR-10 subset with three seeds
finish in under 90 minutes on 2 cores; FINDINGS.md says so. `--full` uses the dataset presets of
cwr_fast.train (paper-scale PGD-AT settings) and the whole test set; `--tiny` is a seconds-long
smoke test (the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cwr_fast.errors import RunError, UsageError
from cwr_fast.options import integer, interrupt_on_signals, interrupted, number, usage_error
from cwr_fast.outputs import check_output_dir, write_manifest
from cwr_fast.study.published import BASELINES

# name, training method, extra training arguments. BASELINES (pgd-at, trades) are the runs the
# defenses are compared with, each defense with the baseline of its method.
RUNS: list[tuple[str, str, list[str]]] = [
    ("pgd-at", "pgd-at", []),
    ("trades", "trades", []),
    ("pgd-at+calibration", "pgd-at", ["--calibrate"]),
    ("cwr", "pgd-at", ["--defense", "cwr"]),
    ("cwr+calibration", "pgd-at", ["--defense", "cwr", "--calibrate"]),
    ("frl", "trades", ["--defense", "frl"]),
    ("cfa", "trades", ["--defense", "cfa"]),
    ("wat", "trades", ["--defense", "wat"]),
]

STUDY_KIND = "reproduce study"  # its kind in cwr_fast.outputs
STUDY_FILES = ("runs", "logs", "sweeps", "compare", "plots", "FINDINGS.md", "findings.json", "timings.json")
SEED_MARK = "@seed"  # runs/NAME@seedS: the run NAME trained with another seed

# Budgets per mode. None = the dataset preset of cwr_fast.train / the whole split.
MODES = {
    "cpu": dict(train_per_class=300, val_per_class=50, epochs=8, steps=10, alpha=0.04,
                batch_size=50, eps_warmup_epochs=3.0, test_per_class=100, attack_steps=20,
                temperatures=(0.5, 1.0, 2.0, 5.0, 10.0)),
    "full": dict(train_per_class=None, val_per_class=None, epochs=None, steps=None, alpha=None,
                 batch_size=None, eps_warmup_epochs=None, test_per_class=None, attack_steps=40,
                 temperatures=(0.1, 0.5, 1.0, 2.0, 5.0, 10.0)),
    "tiny": dict(train_per_class=20, val_per_class=5, epochs=1, steps=2, alpha=0.1,
                 batch_size=25, eps_warmup_epochs=0.0, test_per_class=3, attack_steps=2,
                 temperatures=(1.0, 2.0)),
}
# colour images (the CIFAR-10 subset of ../shared/data: ~500 training images per class) on a CPU:
# the small CNN (a ResNet is too slow to train and attack there), all the subset's training
# images, PGD-5 at the dataset's budget, its whole test split (87-114 images per class)
RGB_MODES = {"cpu": dict(arch="small_cnn", train_per_class=450, val_per_class=50, epochs=10, steps=5,
                         alpha=0.0125, eps_warmup_epochs=3.0, test_per_class=None),
             "tiny": dict(arch="small_cnn")}


class ReproduceError(RunError):
    """A step failed; the message names its log (a RunError, and a RuntimeError as before)."""


@dataclass
class Job:
    name: str
    argv: list[str]
    log: Path
    done: Path                       # the job is finished when this file exists
    after: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)


@dataclass
class Study:
    """One dataset's study: its folder, the settings FINDINGS.md reports, its arguments."""
    folder: Path
    settings: dict
    args: argparse.Namespace
    info: object  # the dataset's DatasetInfo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cwr_fast.reproduce", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--dataset", default="mnist",
                   help="a dataset of cwr_fast.train, or several comma-separated (each a study in "
                        "OUT/<dataset>/; one FINDINGS.md); default mnist")
    p.add_argument("--data-dir", help="dataset root (default: $CWR_FAST_DATA, else ~/.cache/cwr_fast/data)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="paper-scale settings (GPU)")
    mode.add_argument("--tiny", action="store_true", help="a smoke test in seconds (CI)")
    p.add_argument("--arch", help="model (default: the dataset preset)")
    p.add_argument("--eps", type=number, help="Linf budget (default: the dataset preset)")
    p.add_argument("--runs", help=f"comma-separated subset of {','.join(n for n, _, _ in RUNS)} "
                   "(default all; the baselines are always included)")
    p.add_argument("--jobs", type=integer, help="runs trained at once (default: 2 on a CPU with >= 2 "
                   "cores, each with one thread; 1 on a GPU)")
    p.add_argument("--val-attack", metavar="SPEC",
                   help="every training's per-epoch check, by which the class-wise defenses steer, e.g. "
                        "aa:version=malt (default: PGD of the training's steps); the findings' numbers "
                        "stay on the final attacks")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/reproduce", help="output directory (default %(default)s)")
    p.add_argument("--seed", type=integer, default=0)
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: the first trains every run, the "
                   "others the baselines and the best defense again (default: --seed only)")
    return p


def parse_seeds(args) -> list[int]:
    if not args.seeds:
        return [args.seed]
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds needs distinct seeds, got {args.seeds!r}")
    return seeds


def study_name(dataset: str) -> str:
    """The folder of a dataset's study: its name, or the file stem of an npz:/folder: source."""
    if ":" in dataset:
        return Path(dataset.split(":", 1)[1]).stem or "data"
    return dataset


def run_name(name: str, seed: int, first_seed: int) -> str:
    return name if seed == first_seed else f"{name}{SEED_MARK}{seed}"


def selected_runs(text: str | None) -> list[tuple[str, str, list[str]]]:
    if not text:
        return list(RUNS)
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - {n for n, _, _ in RUNS}
    if unknown:
        raise UsageError(f"unknown run(s) {sorted(unknown)}; choose from {[n for n, _, _ in RUNS]}")
    return [r for r in RUNS if r[0] in names or r[0] in BASELINES]


def _optional(flag: str, value) -> list[str]:
    """['--flag', 'value'] for a set option, [] for None."""
    if value is None:
        return []
    if isinstance(value, (tuple, list)):
        return [flag, ",".join(f"{v:g}" for v in value)]
    return [flag, f"{value:g}" if isinstance(value, float) else str(value)]


def _scaled_options(name: str, epochs: int | None) -> list[str]:
    """CFA's class-wise margins start at epoch 10 (the authors' default, for runs of 100+ epochs);
    a shortened run starts them after its first tenth, our choice."""
    if name == "cfa" and epochs is not None:
        return ["--defense-opt", f"begin={max(1, epochs // 10)}"]
    return []


def plan(args, mode: str, info, cpu: bool, out: Path, seed: int | None = None,
         names: list[str] | None = None) -> tuple[list[Job], dict]:
    """The training and evaluation jobs of one dataset's study in `out`, and the settings
    FINDINGS.md reports. seed: the first seed (default) trains `names` (default all runs) and the
    sweeps; another seed trains `names` as runs/NAME@seedS."""
    from cwr_fast.training.config import preset_for

    dataset, num_classes = args.dataset, info.num_classes
    first_seed = parse_seeds(args)[0]
    tag = "" if out == Path(args.out) else f"{out.name}: "  # job names, when several datasets run
    seed = first_seed if seed is None else seed
    m = {**MODES[mode], **(RGB_MODES.get(mode, {}) if info.image_shape[0] == 3 else {})}
    arch = args.arch or m.get("arch") or preset_for(dataset)["arch"]
    steps = m["attack_steps"]
    limit = None if m["test_per_class"] is None else m["test_per_class"] * num_classes
    attacks = f"fgsm,pgd-{steps},cw-{steps},aa"
    common = ["--dataset", dataset, "--progress", "off", "--seed", str(seed),
              "--device", args.device]
    common += _optional("--data-dir", args.data_dir) + ["--arch", arch]
    common += _optional("--eps", args.eps) + _optional("--final-limit", limit)
    common += _optional("--val-attack", args.val_attack)
    for key in ("train_per_class", "val_per_class", "epochs", "steps", "alpha", "batch_size",
                "eps_warmup_epochs"):
        common += _optional("--" + key.replace("_", "-"), m[key])
    env = {"OMP_NUM_THREADS": "1"} if cpu and (args.jobs or 1) > 1 else {}
    if env:
        common += ["--threads", "1"]
    jobs = []
    runs = [(name, method, extra + _scaled_options(name, m["epochs"])) for name, method, extra
            in selected_runs(args.runs) if names is None or name in names]
    for base_name, method, extra in runs:
        name = run_name(base_name, seed, first_seed)
        run_dir = out / "runs" / name
        # the baselines are also attacked with torchattacks' AutoAttack, for FINDINGS.md's comparison
        final = ["--final-attacks", attacks + (",aa-ta" if name in BASELINES else "")]
        argv = [sys.executable, "-m", "cwr_fast.train", "--method", method, *extra, *common, *final,
                "--out", str(run_dir)]
        jobs.append(Job(f"{tag}train {name}", argv, out / "logs" / f"train-{name}.log",
                        run_dir / "summary.txt", env=env))
    for name in BASELINES if seed == first_seed else ():
        run_dir = out / "runs" / name
        argv = [sys.executable, "-m", "cwr_fast.evaluate", "--dataset", dataset,
                "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--checkpoint-key", "model",
                "--attacks", f"pgd-{steps}", "--tpgd-sweep", ",".join(f"{t:g}" for t in m["temperatures"]),
                "--sweep-steps", str(steps), "--device", args.device, "--seed", str(seed),
                "--out", str(out / "sweeps" / name), "--overwrite", "--no-progress"]
        argv += _optional("--data-dir", args.data_dir) + _optional("--eps", args.eps)
        argv += _optional("--limit", limit) + ["--arch", arch]
        jobs.append(Job(f"{tag}sweep {name}", argv, out / "logs" / f"sweep-{name}.log",
                        out / "sweeps" / name / "report.json", after=(f"{tag}train {name}",), env=env))
    settings = {"mode": mode, "dataset": dataset, "arch": arch, "attacks": attacks, "attack_steps": steps,
                "temperatures": list(m["temperatures"]), "test_per_class": m["test_per_class"],
                **{k: m[k] for k in ("train_per_class", "val_per_class", "epochs", "steps", "alpha",
                                      "batch_size", "eps_warmup_epochs")},
                "runs": [{"name": n, "method": meth, "extra": extra} for n, meth, extra in runs],
                "seed": seed, "seeds": parse_seeds(args), "seed_runs": {}}
    if args.val_attack is not None:  # recorded only when given: the default findings.json is unchanged
        settings["val_attack"] = args.val_attack
    return jobs, settings


_KEPT_ON_RESUME = ("--data-dir", "--device", "--final-attacks", "--final-limit", "--threads")


def _resume_args(job: Job) -> list[str]:
    """An interrupted training continues from its last checkpoint (with this call's evaluation
    settings, which cwr_fast.train lets a resume change)."""
    if "train " not in job.name:
        return job.argv
    run_dir = Path(job.argv[job.argv.index("--out") + 1])
    if (run_dir / "checkpoints" / "last.pt").is_file():
        kept = [a for flag in _KEPT_ON_RESUME if flag in job.argv
                for a in (flag, job.argv[job.argv.index(flag) + 1])]
        return [job.argv[0], "-m", "cwr_fast.train", "--resume", str(run_dir), "--progress", "off", *kept]
    return job.argv + (["--overwrite"] if run_dir.exists() else [])


def run_jobs(jobs: list[Job], parallel: int, log=print) -> dict[str, float]:
    """Runs the jobs `parallel` at a time, respecting `after`; skips finished ones. Returns the
    seconds each job took."""
    from cwr_fast.runtime import PARENT_ENV  # the trainings die with this process

    pending = [j for j in jobs if not j.done.is_file()]
    finished = {j.name for j in jobs if j.done.is_file()}
    for j in jobs:
        if j.done.is_file():
            log(f"  {j.name}: already done ({j.done})")
    running: dict[str, tuple[Job, subprocess.Popen, float, object]] = {}
    seconds: dict[str, float] = {}
    total, started_all = len(pending), time.perf_counter()
    try:
        while pending or running:
            for j in list(pending):
                if len(running) >= parallel:
                    break
                if all(a in finished for a in j.after):
                    pending.remove(j)
                    j.log.parent.mkdir(parents=True, exist_ok=True)
                    f = open(j.log, "a", encoding="utf-8")
                    argv = _resume_args(j)
                    f.write("$ " + " ".join(argv) + "\n")
                    f.flush()
                    proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                            env={**os.environ, **j.env, PARENT_ENV: str(os.getpid())})
                    running[j.name] = (j, proc, time.perf_counter(), f)
            if not running:
                missing = [j.name for j in pending]
                raise ReproduceError(f"jobs {missing} wait on jobs that did not finish")
            time.sleep(0.5)
            for name, (j, proc, t0, f) in list(running.items()):
                if proc.poll() is None:
                    continue
                f.close()
                del running[name]
                if proc.returncode != 0 or not j.done.is_file():
                    raise ReproduceError(f"{name} failed (exit {proc.returncode}); its log: {j.log}\n"
                                         + _tail(j.log))
                seconds[name] = time.perf_counter() - t0
                finished.add(name)
                log(f"  [{len(seconds)}/{total}] {name}: {seconds[name]:.0f} s "
                    f"(elapsed {time.perf_counter() - started_all:.0f} s)")
    finally:
        for j, proc, _, f in running.values():
            proc.terminate()
            proc.wait()
            f.close()
    return seconds


def record_time(path: Path, seconds: dict[str, float], wall: float) -> dict:
    """Adds this call's job times and wall time to OUT/timings.json (a study finished over several
    calls reports the time of all of them) and returns the totals."""
    from cwr_fast.outputs import write_text

    times = json.loads(path.read_text()) if path.is_file() else {"jobs": {}, "calls": []}
    times["jobs"].update({k: round(v, 1) for k, v in seconds.items()})
    if seconds:  # a call that only rewrites FINDINGS.md does not count
        times["calls"].append(round(wall, 1))
    write_text(json.dumps(times, indent=1) + "\n", path)
    return {"jobs": times["jobs"], "wall": sum(times["calls"]), "calls": len(times["calls"])}


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def best_defense(out: Path, settings: dict) -> str | None:
    """The defense with the highest worst-class AutoAttack accuracy (then mean) at the first seed."""
    from cwr_fast.report import read_report
    from cwr_fast.study.findings import class_record_summary

    best, key = None, None
    for run in settings["runs"]:
        if run["name"] in BASELINES:
            continue
        report = read_report(out / "runs" / run["name"] / "report" / "report.json")
        summary = class_record_summary(report, "aa")
        if key is None or (summary["worst"], summary["mean"]) > key:
            best, key = run["name"], (summary["worst"], summary["mean"])
    return best


def plan_studies(args, mode: str) -> tuple[dict[str, Study], list[Job], bool]:
    """Checks the arguments (UsageError: nothing has been written yet) and plans every dataset's
    study at the first seed: ({dataset: Study}, its jobs, whether it runs on the CPU)."""
    from cwr_fast.data import dataset_info

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.eps is not None and not 0 <= args.eps <= 1:
        raise UsageError(f"--eps must lie in [0, 1] (pixel units), got {args.eps:g}")
    parse_seeds(args)
    # an earlier study in --out is continued; anything else there is refused
    check_output_dir(args.out, STUDY_KIND, overwrite=False, resumable=True)
    datasets = [d.strip() for d in args.dataset.split(",") if d.strip()]
    if len({study_name(d) for d in datasets}) != len(datasets):
        raise UsageError(f"--dataset names a dataset twice: {args.dataset}")
    infos = {d: dataset_info(d) for d in datasets}
    if args.val_attack is not None:  # as each training will check it, before any job starts
        from cwr_fast.training.config import check_val_attack, preset_for

        for info in infos.values():
            check_val_attack(args.val_attack, preset_for(info.name)["eps"] if args.eps is None else args.eps,
                             info.num_classes)
    import torch

    from cwr_fast.runtime import resolve_device
    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    if args.jobs is None:
        args.jobs = min(2, os.cpu_count() or 1) if cpu else 1
    out = Path(args.out)
    studies, jobs = {}, []
    for d in datasets:
        folder = out if len(datasets) == 1 else out / study_name(d)
        study_args = argparse.Namespace(**{**vars(args), "dataset": d})
        d_jobs, settings = plan(study_args, mode, infos[d], cpu, folder)
        settings["device"] = f"CPU, {os.cpu_count()} cores" if cpu else torch.cuda.get_device_name(device)
        studies[d] = Study(folder, settings, study_args, infos[d])
        jobs += d_jobs
    return studies, jobs, cpu


def seed_jobs(studies: dict[str, Study], mode: str, cpu: bool, seeds: list[int]) -> list[Job]:
    """The further seeds' jobs: the baselines and each study's best defense, known only once the
    first seed's defenses are measured (recorded in each study's settings["seed_runs"])."""
    jobs = []
    for study in studies.values():
        best = best_defense(study.folder, study.settings)
        names = list(BASELINES) + ([best] if best else [])
        for seed in seeds[1:]:
            jobs += plan(study.args, mode, study.info, cpu, study.folder, seed=seed, names=names)[0]
        study.settings["seed_runs"] = {n: [run_name(n, s, seeds[0]) for s in seeds] for n in names}
    return jobs


def write_documents(out: Path, studies: dict[str, Study], timing: dict) -> Path:
    """Each study's FINDINGS.md (and, for several datasets, the combined one in OUT)."""
    # imported here, once the runs are done: planning and running need none of the document code
    from cwr_fast.study.document import write_combined_findings, write_findings

    paths = []
    for study in studies.values():
        study.settings["seconds"] = timing
        paths.append(write_findings(study.folder, study.settings))
    return paths[0] if len(paths) == 1 else write_combined_findings(out, paths, timing)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupt_on_signals()
    mode = "full" if args.full else "tiny" if args.tiny else "cpu"
    try:
        studies, jobs, cpu = plan_studies(args, mode)
    except UsageError as err:
        return usage_error("cwr_fast.reproduce", err)
    out, seeds, datasets = Path(args.out), parse_seeds(args), list(studies)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, STUDY_KIND, STUDY_FILES + tuple(study_name(d) for d in datasets if len(datasets) > 1))
    for study in studies.values():
        study.folder.mkdir(parents=True, exist_ok=True)
        if study.folder != out:
            write_manifest(study.folder, STUDY_KIND, STUDY_FILES)
    trainings = sum(len(study.settings["runs"]) for study in studies.values())
    print(f"cwr_fast.reproduce: {mode} mode, {', '.join(datasets)}, {trainings} trainings and "
          f"{len(BASELINES) * len(datasets)} sweeps at seed {seeds[0]}"
          + (f", then the baselines and the best defense at seeds {','.join(map(str, seeds[1:]))}" if len(seeds) > 1 else "")
          + f", {args.jobs} at a time -> {out}", flush=True)
    started = time.perf_counter()
    log = lambda m: print(m, flush=True)  # noqa: E731
    try:
        seconds = run_jobs(jobs, args.jobs, log=log)
        if len(seeds) > 1:
            jobs = seed_jobs(studies, mode, cpu, seeds)
            seconds.update(run_jobs(jobs, args.jobs, log=log))
    except RunError as err:
        print(f"cwr_fast.reproduce: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: the running trainings were stopped
        done = sum(j.done.is_file() for j in jobs)
        return interrupted("cwr_fast.reproduce", f"{done} of {len(jobs)} jobs of this stage finished and "
                           f"are kept in {out}, and each stopped training keeps its last checkpoint: "
                           "run the same command again to continue")
    timing = record_time(out / "timings.json", seconds, time.perf_counter() - started)
    path = write_documents(out, studies, timing)
    print(f"findings written to {path} ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
