"""Issue 25, round 3, own inputs (docs/RELIABILITY.md, "Round 3, own inputs"): each defect found
by the inputs invented for this round, and the round's two leftovers (`train --resume` keeps the
original --no-plots, and --no-final-eval; a full disk while the beton writer writes is one
NoSpaceError line, exit 1, no partial file). The CLIs run in a subprocess, as a user runs them, in the user's folder, hashed
before and after."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.cli import TINY_TRAIN, interrupt_when, assert_refused, cli, snapshot
from helpers.cli import BETON, needs_ffcv

from conftest import REPO

from cwr_fast.models import build_model

EVALUATE = ["--attacks", "fgsm", "--eps", "0.1", "--limit", "20", "--no-plots", "--no-progress",
            "--threads", "1"]


@pytest.fixture
def user(tmp_path):
    """The user's folder: a small_cnn state dict and an npz of 40 random 28x28 images, 10 classes."""
    torch.manual_seed(0)
    torch.save(build_model("small_cnn", 10, (0.1307,), (0.3081,), 1).state_dict(), tmp_path / "m.pt")
    gen = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", test_images=gen.integers(0, 256, (40, 28, 28), dtype=np.uint8),
             test_labels=np.arange(40) % 10)
    return tmp_path


def refused(user, module: str, *args, words=(), code: int = 2) -> str:
    """Runs the CLI in the user's folder: refused with one line holding `words`, nothing changed."""
    before = snapshot(user)
    line = assert_refused(cli(module, *args, cwd=user), *words, code=code)
    assert snapshot(user) == before
    return line


# ---- the leftovers ----------------------------------------------------------------------------------

def test_resume_keeps_the_original_runs_no_plots_and_no_final_eval(tmp_path):
    run = tmp_path / "run"  # TINY_TRAIN holds --no-plots
    args = [*TINY_TRAIN, "--no-final-eval", "--epochs", "6", "--ckpt-every", "1", "--final-attacks",
            "fgsm", "--final-limit", "10", "--out", run]
    stopped = interrupt_when(["cwr_fast.train", *args], "epoch 1/6", "stdout")
    assert_refused(stopped, "interrupted", f"--resume {run}", code=130)
    resumed = cli("cwr_fast.train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(run.rglob("*.png")) == [], "--no-plots of the original run ignored on --resume"
    assert not (run / "report").exists(), "--no-final-eval of the original run ignored on --resume"
    assert "plot:" not in (run / "summary.txt").read_text()  # no plot is named when none was drawn
    # told otherwise: the finished run's final report is made, still without plots
    report = cli("cwr_fast.train", "--resume", run, "--final-eval")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "only its final report is redone" in report.stdout
    assert (run / "report" / "report.json").is_file() and sorted(run.rglob("*.png")) == []


FULL_DISK = """
import builtins, errno, os, sys
parent, where = os.getpid(), sys.argv.pop(1)
real_open = builtins.open

class Full:  # a file on a full disk: every write fails with ENOSPC
    def __init__(self, f): self._f = f
    def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __getattr__(self, name): return getattr(self._f, name)
    def __enter__(self): return self
    def __exit__(self, *exc): self._f.close()

def full_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    temporary = os.path.basename(str(file)).startswith(".cwr_fast-tmp-") and any(c in mode for c in "wa+")
    return Full(f) if temporary and (where == "parent" or os.getpid() != parent) else f

builtins.open = full_open
from cwr_fast.data.beton import main
sys.exit(main(sys.argv[1:]))
"""


@needs_ffcv
@pytest.mark.parametrize("where", ["parent", "worker"])
def test_beton_full_disk_is_one_line_exit_1_and_leaves_nothing(user, where):
    """The disk fills up in the writing process (header, metadata) or in a writer worker (the
    images): the same line as train/evaluate, exit 1 (a failure after starting), no partial file."""
    before = snapshot(user)
    out = user / "my data.beton"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, where, "--dataset", "npz:mine.npz",
                           "--split", "test", "--out", str(out), "--num-workers", "1"], cwd=user,
                          env=env, capture_output=True, text=True, timeout=120)
    line = assert_refused(proc, f"no space left while writing {out}; free space and run the same "
                          "command again", code=1)
    assert line.startswith(f"{BETON}: error: ")
    assert snapshot(user) == before  # no temporary, no partial .beton


@needs_ffcv
def test_beton_num_workers_out_of_range_is_refused(user):
    """100,000 workers hung (processes started one by one, past any timeout; -5 silently meant all
    CPUs: the same check)."""
    refused(user, BETON, "--dataset", "npz:mine.npz", "--split", "test", "--out", "o.beton",
            "--num-workers", "100000", words=["--num-workers", "must be -1", "100000"])


# ---- checkpoints that are not one ---------------------------------------------------------------------

@pytest.mark.parametrize("case, words", [
    ("directory", ["is a directory", "give the weights file"]),
    ("empty", ["is empty (0 bytes)"]),
    ("text", ["not a file written by torch.save", "KeyError"]),
])
def test_a_checkpoint_that_is_not_one_says_what_it_is(user, case, words):
    """Before: 'checkpoint not found' for a directory that exists; 'with weights_only=True: ' (an
    empty reason) for an empty file; '...: 101' for a text file."""
    path = user / "ck.pt"
    if case == "directory":
        path.mkdir()
    else:
        path.write_text("" if case == "empty" else "hello\n")
    refused(user, "cwr_fast.evaluate", "--arch", "small_cnn", "--checkpoint", "ck.pt", "--dataset",
            "mnist-embedded", "--out", "r", *EVALUATE, words=[str(path), *words])


