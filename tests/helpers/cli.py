"""Helpers of the command-line tests: running a CLI as a user would, hashing the user's folder, and
checking a refusal (exit code, one line, no traceback)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BETON = "cwr_fast.data.beton"
needs_ffcv = pytest.mark.skipif(importlib.util.find_spec("ffcv") is None, reason="ffcv not installed")
ATTACKS = ["fgsm", "pgd-3", "tpgd-3:T=2", "cw-3"]


TINY_TRAIN = ["--dataset", "mnist-embedded", "--train-per-class", "10", "--val-per-class", "2",
              "--epochs", "1", "--steps", "1", "--batch-size", "50", "--progress", "off", "--no-plots"]


def cli(module: str, *args, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (and its directories, as '<dir>')."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        result[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def assert_refused(proc: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """Exit `code`, one `cwr_fast.<tool>: error|interrupted: ...` line on stderr holding each of
    `words`, no traceback. Returns the line."""
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], err[-3000:])
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if re.match(r"(\S.*: error: |cwr_fast\.[\w.]+: interrupted)", line)]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def evaluate_args(checkpoint: Path, data: Path, out, *extra) -> list[str]:
    return ["--arch", "small_cnn", "--checkpoint", checkpoint, "--dataset", "mnist", "--data-dir", data,
            "--attacks", "fgsm", "--eps", "0.1", "--limit", "20", "--no-plots", "--out", out, *extra]


def interrupt_when(cmd: list, marker: str, stream: str, sig=None) -> subprocess.CompletedProcess:
    """Runs a CLI, sends it Ctrl-C (SIGINT; or `sig`) once `marker` appears on `stream`, and waits."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # a shell without job control starts background commands with SIGINT ignored, and a child
    # inherits that (Python then installs no KeyboardInterrupt handler): restore the default
    proc = subprocess.Popen([sys.executable, "-m", *map(str, cmd)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watched = proc.stdout if stream == "stdout" else proc.stderr
    seen = []
    for line in watched:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig or signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=300)
    if stream == "stdout":
        stdout = "".join(seen) + stdout
    else:
        stderr = "".join(seen) + stderr
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def cli_args(checkpoint_path, data_root, out_dir, *flags, **options):
    """CLI arguments as --key=value (so that negative numbers pass); options override defaults."""
    defaults = {"arch": "small_cnn", "checkpoint": checkpoint_path, "data_dir": data_root,
                "attacks": ",".join(ATTACKS), "eps": 0.1, "limit": 60, "batch_size": 30, "out": out_dir}
    merged = {**defaults, **options}
    return [f"--{k.replace('_', '-')}={v}" for k, v in merged.items() if v is not None] + ["--no-progress", *flags]
