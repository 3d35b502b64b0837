"""End-to-end comparisons for the GPU check (scripts/gpu_check.sh), written as one JSON file:

  1. a PGD-AT model short-trained here on the real CIFAR-10 subset by cwr_fast.train
     (PreAct ResNet-18 on a GPU; a small CNN in the CPU dry run);
  2. class-wise PGD-10 evaluation of its test images: cwr_fast (bf16 autocast, channels-last, fused
     ops, fooled images leaving the batch) against torchattacks' PGD in fp32 eager: images/s of
     each and both robust accuracies (the check: within 0.5 point);
  3. AutoAttack (standard, Linf): cwr_fast's `aa` (fp32 and bf16) against the reference
     (pyautoattack's run_standard_evaluation), when pyautoattack is importable.

    python bench/gpu_e2e.py --data .gpu/data --out $OUT/e2e.json [--dry-run]

--dry-run (what tests/cli/test_gpu_check.py runs on the CPU): the same code on a small CNN, one
epoch and a few images, so the script cannot rot. Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MAX_GAP = 0.005  # robust accuracies "agree": within 0.5 point


def train(source: str, out: Path, dry: bool, device: str) -> Path:
    args = (["--arch", "small_cnn", "--epochs", "1", "--steps", "2", "--alpha", "2.5/255",
             "--train-per-class", "20"] if dry else
            ["--arch", "preact_resnet18", "--epochs", "6", "--steps", "5", "--alpha", "2.5/255",
             "--batch-size", "256", "--lr", "0.1", "--schedule", "one-cycle", "--amp", "bf16"])
    cmd = [sys.executable, "-m", "cwr_fast.train", "--dataset", source, "--val-per-class", "5",
           "--no-final-eval", "--progress", "off", "--seed", "0", "--device", device,
           "--out", str(out), "--overwrite", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return out / "checkpoints" / "last.pt"


def load_model(checkpoint: Path, source: str, arch: str, device: str):
    from cwr_fast.data import dataset_info
    from cwr_fast.models import build_model
    from cwr_fast.models.checkpoint import load_weights

    info = dataset_info(source)
    model = build_model(arch, info.num_classes, info.mean, info.std, info.image_shape[0])
    load_weights(model, checkpoint)
    return model.to(device).eval()


def timed(fn, device: str, warmup: bool):
    if warmup:
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def pgd_comparison(model, x, y, eps: float, device: str, warmup: bool) -> dict:
    import torchattacks

    from cwr_fast.attacks import PGD
    from cwr_fast.classwise import evaluate_classwise

    alpha, batch = eps / 4, 256
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]

    def theirs():
        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10, random_start=True)
        torch.manual_seed(0)
        robust = 0
        for xb, yb in batches:
            x_adv = atk(xb, yb)  # torchattacks needs grad mode
            with torch.no_grad():
                robust += int((model(x_adv).argmax(dim=1) == yb).sum())
        return robust

    def ours():
        attack = PGD(model, eps=eps, alpha=alpha, steps=10, track="any", amp="bf16")
        return int(evaluate_classwise(model, batches, 10, {"pgd": attack}, amp="bf16").robust("pgd").sum())

    robust_ta, t_ta = timed(theirs, device, warmup)
    robust_ours, t_ours = timed(ours, device, warmup)
    n = len(y)
    result = {"images": n, "eps": eps, "torchattacks_fp32": {"images_per_s": n / t_ta, "robust_acc": robust_ta / n},
              "cwr_fast_bf16": {"images_per_s": n / t_ours, "robust_acc": robust_ours / n}}
    result["speedup"] = t_ta / t_ours
    result["gap"] = abs(robust_ta - robust_ours) / n
    result["agree"] = result["gap"] <= MAX_GAP
    return result


def autoattack_comparison(model, x, y, eps: float, device: str) -> dict:
    from cwr_fast.attacks import parse_attack
    from cwr_fast.classwise import evaluate_classwise

    try:
        import pyautoattack
    except ImportError:
        return {"skipped": "pyautoattack is not installed"}
    n = len(y)
    out = {"images": n, "eps": eps}
    for amp in (None, "bf16"):
        attack = parse_attack("aa:seed=0").build(model, eps=eps, amp=amp)
        counts, seconds = timed(lambda: evaluate_classwise(model, [(x, y)], 10, {"aa": attack}), device, False)
        out[f"cwr_fast_{amp or 'fp32'}"] = {"seconds": seconds, "robust_acc": int(counts.robust("aa").sum()) / n,
                                            "member_seconds": counts.meta["member_seconds"]["aa"]}
    reference = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device=device)
    (_, y_adv), seconds = timed(lambda: reference.run_standard_evaluation(x, y, batch_size=n), device, False)
    out["reference_fp32"] = {"seconds": seconds, "robust_acc": float((y_adv == y).float().mean())}
    out["speedup_fp32"] = seconds / out["cwr_fast_fp32"]["seconds"]
    out["speedup_bf16"] = seconds / out["cwr_fast_bf16"]["seconds"]
    out["gap_fp32"] = abs(out["cwr_fast_fp32"]["robust_acc"] - out["reference_fp32"]["robust_acc"])
    out["agree"] = out["gap_fp32"] <= MAX_GAP
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder holding cifar10-subset/cifar10_subset.npz")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--dry-run", action="store_true", help="CPU, small CNN, a few images")
    args = p.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    source = f"npz:{Path(args.data).resolve() / 'cifar10-subset' / 'cifar10_subset.npz'}"
    out = Path(args.out)
    work = out.parent / "e2e-run"
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dry_run": dry}
    started = time.perf_counter()
    checkpoint = train(source, work, dry, device)
    result["train_seconds"] = time.perf_counter() - started
    from cwr_fast.data import load_arrays

    model = load_model(checkpoint, source, "small_cnn" if dry else "preact_resnet18", device)
    images, labels = load_arrays(source, "test")
    limit = 40 if dry else len(labels)
    x, y = (images[:limit].float() / 255).to(device), labels[:limit].to(device)
    with torch.no_grad():
        result["clean_acc"] = float((model(x).argmax(dim=1) == y).float().mean())
    result["pgd10"] = pgd_comparison(model, x, y, 8 / 255, device, warmup=not dry)
    aa_n = 20 if dry else 200  # the reference takes about as long as everything else together
    result["autoattack"] = autoattack_comparison(model, x[:aa_n], y[:aa_n], 8 / 255, device)
    checks = [result["pgd10"]["agree"], result["autoattack"].get("agree", True)]
    result["ok"] = all(checks)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] or dry else 1


if __name__ == "__main__":
    raise SystemExit(main())
