"""PGD-AT training throughput (images/s): the fused path against the same loop in eager PyTorch
ops, fp32 against bf16 autocast, for the MNIST small CNN and PreAct ResNet-18 at CIFAR size.

    pytest bench/bench_train.py --benchmark-only          # timed (pytest-benchmark)
    pytest bench/bench_train.py --benchmark-disable       # smoke run: one short round each
    python bench/bench_train.py [--steps N]               # table: images/s, ratios, time split

Each variant runs the real training step of cwr_fast.train (Trainer.train_step: the method's
attack, forward/backward, SGD step) on batches from the real loaders: the embedded MNIST digits,
and the real CIFAR-10 subset of ../shared/data (a random uint8 stand-in of the same shape when it
is absent; throughput does not depend on pixel values). Variants:
  fused / eager     --ops: cwr_fast's fused CE forward+backward and in-place PGD step (and
                    ops.temperature_cross_entropy for the training loss), or the same loop on
                    cwr_fast.reference, the same functions in plain PyTorch (log-softmax CE
                    gradient, sign/clamp step chain, F.cross_entropy for the training loss)
  fp32 / bf16       --amp off / bf16 (autocast of the model's forward passes)
The time split (attack / forward-backward+step / data) comes from the trainer's own timers
(on CUDA with --time-split, i.e. synchronised).

CPU sizes are small so the smoke run stays fast: MNIST batch 128 with PGD-10, PreAct ResNet-18
batch 16 with PGD-2 (set CWR_FAST_BENCH_TRAIN_STEPS for more timed steps). On a GPU: batch 512
and PGD-10 for both.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cwr_fast import runtime
from cwr_fast.training.config import TrainConfig
from cwr_fast.training.trainer import Trainer

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TIMED_STEPS = int(os.environ.get("CWR_FAST_BENCH_TRAIN_STEPS", 3))
SHARED = Path(os.environ.get("CWR_FAST_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
_TMP = Path(tempfile.mkdtemp(prefix="cwr_fast_bench_train_"))


def cifar_source() -> str:
    real = SHARED / "cifar10-subset" / "cifar10_subset.npz"
    if real.is_file():
        return f"npz:{real}"
    fake = _TMP / "cifar_like.npz"
    if not fake.exists():
        rng = np.random.default_rng(0)
        np.savez(fake, train_images=rng.integers(0, 256, (2048, 32, 32, 3), dtype=np.uint8),
                 train_labels=np.arange(2048) % 10,
                 test_images=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
                 test_labels=np.arange(100) % 10)
    return f"npz:{fake}"


MODELS = {
    # name: (dataset, arch, batch, attack steps, eps, alpha)
    "mnist_cnn": lambda: ("mnist-embedded", "small_cnn", 512 if CUDA else 128, 10, 0.3, 0.04),
    "preact18_cifar": lambda: (cifar_source(), "preact_resnet18", 512 if CUDA else 16,
                               10 if CUDA else 2, 8 / 255, 2 / 255),
}
VARIANTS = [("eager", "off"), ("fused", "off"), ("eager", "bf16"), ("fused", "bf16")]
RESULTS: dict[tuple, dict] = {}


def make_trainer(model: str, ops: str, amp: str) -> Trainer:
    dataset, arch, batch, steps, eps, alpha = MODELS[model]()
    cfg = TrainConfig(dataset=dataset, arch=arch, method="pgd-at", eps=eps, alpha=alpha, steps=steps,
                      ops=ops, amp=amp, batch_size=batch, epochs=1, eps_warmup_epochs=0.0,
                      val_per_class=1,
                      train_per_class=max(batch * (TIMED_STEPS + 2) // 10 + 1, 8),
                      val_steps=1, lr=0.01, schedule="constant", milestones=[],
                      final_attacks="pgd-1", device=str(DEVICE), time_split=True,
                      channels_last=CUDA)
    run_dir = _TMP / f"{model}-{ops}-{amp}"
    return Trainer(cfg, run_dir, runtime.DistInfo(device=DEVICE), progress=False, plots=False)


def _cycle(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def measure(trainer: Trainer, steps: int, warmup: bool = True) -> dict:
    """Runs 1 warm-up step, then `steps` timed steps; images/s and the time split."""
    batches = _cycle(trainer.loaders.train)
    if warmup:
        x, y = next(batches)
        trainer.train_step(x, y)
    trainer._reset_sums()
    if CUDA:
        torch.cuda.synchronize()
    images, start = 0, time.perf_counter()
    t_data = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        if CUDA:
            torch.cuda.synchronize()
        trainer.sums["time"]["data"] += time.perf_counter() - t_data
        trainer.train_step(x, y)
        images += y.shape[0]
        t_data = time.perf_counter()
    if CUDA:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    split = dict(trainer.sums["time"])
    total = sum(split.values()) or 1.0
    return {"images_per_s": images / seconds, "seconds": seconds,
            "split": {k: v / total for k, v in split.items()}}


@pytest.mark.parametrize("ops, amp", VARIANTS, ids=[f"{o}-{a}" for o, a in VARIANTS])
@pytest.mark.parametrize("model", list(MODELS))
def test_pgd_at_training_throughput(benchmark, model, ops, amp):
    trainer = make_trainer(model, ops, amp)
    benchmark.group = f"train pgd-at {model} {DEVICE.type}"
    result = {}

    smoke = getattr(benchmark, "disabled", False)  # --benchmark-disable: one untimed step

    def run():
        result.update(measure(trainer, 1 if smoke else TIMED_STEPS, warmup=not smoke))

    benchmark.pedantic(run, rounds=int(os.environ.get("CWR_FAST_BENCH_ROUNDS", 1)), iterations=1)
    RESULTS[(model, ops, amp)] = result
    info = {"variant": f"{ops}-{amp}", "model": model, "device": DEVICE.type,
            "batch": trainer.cfg.batch_size, "attack_steps": trainer.cfg.steps,
            "images_per_s": result["images_per_s"], "time_split": result["split"]}
    base = RESULTS.get((model, "eager", "off"))
    if base:
        info["speedup_vs_eager_fp32"] = result["images_per_s"] / base["images_per_s"]
    benchmark.extra_info.update(info)
    assert result["images_per_s"] > 0


def table(results: dict) -> list[str]:
    lines = [f"{'model':16} {'variant':11} {'img/s':>8} {'vs eager':>9} {'vs fp32':>8} "
             f"{'attack':>7} {'fwd-bwd':>8} {'data':>6}"]
    for (model, ops, amp), r in results.items():
        eager = results.get((model, "eager", amp))
        fp32 = results.get((model, ops, "off"))
        s = r["split"]
        lines.append(f"{model:16} {ops + '-' + amp:11} {r['images_per_s']:8.1f} "
                     f"{r['images_per_s'] / eager['images_per_s'] if eager else float('nan'):8.2f}x "
                     f"{r['images_per_s'] / fp32['images_per_s'] if fp32 else float('nan'):7.2f}x "
                     f"{100 * s['attack']:6.1f}% {100 * s['fwd_bwd']:7.1f}% {100 * s['data']:5.1f}%")
    return lines


def main(argv: list[str]) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=TIMED_STEPS, help="timed steps per variant")
    p.add_argument("--repeats", type=int, default=3, help="best of this many measurements")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for model in args.models.split(","):
        trainers = {(ops, amp): make_trainer(model, ops, amp) for ops, amp in VARIANTS}
        best = {}
        for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
            for key, trainer in trainers.items():
                r = measure(trainer, args.steps)
                if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
                    best[key] = r
        for (ops, amp), r in best.items():
            results[(model, ops, amp)] = r
    print(f"PGD-AT training throughput on {DEVICE} ({torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, best of {args.repeats} x {args.steps} steps)")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
