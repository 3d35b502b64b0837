"""cwr_fast.findings: the numbers and verdicts of FINDINGS.md, on hand-made reports whose
answers are known."""

import math

import numpy as np

import pytest
import torch

from cwr_fast import findings as F

NAMES = [str(c) for c in range(4)]


def record(c, acc, low=None, high=None):
    return {"class": c, "class_name": NAMES[c], "n": 50, "robust_acc": acc,
            "ci_low": acc - 0.1 if low is None else low, "ci_high": acc + 0.1 if high is None else high}


def attack(label, accs, confusion=None, overall=None):
    return {"label": label, "per_class": [record(c, a) for c, a in enumerate(accs)],
            "confusion": confusion or [[0] * 4 for _ in range(4)],
            "overall": {"robust_acc": sum(accs) / 4 if overall is None else overall}}


def report(*attacks, sweep=None, gains=None):
    return {"dataset": {"class_names": NAMES, "num_classes": 4}, "attacks": list(attacks),
            "sweeps": {"temperature": sweep}, "gains": gains or []}


def test_disparity_needs_a_gap_and_disjoint_intervals():
    d = F.disparity(report(attack("pgd", [0.9, 0.5, 0.8, 0.7])), "pgd")
    assert d["worst"]["class"] == 1 and d["best"]["class"] == 0
    assert d["gap"] == pytest.approx(0.4) and d["ci_disjoint"] and d["reproduced"]
    close = F.disparity(report(attack("pgd", [0.9, 0.85, 0.88, 0.87])), "pgd")
    assert not close["ci_disjoint"] and not close["reproduced"]


def test_target_concentration_shares():
    confusion = [[40, 6, 2, 2],   # class 0: 10 errors, 6 to class 1, then 2 and 2
                 [0, 50, 0, 0],   # class 1: none
                 [3, 3, 40, 4],   # class 2: 10 errors spread 3/3/4
                 [0, 0, 0, 50]]
    c = F.target_concentration(report(attack("pgd", [0.8, 1.0, 0.8, 1.0], confusion)), "pgd")
    rows = c["per_class"]
    assert rows[0]["target"] == 1 and rows[0]["top1_share"] == pytest.approx(0.6)
    assert rows[0]["top2_share"] == pytest.approx(0.8)
    assert rows[1]["fooled"] == 0 and rows[1]["target"] is None and rows[1]["top1_share"] is None
    assert rows[2]["target"] == 3 and rows[2]["top2_share"] == pytest.approx(0.7)
    assert c["fooled"] == 20
    assert c["top1_share"] == pytest.approx((6 + 4) / 20) and c["top2_share"] == pytest.approx(15 / 20)
    assert c["uniform_top2_share"] == pytest.approx(2 / 3) and c["reproduced"]


def test_classifier_weight_norms_takes_the_last_layer_with_one_row_per_class():
    state = {"net.fc1.weight": torch.ones(4, 8),           # 4 rows too, but not the last layer
             "net.fc2.weight": torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0], [6.0, 8.0]]),
             "net.fc2.bias": torch.zeros(4)}
    assert F.classifier_weight_norms(state, 4) == pytest.approx([5.0, 1.0, 1.0, 10.0])
    with pytest.raises(ValueError, match="no 2-D layer with 10 outputs"):
        F.classifier_weight_norms(state, 10)


