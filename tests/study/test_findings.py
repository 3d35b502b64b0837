"""cwr_fast.study.findings: the numbers and verdicts of FINDINGS.md, on hand-made reports whose
answers are known."""

import math

import numpy as np

import pytest
import torch

from cwr_fast.study import findings as F

NAMES = [str(c) for c in range(4)]


def record(c, acc, low=None, high=None):
    return {"class": c, "class_name": str(c), "n": 50, "robust": round(50 * acc), "robust_acc": acc,
            "ci_low": acc - 0.1 if low is None else low, "ci_high": acc + 0.1 if high is None else high}


def attack(label, accs, confusion=None, overall=None):
    return {"label": label, "per_class": [record(c, a) for c, a in enumerate(accs)],
            "confusion": confusion or [[0] * 4 for _ in range(4)],
            "overall": {"robust_acc": sum(accs) / 4 if overall is None else overall}}


def report(*attacks, sweep=None, gains=None):
    return {"dataset": {"class_names": NAMES, "num_classes": 4}, "attacks": list(attacks),
            "sweeps": {"temperature": sweep}, "gains": gains or []}


def test_disparity_needs_a_gap_and_a_significant_test_of_equal_accuracies():
    d = F.disparity(report(attack("pgd", [0.9, 0.5, 0.8, 0.7])), "pgd")
    assert d["worst"]["class"] == 1 and d["best"]["class"] == 0
    assert d["gap"] == pytest.approx(0.4) and d["p"] < 0.001 and d["reproduced"]
    close = F.disparity(report(attack("pgd", [0.9, 0.84, 0.88, 0.86])), "pgd")   # 6 points: below the rule's 10
    assert not close["reproduced"]
    noise = F.disparity(report(attack("pgd", [0.9, 0.78, 0.84, 0.86])), "pgd")   # 12 points of 50-image noise
    assert noise["gap"] >= 0.1 and noise["p"] > 0.05 and not noise["reproduced"]


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
    # 10 errors per class over 3 wrong classes: chance alone puts ~80% on the top two
    assert 0.7 < c["null_top2_share"] < 0.9 and c["p"] > 0.05 and not c["reproduced"]


def test_target_concentration_against_its_null():
    planted = np.full((10, 10), 0)
    for c in range(10):
        planted[c, (c + 1) % 10] = 20   # every class's errors on one class, 20 each
        planted[c, (c + 2) % 10] = 2
        planted[c, c] = 50
    c = F.target_concentration(report(attack("pgd", [0.5] * 10, planted.tolist())) | _ten_classes(), "pgd")
    assert c["top2_share"] == pytest.approx(1.0) and c["p"] < 0.001 and c["reproduced"]
    few = np.eye(10, dtype=int) * 50
    for c in range(10):                # 2 errors per class: the top two always take 100%
        few[c, (c + 3) % 10] = few[c, (c + 5) % 10] = 1
    f = F.target_concentration(report(attack("pgd", [0.9] * 10, few.tolist())) | _ten_classes(), "pgd")
    assert f["top2_share"] == pytest.approx(1.0) and f["null_top2_share"] == pytest.approx(1.0)
    assert not f["reproduced"]


def _ten_classes():
    return {"dataset": {"class_names": [str(c) for c in range(10)], "num_classes": 10}}


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
    assert a["mean"] == pytest.approx(-1 / 3) and a["min"] == pytest.approx(-1.0)


