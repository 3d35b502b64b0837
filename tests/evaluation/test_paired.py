"""Paired comparison of two models on the same images (cwr_fast.classwise.paired and
`compare A B --paired`): known answers, a planted difference that must be detected, null
differences that must not be, and the per-image outcomes every report now carries."""

import json

import numpy as np
import pytest
import torch

from cwr_fast import compare
from cwr_fast.attacks import build_attacks
from cwr_fast.classwise.analysis import build_report
from cwr_fast.classwise.engine import evaluate_classwise
from cwr_fast.classwise.outcomes import ROBUST_FILE, RobustBits
from cwr_fast.classwise.paired import holm, mcnemar_exact, paired_comparison, paired_tables
from cwr_fast.evaluate import main as evaluate_main
from cwr_fast.report import write_report

NAMES = [str(c) for c in range(10)]


def two_models(acc_a, acc_b, per_class, agree, seed):
    """(correct_a, correct_b, labels): A right with probability acc_a[c]; B copies A's outcome
    with probability `agree`, else draws its own with probability acc_b[c] (so B's accuracy is
    agree * acc_a + (1 - agree) * acc_b: equal to A's when acc_b == acc_a)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(acc_a)), per_class)
    a = rng.random(len(y)) < np.asarray(acc_a)[y]
    own = rng.random(len(y)) < np.asarray(acc_b)[y]
    b = np.where(rng.random(len(y)) < agree, a, own)
    return a, b, y


def test_mcnemar_and_holm_known_values():
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(2, 8) == pytest.approx(0.109375)          # 2 * P(X <= 2), X ~ B(10, 1/2)
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    tables = paired_tables(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]), np.array([0, 0, 0, 0, 1]), 2)
    assert tables.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]


def test_the_same_outcomes_differ_by_nothing():
    a, _, y = two_models([0.5] * 10, [0.5] * 10, 60, 0.0, seed=0)
    result = paired_comparison(a, a, y, NAMES, draws=500)
    assert all(r["diff"] == 0 and r["p"] == 1 and not r["significant"] for r in result["per_class"])
    for key in ("mean", "worst"):
        assert result[key]["diff"] == 0 and result[key]["p"] == 1
    assert result["mean"]["ci_low"] == 0 == result["mean"]["ci_high"]
    # the worst-class interval ignores the pairing (simultaneous bounds of each model's classes):
    # the same counts give the same bounds for A and B, so it is symmetric about 0
    assert result["worst"]["ci_low"] == -result["worst"]["ci_high"] < 0


def test_planted_difference_in_the_worst_class_is_detected():
    acc_a = [0.2] + [0.6] * 9                       # class 0 is A's worst
    a, b, y = two_models(acc_a, [0.6] * 10, 200, 0.5, seed=1)
    b = np.where(y == 0, b, a)                      # B differs from A only on class 0
    result = paired_comparison(a, b, y, NAMES, draws=2000)
    first = result["per_class"][0]
    assert first["significant"] and first["p_holm"] < 1e-4 and first["ci_low"] > 0.1
    assert not any(r["significant"] for r in result["per_class"][1:])
    assert result["worst"]["significant"] and result["worst"]["diff"] > 0.1
    assert result["worst"]["class_a"] == "0" and result["worst"]["ci_low"] > 0
    assert result["mean"]["diff"] == pytest.approx(first["diff"] / 10)


def test_null_differences_are_not_detected_more_often_than_the_level():
    """Two models of the same class accuracies, whose errors agree on half the images: over 200
    such pairs the tests reject at most about 5% of the time (the per-class family with Holm)."""
    rejected = {"any class": 0, "mean": 0, "worst": 0}
    trials = 200
    for seed in range(trials):
        acc = np.linspace(0.3, 0.7, 10)
        a, b, y = two_models(acc, acc, 50, 0.5, seed=100 + seed)
        result = paired_comparison(a, b, y, NAMES, draws=400, seed=seed)
        rejected["any class"] += any(r["significant"] for r in result["per_class"])
        rejected["mean"] += result["mean"]["significant"]
        rejected["worst"] += result["worst"]["significant"]
    # 5% of 200 is 10; 3 binomial standard deviations above it is about 19
    assert all(count <= 19 for count in rejected.values()), rejected
    a, b, y = two_models(acc, acc, 50, 0.5, seed=7)   # and one such pair, as a user would see it
    result = paired_comparison(a, b, y, NAMES)
    assert not result["mean"]["significant"] and not any(r["significant"] for r in result["per_class"])


def test_interval_of_the_difference_covers_the_true_difference():
    """B is 10 points better on every class; the interval of the mean difference covers +0.1 in
    about 95% of repetitions."""
    covered, trials = 0, 100
    for seed in range(trials):
        a, b, y = two_models([0.4] * 10, [0.6] * 10, 100, 0.5, seed=300 + seed)  # B: 0.5 on average
        result = paired_comparison(a, b, y, NAMES, draws=400, seed=seed)
        covered += result["mean"]["ci_low"] <= 0.1 <= result["mean"]["ci_high"]
    assert covered >= 88


def test_robust_bits_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n = 37                                      # not a multiple of 8
    bits = RobustBits(["fgsm", "pgd-5"], 10, rng.permutation(n), rng.integers(0, 10, n),
                      rng.random(n) < 0.8, rng.random((2, n)) < 0.5)
    back = RobustBits.load(bits.save(tmp_path / "o.npz"))
    for field in ("index", "label", "clean", "robust"):
        assert np.array_equal(getattr(back, field), getattr(bits, field))
    assert back.attack_names == ["fgsm", "pgd-5"] and back.num_classes == 10
    assert np.array_equal(back.correct("worst case"), bits.robust.all(axis=0) & bits.clean)
    with np.load(tmp_path / "o.npz") as raw:                      # one bit per image and attack
        assert raw["robust"].shape == (2, 5) and raw["robust"].dtype == np.uint8


# ---- the command line -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_reports(mnist_model, mnist_eval, tmp_path_factory):
    """Report dirs of the session's MNIST model and of a copy with noisy weights, on the same
    300 real test images."""
    x, y = mnist_eval
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, len(y), 100)]
    noisy = __import__("copy").deepcopy(mnist_model)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=None))
    root = tmp_path_factory.mktemp("paired")
    dirs = {}
    for name, model in (("model", mnist_model), ("noisy", noisy)):
        attacks = build_attacks("fgsm,pgd-5", model, eps=0.15, track="any")
        counts = evaluate_classwise(model, batches, 10, attacks, per_image=True)
        report = build_report(counts, NAMES, attacks=attacks, dataset={"name": "mnist", "split": "test"},
                              config={"dataset": "mnist", "eps": 0.15, "attacks": list(attacks)})
        dirs[name] = write_report(report, root / name, plots=False, outcomes=counts.outcomes)
    return dirs


def test_compare_paired_cli(two_reports, tmp_path, capsys):
    a, b = two_reports["model"], two_reports["noisy"]
    assert compare.main([str(a), str(b), "--paired", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "## Paired: noisy − model, on the same images" in out and "### worst case" in out
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())["paired"]
    assert result["accuracies"] == ["clean", "fgsm", "pgd-5", "worst case"]
    bits_a, bits_b = RobustBits.load(a / ROBUST_FILE), RobustBits.load(b / ROBUST_FILE)
    for section in result["sections"]:
        expected = paired_comparison(bits_a.correct(section["accuracy"]), bits_b.correct(section["accuracy"]),
                                     bits_a.label, NAMES)
        assert section["per_class"] == expected["per_class"] and section["worst"] == expected["worst"]
    report = json.loads((a / "report.json").read_text())
    pgd = next(s for s in result["sections"] if s["accuracy"] == "pgd-5")
    assert [r["acc_a"] for r in pgd["per_class"]] == [r["robust_acc"] for r in report["attacks"][1]["per_class"]]


def test_compare_paired_refusals(two_reports, tmp_path, capsys, mnist_model, mnist_eval):
    a, b = two_reports["model"], two_reports["noisy"]
    assert compare.main([str(a), "--paired"]) == 2
    assert "exactly two runs" in capsys.readouterr().err
    x, y = mnist_eval
    attacks = build_attacks("fgsm", mnist_model, eps=0.15)
    counts = evaluate_classwise(mnist_model, [(x[:100], y[:100])], 10, attacks, per_image=True)
    report = build_report(counts, NAMES, attacks=attacks, dataset={"name": "mnist", "split": "test"})
    fewer = write_report(report, tmp_path / "fewer", plots=False, outcomes=counts.outcomes)
    assert compare.main([str(a), str(fewer), "--paired"]) == 2
    assert "same images: model has 300, fewer 100, 100 in common" in capsys.readouterr().err
    (fewer / ROBUST_FILE).unlink()
    assert compare.main([str(a), str(fewer), "--paired"]) == 2
    assert "no per-image outcomes" in capsys.readouterr().err


def test_every_evaluation_report_carries_its_outcomes(mnist_checkpoint, shared_data, tmp_path):
    out = tmp_path / "report"
    assert evaluate_main(["--dataset", "mnist", "--data-dir", str(shared_data), "--arch", "small_cnn",
                          "--checkpoint", str(mnist_checkpoint), "--limit", "50", "--attacks", "fgsm,pgd-3",
                          "--eps", "0.2", "--no-plots", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    bits = RobustBits.load(out / ROBUST_FILE)
    assert len(bits.label) == 50 and bits.attack_names == ["fgsm", "pgd-3"]
    for k, section in enumerate(report["attacks"]):
        per_class = np.bincount(bits.label[bits.robust[k]], minlength=10)
        assert per_class.tolist() == [r["robust"] for r in section["per_class"]]
    worst = np.bincount(bits.label[bits.correct("worst case")], minlength=10)
    assert worst.tolist() == [r["robust"] for r in report["worst_case"]["per_class"]]
    manifest = json.loads((out / ".cwr_fast.json").read_text())
    assert ROBUST_FILE in manifest["files"]
