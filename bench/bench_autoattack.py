"""End to end: AutoAttack (standard, Linf) on adversarially trained models and real test images,
cwr_fast's `aa` against the reference implementation (pyautoattack's run_standard_evaluation).

    pytest bench/bench_autoattack.py --benchmark-only --benchmark-json=out.json
    python bench/bench_autoattack.py --profile        # torch.profiler: where cwr_fast's time goes

The models are trained here by cwr_fast's own training CLI (seeded, cached under
~/.cache/cwr_fast/bench): a small CNN on real MNIST (PGD-AT at eps 0.2, attacked at 0.25) and one on the CIFAR-10
subset (eps 8/255), as in tests/conftest.py. Both sides get the same model, the same
class-balanced test images, batches of 250, seed 0 for every member as the reference does, fp32.
Each benchmark records the overall and per-class robust accuracy, the images each member fooled,
and the seconds per member in extra_info; the cwr_fast variants also record the speed-up over the
reference in the same run and the agreement with it (overall gap in points, and the classes
outside the reference's 95% interval), and fail if the overall gap exceeds 0.5 point.

Groups: `mnist` and `cifar` (500 images each; reference, cwr_fast, cwr_fast_nchw) and `bf16`
(100 MNIST images: cwr_fast in fp32 and under bf16 autocast, and the reference; bf16 is only fast
on CPUs with AVX-512 BF16 / AMX or on GPUs, so it gets few images).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cwr_fast.attacks import parse_attack
from cwr_fast.classwise import evaluate_classwise

REPO = Path(__file__).resolve().parents[1]
BATCH = 250
MAX_GAP_POINTS = 0.5
CACHE = Path(os.environ.get("CWR_FAST_BENCH_CACHE", Path.home() / ".cache" / "cwr_fast" / "bench"))
MODELS = {  # name: (source, eps, training arguments): the recipes of tests/conftest.py
    "mnist": ("mnist", 0.25, ["--train-per-class", "300", "--epochs", "8", "--steps", "5", "--alpha", "0.06",
                             "--eps", "0.2", "--eps-warmup-epochs", "3", "--batch-size", "50"]),
    "cifar": ("npz:{shared}/cifar10-subset/cifar10_subset.npz", 8 / 255,
              ["--arch", "small_cnn", "--epochs", "6", "--steps", "4", "--alpha", "3/255",
               "--batch-size", "50", "--lr", "0.02", "--schedule", "cosine", "--eps-warmup-epochs", "2",
               "--weight-decay", "0"]),
}
RESULTS: dict[tuple[str, str], dict] = {}


def shared_data() -> Path:
    root = Path(os.environ.get("CWR_FAST_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw").is_dir():
        raise FileNotFoundError(f"real data not found under {root} (set CWR_FAST_SHARED_DATA)")
    return root


def robust_model(name: str):
    """(model, source, eps), trained once with the training CLI and cached."""
    from cwr_fast.data import dataset_info
    from cwr_fast.models import build_model
    from cwr_fast.models.checkpoint import load_weights

    source, eps, args = MODELS[name]
    source = source.format(shared=shared_data())
    run = CACHE / f"{name}-robust"
    checkpoint = run / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        data_dir = ["--data-dir", str(shared_data())] if source == "mnist" else []
        subprocess.run([sys.executable, "-m", "cwr_fast.train", "--dataset", source, *data_dir,
                        "--val-per-class", "5", "--no-final-eval", "--progress", "off", "--seed", "0",
                        "--out", str(run), "--overwrite", *args], check=True, cwd=REPO, env=env)
    info = dataset_info(source)
    model = build_model("small_cnn", info.num_classes, info.mean, info.std, info.image_shape[0])
    load_weights(model, checkpoint)
    return model.eval(), source, eps


def class_balanced_test_images(source: str, per_class: int):
    from cwr_fast.data import load_arrays

    images, labels = load_arrays(source, "test", data_dir=shared_data() if source == "mnist" else None)
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)]).sort().values
    return images[keep].float() / 255, labels[keep].clone()


def reference_aa(model, x, y, eps) -> dict:
    import logging

    import pyautoattack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    adversary = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=BATCH)
    robust = y_adv == y
    return {"robust_per_class": torch.bincount(y[robust], minlength=10).tolist()}


def cwr_fast_aa(model, x, y, eps, amp=None, channels_last=True) -> dict:
    attack = parse_attack("aa:seed=0").build(model, eps=eps, amp=amp)
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(y), BATCH)]
    counts = evaluate_classwise(model, batches, 10, {"aa": attack}, channels_last=channels_last)
    return {"robust_per_class": counts.robust("aa").tolist(),
            "fooled_first_by": dict(zip(counts.members["aa"], counts.member_broken["aa"].sum(dim=1).tolist())),
            "member_seconds": counts.meta["member_seconds"]["aa"]}


def _record(benchmark, group: str, variant: str, y: torch.Tensor, result: dict) -> None:
    from cwr_fast.classwise.stats import wilson_interval

    n = torch.bincount(y, minlength=10)
    robust = torch.tensor(result["robust_per_class"])
    info = {"variant": variant, "images": len(y), "threads": torch.get_num_threads(), **result,
            "robust_acc": int(robust.sum()) / len(y)}
    seconds = benchmark.stats.stats.mean if benchmark.stats else None
    if seconds:
        info["seconds"] = seconds
    reference = RESULTS.get((group, "reference"))
    if reference is not None and variant != "reference":
        gap = 100 * abs(info["robust_acc"] - reference["robust_acc"])
        low, high = wilson_interval(torch.tensor(reference["robust_per_class"]).numpy(), n.numpy())
        acc = (robust.double() / n.double()).numpy()
        info["gap_points_vs_reference"] = gap
        info["classes_outside_reference_ci"] = [c for c in range(10) if not low[c] - 1e-12 <= acc[c] <= high[c] + 1e-12]
        if seconds and reference.get("seconds"):
            info["speedup_vs_reference"] = reference["seconds"] / seconds
        if variant != "cwr_fast_bf16" and len(y) >= 100:
            assert gap <= MAX_GAP_POINTS, f"{group}/{variant}: {gap:.2f} points from the reference"
    benchmark.extra_info.update(info)
    RESULTS[(group, variant)] = info


def _time(benchmark, fn):
    return benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)


CASES = [("mnist", "mnist", 50), ("cifar", "cifar", 50), ("bf16", "mnist", 10)]
VARIANTS = {
    "mnist": ["reference", "cwr_fast", "cwr_fast_nchw"],
    "cifar": ["reference", "cwr_fast", "cwr_fast_nchw"],
    "bf16": ["reference", "cwr_fast", "cwr_fast_bf16"],
}


@pytest.fixture(scope="module")
def setups():
    cache = {}

    def get(model_name: str, per_class: int):
        if (model_name, per_class) not in cache:
            model, source, eps = robust_model(model_name)
            cache[model_name, per_class] = (model, *class_balanced_test_images(source, per_class), eps)
        return cache[model_name, per_class]
    return get


@pytest.mark.parametrize("group, model_name, per_class, variant",
                         [(g, m, k, v) for g, m, k in CASES for v in VARIANTS[g]],
                         ids=lambda v: str(v))
def test_autoattack(benchmark, setups, group, model_name, per_class, variant):
    if benchmark.disabled:  # the untimed smoke run (CI): the same code on a few images
        per_class = 1
    benchmark.group = f"AutoAttack standard, {group}, {per_class * 10} images"
    model, x, y, eps = setups(model_name, per_class)
    run = {"reference": lambda: reference_aa(model, x, y, eps),
           "cwr_fast": lambda: cwr_fast_aa(model, x, y, eps),
           "cwr_fast_nchw": lambda: cwr_fast_aa(model, x, y, eps, channels_last=False),
           "cwr_fast_bf16": lambda: cwr_fast_aa(model, x, y, eps, amp="bf16")}[variant]
    _record(benchmark, group, variant, y, _time(benchmark, run))


def profile(rows: int = 16) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, source, eps = robust_model("mnist")
    x, y = class_balanced_test_images(source, 10)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        result = cwr_fast_aa(model, x, y, eps)
    print("seconds per member:", {k: round(v, 2) for k, v in result["member_seconds"].items()})
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    from script import main
    main(__file__, profile)
