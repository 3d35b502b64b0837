"""End to end: class-wise PGD-10 evaluation of a small MNIST CNN on 1,000 real MNIST test images,
cwr_fast against torchattacks' PGD (fp32, eager).

    pytest bench/bench_evaluate.py --benchmark-only
    python bench/bench_evaluate.py --profile          # torch.profiler tables: where the time goes

Both sides get the same model (SmallCNN trained here on 3,000 real training images, as in the
tests), the same images, eps=0.1, alpha=0.025, 10 steps, random start, batches of 250, and produce
the same output: per-class robust counts. torchattacks attacks every image and a forward pass on
x_adv scores it; cwr_fast runs `evaluate_classwise` (clean pass, attack only the clean-correct
images, track="any": a fooled image leaves the batch; channels-last weights). Each benchmark
records images/s and robust accuracy in extra_info; the cwr_fast variants also record the speed-up
over torchattacks measured in the same run, and fail if their robust accuracy is more than 0.5
point from torchattacks'.

Variants, to attribute the speed-up: `cwr_fast` (the default evaluator), `cwr_fast_final`
(last-iterate tracking as torchattacks), `cwr_fast_nchw` (no channels-last), `cwr_fast_bf16`
(bf16 autocast), and `torchattacks_channels_last` (torchattacks given a channels-last copy of
the model: what a torchattacks user could get by hand).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

from cwr_fast.attacks import PGD
from cwr_fast.classwise import evaluate_classwise

N_IMAGES, BATCH, EPS, ALPHA, STEPS = 1000, 250, 0.1, 0.025, 10
TRAIN_IMAGES, TRAIN_EPOCHS = 3000, 2
ROUNDS = int(os.environ.get("CWR_FAST_BENCH_ROUNDS", 3))
MAX_ROBUST_GAP = 0.005  # "the same robust accuracy": within 0.5 point
RESULTS: dict[str, dict] = {}  # variant -> {"images_per_s", "robust_acc"}, filled in file order


def shared_data() -> Path:
    root = Path(os.environ.get("CWR_FAST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (root / "MNIST" / "raw").is_dir():
        raise FileNotFoundError(f"real MNIST not found under {root} (set CWR_FAST_SHARED_DATA)")
    return root


def mnist(split: str):
    from cwr_fast.data import load_arrays
    return load_arrays("mnist", split, data_dir=shared_data())


def train_model() -> torch.nn.Module:
    """The tests' recipe (tests/helpers/mnist_recipe.py): Adam, 2 epochs over the first 3,000 real
    training images, seed 0."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.mnist_recipe import train_small_mnist_cnn
    return train_small_mnist_cnn(shared_data(), TRAIN_IMAGES, TRAIN_EPOCHS, seed=0)


def load_test_batches():
    images, labels = mnist("test")
    x, y = images[:N_IMAGES].float() / 255, labels[:N_IMAGES]
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N_IMAGES, BATCH)]


def torchattacks_classwise(model, batches) -> torch.Tensor:
    """Per-class robust counts with torchattacks' PGD: attack everything, then score x_adv."""
    import torchattacks

    atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
    torch.manual_seed(0)  # reproducible random starts (cwr_fast seeds per batch itself)
    robust = torch.zeros(10, dtype=torch.int64)
    for x, y in batches:
        x_adv = atk(x, y)
        with torch.no_grad():
            correct = model(x_adv).argmax(dim=1) == y
        robust += torch.bincount(y[correct], minlength=10)
    return robust


def cwr_fast_classwise(model, batches, track="any", amp=None, channels_last=True) -> torch.Tensor:
    attack = PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True, track=track, amp=amp)
    counts = evaluate_classwise(model, batches, 10, {"pgd-10": attack}, channels_last=channels_last)
    return counts.robust("pgd-10")


@pytest.fixture(scope="module")
def model():
    return train_model()


@pytest.fixture(scope="module")
def batches():
    return load_test_batches()


def _record(benchmark, variant: str, robust: torch.Tensor) -> None:
    mean = benchmark.stats.stats.mean if benchmark.stats else None
    info = {"variant": variant, "images": N_IMAGES, "eps": EPS, "steps": STEPS, "batch": BATCH,
            "threads": torch.get_num_threads(), "robust_acc": int(robust.sum()) / N_IMAGES,
            "robust_per_class": robust.tolist()}
    if mean:
        info["images_per_s"] = N_IMAGES / mean
    reference = RESULTS.get("torchattacks")
    if reference and mean and reference.get("images_per_s"):
        info["speedup_vs_torchattacks"] = info["images_per_s"] / reference["images_per_s"]
    benchmark.extra_info.update(info)
    RESULTS[variant] = info
    if reference and variant.startswith("cwr_fast") and variant != "cwr_fast_bf16":
        gap = abs(info["robust_acc"] - reference["robust_acc"])
        assert gap <= MAX_ROBUST_GAP, f"{variant}: robust accuracy {info['robust_acc']:.3f} vs " \
                                      f"torchattacks {reference['robust_acc']:.3f}"


def _run(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="classwise PGD-10, MNIST small CNN, 1000 images")
def test_torchattacks(benchmark, model, batches):
    _record(benchmark, "torchattacks", _run(benchmark, lambda: torchattacks_classwise(model, batches)))


@pytest.mark.benchmark(group="classwise PGD-10, MNIST small CNN, 1000 images")
def test_cwr_fast(benchmark, model, batches):
    _record(benchmark, "cwr_fast", _run(benchmark, lambda: cwr_fast_classwise(model, batches)))


@pytest.mark.benchmark(group="classwise PGD-10, MNIST small CNN, 1000 images")
def test_cwr_fast_final(benchmark, model, batches):
    _record(benchmark, "cwr_fast_final",
            _run(benchmark, lambda: cwr_fast_classwise(model, batches, track="final")))


@pytest.mark.benchmark(group="classwise PGD-10, MNIST small CNN, 1000 images")
def test_cwr_fast_nchw(benchmark, model, batches):
    _record(benchmark, "cwr_fast_nchw",
            _run(benchmark, lambda: cwr_fast_classwise(model, batches, channels_last=False)))


@pytest.mark.benchmark(group="classwise PGD-10, MNIST small CNN, 1000 images")
def test_cwr_fast_bf16(benchmark, model, batches):
    _record(benchmark, "cwr_fast_bf16", _run(benchmark, lambda: cwr_fast_classwise(model, batches, amp="bf16")))


@pytest.mark.benchmark(group="classwise PGD-10, MNIST small CNN, 1000 images")
def test_torchattacks_channels_last(benchmark, model, batches):
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    _record(benchmark, "torchattacks_channels_last",
            _run(benchmark, lambda: torchattacks_classwise(model_cl, batches)))


def profile(rows: int = 14) -> None:
    """torch.profiler tables of one torchattacks run and one cwr_fast run."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, batches = train_model(), load_test_batches()
    for name, fn in [("torchattacks", lambda: torchattacks_classwise(model, batches)),
                     ("cwr_fast", lambda: cwr_fast_classwise(model, batches))]:
        fn()  # warm up
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            fn()
        print(f"\n=== {name} ({torch.get_num_threads()} threads) ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    from script import main
    main(__file__, profile)
