"""Helpers of the training tests (tests/training/): tiny, fast configurations on the
embedded real MNIST digits, and running `python -m cwr_fast.train` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# ~10 steps per epoch of a small CNN on 300 real digits: a run takes seconds.
TINY = ["--dataset", "mnist-embedded", "--train-per-class", "30", "--val-per-class", "4",
        "--batch-size", "30", "--steps", "2", "--alpha", "0.1", "--val-steps", "2",
        "--val-batch-size", "16", "--final-attacks", "fgsm,pgd-2", "--final-limit", "50",
        "--progress", "off", "--threads", "1"]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cwr_fast.train", *args]


def run_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_state_dicts_identical(a: dict, b: dict, what: str = "state") -> None:
    assert a.keys() == b.keys(), f"{what}: keys differ"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}.{k}: dtype/shape"
        assert torch.equal(a[k], b[k]), f"{what}.{k} differs (max |diff| " \
            f"{(a[k].double() - b[k].double()).abs().max().item():.3g})"
