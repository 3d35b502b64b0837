"""cwr_fast.evaluate_model, the one-call Python API: the README's example as it is written there,
and its equality with the CLI's engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import cwr_fast
from cwr_fast.attacks import build_attacks
from cwr_fast.classwise import evaluate_classwise

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's API example (after <!-- api-example -->) is missing"
    return match.group(1)


def test_the_readme_example_runs(mnist_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save(mnist_model.state_dict(), tmp_path / "model.pt")
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    report, worst = scope["report"], scope["worst"]
    assert isinstance(report, cwr_fast.ClasswiseReport)
    assert report.data["dataset"]["num_images"] == 200 and len(report.class_names) == 10
    assert [r["n"] for r in report.per_class()] == [20] * 10
    assert 0.0 <= worst <= 1.0 and worst == min(report.robust_accuracy("pgd-10"))
    assert "worst class" in capsys.readouterr().out
    saved = json.loads((tmp_path / "reports" / "my-model" / "report.json").read_text())
    assert saved["attacks"][1]["label"] == "pgd-10" and saved == json.loads(json.dumps(report.data))


def test_equals_the_engine_on_the_same_batches(mnist_model, mnist_eval):
    x, y = mnist_eval
    x, y = x[:120], y[:120]
    report = cwr_fast.evaluate_model(mnist_model, (x, y), attacks="fgsm,pgd-3", eps=0.1,
                                     batch_size=50, seed=1)
    attacks = build_attacks("fgsm,pgd-3", mnist_model, eps=0.1, track="any", num_classes=10)
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 120, 50)]
    counts = evaluate_classwise(mnist_model, batches, 10, attacks, seed=1)
    assert [r["robust"] for r in report.per_class("pgd-3")] == counts.robust("pgd-3").tolist()
    assert report.robust_accuracy() == [r["robust_acc"] for r in report.data["worst_case"]["per_class"]]
    with pytest.raises(KeyError, match="pgd-3"):
        report.per_class("cw-9")


def test_bad_data_is_a_clear_error(mnist_model):
    with pytest.raises(TypeError, match="images, labels"):
        cwr_fast.evaluate_model(mnist_model, torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="labels"):
        cwr_fast.evaluate_model(mnist_model, (torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long)))


def test_a_one_shot_iterator_loses_no_batch(mnist_model, mnist_eval):
    x, y = mnist_eval
    x, y = x[:60], y[:60]
    batches = iter([(x[:30], y[:30]), (x[30:], y[30:])])  # num_classes is found on the first batch
    report = cwr_fast.evaluate_model(mnist_model, batches, attacks="fgsm", eps=0.1)
    assert report.data["dataset"]["num_images"] == 60


def test_the_outcomes_of_the_api_round_trip_through_a_file(mnist_model, mnist_eval, tmp_path):
    x, y = mnist_eval
    x, y = x[:50], y[:50]
    report = cwr_fast.evaluate_model(mnist_model, (x, y), attacks="fgsm,pgd-3", eps=0.1, keep_adv=True)
    outcomes = report.outcomes
    assert len(outcomes) == len(y) and outcomes.x_adv.shape == (2, *x.shape)
    assert outcomes.robust("pgd-3").sum().item() == sum(r["robust"] for r in report.per_class("pgd-3"))
    path = outcomes.save(tmp_path / "adv.npz")
    again = cwr_fast.ClasswiseReport.from_outcomes(path)
    assert again.per_class() == report.per_class()
    assert again.robust_accuracy("fgsm") == report.robust_accuracy("fgsm")
    assert torch.equal(again.outcomes.x_adv, outcomes.x_adv)
