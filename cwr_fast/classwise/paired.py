"""Paired comparison of two models on the same images, per class, for the mean over classes and
for the worst class (`python -m cwr_fast.compare A B --paired`).

    result = paired_comparison(correct_a, correct_b, labels, class_names)
    result["per_class"][3]["diff"], result["per_class"][3]["p_holm"], result["worst"]["p"]

Inputs are per-image booleans (the image is classified correctly by A / by B under the same
attack, the RobustBits of each report) on the same images. Everything is a function of the
per-class 2x2 tables of (A correct, B correct), so it is exact for binary outcomes and cheap for
any number of images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAIRED_METHOD = (
    "Per class: difference B - A of the accuracy on the same images; exact two-sided McNemar test "
    "(binomial test of the discordant images, those only one model gets right), Holm-corrected "
    "over the classes. Mean over classes and worst class (lowest class accuracy, each model's own "
    "worst class): p-value of a paired randomisation test (under the null hypothesis that the two "
    "models are exchangeable on every image, each discordant image's outcome is swapped with "
    "probability 1/2). Intervals: percentile intervals of a paired bootstrap over images, "
    "stratified by class (each class's 2x2 table redrawn from a multinomial with its observed "
    "shares)")


def paired_tables(correct_a: np.ndarray, correct_b: np.ndarray, labels: np.ndarray,
                  num_classes: int) -> np.ndarray:
    """[C, 4] counts per class of (both correct, only A, only B, neither)."""
    a, b, y = (np.asarray(v) for v in (correct_a, correct_b, labels))
    if not a.shape == b.shape == y.shape:
        raise ValueError(f"one outcome per image expected, got {a.shape}, {b.shape}, {y.shape}")
    cell = 2 * (~a.astype(bool)) + (~b.astype(bool))       # 0: both, 1: only A, 2: only B, 3: neither
    return np.bincount(y.astype(np.int64) * 4 + cell, minlength=num_classes * 4).reshape(num_classes, 4)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the binomial test of only_b out of the discordant pairs."""
    from scipy.stats import binomtest

    discordant = int(only_a) + int(only_b)
    return 1.0 if discordant == 0 else float(binomtest(int(only_b), discordant, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (family-wise error rate), in the given order."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="mergesort")
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def _accuracies(tables: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A's, B's) class accuracies of tables [..., C, 4]."""
    return (tables[..., 0] + tables[..., 1]) / n, (tables[..., 0] + tables[..., 2]) / n


def _statistics(acc_a: np.ndarray, acc_b: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": acc_b.mean(axis=-1) - acc_a.mean(axis=-1),
            "worst": acc_b.min(axis=-1) - acc_a.min(axis=-1)}


def paired_comparison(correct_a, correct_b, labels, class_names: Sequence[str], *,
                      level: float = 0.95, draws: int = 10000, seed: int = 0) -> dict:
    """Per class, for the mean over classes and for the worst class: accuracies of A and B, the
    difference B - A with a `level` interval, the p-value and whether it is significant at
    1 - level (per class after Holm's correction). Classes without images are left out; seeded."""
    tables = paired_tables(correct_a, correct_b, labels, len(class_names))
    valid = np.flatnonzero(tables.sum(axis=1) > 0)
    if len(valid) == 0:
        raise ValueError("no images to compare")
    t, n = tables[valid], tables[valid].sum(axis=1)
    alpha = 1 - level
    rng = np.random.default_rng(seed)
    # paired bootstrap, stratified by class: [draws, C, 4]
    boot = np.stack([rng.multinomial(n[c], t[c] / n[c], size=draws) for c in range(len(valid))], axis=1)
    boot_a, boot_b = _accuracies(boot, n)
    # randomisation under exchangeability: each discordant image's outcome swapped with prob. 1/2
    discordant = t[:, 1] + t[:, 2]
    only_b = rng.binomial(discordant, 0.5, size=(draws, len(valid)))
    null = np.stack([np.broadcast_to(t[:, 0], only_b.shape), discordant - only_b, only_b,
                     np.broadcast_to(t[:, 3], only_b.shape)], axis=-1)
    acc_a, acc_b = _accuracies(t, n)
    observed = _statistics(acc_a, acc_b)
    boot_stats, null_stats = _statistics(boot_a, boot_b), _statistics(*_accuracies(null, n))

    def interval(samples):
        low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
        return float(low), float(high)

    per_class = []
    p_values = [mcnemar_exact(t[c, 1], t[c, 2]) for c in range(len(valid))]
    for c, (cls, p, p_adj) in enumerate(zip(valid, p_values, holm(p_values))):
        low, high = interval(boot_b[:, c] - boot_a[:, c])
        per_class.append({"class": int(cls), "class_name": str(class_names[cls]), "n": int(n[c]),
                          "acc_a": float(acc_a[c]), "acc_b": float(acc_b[c]),
                          "diff": float(acc_b[c] - acc_a[c]), "ci_low": low, "ci_high": high,
                          "only_a": int(t[c, 1]), "only_b": int(t[c, 2]), "p": p, "p_holm": p_adj,
                          "significant": p_adj < alpha})
    result = {"level": level, "draws": draws, "seed": seed, "method": PAIRED_METHOD,
              "n": int(n.sum()), "per_class": per_class}
    for name in ("mean", "worst"):
        low, high = interval(boot_stats[name])
        extreme = np.abs(null_stats[name]) >= abs(observed[name]) - 1e-12
        p = float((1 + extreme.sum()) / (1 + draws))
        pick = np.mean if name == "mean" else np.min
        result[name] = {"a": float(pick(acc_a)), "b": float(pick(acc_b)), "diff": float(observed[name]),
                        "ci_low": low, "ci_high": high, "p": p, "significant": p < alpha}
    result["worst"]["class_a"] = str(class_names[valid[int(np.argmin(acc_a))]])
    result["worst"]["class_b"] = str(class_names[valid[int(np.argmin(acc_b))]])
    return result
