"""cwr_fast.classwise.hypothesis: the tests behind FINDINGS.md's verdicts keep their level.

For each test, thousands of seeded data sets simulated under its null hypothesis: "reproduced"
(p < 0.05) must come at most 5% of the time, plus Monte Carlo error. The scenarios include those
where the old rules of cwr_fast.study.findings said yes far more often
(test_old_rules_fail_under_the_null documents by how much). Planted effects of stated sizes must be detected at least 80% of the time,
and effects in the wrong direction must not count."""

import functools
import math

import numpy as np
import pytest
from scipy.stats import rankdata as scipy_rankdata

from cwr_fast.classwise import hypothesis as H
from cwr_fast.classwise.stats import spearman, wilson_interval

ALPHA = 0.05
DATASETS = 1000                  # simulated data sets per null check
POWER_DATASETS = 200             # per planted effect (effects are sized for ~95% power)
DRAWS = 200                      # Monte Carlo draws / permutations inside each test
LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / DATASETS)
CLASSES = 10


def rejection_rate(simulate, test, datasets=DATASETS, seed=1) -> float:
    """Share of simulated data sets on which test(data) gives p < ALPHA."""
    return H.detection_rate(simulate, lambda data: test(data) < ALPHA, draws=datasets, seed=seed)


# ---- the five tests, as p-value functions of the simulated data ---------------------------------

def homogeneity_p(n):
    return lambda robust: H.homogeneity_test(robust, n, draws=DRAWS)["p"]


def concentration_p(confusion):
    return H.concentration_test(confusion, draws=DRAWS)["p"]


def spearman_p(pair):
    return H.spearman_test(*pair, permutations=DRAWS)["p"]


def agreement_p(data):
    correct, labels = data
    return H.label_permutation_agreement(correct, labels, CLASSES, permutations=DRAWS)["p"]


def gain_p(data):
    return H.vulnerable_gain_test(*data, CLASSES, permutations=DRAWS)["p"]


WEAK_RATES = np.linspace(0.3, 0.8, CLASSES)

# name -> (simulate under the null, p-value function)
NULLS = {
    **{f"disparity-{n}-per-class-rate-{rate}": (
        lambda rng, n=n, rate=rate: H.simulate_disparity(rng, np.full(CLASSES, n), rate, 0.0),
        homogeneity_p(np.full(CLASSES, n)))
       for n in (20, 50, 100) for rate in (0.5, 0.9)},
    "disparity-5-per-class-4-classes-rate-0.8": (   # few images: the statistic has many ties
        lambda rng: H.simulate_disparity(rng, np.full(4, 5), 0.8, 0.0), homogeneity_p(np.full(4, 5))),
    "disparity-unequal-classes-rate-0.98": (
        lambda rng: H.simulate_disparity(rng, np.arange(10, 110, 10), 0.98, 0.0),
        homogeneity_p(np.arange(10, 110, 10))),
    **{f"concentration-{f}-fooled-per-class": (
        lambda rng, f=f: H.simulate_concentration(rng, np.full(CLASSES, f), 0.0), concentration_p)
       for f in (2, 5, 10)},
    "concentration-uneven-fooled": (
        lambda rng: H.simulate_concentration(rng, np.arange(CLASSES) * 3, 0.0), concentration_p),
    "spearman-10-classes-independent": (
        lambda rng: H.simulate_correlation(rng, CLASSES, 0.0), spearman_p),
    "spearman-10-classes-ties": (   # many classes at 100%, as on MNIST
        lambda rng: tuple(np.minimum(np.round(v, 0), 1.0) for v in H.simulate_correlation(rng, CLASSES, 0.0)),
        spearman_p),
    "agreement-shared-margin-50-per-class": (
        lambda rng: H.simulate_agreement(rng, 50, 0.0), agreement_p),
    "agreement-shared-margin-ties-at-100%": (   # rate 0.97, 20 images: many classes at 100%
        lambda rng: H.simulate_agreement(rng, 20, 0.0, rate=0.97), agreement_p),
    "gain-equal-extra-rates-0.1": (
        lambda rng: H.simulate_gain(rng, 50, WEAK_RATES, 0.1, 0.1), gain_p),
    "gain-equal-extra-rates-0.4-flat-weak": (
        lambda rng: H.simulate_gain(rng, 50, np.full(CLASSES, 0.6), 0.4, 0.4), gain_p),
    "gain-equal-extra-rates-large-weak-classes": (   # the less robust classes have 5x the images
        lambda rng: H.simulate_gain(rng, [100] * 5 + [20] * 5, WEAK_RATES, 0.2, 0.2), gain_p),
}


@functools.cache
def null_rate(scenario: str) -> float:
    simulate, p_value = NULLS[scenario]
    return rejection_rate(simulate, p_value)


@pytest.mark.parametrize("scenario", list(NULLS))
def test_rejects_at_most_5_percent_under_the_null(scenario):
    rate = null_rate(scenario)
    assert rate <= LIMIT, f"{scenario}: p < 0.05 in {rate:.1%} of {DATASETS} null data sets"


# ---- the old rules of cwr_fast.study.findings, on the same null data ----------------------------

