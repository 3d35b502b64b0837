"""Multi-process training: 2 processes with the gloo backend (torchrun), CPU only.

The per-class validation and test counts of the 2-process run must equal those of a single
process evaluating the same weights; only rank 0 writes."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from cwr_fast.attacks.spec import build_attacks
from cwr_fast.classwise.engine import evaluate_classwise
from cwr_fast.models import build_model
from cwr_fast.training.config import TrainConfig
from cwr_fast.training.data import build_loaders, build_test_loader

from helpers.train import REPO, TINY, env, load_ckpt


def test_two_gloo_processes_count_like_one(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cwr_fast.train", *TINY, "--epochs", "1", "--method", "trades", "--no-plots",
           "--final-limit", "100", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/1 |") == 1  # rank 0 only logs
    state = load_ckpt(out / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["progress"]["steps_per_epoch"] == 10  # 300 / 30
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["train"]["images"] == 300

    # one process, same weights, same validation subset and attack seed
    cfg = TrainConfig.from_dict(state["config"])
    torch.set_num_threads(1)
    loaders = build_loaders(cfg, torch.device("cpu"))
    info = loaders.info
    model = build_model(cfg.arch, info.num_classes, info.mean, info.std, info.image_shape[0])
    model.load_state_dict(state["model"])
    attacks = build_attacks(f"pgd-{cfg.val_steps}", model, eps=cfg.eps, track="any",
                            num_classes=info.num_classes)
    counts = evaluate_classwise(model, loaders.val, info.num_classes, attacks, seed=cfg.seed)
    val = records[0]["val"]
    assert len(loaders.val) > 2  # several batches, so both ranks evaluated some
    assert val["n"] == counts.n.tolist()
    assert val["clean_correct"] == counts.clean_correct.tolist()
    assert val["robust"] == counts.robust(f"pgd-{cfg.val_steps}").tolist()

    # the final report's per-class counts, too
    report = json.loads((out / "report" / "report.json").read_text())
    test = build_test_loader(cfg, torch.device("cpu"), cfg.val_batch_size)
    attacks = build_attacks(cfg.final_attacks, model, eps=cfg.eps, track="any",
                            num_classes=info.num_classes)
    counts = evaluate_classwise(model, test, info.num_classes, attacks, seed=cfg.seed)
    assert [r["n"] for r in report["clean"]["per_class"]] == counts.n.tolist() == [10] * 10
    for section in report["attacks"]:
        assert [r["robust"] for r in section["per_class"]] == counts.robust(section["label"]).tolist()
