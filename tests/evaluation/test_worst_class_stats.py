"""The worst class's uncertainty (cwr_fast.classwise.stats.worst_class_statistics) on cases with
known answers: simulated class-wise counts drawn from known true accuracies."""

import numpy as np
import pytest

from cwr_fast.classwise.stats import clopper_pearson, wilson_interval, worst_class_statistics


def simulate(true_acc, n, trials, seed):
    rng = np.random.default_rng(seed)
    return rng.binomial(n, true_acc, size=(trials, len(true_acc)))


@pytest.mark.parametrize("true_acc", [
    [0.30, 0.32, 0.35, 0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.9],   # several classes close to the worst
    [0.45] * 10,                                              # all equal: the min is biased most
])
def test_interval_covers_the_lowest_true_accuracy(true_acc):
    n = np.full(len(true_acc), 50)
    lowest = min(true_acc)
    trials = 400
    covered = naive = 0
    for k in simulate(true_acc, n, trials, seed=1):
        stats = worst_class_statistics(k, n, draws=200)
        covered += stats["ci_low"] <= lowest <= stats["ci_high"]
        low, high = wilson_interval(k.min(), 50)       # the observed worst class's own interval
        naive += float(low) <= lowest <= float(high)
    assert covered / trials >= 0.95
    if len(set(true_acc)) == 1:
        # the point of it: the per-class interval of the observed minimum misses far more often
        assert naive / trials < 0.85 < covered / trials


def test_worst_frequency_finds_a_clear_worst_class_and_splits_a_tie():
    n = np.full(5, 200)
    clear = worst_class_statistics([20, 180, 170, 160, 150], n)
    assert clear["worst_frequency"][0] == 1.0 and clear["estimate"] == 0.1
    tie = worst_class_statistics([100, 100, 190, 190, 190], n)
    assert tie["worst_frequency"][0] == pytest.approx(0.5, abs=0.05)
    assert tie["worst_frequency"][1] == pytest.approx(0.5, abs=0.05)
    assert sum(tie["worst_frequency"]) == pytest.approx(1.0)
    assert tie["ci_low"] < 0.5 < tie["ci_high"]


def test_classes_without_images_are_left_out_and_it_is_seeded():
    stats = worst_class_statistics([0, 5, 40], [0, 50, 50])
    assert stats["worst_frequency"][0] is None and stats["estimate"] == 0.1
    assert stats == worst_class_statistics([0, 5, 40], [0, 50, 50])
    assert worst_class_statistics([0, 0], [0, 0]) is None


def test_clopper_pearson_known_values():
    # exact binomial interval of 0 / 10 and 10 / 10 at 95%: [0, 1 - 0.025^(1/10)]
    low, high = clopper_pearson(np.array([0, 10]), np.array([10, 10]), 0.05)
    assert low[0] == 0 and high[0] == pytest.approx(1 - 0.025 ** 0.1)
    assert high[1] == 1 and low[1] == pytest.approx(0.025 ** 0.1)