def old_disparity(n):
    def rule(robust):
        low, high = wilson_interval(robust, n)
        rate = robust / n
        worst, best = int(np.argmin(rate)), int(np.argmax(rate))
        return rate[best] - rate[worst] >= 0.10 and high[worst] < low[best]
    return rule


def old_concentration(confusion):
    off = confusion[~np.eye(len(confusion), dtype=bool)].reshape(len(confusion), -1)
    return np.sort(off, axis=1)[:, -2:].sum() / off.sum() >= 0.5


def old_gain(data):
    weak, strong, labels = data
    acc = np.bincount(labels, weights=weak, minlength=CLASSES) / np.bincount(labels, minlength=CLASSES)
    extra = np.bincount(labels[weak & ~strong], minlength=CLASSES)
    return extra.sum() > 0 and extra[acc < np.median(acc)].sum() / extra.sum() > 0.5


def old_consistency(data):
    correct, labels = data
    acc = [np.bincount(labels, weights=row, minlength=CLASSES) / np.bincount(labels) for row in correct]
    pairs = [spearman(acc[i], acc[j]) for i in range(len(acc)) for j in range(i + 1, len(acc))]
    return np.nanmean(pairs) >= 0.7


OLD_RULES = {  # name -> (null scenario, old rule -> bool)
    "disparity: gap >= 10 points and disjoint Wilson intervals": (
        "disparity-50-per-class-rate-0.5", old_disparity(np.full(CLASSES, 50))),
    "concentration: top-2 share >= 50%": ("concentration-5-fooled-per-class", old_concentration),
    "weight norm: Spearman > 0": ("spearman-10-classes-independent", lambda pair: spearman(*pair) > 0),
    "consistency: mean pairwise Spearman >= 0.7": ("agreement-shared-margin-50-per-class", old_consistency),
    "gains: > 50% of the extra fooled images from classes below the median": (
        "gain-equal-extra-rates-large-weak-classes", old_gain),
}


@pytest.mark.parametrize("rule", list(OLD_RULES))
def test_old_rules_fail_under_the_null(rule):
    """Why the rules changed: on data where the finding is false, the old rules said 'reproduced'
    far more often than 5% (and the new tests, above, do not)."""
    scenario, old = OLD_RULES[rule]
    simulate, p_value = NULLS[scenario]
    rate = H.detection_rate(simulate, old, draws=DATASETS, seed=1)
    assert rate > 2 * LIMIT, f"old rule {rule!r} said yes in only {rate:.1%} under {scenario}"


def test_agreement_rejects_far_less_than_the_old_rule_with_shared_images():
    """Attacks fooled by the same images agree on per-class accuracy without any class effect."""
    scenario = "agreement-shared-margin-50-per-class"
    old = H.detection_rate(NULLS[scenario][0], old_consistency, draws=DATASETS, seed=1)
    new = null_rate(scenario)
    assert old > 0.3 and new <= LIMIT and new < old / 5, (old, new)


# ---- planted effects: detected at least 80% of the time ------------------------------------------

POWER = {
    "disparity: class 0 at 0.55, others 0.80 (gap 0.25), 100 per class": (
        lambda rng: H.simulate_disparity(rng, np.full(CLASSES, 100), 0.8, 0.25),
        homogeneity_p(np.full(CLASSES, 100))),
    "concentration: 30% of 20 fooled per class to one class": (
        lambda rng: H.simulate_concentration(rng, np.full(CLASSES, 20), 0.3), concentration_p),
    "spearman: rho 0.9 over 10 classes": (
        lambda rng: H.simulate_correlation(rng, CLASSES, 0.9), spearman_p),
    "agreement: class accuracies spread 0.4 around 0.5, 100 per class": (
        lambda rng: H.simulate_agreement(rng, 100, 0.4), agreement_p),
    "gain: extra rate 0.3 in the lower half, 0.1 in the upper, 100 per class": (
        lambda rng: H.simulate_gain(rng, 100, WEAK_RATES, 0.3, 0.1), gain_p),
}


WRONG_DIRECTION = {
    "spearman: rho -0.9": (lambda rng: H.simulate_correlation(rng, CLASSES, -0.9), spearman_p),
    "gain: extra rate 0.1 in the lower half, 0.3 in the upper": (
        lambda rng: H.simulate_gain(rng, 100, WEAK_RATES, 0.1, 0.3), gain_p),
}


@pytest.mark.parametrize("effect, planted", [(e, True) for e in POWER] + [(e, False) for e in WRONG_DIRECTION])
def test_planted_effect_is_detected_and_the_wrong_direction_is_not(effect, planted):
    """A planted effect: 'reproduced' at least 80% of the time; an effect in the wrong direction
    (the tests are one-sided): at most 5%."""
    simulate, p_value = (POWER if planted else WRONG_DIRECTION)[effect]
    rate = rejection_rate(simulate, p_value, datasets=POWER_DATASETS, seed=2 if planted else 3)
    if planted:
        assert rate >= 0.8, f"{effect}: detected in only {rate:.1%}"
    else:
        assert rate <= ALPHA, f"{effect}: 'reproduced' in {rate:.1%}"


