"""The verdict rules of cwr_fast.study.findings that choose before they test (the temperature T, the
best defense), simulated under their null hypotheses: each may say "reproduced" at most 5% of the
time (plus Monte-Carlo error) when the finding is false, and must detect a planted effect of a
stated size at least 80% of the time. The tests themselves are calibrated in
test_findings_calibration.py and test_paired_calibration.py."""

import math

import numpy as np
import pytest

from cwr_fast.study import findings as F

ALPHA = 0.05
DATASETS = 1000
LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / DATASETS)
NAMES = [str(c) for c in range(10)]
TEMPERATURES = [0.5, 1.0, 2.0, 5.0, 10.0]


def sweep(rng, per_class, effect=0.0, rate=0.85, noise=0.05):
    """(correct [K, N], labels, index) of a Temperature-PGD sweep on per_class images of 10
    classes: each image has a margin shared by every T and each T its own random start (noise),
    so the Ts differ by seed noise alone; T = 5 additionally fools a share `effect` of the images."""
    labels = np.repeat(np.arange(10), per_class)
    margin = rng.random(len(labels))
    correct = margin + noise * rng.standard_normal((len(TEMPERATURES), len(labels))) < rate
    correct[TEMPERATURES.index(5.0)] &= rng.random(len(labels)) >= effect
    return correct, labels, rng.permutation(len(labels))


def old_temperature_rule(correct) -> bool:
    """The rule before: the best T of the sweep 1 point below T = 1, on the images it was picked on."""
    overall = correct.mean(axis=1)
    best = int(np.argmin(overall))
    return TEMPERATURES[best] != 1.0 and overall[TEMPERATURES.index(1.0)] - overall[best] >= 0.01 - 1e-12


def test_temperature_rule_under_pure_seed_noise():
    """200 MNIST-like images (20 per class), no temperature effect, only each T's own random start:
    the in-sample rule said yes in most runs; the held-out rule at most 5%."""
    rng = np.random.default_rng(0)
    old = held_out = per_class = 0
    for _ in range(DATASETS):
        correct, labels, index = sweep(rng, 20)
        old += old_temperature_rule(correct)
        result = F.per_class_temperature(correct, labels, index, TEMPERATURES, NAMES, draws=500)
        held_out += result["global_T"]["reproduced"]
        per_class += result["per_class_T"]["reproduced"]
    print(f"old rule {old}, held-out global T {held_out}, per-class T {per_class} of {DATASETS}")
    assert old / DATASETS > 0.3
    assert held_out / DATASETS <= LIMIT and per_class / DATASETS <= LIMIT


def test_temperature_rule_detects_a_planted_effect():
    """T = 5 fools 10% more of all images, 100 images per class: found on the held-out half."""
    rng = np.random.default_rng(1)
    hits = sum(F.per_class_temperature(*sweep(rng, 100, effect=0.10), TEMPERATURES, NAMES,
                                       draws=500)["global_T"]["reproduced"] for _ in range(200))
    print(f"detected in {hits} of 200")
    assert hits / 200 >= 0.8


def defenses(rng, gains, per_class=100, seeds=3):
    """{defense: [(baseline correct, defense correct, labels, 10) per seed]}: class 0 at 0.4, the
    others at 0.7. A defense agrees with its baseline on 70% of the images (the same images are
    easy or hard for both) and is an independent draw of the same model on the rest, so without a
    gain the two are exchangeable; a gain lifts that many more of class 0's images."""
    labels = np.repeat(np.arange(10), per_class)
    rates = np.where(labels == 0, 0.4, 0.7)
    out = {name: [] for name in gains}
    for _ in range(seeds):
        base = rng.random(len(labels)) < rates
        for name, gain in gains.items():
            shared = rng.random(len(labels)) < 0.7
            defense = np.where(shared, base, rng.random(len(labels)) < rates)
            defense |= (labels == 0) & (rng.random(len(labels)) < gain / 0.6)
            out[name].append((base, defense, labels, 10))
    return out


def verdict(runs, held_out: bool):
    from cwr_fast.classwise.paired import paired_comparison

    first = {name: paired_comparison(*pairs[0][:3], NAMES, draws=200) for name, pairs in runs.items()}
    best = max(first, key=lambda n: (first[n]["worst"]["b"], first[n]["mean"]["b"]))
    return F.defense_verdict(best, first, runs[best][1:] if held_out else [], draws=1000)


