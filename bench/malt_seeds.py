"""Seed variation of AutoAttack, its fast mode, APGD-T and MALT on one bench model, image by image.

    python bench/malt_seeds.py mnist 50 OUT.json          # model of bench_autoattack.py, images per class

bench_malt.py compares one seed of each attack; this runs seeds 0-3 of each on the model's
clean-correct test images (batches of 250) and counts, against `aa` with seed 0, the images
each run misses and adds: how far `aa` itself moves between seeds, and whether the fast mode or
MALT moves further. `aa` and `aa:version=malt` take the seed; `apgd-t` and `malt` draw from the
global RNG, seeded before each run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from bench_autoattack import class_balanced_test_images, robust_model
from cwr_fast.attacks import parse_attack

SPECS = {"aa": "aa:seed={seed}", "fast": "aa:version=malt:seed={seed}", "apgdt": "apgd-t", "malt": "malt"}


def seed_variation(model_name: str, per_class: int, seeds=(0, 1, 2, 3), log=print) -> dict:
    model, source, eps = robust_model(model_name)
    x, y = class_balanced_test_images(source, per_class)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    fooled = {}
    for seed in seeds:
        for label, spec in SPECS.items():
            torch.manual_seed(seed)
            attack = parse_attack(spec.format(seed=seed)).build(model, eps=eps)
            started = time.perf_counter()
            fooled[f"{label}{seed}"] = torch.cat([attack.run(x[i:i + 250], y[i:i + 250]).success
                                                  for i in range(0, len(y), 250)])
            log(f"{label}{seed}: fooled {int(fooled[f'{label}{seed}'].sum())} in {time.perf_counter() - started:.1f}s")
    reference = fooled[f"aa{seeds[0]}"]
    summary = {"model": model_name, "clean_correct": len(y), "fooled_by_aa0": int(reference.sum())}
    for label, f in fooled.items():
        summary[label] = {"fooled": int(f.sum()), "missed_vs_aa0": int((reference & ~f).sum()),
                          "extra_vs_aa0": int((f & ~reference).sum())}
    by_any = {label: torch.stack([fooled[f"{label}{s}"] for s in seeds]).any(0) for label in ("aa", "fast")}
    summary["fooled_by_some_aa_seed_not_by_any_fast_seed"] = int((by_any["aa"] & ~by_any["fast"]).sum())
    summary["fooled_by_some_fast_seed_not_by_any_aa_seed"] = int((by_any["fast"] & ~by_any["aa"]).sum())
    return summary


if __name__ == "__main__":
    name, per_class, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    result = seed_variation(name, per_class, log=lambda m: print(m, flush=True))
    result["threads"], result["torch"] = torch.get_num_threads(), torch.__version__
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