def test_minimum_detectable_effect_is_the_first_effect_with_80_percent():
    n = np.full(CLASSES, 100)

    def rate_at(gap):
        return H.detection_rate(lambda rng: H.simulate_disparity(rng, n, 0.8, gap),
                                lambda robust: homogeneity_p(n)(robust) < ALPHA, draws=50, seed=4)

    gaps = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    smallest = H.minimum_detectable_effect(rate_at, gaps)
    assert smallest in gaps[2:]
    assert rate_at(smallest) >= 0.8 and rate_at(gaps[gaps.index(smallest) - 1]) < 0.8
    assert H.minimum_detectable_effect(lambda effect: 0.5, gaps) is None


# ---- details -----------------------------------------------------------------------------------

def test_average_ranks_match_scipy_with_ties():
    values = np.random.default_rng(0).integers(0, 4, size=(200, 9)).astype(float)
    np.testing.assert_array_equal(H.average_ranks(values), scipy_rankdata(values, axis=1))


def test_seeded_same_inputs_same_outputs():
    rng = np.random.default_rng(5)
    correct, labels = H.simulate_agreement(rng, 30, 0.2)
    confusion = H.simulate_concentration(rng, [4] * 5, 0.2)
    weak, strong = correct[0], correct[0] & correct[1]
    for call in (lambda: H.homogeneity_test([5, 9, 7], [10, 10, 10], draws=300),
                 lambda: H.concentration_test(confusion, draws=300),
                 lambda: H.spearman_test([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], permutations=300),
                 lambda: H.label_permutation_agreement(correct, labels, CLASSES, permutations=100),
                 lambda: H.vulnerable_gain_test(weak, strong, labels, CLASSES, permutations=300)):
        assert call() == call()


def test_homogeneity_edge_cases():
    assert H.homogeneity_test([10, 20], [10, 20])["p"] == 1.0          # all robust
    assert H.homogeneity_test([0, 0, 0], [5, 0, 7])["p"] == 1.0        # none robust
    result = H.homogeneity_test([3, 0, 9], [10, 0, 10], draws=500)     # class 1 has no images
    assert result["worst"] == 0 and result["best"] == 2 and result["gap"] == pytest.approx(0.6)
    assert result["p"] < 0.05 and result["statistic"] > 0


def test_concentration_edge_cases():
    none = H.concentration_test(np.diag([5, 5, 5, 5]))
    assert none["top2_share"] is None and none["p"] == 1.0 and none["fooled"] == 0
    three = H.concentration_test([[0, 4, 1], [2, 0, 2], [1, 1, 0]])
    assert three["top2_share"] == 1.0 and three["p"] == 1.0 and "always 1" in three["note"]
    targeted = np.zeros((10, 10), dtype=int)
    targeted[np.arange(10), (np.arange(10) + 1) % 10] = 8
    result = H.concentration_test(targeted, draws=300)
    assert result["top2_share"] == 1.0 and result["p"] < 0.01 and result["null_mean"] < 0.8


def test_spearman_test_drops_nan_and_constant():
    result = H.spearman_test([1, 2, math.nan, 4, 5, 6], [1, 2, 3, 4, 5, math.nan], permutations=500)
    assert result["n"] == 4 and result["rho"] == pytest.approx(1.0) and result["p"] == pytest.approx(1 / 24, abs=0.03)
    assert math.isnan(H.spearman_test([1, 1, 1], [1, 2, 3])["p"])


def test_agreement_pairs_and_empty_classes():
    correct = np.array([[1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 0], [1, 1, 0, 0, 0, 0]], dtype=bool)
    labels = np.array([0, 0, 1, 1, 3, 3])       # class 2 has no images
    result = H.label_permutation_agreement(correct, labels, 4, permutations=100)
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [(0, 1), (0, 2), (1, 2)]
    acc = np.array([[1.0, 0.0, 0.5], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    expected = [spearman(acc[0], acc[1]), spearman(acc[0], acc[2]), spearman(acc[1], acc[2])]
    got = [p["spearman"] for p in result["pairs"]]
    np.testing.assert_allclose(got, expected)
    assert result["mean"] == pytest.approx(np.nanmean(expected)) and 0 < result["p"] <= 1


def test_gain_descriptives_and_no_extra():
    labels = np.repeat(np.arange(4), 10)
    weak = np.zeros(40, bool)
    for c, k in enumerate((2, 4, 6, 8)):
        weak[c * 10:c * 10 + k] = True
    strong = weak.copy()
    assert H.vulnerable_gain_test(weak, strong, labels, 4)["p"] == 1.0
    strong[[0, 1, 10, 11]] = False                              # all 2 of class 0, 2 of 4 of class 1
    result = H.vulnerable_gain_test(weak, strong, labels, 4, permutations=500)
    assert result["extra"] == 4 and result["statistic"] < 0
    assert result["gain_rate_lower"] == pytest.approx(4 / 6) and result["gain_rate_upper"] == 0.0
    assert [r["gain_rate"] for r in result["per_class"]] == [1.0, 0.5, 0.0, 0.0]
