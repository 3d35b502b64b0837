"""Paired comparison of two models on the same images, per class, for the mean over classes and
for the worst class (`python -m cwr_fast.compare A B --paired`).

    result = paired_comparison(correct_a, correct_b, labels, class_names)
    result["per_class"][3]["diff"], result["per_class"][3]["p_holm"], result["worst"]["p"]

Inputs are per-image booleans (the image is classified correctly by A / by B under the same
attack, the RobustBits of each report) on the same images. Everything is a function of the
per-class 2x2 tables of (A correct, B correct), so it is exact for binary outcomes and cheap for
any number of images.

    combined_worst_test(pairs)["p"]      # one defense against its baseline over held-out seeds
    paired_power(50, 0.5, 0.05)          # detection rate of the mean test for a planted difference
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
    "probability 1/2). Intervals of the per-class and mean differences: percentile intervals of a "
    "paired bootstrap over images, stratified by class (each class's 2x2 table redrawn from a "
    "multinomial with its observed shares). Interval of the worst-class difference (min over "
    "classes of B's accuracies minus min of A's): [min L_B - min U_A, min U_B - min L_A] of exact "
    "one-sided Clopper-Pearson bounds of each model's C class accuracies, lower bounds L at "
    "1 - alpha/4 each (alpha = 1 - level), upper bounds U at 1 - alpha/(4C) each (Bonferroni over "
    "the C classes). min L is below the true minimum whenever the true worst class's L is, min U "
    "is above it whenever every U is above its class, so the four one-sided failures have total "
    "probability <= 2 alpha/4 + 2C alpha/(4C) = alpha, whichever classes are worst. It ignores "
    "the pairing and is conservative (coverage 0.995 to 1.0 at level 0.95 in our simulations)")


def paired_tables(correct_a: np.ndarray, correct_b: np.ndarray, labels: np.ndarray,
                  num_classes: int) -> np.ndarray:
    """[C, 4] counts per class of (both correct, only A, only B, neither)."""
    a, b, y = (np.asarray(v) for v in (correct_a, correct_b, labels))
    if not a.shape == b.shape == y.shape:
        raise ValueError(f"one outcome per image expected, got {a.shape}, {b.shape}, {y.shape}")
    cell = 2 * (~a.astype(bool)) + (~b.astype(bool))       # 0: both, 1: only A, 2: only B, 3: neither
    return np.bincount(y.astype(np.int64) * 4 + cell, minlength=num_classes * 4).reshape(num_classes, 4)


def mcnemar_exact(only_a, only_b):
    """Exact two-sided McNemar p-value: the binomial test of only_b out of the discordant pairs,
    2 P(X <= min(only_a, only_b)) for X ~ Binomial(discordant, 1/2), at most 1 (1 without
    discordant pairs). A float, or an array for arrays of counts."""
    from scipy.stats import binom

    a, b = np.asarray(only_a, dtype=np.int64), np.asarray(only_b, dtype=np.int64)
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(a, b), a + b, 0.5))
    return float(p) if p.ndim == 0 else p


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


def _valid_tables(correct_a, correct_b, labels,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class indices with images, their tables [C', 4], their image counts [C'])."""
    tables = paired_tables(correct_a, correct_b, labels, num_classes)
    valid = np.flatnonzero(tables.sum(axis=1) > 0)
    if len(valid) == 0:
        raise ValueError("no images to compare")
    return valid, tables[valid], tables[valid].sum(axis=1)


