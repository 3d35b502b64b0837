"""Issue 25, item 10: a stale WORLD_SIZE in the environment, with no second process, made evaluate
wait silently in the rendezvous. Rank 0 now says at once what it waits for, and gives up after
$CWR_FAST_JOIN_TIMEOUT seconds with one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from conftest import REPO
from helpers.cli import assert_refused, snapshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_lone_process_with_world_size_2_gives_up_with_one_line(mnist_checkpoint, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WORLD_SIZE="2", RANK="0",
               LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               CWR_FAST_JOIN_TIMEOUT="2")
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    before = snapshot(tmp_path)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cwr_fast.evaluate", "--dataset", "mnist-embedded",
                           "--arch", "small_cnn", "--checkpoint", str(mnist_checkpoint), "--attacks", "fgsm",
                           "--limit", "20", "--no-plots", "--out", str(tmp_path / "r")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert time.perf_counter() - started < 60
    assert "waiting for 2 processes to join" in proc.stderr and "giving up after 2 s" in proc.stderr
    assert_refused(proc, "did not all join", "WORLD_SIZE=2", "torchrun")
    assert snapshot(tmp_path) == before
