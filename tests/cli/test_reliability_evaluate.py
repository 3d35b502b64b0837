"""Issue 25, evaluate's items 3, 12, 14, 15 and 17: --resume never mixes models or datasets, follows
a moved OUT.partial, a failed run says how to go on, a second writer is refused, --threads. Each runs
the CLI in a subprocess as a user would, in the user's own folder, hashed before and after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import assert_refused, cli, snapshot

from cwr_fast.evaluate import choose_threads

# A --model factory: a linear model whose weights it loads from w.pt beside it (what the checkpoint
# fingerprint cannot see). With the file `crash` in the working folder its forward fails after a few
# calls (a failure after the first batches); while `slow` is there it waits (a run still going).
FACTORY = '''
import os, time
from pathlib import Path
import torch

class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if os.path.exists("crash") and self.calls > 4:
            raise RuntimeError("the GPU fell off the bus")
        deadline = time.monotonic() + 120
        while os.path.exists("slow") and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.fc(x.flatten(1))

def make(num_classes=10, **kw):
    model = Linear()
    model.load_state_dict(torch.load(Path(__file__).with_name("w.pt"), weights_only=True))
    return model
'''


def _weights(seed: int) -> dict:
    torch.manual_seed(seed)
    return torch.nn.Linear(784, 10).state_dict()


@pytest.fixture
def user(tmp_path) -> Path:
    """The user's folder: the factory, its weights and an npz dataset of 40 images, 10 classes."""
    root = tmp_path / "user"
    (root / "data").mkdir(parents=True)
    (root / "m2.py").write_text(FACTORY)
    torch.save({"fc." + k: v for k, v in _weights(0).items()}, root / "w.pt")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 28, 28), generator=gen, dtype=torch.uint8).numpy()
    labels = (torch.arange(40) % 10).numpy()
    np.savez(root / "data" / "mine.npz", test_images=images, test_labels=labels)
    return root


def args(out, *extra) -> list[str]:
    """Relative paths, as typed in the user's folder: 4 batches of 5 images (limit 20)."""
    return ["--model", "m2.py:make", "--dataset", "npz:data/mine.npz", "--normalize", "none",
            "--attacks", "fgsm", "--eps", "0.1", "--limit", "20", "--batch-size", "5", "--no-plots",
            "--no-progress", "--out", out, *extra]


def batches(partial: Path) -> list[Path]:
    return sorted(partial.glob("attacks/batch-*.pt"))


def failed_run(user: Path, out: str = "km") -> Path:
    """A run that fails after its first batches (RuntimeError in the model): OUT.partial is kept."""
    (user / "crash").write_text("")
    proc = cli("cwr_fast.evaluate", *args(out), cwd=user)
    (user / "crash").unlink()
    line = assert_refused(proc, "RuntimeError", "the GPU fell off the bus", f"--resume {user / out}",
                          "--overwrite to start over", code=1)
    partial = user / f"{out}.partial"
    assert 1 <= len(batches(partial)) < 4, line
    assert (partial / "error.txt").read_text().startswith("Traceback"), "the traceback is kept"
    assert not (partial / "lock").exists()
    return partial


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def per_class(out: Path) -> list:
    r = report(out)
    return [r["clean"]["per_class"], [a["per_class"] for a in r["attacks"]]]


# ---- 15. a run that fails after its first batch says how to go on; --resume then works --------------

def test_a_failed_run_says_how_to_go_on_and_resumes_to_the_whole_report(user, tmp_path):
    whole = cli("cwr_fast.evaluate", *args(tmp_path / "whole"), cwd=user)
    assert whole.returncode == 0, whole.stderr[-3000:]
    partial = failed_run(user)
    blocked = cli("cwr_fast.evaluate", *args("km"), cwd=user)   # the fixed rerun: told both ways out
    assert_refused(blocked, "holds an interrupted evaluation", "--resume", "--overwrite")
    done = cli("cwr_fast.evaluate", "--resume", "km", cwd=user)
    assert done.returncode == 0, done.stderr[-3000:]
    assert per_class(user / "km") == per_class(tmp_path / "whole")
    assert not partial.exists()


def test_a_duplicate_sweep_value_is_refused_before_any_work(user):
    before = snapshot(user)
    for flag in ("--eps-sweep", "--tpgd-sweep"):
        proc = cli("cwr_fast.evaluate", *args("km", flag, "0.1,0.2,0.1"), cwd=user)
        assert_refused(proc, flag, "0.1", "more than once")
    assert snapshot(user) == before


# ---- 3. --resume never mixes two models or two datasets -------------------------------------------

