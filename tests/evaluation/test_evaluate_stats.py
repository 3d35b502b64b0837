"""Pure statistics and analysis of class-wise counts, on hand-made counts."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cwr_fast.classwise import (ClasswiseCounts, build_report, class_summary, gain_attribution,
                                rankdata, sanity_flags, spearman, sweep_section, wilson_interval)


@given(st.integers(0, 500), st.integers(0, 500))
@settings(max_examples=200, deadline=None)
def test_wilson_interval_contains_the_estimate_and_matches_scipy(k, extra):
    n = k + extra
    low, high = wilson_interval(k, n)
    if n == 0:
        assert math.isnan(low) and math.isnan(high)
        return
    assert 0 <= low <= k / n <= high <= 1
    ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)


def test_wilson_known_values():
    low, high = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    np.testing.assert_allclose(low, [0.0, 0.236593, 0.722467], atol=1e-6)
    np.testing.assert_allclose(high, [0.277533, 0.763407, 1.0], atol=1e-6)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=2, max_size=30))
@settings(max_examples=200, deadline=None)
def test_spearman_and_ranks_match_scipy(pairs):
    a, b = (np.array(v, dtype=float) for v in zip(*pairs))
    np.testing.assert_allclose(rankdata(a), scipy.stats.rankdata(a))
    ours = spearman(a, b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)


def test_spearman_ignores_nan_and_checks_lengths():
    assert spearman([1, 2, np.nan, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert math.isnan(spearman([1.0], [2.0]))
    with pytest.raises(ValueError, match="equal lengths"):
        spearman([1, 2], [1, 2, 3])


def test_class_summary():
    s = class_summary([0.5, np.nan, 0.9, 0.1], ["a", "b", "c", "d"])
    assert s["worst"] == {"class": 3, "class_name": "d", "value": 0.1}
    assert s["best"]["class_name"] == "c"
    assert s["mean"] == pytest.approx(0.5) and s["gap"] == pytest.approx(0.8)
    assert s["std"] == pytest.approx(np.std([0.5, 0.9, 0.1]))
    assert class_summary([np.nan], ["a"])["worst"] is None


def make_counts(robust_per_attack, n, names, clean=None):
    """Counts with diagonal-only confusions: robust_per_attack[k][c] robust images of class c."""
    c = len(n)
    clean = n if clean is None else clean
    counts = ClasswiseCounts(list(names), c)
    counts.clean_confusion = torch.diag(torch.tensor(clean)) + _off(torch.tensor(n) - torch.tensor(clean))
    adv = []
    for robust in robust_per_attack:
        adv.append(torch.diag(torch.tensor(robust)) + _off(torch.tensor(n) - torch.tensor(robust)))
    counts.adv_confusion = torch.stack(adv)
    r = torch.tensor(robust_per_attack)
    # nested fooled sets: an image robust to a stronger attack is robust to a weaker one
    counts.gain = (r[:, None, :] - r[None, :, :]).clamp_min(0)
    counts.worst_confusion = counts.adv_confusion[int(r.sum(1).argmin())].clone()
    counts.seconds = torch.ones(len(names), dtype=torch.float64)
    return counts


def _off(fooled):
    """Fooled images of class c predicted as class (c + 1) mod C."""
    c = len(fooled)
    m = torch.zeros(c, c, dtype=torch.int64)
    m[torch.arange(c), (torch.arange(c) + 1) % c] = fooled
    return m


def test_gain_attribution_points_at_the_vulnerable_classes():
    n = [10, 10, 10, 10]
    counts = make_counts([[9, 9, 5, 4], [9, 8, 1, 1]], n, ["weak", "strong"])
    gains = gain_attribution(counts, ["a", "b", "c", "d"])
    assert len(gains) == 1
    g = gains[0]
    assert (g.weaker, g.stronger, g.extra_fooled) == ("weak", "strong", 8)
    assert [p.count for p in g.per_class] == [0, 1, 4, 3]
    assert g.vulnerable_classes == [2, 3]
    assert g.share_from_vulnerable_half == pytest.approx(7 / 8)
    assert g.gain_rate_vulnerable == pytest.approx(7 / 9) and g.gain_rate_others == pytest.approx(1 / 18)
    assert g.spearman_gain_vs_robustness < 0


def test_gain_attribution_keeps_a_vulnerable_half_when_the_median_class_is_at_zero():
    """Six of ten classes at 0% under the weaker attack: 'below the median' would be no class;
    the lower half by rank (ties by class index) is five classes, and rates divide by the images
    the weaker attack left robust."""
    n = [10] * 10
    weak = [0, 0, 0, 0, 0, 0, 4, 6, 8, 10]
    strong = [0, 0, 0, 0, 0, 0, 1, 5, 8, 10]
    g = gain_attribution(make_counts([weak, strong], n, ["weak", "strong"]), list("abcdefghij"))[0]
    assert g.vulnerable_classes == [0, 1, 2, 3, 4]
    assert g.gain_rate_vulnerable is None  # none of its images survive the weaker attack
    assert g.gain_rate_others == pytest.approx(4 / 28)
    assert g.per_class[6].rate == pytest.approx(3 / 4)


def test_sanity_flags():
    n = [10, 10]
    counts = make_counts([[5, 5], [6, 6], [4, 4], [5, 5]], n, ["fgsm", "pgd-10", "pgd-20", "pgd-40"])
    attacks = {"fgsm": {"name": "fgsm", "params": {"eps": 0.3}},
               "pgd-10": {"name": "pgd", "params": {"eps": 0.3, "steps": 10, "alpha": 0.1}},
               "pgd-20": {"name": "pgd", "params": {"eps": 0.3, "steps": 20, "alpha": 0.05}},
               "pgd-40": {"name": "pgd", "params": {"eps": 0.3, "steps": 40, "alpha": 0.02}}}
    codes = [(f.code, tuple(f.attacks)) for f in sanity_flags(counts, attacks)]
    assert ("pgd_weaker_than_fgsm", ("fgsm", "pgd-10")) in codes
    assert ("robust_rises_with_steps", ("pgd-20", "pgd-40")) in codes
    assert len(codes) == 2
    sweep = sweep_section(make_counts([[9, 9], [5, 6], [6, 6]], n, ["e0", "e1", "e2"]), "eps",
                          [0.0, 0.1, 0.2], "pgd-20", ["a", "b"])
    flags = sanity_flags(counts, {}, eps_sweep=sweep)
    assert [f.code for f in flags] == ["robust_rises_with_eps"]
    bad = make_counts([[5, 5]], n, ["pgd"], clean=[4, 10])
    assert [f.code for f in sanity_flags(bad)] == ["robust_above_clean"]


def test_sweep_section_finds_the_strongest_value():
    counts = make_counts([[8, 2, 5], [7, 3, 5], [9, 1, 4]], [10, 10, 10], ["T=0.5", "T=1", "T=2"])
    sweep = sweep_section(counts, "T", [0.5, 1.0, 2.0], "tpgd-20", ["a", "b", "c"])
    assert sweep.overall_robust_acc == pytest.approx([0.5, 0.5, 14 / 30])
    assert (sweep.strongest.value, sweep.strongest.robust_acc) == (2.0, pytest.approx(14 / 30))
    assert [r.strongest for r in sweep.per_class] == [1.0, 2.0, 2.0]
    assert sweep.per_class[0].robust_acc == pytest.approx([0.8, 0.7, 0.9])


def test_report_handles_empty_classes_and_checks_names():
    counts = make_counts([[3, 0]], [5, 0], ["pgd"])
    report = build_report(counts, ["a", "b"])
    record = report.attacks[0].per_class[1]
    assert record.n == 0 and record.robust_acc is None and record.ci_low is None
    assert report.attacks[0].summary.worst.class_name == "a"
    with pytest.raises(ValueError, match="class names"):
        build_report(counts, ["a"])


def test_counts_add_and_all_reduce_without_a_group():
    a = make_counts([[1, 2]], [3, 3], ["pgd"])
    b = make_counts([[2, 2]], [3, 3], ["pgd"])
    total = make_counts([[1, 2]], [3, 3], ["pgd"]).add_(b)
    assert torch.equal(total.robust("pgd"), torch.tensor([3, 4]))
    assert a.all_reduce() is a
    with pytest.raises(ValueError, match="different attacks"):
        a.add_(make_counts([[1, 2]], [3, 3], ["fgsm"]))