@pytest.mark.parametrize("held_out, count", [(True, 6), (False, 10)], ids=["held-out seeds", "one seed, Holm"])
def test_best_defense_under_the_null(held_out, count):
    """Defenses that change nothing: choosing the best and testing it must say yes <= 5% (without
    Holm's correction, the best of ten at one seed says yes about 13% of the time)."""
    rng = np.random.default_rng(2)
    draws = 400
    hits = sum(verdict(defenses(rng, {f"d{k}": 0.0 for k in range(count)}, seeds=3 if held_out else 1),
                       held_out)["reproduced"] for _ in range(draws))
    print(f"said yes in {hits} of {draws}")
    assert hits / draws <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / draws)


def test_best_defense_with_a_real_gain_is_detected():
    """One of six defenses raises the worst class by 20 points (100 images per class): found on
    the two held-out seeds."""
    rng = np.random.default_rng(3)
    gains = {f"d{k}": 0.0 for k in range(5)} | {"real": 0.2}
    hits = sum(verdict(defenses(rng, gains), True)["reproduced"] for _ in range(200))
    print(f"detected in {hits} of 200")
    assert hits / 200 >= 0.8


def _report(robust, n, confusion=None):
    records = [{"class": c, "class_name": str(c), "n": int(n[c]), "robust": int(robust[c]),
                "robust_acc": robust[c] / n[c], "ci_low": 0.0, "ci_high": 1.0} for c in range(len(n))]
    section = {"label": "pgd", "per_class": records, "confusion": confusion,
               "overall": {"robust_acc": float(np.sum(robust) / np.sum(n))}}
    return {"dataset": {"class_names": [str(c) for c in range(len(n))], "num_classes": len(n)},
            "attacks": [section]}


def _null_rate(decide, draws=300, seed=4):
    rng = np.random.default_rng(seed)
    return sum(bool(decide(rng)) for _ in range(draws)) / draws


NULL_LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 300)


def test_findings_rules_keep_their_tests_under_the_null():
    """The rules as findings.py applies them (thresholds and p-values together), on data where the
    finding is false: a rule that dropped its p-value (the old 'rho > 0', 'top-2 >= 50%', 'mean
    Spearman >= 0.7', 'gap >= 10 points') fails here."""
    n = np.full(10, 20)

    def disparity(rng):   # equal accuracy, 20 images per class: gaps of 10+ points are common
        return F.disparity(_report(rng.binomial(n, 0.7), n), "pgd", draws=300)["reproduced"]

    def concentration(rng):   # 5 errors per class, spread uniformly
        confusion = np.diag(n - 5)
        for c in range(10):
            confusion[c] += np.bincount((c + 1 + rng.integers(0, 9, 5)) % 10, minlength=10)
        return F.target_concentration(_report(n - 5, n, confusion.tolist()), "pgd", draws=300)["reproduced"]

    def weight_norm(rng):
        return F.norm_correlation(rng.random(10), list(rng.random(10)))["reproduced"]

    labels = np.repeat(np.arange(10), 50)

    def consistency(rng):   # an image-level margin shared by the attacks, no class effect
        margin = rng.random(500)
        correct = {k: margin + 0.1 * rng.standard_normal(500) < 0.6 for k in ("fgsm", "pgd", "aa")}
        return F.agreement_test(correct, labels, 10, permutations=200)["reproduced"]

    def gains(rng):   # classes differ under the weak attack; the extra fooling does not
        weak = rng.random(500) < np.linspace(0.3, 0.9, 10)[labels]
        strong = weak & (rng.random(500) >= 0.2)
        report = {"dataset": {"num_classes": 10}, "attacks": [
            {"label": "fgsm", "overall": {"robust_acc": weak.mean()}},
            {"label": "aa", "overall": {"robust_acc": strong.mean()}}]}
        g = F.gain_test(report, {"fgsm": weak, "aa": strong}, labels)
        return g is not None and g["reproduced"]

    rates = {name: _null_rate(rule) for name, rule in (
        ("disparity", disparity), ("concentration", concentration), ("weight norm", weight_norm),
        ("consistency", consistency), ("gains", gains))}
    print(rates)
    assert all(rate <= NULL_LIMIT for rate in rates.values()), rates