def test_resume_refuses_other_weights_loaded_by_the_factory(user):
    partial = failed_run(user)
    torch.save({"fc." + k: v for k, v in _weights(1).items()}, user / "w.pt")  # m2.py is unchanged
    before = snapshot(user)
    proc = cli("cwr_fast.evaluate", "--resume", "km", cwd=user)
    line = assert_refused(proc, "weights", "differ", "--overwrite to start over")
    assert "remove" not in line
    assert snapshot(user) == before, "the kept batches are kept"
    torch.save({"fc." + k: v for k, v in _weights(0).items()}, user / "w.pt")  # restored: resumes
    done = cli("cwr_fast.evaluate", "--resume", "km", cwd=user)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not partial.exists()


@pytest.mark.parametrize("changed", ["dataset", "factory"])
def test_resume_refuses_a_changed_dataset_or_model_file(user, changed):
    failed_run(user)
    if changed == "dataset":
        with np.load(user / "data" / "mine.npz") as f:
            images, labels = f["test_images"], f["test_labels"]
        np.savez(user / "data" / "mine.npz", test_images=images, test_labels=(labels + 1) % 10)
        words = ("the dataset", "mine.npz", "other content")
    else:
        (user / "m2.py").write_text(FACTORY.replace("784, 10", "28 * 28, 10"))
        words = ("the model file", "m2.py", "other content")
    before = snapshot(user)
    proc = cli("cwr_fast.evaluate", "--resume", "km", cwd=user)
    assert_refused(proc, *words, "--overwrite to start over")
    assert snapshot(user) == before


# ---- 14. paths resolved once: a moved OUT.partial, resumed from another folder ---------------------

def test_resume_follows_a_moved_partial_from_another_folder(user, tmp_path):
    failed_run(user)
    (user / "moved").mkdir()
    shutil.move(str(user / "km.partial"), str(user / "moved" / "km.partial"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli("cwr_fast.evaluate", "--resume", user / "moved" / "km", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (user / "moved" / "km" / "report.json").is_file()
    assert not (user / "moved" / "km.partial").exists()
    assert not (user / "km").exists() and not any(elsewhere.iterdir())
    assert report(user / "moved" / "km")["dataset"]["num_images"] == 20


def test_resume_with_a_relative_path_from_another_folder(user, tmp_path):
    failed_run(user)
    (user / "sub").mkdir()
    proc = cli("cwr_fast.evaluate", "--resume", "../km", cwd=user / "sub")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (user / "km" / "report.json").is_file() and not (user / "sub" / "km").exists()


# ---- 17. a second evaluate into the same --out is refused while the first runs ---------------------

def test_a_second_writer_is_refused_while_the_first_runs(user):
    (user / "slow").write_text("")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen([sys.executable, "-m", "cwr_fast.evaluate", *args("km")], cwd=user, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (user / "km.partial" / "lock").is_file():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for extra in ([], ["--overwrite"]):
            proc = cli("cwr_fast.evaluate", *args("km", *extra), cwd=user)
            assert_refused(proc, f"another cwr_fast.evaluate (pid {first.pid}) is writing", str(user / "km"))
        assert_refused(cli("cwr_fast.evaluate", "--resume", "km", cwd=user), f"pid {first.pid}")
        assert (user / "km.partial" / "command.json").is_file(), "the first run's progress is untouched"
    finally:
        (user / "slow").unlink()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert (user / "km" / "report.json").is_file() and not (user / "km.partial").exists()


def test_a_stale_lock_does_not_block(user):
    partial = failed_run(user)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (partial / "lock").write_text(f"{dead.pid}\n")
    proc = cli("cwr_fast.evaluate", "--resume", "km", cwd=user)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---- 12. --threads, and a good default --------------------------------------------------------------

def test_threads_default_and_option(user):
    env = dict(os.environ, OMP_NUM_THREADS="4",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = lambda *a: subprocess.run([sys.executable, "-m", "cwr_fast.evaluate", *a], cwd=user, env=env,
                                    capture_output=True, text=True, timeout=300)
    proc = run(*args("small"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = report(user / "small")["config"]
    assert config["threads"] == 1 and "small model" in config["threads_choice"]
    proc = run(*args("two", "--threads", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report(user / "two")["config"]["threads"] == 2
    assert_refused(run(*args("zero", "--threads", "0")), "--threads must be >= 1")
    assert not (user / "zero").exists()


def test_threads_choice_for_large_inputs_or_models():
    default = torch.get_num_threads()
    small, big = torch.nn.Linear(10, 10), torch.nn.Linear(3000, 2000)
    cpu = torch.device("cpu")
    assert choose_threads(None, cpu, small, (3, 224, 224)) == (default, "torch's default")
    assert choose_threads(None, cpu, big, (3, 32, 32)) == (default, "torch's default")
    assert choose_threads(3, cpu, small, (1, 28, 28)) == (3, "--threads")
    assert choose_threads(None, cpu, small, (1, 28, 28))[0] == 1 or default == 1