def _null_statistics(t: np.ndarray, n: np.ndarray, draws: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Statistics [draws] under exchangeability of A and B on every image: each discordant
    image's outcome swapped with probability 1/2 (only_b ~ Binomial(discordant, 1/2) per class)."""
    discordant = t[:, 1] + t[:, 2]
    only_b = rng.binomial(discordant, 0.5, size=(draws, len(n)))
    null = np.stack([np.broadcast_to(t[:, 0], only_b.shape), discordant - only_b, only_b,
                     np.broadcast_to(t[:, 3], only_b.shape)], axis=-1)
    return _statistics(*_accuracies(null, n))


def _p_value(null: np.ndarray, observed: float, *, one_sided: bool = False) -> float:
    """Randomisation p-value of `observed` among the null draws: two-sided (|null| >= |observed|)
    or one-sided for a positive difference (null >= observed); the observed value counts as a draw."""
    extreme = null >= observed - 1e-12 if one_sided else np.abs(null) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + len(null)))


def worst_difference_interval(t: np.ndarray, n: np.ndarray, alpha: float) -> tuple[float, float]:
    """Simultaneous 1 - alpha interval of min_c acc_b[c] - min_c acc_a[c] from tables [C, 4]
    (see PAIRED_METHOD). The minimum's lower bound, min_c L_c, holds whenever the true worst
    class's L holds, so the lower bounds need no correction over classes; its upper bound,
    min_c U_c, needs every U_c."""
    from cwr_fast.classwise.stats import clopper_pearson

    bounds = []
    for k in (t[:, 0] + t[:, 1], t[:, 0] + t[:, 2]):                  # A's, B's correct images
        # clopper_pearson(., ., x) has one-sided tails x / 2: alpha / 4, alpha / (4C)
        low, high = clopper_pearson(k, n, alpha / 2)[0], clopper_pearson(k, n, alpha / (2 * len(n)))[1]
        bounds.append((low.min(), high.min()))
    (low_a, high_a), (low_b, high_b) = bounds
    return float(low_b - high_a), float(high_b - low_a)


def paired_comparison(correct_a, correct_b, labels, class_names: Sequence[str], *,
                      level: float = 0.95, draws: int = 10000, seed: int = 0) -> dict:
    """Per class, for the mean over classes and for the worst class: accuracies of A and B, the
    difference B - A with a `level` interval, the p-value and whether it is significant at
    1 - level (per class after Holm's correction). Classes without images are left out; seeded."""
    valid, t, n = _valid_tables(correct_a, correct_b, labels, len(class_names))
    alpha = 1 - level
    rng = np.random.default_rng(seed)
    # paired bootstrap, stratified by class: [draws, C, 4]
    boot = np.stack([rng.multinomial(n[c], t[c] / n[c], size=draws) for c in range(len(valid))], axis=1)
    boot_a, boot_b = _accuracies(boot, n)
    null_stats = _null_statistics(t, n, draws, rng)
    acc_a, acc_b = _accuracies(t, n)
    observed = _statistics(acc_a, acc_b)

    def interval(samples):
        low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
        return float(low), float(high)

    per_class = []
    p_values = mcnemar_exact(t[:, 1], t[:, 2]).tolist()
    for c, (cls, p, p_adj) in enumerate(zip(valid, p_values, holm(p_values))):
        low, high = interval(boot_b[:, c] - boot_a[:, c])
        per_class.append({"class": int(cls), "class_name": str(class_names[cls]), "n": int(n[c]),
                          "acc_a": float(acc_a[c]), "acc_b": float(acc_b[c]),
                          "diff": float(acc_b[c] - acc_a[c]), "ci_low": low, "ci_high": high,
                          "only_a": int(t[c, 1]), "only_b": int(t[c, 2]), "p": p, "p_holm": p_adj,
                          "significant": p_adj < alpha})
    result = {"level": level, "draws": draws, "seed": seed, "method": PAIRED_METHOD,
              "n": int(n.sum()), "per_class": per_class}
    intervals = {"mean": interval(boot_b.mean(axis=-1) - boot_a.mean(axis=-1)),
                 "worst": worst_difference_interval(t, n, alpha)}
    for name in ("mean", "worst"):
        low, high = intervals[name]
        p = _p_value(null_stats[name], observed[name])
        pick = np.mean if name == "mean" else np.min
        result[name] = {"a": float(pick(acc_a)), "b": float(pick(acc_b)), "diff": float(observed[name]),
                        "ci_low": low, "ci_high": high, "p": p, "significant": p < alpha}
    result["worst"]["class_a"] = str(class_names[valid[int(np.argmin(acc_a))]])
    result["worst"]["class_b"] = str(class_names[valid[int(np.argmin(acc_b))]])
    return result


