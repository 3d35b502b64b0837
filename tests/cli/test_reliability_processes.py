"""Issue 25, items 13, 19 and 28: a CLI stopped by SIGTERM or SIGHUP ends as on Ctrl-C (one line,
what was kept, exit 130); a training run refuses a second writer while the first runs; the
trainings `reproduce` starts die with it, even when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import TINY_TRAIN, interrupt_when, assert_refused, cli

from conftest import REPO


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _trainings_writing(out: Path) -> list[int]:
    """pids of cwr_fast.train processes whose command line names a path under `out`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in cmdline]
        if "cwr_fast.train" in words and any(str(out) in w for w in words):
            pids.append(int(proc.name))
    return pids


def _kill_all(parent: subprocess.Popen, out: Path) -> None:
    """A failed test leaves no process behind: the parent and every training writing under out."""
    if parent.poll() is None:
        parent.kill()
    for pid in _trainings_writing(out):
        os.kill(pid, signal.SIGKILL)


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_in_train_say_how_to_resume(sig, tmp_path):
    run = tmp_path / "run"
    proc = interrupt_when(["cwr_fast.train", *TINY_TRAIN, "--epochs", "50", "--ckpt-every", "1",
                            "--no-final-eval", "--out", run], "epoch 2/50", "stdout", sig=sig)
    assert_refused(proc, "interrupted", f"--resume {run}", code=130)
    assert (run / "checkpoints" / "last.pt").is_file()
    assert not (run / ".cwr_fast.lock").exists()


def test_a_second_writer_of_a_running_run_is_refused(tmp_path):
    run = tmp_path / "run"
    # 100,000 tiny epochs: still running when the second one starts, on any machine
    first = subprocess.Popen([sys.executable, "-m", "cwr_fast.train", *map(str, TINY_TRAIN), "--epochs",
                              "100000", "--ckpt-every", "1", "--no-final-eval", "--out", str(run)],
                             cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if "epoch 2/100000" in line:
                break
        log_before = (run / "train.log").read_text()
        second = cli("cwr_fast.train", "--resume", run, "--no-final-eval")
        assert_refused(second, "another cwr_fast.train", f"pid {first.pid}", str(run))
        assert (run / "train.log").read_text().startswith(log_before)  # only the first one writes
        assert "resuming" not in (run / "train.log").read_text()
    finally:
        first.terminate()
        first.communicate(timeout=120)


def test_reproduce_stopped_by_sigterm_stops_its_trainings(shared_data, tmp_path):
    """SIGTERM: one line, exit 130, no training left; and each training it started carries
    $CWR_FAST_PARENT_PID, which makes it die with reproduce even on SIGKILL (next test)."""
    out = tmp_path / "study"
    parent = subprocess.Popen([sys.executable, "-m", "cwr_fast.reproduce", "--tiny", "--data-dir",
                               str(shared_data), "--out", str(out)],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_until(lambda: _trainings_writing(out), 120), "no training started"
        children = _trainings_writing(out)
        environ = Path(f"/proc/{children[0]}/environ").read_bytes().split(b"\0")
        assert f"CWR_FAST_PARENT_PID={parent.pid}".encode() in environ
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 130, err[-2000:]
        assert "Traceback" not in err
        assert "cwr_fast.reproduce: interrupted" in err and "run the same command again" in err
        assert _wait_until(lambda: not _trainings_writing(out), 30), "a training outlived reproduce"
    finally:
        _kill_all(parent, out)


def test_a_training_dies_with_its_parent_even_on_sigkill(tmp_path):
    """A parent that sets $CWR_FAST_PARENT_PID (as reproduce does) and is then SIGKILLed: its
    training (100,000 epochs, hours) must be gone within seconds, not keep writing the run."""
    run = tmp_path / "run"
    script = ("import os, subprocess, sys, time\n"
              "env = dict(os.environ, CWR_FAST_PARENT_PID=str(os.getpid()))\n"
              f"subprocess.Popen([sys.executable, '-m', 'cwr_fast.train', *{[str(a) for a in TINY_TRAIN]!r}, "
              f"'--epochs', '100000', '--no-final-eval', '--out', {str(run)!r}], env=env)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=_env())
    try:
        assert _wait_until(lambda: (run / "train.log").is_file(), 120), "the training did not start"
        children = _trainings_writing(run)
        assert children
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert _wait_until(lambda: not _trainings_writing(run), 10), "the training outlived its parent"
    finally:
        _kill_all(parent, run)


def test_sigterm_in_evaluate_says_what_was_kept(mnist_checkpoint, shared_data, tmp_path):
    from helpers.cli import evaluate_args

    out = tmp_path / "out"
    args = evaluate_args(mnist_checkpoint, shared_data, out, "--attacks", "aa", "--limit", "200")
    proc = interrupt_when(["cwr_fast.evaluate", *args], "[cwr_fast.evaluate] attacks", "stderr",
                           sig=signal.SIGTERM)
    assert_refused(proc, "interrupted", code=130)
    assert not out.exists()


# ---- train refused or failing: what is left, and the exit status (issue 25, items 16, 18, 21, 28) ----

def _constant_channel_npz(path: Path) -> Path:
    import numpy as np

    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    x[..., 1] = 7  # a constant channel: std 0
    y = np.arange(40) % 4
    np.savez(path, train_images=x, train_labels=y, test_images=x, test_labels=y)
    return path


def test_a_train_refused_while_setting_up_leaves_no_run(tmp_path):
    """Item 16: a late refusal (here the batch does not fit the data) left a run directory that
    the fixed rerun refused ("--resume") and --resume could not continue (no last.pt)."""
    data = _constant_channel_npz(tmp_path / "c.npz")
    run = tmp_path / "run"
    common = ["--dataset", f"npz:{data}", "--epochs", "1", "--val-per-class", "2", "--progress", "off",
              "--no-plots", "--no-final-eval", "--out", run]
    assert_refused(cli("cwr_fast.train", *common), "--batch-size 128 does not fit the data")
    assert not run.exists()
    proc = cli("cwr_fast.train", *common, "--batch-size", "8")  # the fixed command, as it was
    assert proc.returncode == 0, proc.stderr[-3000:]
    # item 21: the constant channel is named once and normalised with std 1 (no traceback)
    assert "channel(s) [1] are constant" in proc.stderr and "Traceback" not in proc.stderr
    # item 18: resuming a finished run says so and redoes nothing
    log = (run / "train.log").read_text()
    again = cli("cwr_fast.train", "--resume", run)
    assert again.returncode == 0 and "is finished" in again.stdout, again.stderr[-2000:]
    assert (run / "train.log").read_text() == log


def test_a_diverged_training_exits_1(tmp_path):
    """Item 28: the docs say a run that fails after starting exits 1; divergence exited 2."""
    proc = cli("cwr_fast.train", *TINY_TRAIN, "--lr", "1e30", "--no-final-eval", "--out", tmp_path / "run")
    assert_refused(proc, "diverged", code=1)
