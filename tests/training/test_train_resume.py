"""Exact resume: a training run killed with SIGKILL at a random moment and resumed ends with
final weights (and optimizer state, metrics) bit-identical to an uninterrupted run, on the CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

from helpers.train import REPO, TINY, assert_state_dicts_identical, env, load_ckpt, run_train, train_cmd

# 3 epochs x 20 steps of PGD-AT (a step checkpoint after every step), no final report.
ARGS = TINY + ["--train-per-class", "60", "--steps", "3", "--epochs", "3", "--ckpt-every", "1",
               "--no-final-eval", "--no-plots", "--seed", "5", "--eps-warmup-epochs", "1",
               "--deterministic"]
TOTAL = 60


def _comparable(record: dict) -> dict:
    """A metrics.jsonl record without the wall-clock fields."""
    r = json.loads(json.dumps(record))
    for key in ("seconds", "images_per_s", "time_split"):
        r["train"].pop(key)
    if r["val"]:
        r["val"].pop("seconds")
    return r


def test_sigkill_at_a_random_point_then_resume_is_bit_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    ref = run_train(*ARGS, "--out", str(ref_dir))
    assert ref.returncode == 0, ref.stderr

    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    killed_at = None
    for attempt in range(4):
        # kill at a random moment: after a random number of step checkpoints (each one replaces
        # last.pt, a new inode), plus a random delay that lands anywhere in a step
        target = rng.randint(1, TOTAL - 8)
        proc = subprocess.Popen(train_cmd(*ARGS, "--out", str(run_dir), "--overwrite"), cwd=REPO,
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        last = run_dir / "checkpoints" / "last.pt"
        seen, deadline = set(), time.monotonic() + 240
        while len(seen) < target and proc.poll() is None and time.monotonic() < deadline:
            try:
                st = os.stat(last)
                seen.add((st.st_ino, st.st_mtime_ns))
            except FileNotFoundError:
                pass
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at = load_ckpt(last)["progress"]
            if killed_at["global_step"] < TOTAL:
                break
        proc.wait()
    assert killed_at is not None and killed_at["global_step"] < TOTAL, \
        f"the run always finished before the kill ({killed_at})"

    resumed = run_train("--resume", str(run_dir), "--progress", "off", "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout

    a = load_ckpt(ref_dir / "checkpoints" / "last.pt")
    b = load_ckpt(run_dir / "checkpoints" / "last.pt")
    assert a["progress"] == b["progress"] and a["progress"]["global_step"] == TOTAL
    assert_state_dicts_identical(a["model"], b["model"], "model")
    for (ka, sa), (kb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert ka == kb and all(sa[k].equal(sb[k]) if hasattr(sa[k], "equal") else sa[k] == sb[k]
                                for k in sa)
    ra = [json.loads(line) for line in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [_comparable(r) for r in ra] == [_comparable(r) for r in rb]
    print(f"killed in epoch {killed_at['epoch'] + 1}, after batch {killed_at['batch']} "
          f"(step {killed_at['global_step']}/{TOTAL}): resumed run identical")