def test_a_stray_label_names_the_class_count_it_made(user):
    """A label 12 among 0..9 makes 13 classes: the checkpoint mismatch says where 13 came from."""
    data = np.load(user / "mine.npz")
    labels = data["test_labels"].copy()
    labels[3] = 12
    np.savez(user / "mine.npz", test_images=data["test_images"], test_labels=labels)
    refused(user, "cwr_fast.evaluate", "--arch", "small_cnn", "--checkpoint", "m.pt", "--dataset",
            "npz:mine.npz", "--out", "r", *EVALUATE,
            words=["does not match", "the 13 classes of npz:mine.npz (labels 0..12)"])


# ---- values out of range: refused up front, naming the option ----------------------------------------

@pytest.mark.parametrize("tool, args, words", [
    ("cwr_fast.evaluate", ["--seed", str(2 ** 70)], ["--seed", "< 2**63"]),  # "Overflow when unpacking long long"
    ("cwr_fast.train", ["--seed", "-1"], ["--seed", ">= 0"]),  # a numpy traceback after training began
    ("cwr_fast.evaluate", ["--threads", "100000"], ["--threads 100000", "CPUs"]),  # MemoryError traceback
    ("cwr_fast.train", ["--loader", "torch", "--num-workers", "-3"], ["--num-workers", "-3"]),  # DataLoader traceback, run dir left
    ("cwr_fast.train", ["--schedule", "piecewise", "--milestones", "100"], ["--milestones 100", "never decay"]),
    ("cwr_fast.train", ["--milestones", "0.5"], ["--milestones belongs to --schedule piecewise", "cosine"]),
    ("cwr_fast.evaluate", ["--out", ""], ["--out is empty"]),  # the working folder
])
def test_values_that_cannot_work_are_refused_up_front(user, tool, args, words):
    common = (["--arch", "small_cnn", "--checkpoint", "m.pt", "--dataset", "mnist-embedded", *EVALUATE]
              if tool == "cwr_fast.evaluate" else [*TINY_TRAIN, "--no-final-eval", "--threads", "1"])
    out = [] if "--out" in args else ["--out", "run"]
    line = refused(user, tool, *common, *out, *args, words=words)
    assert "Traceback" not in line


def test_a_single_class_says_why_nothing_can_be_attacked(user):
    """Every label 0: the attack check ended in an empty reason ('needs at least 2 classes and the
    data has 1: ')."""
    data = np.load(user / "mine.npz")
    np.savez(user / "one.npz", train_images=data["test_images"], train_labels=np.zeros(40, np.int64),
             test_images=data["test_images"], test_labels=np.zeros(40, np.int64))
    line = refused(user, "cwr_fast.train", "--dataset", "npz:one.npz", "--arch", "small_cnn",
                   "--epochs", "1", "--batch-size", "10", "--val-per-class", "2", "--progress", "off",
                   "--threads", "1", "--out", "run", words=["needs at least 2 classes", "every label is 0"])
    assert not line.rstrip().endswith(":")


# ---- outputs of one run never land on each other ------------------------------------------------------

def test_save_adv_cannot_replace_the_reports_own_outcomes(user):
    """--save-adv r/outcomes.npz silently replaced the report's paired-comparison bits with the
    per-image outcomes (or the other way round)."""
    refused(user, "cwr_fast.evaluate", "--arch", "small_cnn", "--checkpoint", "m.pt", "--dataset",
            "mnist-embedded", *EVALUATE, "--out", "r", "--save-adv", "r/../r/outcomes.npz",
            words=["--save-adv", "the report's own outcomes.npz"])


# ---- the user's model code -----------------------------------------------------------------------------

LAZY = """import torch
def net(num_classes=10, **kw):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))
"""


def test_a_factory_with_lazy_modules_is_evaluated_leaving_no_pycache(user, monkeypatch):
    """nn.LazyLinear: 'Can't access the shape of an uninitialized parameter' traceback before. And
    importing the user's model file wrote __pycache__/ beside it (where Python writes bytecode, as
    it does unless PYTHONDONTWRITEBYTECODE is set)."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    (user / "lazy.py").write_text(LAZY)
    before = snapshot(user)
    proc = cli("cwr_fast.evaluate", "--model", "lazy.py:net", "--normalize", "none", "--dataset",
               "npz:mine.npz", *EVALUATE, "--out", "r", cwd=user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (user / "r" / "report.json").is_file()
    assert {k: v for k, v in snapshot(user).items() if not k.startswith("r")} == before


@pytest.mark.parametrize("source, words", [
    ("def make(:\n", ["cannot load --model file f.py", "SyntaxError", "line 1"]),
    ("import not_installed_pkg_xyz\n", ["cannot load --model file f.py", "not_installed_pkg_xyz", "line 1"]),
    ("def make(**kw):\n    raise RuntimeError('boom')\n", ["the model factory make", "RuntimeError: boom", "line 2"]),
])
def test_errors_in_the_users_model_file_are_one_line_naming_its_line(user, source, words):
    (user / "f.py").write_text(source)
    refused(user, "cwr_fast.evaluate", "--model", "f.py:make", "--normalize", "none", "--dataset",
            "npz:mine.npz", *EVALUATE, "--out", "r", words=words)
