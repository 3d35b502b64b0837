"""scripts/gpu_check.sh, the one-call GPU check, dry-run here without CUDA so that it cannot rot:
its CUDA steps say "skipped", the rest (backend report, the end-to-end script on a small model,
the summary) runs, and what it leaves in $OUT fits what the GPU machine sends back (<= 8 files).
scripts/gpu_prepare.sh, its companion, is run into a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from conftest import REPO


def env(**extra) -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    e.setdefault("OMP_NUM_THREADS", "2")
    return e


def test_prepare_copies_what_the_gpu_machine_needs(shared_data, tmp_path):
    dest = tmp_path / "gpu"
    proc = subprocess.run(["bash", "scripts/gpu_prepare.sh"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env(CWR_FAST_SHARED_DATA=str(shared_data), CWR_FAST_GPU_DIR=str(dest)))
    assert proc.returncode == 0, proc.stderr
    assert (dest / "data" / "cifar10-subset" / "cifar10_subset.npz").is_file()
    assert (dest / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    for peer in ("torchattacks", "pyautoattack"):
        assert (dest / "site" / peer / "__init__.py").is_file()
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert size < 40 * 2 ** 20, f"{size / 2 ** 20:.0f} MiB would not leave room for the checkout (64 MiB)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check itself is the test")
def test_dry_run_without_cuda(shared_data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True, text=True,
                          timeout=1200, env=env(OUT=str(out), CWR_FAST_SHARED_DATA=str(shared_data),
                                                CWR_FAST_GPU_CHECK_SKIP_BUILD="1"))
    log = (out / "check.log").read_text() if (out / "check.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cuda"] == 0
    for step in ("cuda_tests", "memcheck", "racecheck", "bench_ops", "bench_train"):
        assert summary[step] == "skipped: no CUDA device", summary
    for step in ("backend", "select_cuda_tests", "select_memcheck", "select_racecheck", "select_bench", "e2e"):
        assert summary[step] == "ok", summary
    assert "ops.backend(): compiled" in log
    e2e = json.loads((out / "e2e.json").read_text())
    assert e2e["dry_run"] and e2e["device"] == "cpu"
    pgd = e2e["pgd10"]
    assert pgd["torchattacks_fp32"]["images_per_s"] > 0 and pgd["cwr_fast_bf16"]["images_per_s"] > 0
    assert 0 <= pgd["cwr_fast_bf16"]["robust_acc"] <= 1 and "speedup" in pgd
    aa = e2e["autoattack"]
    assert {"cwr_fast_fp32", "cwr_fast_bf16", "reference_fp32", "speedup_fp32"} <= set(aa)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