def test_agreement_test_discounts_what_shared_images_give():
    """Fooling set by an image-level margin shared by every attack, no class effect: the ranks
    agree by chance alone and the rule must not say yes; a real class effect it must."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 100)
    margin = rng.random(1000)
    null = {k: margin + 0.05 * rng.standard_normal(1000) < 0.6 for k in ("fgsm", "pgd", "aa")}
    t = F.agreement_test(null, labels, 10, permutations=300)
    assert not t["reproduced"] and t["p"] > 0.05
    effect = {k: margin + 0.05 * rng.standard_normal(1000) < 0.2 + 0.07 * labels for k in ("fgsm", "pgd", "aa")}
    t = F.agreement_test(effect, labels, 10, permutations=300)
    assert t["mean"] > 0.9 and t["p"] < 0.05 and t["reproduced"]


def test_gain_test_on_per_image_outcomes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 200)
    weak = rng.random(800) < np.array([0.3, 0.5, 0.7, 0.9])[labels]
    strong = weak & ~(rng.random(800) < np.array([0.5, 0.5, 0.05, 0.05])[labels])
    r = report(attack("fgsm", [0.3, 0.5, 0.7, 0.9], overall=0.6), attack("aa", [0.15, 0.25, 0.65, 0.85], overall=0.5))
    g = F.gain_test(r, {"fgsm": weak, "aa": strong}, labels)
    assert (g["weaker"], g["stronger"]) == ("fgsm", "aa") and g["p"] < 0.001 and g["reproduced"]
    assert g["gain_rate_lower"] > g["gain_rate_upper"]
    even = weak & ~(rng.random(800) < 0.3)
    assert not F.gain_test(r, {"fgsm": weak, "aa": even}, labels)["reproduced"]
    assert F.gain_test(report(attack("fgsm", [0.9] * 4), attack("aa", [0.9] * 4)),
                       {"fgsm": weak, "aa": weak}, labels) is None


def test_temperature_effect_finds_the_strongest_t():
    sweep = {"values": [0.5, 1.0, 2.0], "overall_robust_acc": [0.7, 0.65, 0.6],
             "strongest": {"value": 2.0, "robust_acc": 0.6},
             "per_class": [{"class": 0, "class_name": "0", "robust_acc": [0.8, 0.7, 0.7], "strongest": 1.0},
                           {"class": 1, "class_name": "1", "robust_acc": [0.6, 0.6, 0.5], "strongest": 2.0}]}
    r = report(attack("pgd-20", [0.7, 0.6, 0.65, 0.65]), sweep=sweep)
    t = F.temperature_effect(r, "pgd-20")
    assert t["strongest"]["value"] == 2.0 and t["at_one"] == 0.65 and t["lower_in_sample"]
    assert t["worst_class"] == [0.6, 0.6, 0.5] and t["pgd"] == pytest.approx(0.65)
    # class 0 is tied at T = 1 and 2 (not stronger), class 1 is fooled more at T = 2
    assert [(r["class"], r["T"]) for r in t["stronger_classes"]] == [(1, 2.0)]
    assert "reproduced" not in t   # in-sample: descriptive only, rule 4 is the held-out test
    sweep_one = dict(sweep, strongest={"value": 1.0, "robust_acc": 0.65})
    assert not F.temperature_effect(report(attack("pgd-20", [0.7] * 4), sweep=sweep_one), "pgd-20")["lower_in_sample"]


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


def _defense_pair(rng, gain, per_class=100):
    labels = np.repeat(np.arange(4), per_class)
    base = rng.random(len(labels)) < np.where(labels == 0, 0.3, 0.7)
    lift = (labels == 0) & ~base & (rng.random(len(labels)) < gain / 0.7)
    return base, base | lift, labels, 4


def test_defense_verdict_uses_only_the_seeds_it_was_not_chosen_on():
    rng = np.random.default_rng(0)
    first = {"cwr": {"worst": {"diff": 0.2, "p": 0.001}}, "frl": {"worst": {"diff": 0.05, "p": 0.3}}}
    held = [_defense_pair(rng, 0.2), _defense_pair(rng, 0.2)]
    v = F.defense_verdict("cwr", first, held)
    assert v["kind"] == "held-out seeds" and v["seeds"] == 2 and v["p"] < 0.01 and v["reproduced"]
    # a big first-seed gain does not count: the held-out seeds show none
    v = F.defense_verdict("cwr", first, [_defense_pair(rng, 0.0), _defense_pair(rng, 0.0)])
    assert not v["reproduced"] and v["wording"] == "not significant"
    assert v["holm_first_seed"] == {"cwr": pytest.approx(0.002), "frl": pytest.approx(0.3)}


def test_defense_verdict_with_one_seed_is_holm_corrected_over_the_defenses():
    first = {name: {"worst": {"diff": 0.1, "p": p}} for name, p in
             (("cwr", 0.02), ("frl", 0.5), ("cfa", 0.6), ("wat", 0.7))}
    v = F.defense_verdict("cwr", first, [])
    assert v["p"] == pytest.approx(0.08) and not v["reproduced"]   # 0.02 x 4 defenses
    first["cwr"]["worst"]["p"] = 0.001
    assert F.defense_verdict("cwr", first, [])["reproduced"]


def test_family_counts_the_tests_and_corrects_over_them():
    fam = F.family([("1a", 0.001, True), ("1b", 0.03, True), ("1c", 0.4, False), ("2", float("nan"), False)])
    assert fam["tests"] == 3 and fam["reproduced"] == 2 and fam["fwer_bound"] == pytest.approx(0.15)
    assert [r["survives_holm"] for r in fam["rows"]] == [True, False, False]   # 0.03 x 2 = 0.06


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
