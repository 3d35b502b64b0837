"""Calibrated tests of the paper's class-wise findings: pure functions on counts and booleans.

Each test states a null hypothesis under which the finding is false, and returns a p-value that
is at most alpha with probability at most alpha under that null (Monte Carlo or permutation
p-values of the form (1 + #null >= observed) / (1 + draws), exact for any number of draws).
All are seeded: the same inputs give the same outputs.

    homogeneity_test(robust, n)["p"]                       # disparity: do classes differ?
    concentration_test(confusion)["p"]                     # do fooled images pile on 1-2 classes?
    spearman_test(norms, robust_acc)["p"]                  # rho > 0?
    label_permutation_agreement(correct, labels, C)["p"]   # do attacks agree beyond shared images?
    vulnerable_gain_test(weak, strong, labels, C)["p"]     # do extra fooled images hit weak classes?

Power: detection_rate and minimum_detectable_effect, with one planted-effect simulator per test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from cwr_fast.classwise.stats import by_robustness, rankdata, spearman

_CHUNK = 4_000_000  # elements per vectorised block: bounds memory for large draws x classes

HOMOGENEITY_METHOD = (
    "Pearson chi-square of the classes x (robust, not robust) table; p by Monte Carlo conditional "
    "on both margins (multivariate hypergeometric draws = random permutations of the robust labels "
    "over the images), null: all classes share one robust accuracy")
CONCENTRATION_METHOD = (
    "fooled-weighted top-2 share (sum over classes of the two largest off-diagonal counts of the "
    "row / all off-diagonal counts); p by Monte Carlo against each class's fooled images spread "
    "uniformly over its C-1 wrong classes, per-class fooled counts kept")
AGREEMENT_METHOD = (
    "mean pairwise Spearman (average ranks) of the per-class accuracy vectors of the K rows; p by "
    "permuting the class labels over the images, each image keeping its K outcomes together, so "
    "the agreement that shared images alone produce stays in the null (null: no class effect)")
GAIN_METHOD = (
    "among the images the weak attack leaves robust, mean weak-attack class robust accuracy of "
    "those the strong attack fools minus that of those it does not; one-sided p (negative: the "
    "gains fall on less robust classes) by permuting which of these images are fooled. Lower and "
    "upper halves: the classes with images ordered by weak-attack robust accuracy, ties broken by "
    "class index, the first floor(C/2) and the last floor(C/2) (a middle class of an odd count "
    "is in neither)")


def _mc_p(null: np.ndarray, observed: float, *, greater: bool = True) -> float:
    """(1 + #null at least as extreme) / (1 + draws), with a relative tolerance so that a null
    draw equal to the observed value up to rounding counts as extreme (ties must count)."""
    tol = 1e-9 * max(1.0, abs(observed))
    hits = np.count_nonzero(null >= observed - tol) if greater else np.count_nonzero(null <= observed + tol)
    return float((1 + hits) / (1 + len(null)))


# ---- disparity ---------------------------------------------------------------------------------

def _chi_square(robust: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Pearson chi-square of [..., C] robust counts out of n[C] with fixed margins; the two columns
    combine to sum (r - n p)^2 / (n p (1 - p)), p the pooled rate (0 < p < 1 assumed)."""
    p = robust.sum(axis=-1, keepdims=True) / n.sum()
    expected = n * p
    return ((robust - expected) ** 2 / (expected * (1 - p))).sum(axis=-1)


def homogeneity_test(robust, n, *, draws: int = 2000, seed: int = 0) -> dict:
    """Null: all classes share one robust accuracy (labels exchangeable across images).
    Statistic: Pearson chi-square of the C x 2 table; p by Monte Carlo conditional on both
    margins. Classes with n == 0 are left out; all or no images robust gives p = 1."""
    robust = np.asarray(robust, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if robust.shape != n.shape:
        raise ValueError(f"robust and n need one count per class, got {robust.shape} and {n.shape}")
    valid = np.flatnonzero(n > 0)
    out = {"statistic": None, "p": 1.0, "gap": None, "worst": None, "best": None,
           "draws": draws, "seed": seed, "method": HOMOGENEITY_METHOD}
    if len(valid) == 0:
        return out
    r, m = robust[valid], n[valid]
    rate = r / m
    out.update(gap=float(rate.max() - rate.min()), worst=int(valid[int(np.argmin(rate))]),
               best=int(valid[int(np.argmax(rate))]))
    total = int(r.sum())
    if len(valid) < 2 or total == 0 or total == m.sum():
        out["statistic"] = 0.0  # a zero expected cell: every table with these margins is this one
        return out
    observed = float(_chi_square(r.astype(np.float64), m))
    rng = np.random.default_rng(seed)
    null = _chi_square(rng.multivariate_hypergeometric(m, total, size=draws).astype(np.float64), m)
    out.update(statistic=observed, p=_mc_p(null, observed))
    return out


# ---- concentration -----------------------------------------------------------------------------

def _top2(counts: np.ndarray) -> np.ndarray:
    """Sum of the two largest entries along the last axis."""
    if counts.shape[-1] <= 2:
        return counts.sum(axis=-1)
    return np.partition(counts, -2, axis=-1)[..., -2:].sum(axis=-1)


def concentration_test(confusion, *, draws: int = 2000, seed: int = 0) -> dict:
    """Null: each class's fooled images go uniformly at random to its C-1 wrong classes (per-class
    fooled counts kept). Statistic: fooled-weighted top-2 share, sum over classes of the two
    largest off-diagonal counts of the row / all off-diagonal counts. One-sided Monte Carlo p."""
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {matrix.shape}")
    classes = len(matrix)
    off = matrix[~np.eye(classes, dtype=bool)].reshape(classes, classes - 1) if classes else matrix
    fooled_per_class = off.sum(axis=1)
    fooled = int(fooled_per_class.sum())
    out = {"top2_share": None, "null_mean": None, "null_q95": None, "p": 1.0, "fooled": fooled,
           "draws": draws, "seed": seed, "method": CONCENTRATION_METHOD}
    if fooled == 0:
        out["note"] = "no fooled image"
        return out
    observed = int(_top2(off).sum())
    out["top2_share"] = observed / fooled
    if classes - 1 <= 2:
        out.update(null_mean=1.0, null_q95=1.0,
                   note=f"with {classes - 1} wrong classes the top-2 share is always 1: no test")
        return out
    rng = np.random.default_rng(seed)
    rows = fooled_per_class[fooled_per_class > 0]
    uniform = np.full(classes - 1, 1.0 / (classes - 1))
    per_block = max(1, _CHUNK // (len(rows) * (classes - 1)))
    null = np.concatenate([
        _top2(rng.multinomial(np.broadcast_to(rows, (min(per_block, draws - start), len(rows))),
                              uniform)).sum(axis=1)
        for start in range(0, draws, per_block)])
    # integers: the comparison needs no tolerance
    out.update(null_mean=float(null.mean()) / fooled,
               null_q95=float(np.quantile(null, 0.95)) / fooled,
               p=float((1 + np.count_nonzero(null >= observed)) / (1 + draws)))
    return out


# ---- rank correlation --------------------------------------------------------------------------

def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis of an array, ties given their average rank (vectorised
    scipy.stats.rankdata); NaN is not supported."""
    values = np.asarray(values, dtype=np.float64)
    size = values.shape[-1]
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    position = np.broadcast_to(np.arange(size), values.shape)
    change = ordered[..., 1:] != ordered[..., :-1]
    starts = np.concatenate([np.ones(values.shape[:-1] + (1,), bool), change], axis=-1)
    ends = np.concatenate([change, np.ones(values.shape[:-1] + (1,), bool)], axis=-1)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, position, size), axis=-1), axis=-1),
                   axis=-1)
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    return ranks


def spearman_test(a, b, *, permutations: int = 20000, seed: int = 0) -> dict:
    """Null: a and b are unrelated (b exchangeable across positions). Statistic: Spearman rho(a, b)
    (average ranks); one-sided p of rho > 0 by permuting b. Positions with NaN are dropped;
    rho NaN (fewer than 2 positions, a constant side) gives p NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman_test needs two equal-length vectors, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    rho = spearman(a, b)
    out = {"rho": rho, "p": math.nan, "n": int(keep.sum()), "permutations": permutations, "seed": seed}
    if math.isnan(rho):
        return out
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    observed = float(ra @ rb) / denom  # the same arithmetic as the null, so ties compare equal
    rng = np.random.default_rng(seed)
    per_block = max(1, _CHUNK // len(b))
    null = np.concatenate([
        rng.permuted(np.broadcast_to(rb, (min(per_block, permutations - start), len(rb))), axis=1) @ ra
        for start in range(0, permutations, per_block)]) / denom
    out["p"] = _mc_p(null, observed)
    return out


def _mean_pairwise_spearman(accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """accuracy [..., K, C] -> (mean over pairs [...] ignoring NaN, per-pair rho [..., pairs])."""
    ranks = average_ranks(accuracy)
    ranks = ranks - ranks.mean(axis=-1, keepdims=True)
    i, j = np.triu_indices(accuracy.shape[-2], k=1)
    cross = (ranks[..., i, :] * ranks[..., j, :]).sum(axis=-1)
    square = (ranks * ranks).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where((square[..., i] > 0) & (square[..., j] > 0),
                       cross / np.sqrt(square[..., i] * square[..., j]), np.nan)
        valid = ~np.isnan(rho)
        count = valid.sum(axis=-1)
        mean = np.where(count > 0, np.where(valid, rho, 0).sum(axis=-1) / np.maximum(count, 1), np.nan)
    return mean, rho


def _permuted_class_counts(pattern_counts: np.ndarray, class_sizes: np.ndarray, draws: int,
                           rng: np.random.Generator) -> np.ndarray:
    """[draws, C, G] counts of each outcome pattern per class after a uniform random permutation
    of the class labels: a random table with the given margins, drawn class by class and pattern
    by pattern as conditional hypergeometrics (cost C x G vectorised draws, not images x draws)."""
    classes, patterns = len(class_sizes), len(pattern_counts)
    table = np.zeros((draws, classes, patterns), dtype=np.int64)
    pool = np.broadcast_to(pattern_counts, (draws, patterns)).copy()
    for c in range(classes):
        if c == classes - 1:
            table[:, c] = pool
            break
        need = np.full(draws, class_sizes[c], dtype=np.int64)
        left = pool.sum(axis=1)
        for g in range(patterns):
            left -= pool[:, g]
            x = need.copy() if g == patterns - 1 else rng.hypergeometric(pool[:, g], left, need)
            table[:, c, g] = x
            need -= x
        pool -= table[:, c]
    return table


def label_permutation_agreement(correct, labels, num_classes: int, *, permutations: int = 1000,
                                seed: int = 0) -> dict:
    """Null: robustness has no class effect (labels exchangeable over images, each image keeping
    its K outcomes). Statistic: mean pairwise Spearman of the K rows' per-class accuracies
    (classes without images left out). One-sided p of agreement beyond the null's."""
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    if correct.ndim != 2 or correct.shape[1] != len(labels):
        raise ValueError(f"correct must be [K, N] with N = len(labels) = {len(labels)}, "
                         f"got shape {correct.shape}")
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    attacks = correct.shape[0]
    sizes = np.bincount(labels, minlength=num_classes)
    present = np.flatnonzero(sizes > 0)
    accuracy = np.stack([np.bincount(labels, weights=row, minlength=num_classes) for row in correct])
    accuracy = accuracy[:, present] / sizes[present]
    mean, rho = _mean_pairwise_spearman(accuracy)
    i, j = np.triu_indices(attacks, k=1)
    pairs = [{"a": int(a), "b": int(b), "spearman": float(r)} for a, b, r in zip(i, j, rho)]
    valid = rho[~np.isnan(rho)]
    out = {"mean": float(mean), "min": float(valid.min()) if len(valid) else math.nan, "pairs": pairs,
           "p": math.nan, "null_mean": math.nan, "null_q95": math.nan, "classes": int(len(present)),
           "permutations": permutations, "seed": seed, "method": AGREEMENT_METHOD}
    if math.isnan(mean):
        return out
    # each image's K outcomes as one pattern id: the null only moves whole patterns between classes
    code = (correct.astype(np.int64) << np.arange(attacks)[:, None]).sum(axis=0)
    codes, inverse = np.unique(code, return_inverse=True)
    bits = ((codes[:, None] >> np.arange(attacks)) & 1).astype(np.float64)   # [G, K]
    pattern_counts = np.bincount(inverse, minlength=len(codes))
    rng = np.random.default_rng(seed)
    per_block = max(1, _CHUNK // (len(present) * max(len(codes), attacks)))
    null = []
    for start in range(0, permutations, per_block):
        table = _permuted_class_counts(pattern_counts, sizes[present],
                                       min(per_block, permutations - start), rng)
        robust = table @ bits                                          # [draws, C, K]
        null.append(_mean_pairwise_spearman(np.swapaxes(robust / sizes[present][:, None], 1, 2))[0])
    null = np.concatenate(null)
    # a null draw with no defined pair (every row constant) counts as extreme: conservative
    null = np.where(np.isnan(null), np.inf, null)
    finite = null[np.isfinite(null)]
    out.update(p=_mc_p(null, float(mean)),
               null_mean=float(finite.mean()) if len(finite) else math.nan,
               null_q95=float(np.quantile(finite, 0.95)) if len(finite) else math.nan)
    return out


# ---- gains -------------------------------------------------------------------------------------

def vulnerable_gain_test(weak_correct, strong_correct, labels, num_classes: int, *,
                         permutations: int = 5000, seed: int = 0) -> dict:
    """Null: among the images the weak attack leaves robust, which ones the strong attack fools is
    independent of the class. Statistic: mean weak-attack class robust accuracy of the newly
    fooled images minus that of the others; one-sided p for the negative direction (the gains
    fall on less robust classes), by permuting the fooled flags among those images."""
    weak = np.asarray(weak_correct, dtype=bool)
    strong = np.asarray(strong_correct, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    if not weak.shape == strong.shape == labels.shape:
        raise ValueError(f"one outcome per image expected, got {weak.shape}, {strong.shape}, {labels.shape}")
    sizes = np.bincount(labels, minlength=num_classes)
    weak_robust = np.bincount(labels[weak], minlength=num_classes)
    extra_per_class = np.bincount(labels[weak & ~strong], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = weak_robust / sizes                       # the class's weak-attack robust accuracy
        gain_rate = extra_per_class / weak_robust
    order = by_robustness(score)   # classes with images, least robust first, ties by class index
    half = len(order) // 2
    lower, upper = order[:half], order[len(order) - half:]

    def pooled(group: np.ndarray) -> float | None:
        return float(extra_per_class[group].sum() / weak_robust[group].sum()) \
            if len(group) and weak_robust[group].sum() else None

    per_class = [{"class": int(c), "n": int(sizes[c]), "weak_robust": int(weak_robust[c]),
                  "weak_robust_acc": float(score[c]) if sizes[c] else None,
                  "extra": int(extra_per_class[c]),
                  "gain_rate": float(gain_rate[c]) if weak_robust[c] else None}
                 for c in range(num_classes)]
    extra, total = int(extra_per_class.sum()), int(weak_robust.sum())
    out = {"statistic": None, "p": 1.0, "extra": extra, "weak_robust": total,
           "gain_rate_lower": pooled(lower), "gain_rate_upper": pooled(upper),
           "lower_classes": lower.tolist(), "upper_classes": upper.tolist(), "per_class": per_class,
           "permutations": permutations, "seed": seed, "method": GAIN_METHOD}
    if extra == 0 or extra == total:
        return out  # nothing to attribute, or every weak-robust image fooled: one possible split
    s = np.nan_to_num(score)
    score_sum = float(weak_robust @ s)

    def statistic(fooled_sum):
        return fooled_sum / extra - (score_sum - fooled_sum) / (total - extra)

    observed = statistic(float(extra_per_class @ s))
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_hypergeometric(weak_robust, extra, size=permutations)
    out.update(statistic=float(observed), p=_mc_p(statistic(draws @ s), observed, greater=False))
    return out


# ---- power -------------------------------------------------------------------------------------

def detection_rate(simulate: Callable[[np.random.Generator], object], decide: Callable[[object], bool],
                   *, draws: int = 200, seed: int = 0) -> float:
    """Share of `draws` simulated data sets (simulate(rng), one seeded generator) that decide()
    calls a detection."""
    rng = np.random.default_rng(seed)
    return sum(bool(decide(simulate(rng))) for _ in range(draws)) / draws


def minimum_detectable_effect(rate_at: Callable[[float], float], effects: Sequence[float]) -> float | None:
    """The smallest effect of the increasing sequence `effects` detected at least 80% of the time
    (rate_at(effect) >= 0.8), or None when none is."""
    for effect in effects:
        if rate_at(effect) >= 0.8:
            return effect
    return None


def simulate_disparity(rng: np.random.Generator, n, rate: float, gap: float) -> np.ndarray:
    """robust[C] for n[C] images per class: class 0 at rate - gap (clipped at 0), the others at
    rate, Binomial per class."""
    n = np.asarray(n, dtype=np.int64)
    rates = np.full(len(n), float(rate))
    rates[0] = max(rate - gap, 0.0)
    return rng.binomial(n, rates)


def simulate_concentration(rng: np.random.Generator, fooled, q: float) -> np.ndarray:
    """confusion [C, C] (zero diagonal) for fooled[C] fooled images per class: each goes with
    probability q to class (c + 1) % C, else uniformly to one of the C - 1 wrong classes."""
    fooled = np.asarray(fooled, dtype=np.int64)
    classes = len(fooled)
    targeted = rng.binomial(fooled, q)
    spread = rng.multinomial(fooled - targeted, np.full(classes - 1, 1.0 / (classes - 1)))
    confusion = np.zeros((classes, classes), dtype=np.int64)
    confusion[~np.eye(classes, dtype=bool)] = spread.ravel()
    confusion[np.arange(classes), (np.arange(classes) + 1) % classes] += targeted
    return confusion


def simulate_correlation(rng: np.random.Generator, num_classes: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): num_classes draws of a standard bivariate Gaussian with correlation rho."""
    a = rng.standard_normal(num_classes)
    b = rho * a + math.sqrt(1 - rho * rho) * rng.standard_normal(num_classes)
    return a, b


def simulate_agreement(rng: np.random.Generator, n_per_class, spread: float, attacks: int = 3,
                       rate: float = 0.5, *, num_classes: int = 10,
                       noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(correct [K, N], labels [N]). Class accuracies evenly spaced over rate -/+ spread / 2; each
    image has a margin u ~ U(0, 1) shared by the K attacks, attack k leaves it correct when
    u + noise_k < its class's accuracy (noise_k ~ N(0, noise)). At spread 0 the attacks still
    agree through the shared images alone: that is the null. n_per_class: an int (num_classes
    classes of that size) or one count per class."""
    sizes = np.broadcast_to(np.asarray(n_per_class, dtype=np.int64), (num_classes,)) \
        if np.ndim(n_per_class) == 0 else np.asarray(n_per_class, dtype=np.int64)
    accuracy = rate + spread * (np.linspace(-0.5, 0.5, len(sizes)) if len(sizes) > 1 else np.zeros(1))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    margin = rng.random(len(labels))
    correct = margin + noise * rng.standard_normal((attacks, len(labels))) < accuracy[labels]
    return correct, labels


def simulate_gain(rng: np.random.Generator, n_per_class, weak_rates, extra_lower: float,
                  extra_upper: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weak_correct, strong_correct, labels): n_per_class images of each class (an int or one
    count per class), robust to the
    weak attack with the class's weak_rates; the strong attack additionally fools a weak-robust
    image with probability extra_lower in the classes of the lower half by weak rate (the first
    floor(C/2), ties by class index), extra_upper in the others."""
    weak_rates = np.asarray(weak_rates, dtype=np.float64)
    classes = len(weak_rates)
    extra = np.full(classes, float(extra_upper))
    extra[by_robustness(weak_rates)[:classes // 2]] = extra_lower
    labels = np.repeat(np.arange(classes), n_per_class)
    weak = rng.random(len(labels)) < weak_rates[labels]
    strong = weak & ~(rng.random(len(labels)) < extra[labels])
    return weak, strong, labels
