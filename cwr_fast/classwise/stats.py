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
