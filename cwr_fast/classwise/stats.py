"""Statistics of class-wise accuracies: pure functions on numbers and arrays."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes, n, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (arrays or scalars); NaN where n == 0.

    Unlike the normal interval it stays inside [0, 1] and is sound for k = 0 or k = n, which is
    common for robust accuracy per class."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    # the point estimate always lies inside; guard the rounding at k = 0 and k = n
    low = np.where(n > 0, np.minimum(low, p), np.nan)
    high = np.where(n > 0, np.maximum(high, p), np.nan)
    return low, high


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=np.float64)
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length sequences, ignoring positions where either is
    NaN; NaN when fewer than 2 positions remain or either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return math.nan
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def by_robustness(accuracy) -> np.ndarray:
    """Indices of the classes with an accuracy (not NaN), least robust first, ties by class index:
    the first len // 2 are "the less robust half" everywhere in cwr_fast."""
    acc = np.asarray(accuracy, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(acc))
    return valid[np.argsort(acc[valid], kind="stable")]


def class_summary(accuracy: Sequence[float], class_names: Sequence[str]) -> dict:
    """Mean over classes, worst and best class, population std and worst-best gap of per-class
    accuracies; classes with NaN (no images) are left out."""
    acc = np.asarray(accuracy, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(acc))
    if len(valid) == 0:
        return {"mean": None, "std": None, "gap": None, "worst": None, "best": None}
    vals = acc[valid]
    worst = int(valid[int(np.argmin(vals))])
    best = int(valid[int(np.argmax(vals))])
    return {
        "mean": float(vals.mean()),
        "std": float(vals.std()),
        "gap": float(vals.max() - vals.min()),
        "worst": {"class": worst, "class_name": class_names[worst], "value": float(acc[worst])},
        "best": {"class": best, "class_name": class_names[best], "value": float(acc[best])},
    }


def clopper_pearson(successes, n, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) two-sided 1 - alpha interval of a binomial proportion; NaN where
    n == 0. Its coverage is at least 1 - alpha for every true proportion."""
    from scipy.stats import beta

    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        high = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)


WORST_CLASS_METHOD = (
    "ci: simultaneous interval for the lowest true class accuracy, [min over classes of the lower "
    "bounds, min of the upper bounds] of exact Clopper-Pearson intervals at level 1 - alpha / C "
    "(Bonferroni over the C classes): all C intervals hold together with probability >= 1 - alpha, "
    "and then the minimum lies inside, whichever class it is. worst_frequency: the share of "
    "bootstrap draws (images resampled with replacement within each class; a class's robust count "
    "is then Binomial(n_c, observed accuracy)) in which each class has the lowest accuracy, ties "
    "shared; bootstrap_ci: the percentile interval of the minimum over those draws, which like the "
    "observed minimum is biased low when several classes are close")


def worst_class_statistics(successes, n, *, level: float = 0.95, draws: int = 2000,
                           seed: int = 0) -> dict | None:
    """Uncertainty of the worst class's accuracy, min over classes of successes / n (classes with
    n == 0 left out): see WORST_CLASS_METHOD. Seeded: the same counts give the same numbers.
    None when no class has images."""
    k = np.asarray(successes, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    valid = np.flatnonzero(n > 0)
    if len(valid) == 0:
        return None
    alpha = 1 - level
    low, high = clopper_pearson(k[valid], n[valid], alpha / len(valid))
    rng = np.random.default_rng(seed)
    drawn = rng.binomial(n[valid], k[valid] / n[valid], size=(draws, len(valid))) / n[valid]
    lowest = drawn.min(axis=1, keepdims=True)
    is_worst = drawn == lowest
    share = (is_worst / is_worst.sum(axis=1, keepdims=True)).mean(axis=0)
    frequency = np.full(len(n), np.nan)
    frequency[valid] = share
    boot_low, boot_high = np.quantile(lowest[:, 0], [alpha / 2, 1 - alpha / 2])
    return {"estimate": float((k[valid] / n[valid]).min()), "level": level,
            "ci_low": float(low.min()), "ci_high": float(high.min()),
            "bootstrap_ci_low": float(boot_low), "bootstrap_ci_high": float(boot_high),
            "worst_frequency": [None if math.isnan(f) else float(f) for f in frequency],
            "draws": draws, "seed": seed}