def test_norm_correlation_sign_and_permutation_p_value():
    norms = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    up = F.norm_correlation(norms, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert up["spearman"] == pytest.approx(1.0) and up["p_value"] < 0.001 and up["reproduced"]
    down = F.norm_correlation(norms, [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert down["spearman"] == pytest.approx(-1.0) and down["p_value"] > 0.99 and not down["reproduced"]
    flat = F.norm_correlation(norms, [0.5] * 8)
    assert math.isnan(flat["spearman"]) and math.isnan(flat["pearson"]) and not flat["reproduced"]


def test_rank_agreement():
    a = F.rank_agreement({"fgsm": [0.9, 0.5, 0.7, 0.6], "pgd": [0.8, 0.4, 0.6, 0.5],
                          "aa": [0.5, 0.8, 0.6, 0.7]})
    by_pair = {(p["a"], p["b"]): p["spearman"] for p in a["pairs"]}
    assert by_pair[("fgsm", "pgd")] == pytest.approx(1.0)
    assert by_pair[("fgsm", "aa")] == pytest.approx(-1.0)
    assert a["mean"] == pytest.approx(-1 / 3) and a["min"] == pytest.approx(-1.0) and not a["reproduced"]


def test_temperature_effect_finds_the_strongest_t():
    sweep = {"values": [0.5, 1.0, 2.0], "overall_robust_acc": [0.7, 0.65, 0.6],
             "strongest": {"value": 2.0, "robust_acc": 0.6},
             "per_class": [{"class": 0, "class_name": "0", "robust_acc": [0.8, 0.7, 0.7], "strongest": 1.0},
                           {"class": 1, "class_name": "1", "robust_acc": [0.6, 0.6, 0.5], "strongest": 2.0}]}
    r = report(attack("pgd-20", [0.7, 0.6, 0.65, 0.65]), sweep=sweep)
    t = F.temperature_effect(r, "pgd-20")
    assert t["strongest"]["value"] == 2.0 and t["at_one"] == 0.65 and t["reproduced"]
    assert t["worst_class"] == [0.6, 0.6, 0.5] and t["pgd"] == pytest.approx(0.65)
    # class 0 is tied at T = 1 and 2 (not stronger), class 1 is fooled more at T = 2
    assert [(r["class"], r["T"]) for r in t["stronger_classes"]] == [(1, 2.0)]
    within_noise = dict(sweep, overall_robust_acc=[0.7, 0.65, 0.648],
                        strongest={"value": 2.0, "robust_acc": 0.648})
    assert not F.temperature_effect(report(attack("pgd-20", [0.7] * 4), sweep=within_noise), "pgd-20")["reproduced"]
    sweep_one = dict(sweep, strongest={"value": 1.0, "robust_acc": 0.65})
    assert not F.temperature_effect(report(attack("pgd-20", [0.7] * 4), sweep=sweep_one), "pgd-20")["reproduced"]


def test_strongest_gain_is_the_weakest_to_strongest_pair():
    gains = [{"weaker": "fgsm", "stronger": "pgd", "share_from_vulnerable_half": 0.3},
             {"weaker": "fgsm", "stronger": "aa", "share_from_vulnerable_half": 0.8},
             {"weaker": "pgd", "stronger": "aa", "share_from_vulnerable_half": 0.4}]
    r = report(attack("fgsm", [0.9] * 4), attack("pgd", [0.8] * 4), attack("aa", [0.7] * 4), gains=gains)
    g = F.strongest_gain(r)
    assert (g["weaker"], g["stronger"]) == ("fgsm", "aa") and g["reproduced"]
    assert F.strongest_gain(report(attack("fgsm", [0.9] * 4))) is None


def sweep_outcomes(effect: float, per_class: int = 100, seed: int = 0):
    """(correct [3, N], labels, index) of a T sweep over (0.5, 1, 5): T = 1 leaves 60% of each
    class robust; T = 5 additionally fools a share `effect` of class 0's robust images; T = 0.5
    is T = 1 again."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), per_class)
    one = rng.random(len(labels)) < 0.6
    five = one & ~((labels == 0) & (rng.random(len(labels)) < effect))
    index = rng.permutation(len(labels))
    return np.stack([one, one, five]), labels, index


def test_per_class_temperature_finds_a_planted_class_and_nothing_in_the_null():
    correct, labels, index = sweep_outcomes(effect=0.5)
    result = F.per_class_temperature(correct, labels, index, [0.5, 1.0, 5.0], NAMES)
    assert [c["T"] for c in result["chosen"]] == [5.0, 1.0, 1.0, 1.0]   # ties keep T = 1
    assert result["per_class_T"]["diff"] < 0 and result["per_class_T"]["reproduced"]
    assert result["selection_images"] == result["test_images"] == 200
    null = F.per_class_temperature(*sweep_outcomes(effect=0.0), [0.5, 1.0, 5.0], NAMES)
    assert all(c["T"] == 1.0 for c in null["chosen"]) and null["global_value"] == 1.0
    assert null["per_class_T"]["diff"] == 0 and null["per_class_T"]["p"] == 1 and not null["reproduced"]
    assert F.per_class_temperature(correct, labels, index, [0.5, 2.0, 5.0], NAMES) is None


def test_defense_verdict_needs_every_seed_up_and_half_significant():
    up = [{"worst_gain": 0.1, "p": 0.01}, {"worst_gain": 0.05, "p": 0.2}, {"worst_gain": 0.08, "p": 0.03}]
    assert F.defense_verdict(up)["reproduced"] and F.defense_verdict(up)["significant_seeds"] == 2
    mixed = up[:2] + [{"worst_gain": -0.02, "p": 0.5}]
    assert F.defense_verdict(mixed)["wording"] == "not significant"
    weak = [{"worst_gain": 0.1, "p": 0.2}, {"worst_gain": 0.1, "p": 0.3}, {"worst_gain": 0.1, "p": 0.01}]
    assert not F.defense_verdict(weak)["reproduced"]
    assert F.defense_verdict(up)["gain_mean"] == pytest.approx(0.0766666, abs=1e-6)


def _pattern_records(robust: dict[str, int], n: int = 50) -> list[dict]:
    return [{"class_name": name, "n": n, "robust": r} for name, r in robust.items()]


PUBLISHED = (("c", "d"), ("a", "b"))  # (least, most) robust, as published


def test_published_pattern_detects_a_planted_gap_and_not_a_null_one():
    planted = F.published_pattern(_pattern_records({"a": 30, "b": 28, "c": 10, "d": 12, "e": 20}), *PUBLISHED)
    assert planted["agreement"] == "agrees" and planted["reproduced"]
    assert planted["groups"]["most"] == {"classes": ["a", "b"], "robust": 58, "n": 100, "robust_acc": 0.58}
    assert planted["gap"] == pytest.approx(0.58 - 0.22) and planted["p"] < 1e-5
    assert planted["least"] == ["c", "d"] and planted["most"] == ["a", "b"] and planted["overlap"] == 4

    null = F.published_pattern(_pattern_records({"a": 21, "b": 20, "c": 20, "d": 20, "e": 20}), *PUBLISHED)
    assert null["agreement"] == "same direction, not significant" and 0.3 < null["p"] < 1

    reversed_ = F.published_pattern(_pattern_records({"a": 10, "b": 12, "c": 30, "d": 28, "e": 20}), *PUBLISHED)
    assert reversed_["agreement"] == "disagrees" and reversed_["p"] > 0.99 and reversed_["overlap"] == 0


def test_published_pattern_keeps_ties_and_refuses_missing_classes():
    tied = F.published_pattern(_pattern_records({"a": 5, "b": 0, "c": 0, "d": 0, "e": 9}), *PUBLISHED)
    assert sorted(tied["least"]) == ["b", "c", "d"]  # three classes at 0%: none is "the" second lowest
    assert tied["most"] == ["e", "a"]
    with pytest.raises(ValueError, match="published classes"):
        F.published_pattern(_pattern_records({"a": 5, "b": 1, "c": 2}), *PUBLISHED)
