"""Issue 25, item 25: with 2 classes, apgd-dlr-N and aa:version=plus|rand raised from the kernel
after loading and left an OUT.partial. Each attack now states the fewest classes it works with
(the reference AutoAttack cannot run its DLR members with fewer either), and the CLI refuses it
when it is parsed, before any model or data is loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.cli import assert_refused, cli, snapshot

from cwr_fast.attacks import AttackSpecError, parse_attack


@pytest.mark.parametrize("spec, need", [("aa", 4), ("aa:version=plus", 4), ("aa:version=rand", 3),
                                        ("apgd-dlr-5", 3), ("apgd-t-5", 4)])
def test_too_few_classes_are_refused_when_built(spec, need):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(AttackSpecError, match=f"needs at least {need} classes and the data has 2"):
        parse_attack(spec).build(model, eps=0.1, num_classes=2)
    parse_attack(spec).build(model, eps=0.1, num_classes=need)  # enough: built


@pytest.mark.parametrize("spec", ["apgd-ce-5", "fab-t-5", "square-10", "pgd-3", "fgsm"])
def test_what_runs_with_two_classes_is_built(spec):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    parse_attack(spec).build(model, eps=0.1, num_classes=2)


@pytest.mark.parametrize("attacks", ["apgd-dlr-5", "aa:version=plus", "aa:version=rand", "aa"])
def test_evaluate_refuses_them_before_any_work(attacks, tmp_path):
    gen = np.random.default_rng(0)
    data = tmp_path / "two.npz"
    images = gen.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    labels = np.arange(20) % 2
    np.savez(data, test_images=images, test_labels=labels, train_images=images, train_labels=labels)
    model_file = tmp_path / "m.py"
    model_file.write_text("import torch\ndef net():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                          "torch.nn.Linear(64, 2))\n")
    before = snapshot(tmp_path)
    proc = cli("cwr_fast.evaluate", "--dataset", f"npz:{data}", "--model", f"{model_file}:net",
               "--normalize", "none", "--attacks", attacks, "--eps", "0.1", "--out", tmp_path / "r")
    assert_refused(proc, "needs at least", "classes and the data has 2")
    assert snapshot(tmp_path) == before, "a refused run left files (an OUT.partial?)"


def test_the_engine_refuses_integer_logits_and_bad_labels():
    """Issue 25, item 26, for every caller of the engine (the CLIs too, not only evaluate_model)."""
    from cwr_fast.classwise.engine import evaluate_classwise

    class Indices(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 3)

        def forward(self, x):
            return torch.nn.functional.one_hot(self.lin(x.flatten(1)).argmax(1), 3)  # int64

    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    atk = {"fgsm": parse_attack("fgsm").build(Indices(), eps=0.1, num_classes=3)}
    with pytest.raises(TypeError, match="floating-point logits"):
        evaluate_classwise(Indices(), [(x, y)], 3, atk)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match=r"labels must be a tensor \[N\].*squeeze"):
        evaluate_classwise(model, [(x, y[:, None])], 3, atk)
    with pytest.raises(ValueError, match="whole class indices"):
        evaluate_classwise(model, [(x, y.float() + 0.5)], 3, atk)