COMBINED_METHOD = (
    "Over held-out seeds, each a defense B against its baseline A of the same seed on the same "
    "images: statistic the mean over the seeds of the {name} difference B - A; one-sided p-value "
    "(B better) of a paired randomisation test under the null hypothesis that within every seed A "
    "and B are exchangeable on every image (each discordant image's outcome swapped with "
    "probability 1/2, independently per seed)")


def _combined_test(name: str, pairs, draws: int, seed: int) -> dict:
    if not pairs:
        raise ValueError("no seeds to combine")
    rng = np.random.default_rng(seed)
    diffs, null = [], np.zeros(draws)
    for correct_a, correct_b, labels, num_classes in pairs:
        _, t, n = _valid_tables(correct_a, correct_b, labels, num_classes)
        diffs.append(float(_statistics(*_accuracies(t, n))[name]))
        null += _null_statistics(t, n, draws, rng)[name]
    mean_diff = float(np.mean(diffs))
    p = _p_value(null / len(pairs), mean_diff, one_sided=True)
    return {"seeds": len(pairs), "diffs": diffs, "mean_diff": mean_diff, "p": p, "draws": draws,
            "seed": seed, "method": COMBINED_METHOD.format(name="worst-class (lowest class accuracy)"
                                                           if name == "worst" else "mean-over-classes")}


def combined_worst_test(pairs: Sequence[tuple], *, draws: int = 10000, seed: int = 0) -> dict:
    """Does defense B raise the worst class over its baseline A, over held-out seeds? pairs: one
    (correct_a, correct_b, labels, num_classes) per seed, A and B attacked on the same images.
    {seeds, diffs (per seed, B's lowest class accuracy minus A's), mean_diff, p (one-sided, for a
    positive mean_diff), draws, seed, method}: see COMBINED_METHOD. Seeded."""
    return _combined_test("worst", pairs, draws, seed)


def combined_mean_test(pairs: Sequence[tuple], *, draws: int = 10000, seed: int = 0) -> dict:
    """combined_worst_test for the mean over classes of the accuracy."""
    return _combined_test("mean", pairs, draws, seed)


def paired_power(n_per_class: int, rate: float, diff: float, *, num_classes: int = 10,
                 discordance: float = 0.2, level: float = 0.95, trials: int = 200, draws: int = 200,
                 seed: int = 0) -> float:
    """Detection rate (at 1 - level) of the mean-over-classes randomisation test of
    paired_comparison when B's accuracy is `diff` above A's `rate` in every class, with
    n_per_class images per class and a share `discordance` of them right for one model only
    (only B right: (discordance + diff) / 2, only A: (discordance - diff) / 2). Over `trials`
    simulated runs of `draws` randomisations each; seeded. The findings use it for the smallest
    difference a run of that size could detect."""
    only_a, only_b = (discordance - diff) / 2, (discordance + diff) / 2
    shares = np.array([rate - only_a, only_a, only_b, 1 - rate - only_b])
    if not (np.all(shares >= 0) and np.all(shares <= 1)):
        raise ValueError(f"no 2x2 table has accuracy {rate}, difference {diff} and discordance "
                         f"{discordance}: need |diff| <= discordance and the four shares in [0, 1]")
    rng = np.random.default_rng(seed)
    n = np.full(num_classes, n_per_class)
    detected = 0
    for _ in range(trials):
        t = rng.multinomial(n_per_class, shares, size=num_classes)
        observed = _statistics(*_accuracies(t, n))["mean"]
        detected += _p_value(_null_statistics(t, n, draws, rng)["mean"], observed) < 1 - level
    return detected / trials
