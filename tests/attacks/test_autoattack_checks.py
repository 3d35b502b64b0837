"""The reference AutoAttack's automatic checks (pyautoattack/checks.py) as report flags
(cwr_fast.attacks.checks): each check says what the reference's says on the same input, and on the
evaluate path a noisy model, a model with a zero-gradient layer and a model that outputs softmax
each raise their flag in report.json, report.md and the printed summary; the zoo models none."""

from __future__ import annotations

import warnings

import pytest
import torch
from pyautoattack import checks as reference
from torch import nn

from cwr_fast.attacks import AutoAttack, attack_mode
from cwr_fast.attacks.checks import (dynamic_flag, first_batch_flags, randomised_flag, softmax_flag,
                                     square_success_flag, target_count_flag, zero_gradient_flag)
from cwr_fast.classwise import ClasswiseCounts, build_report, evaluate_classwise
from cwr_fast.models import build_model
from cwr_fast.report import format_summary, markdown

CHECK_CODES = {"randomised_model", "softmax_output", "dynamic_model", "zero_gradients",
               "fewer_target_classes", "square_stronger"}


def _reference_warns(check, *args, **kwargs) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(*args, **kwargs)
    return bool(caught)


class GaussianInput(nn.Module):
    def __init__(self, model, sigma=0.3):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


class Quantised(nn.Module):
    """Rounds the image to 8 levels first: torch.round has a zero gradient, so every input gradient
    is zero (gradient masking) while the predictions stay sensible."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 7) / 7)


class Softmaxed(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(dim=1)


class AdaptsAtTestTime(nn.Module):
    """A 'dynamic' defense: its forward pass takes an input-gradient step first."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.model(z).logsumexp(dim=1).sum(), z)
        return self.model((x + 0.01 * g.sign()).clamp(0, 1))


# ---- each check against the reference's, on the same input ----------------------------------------

@pytest.mark.parametrize("wrap, randomised", [(lambda m: m, False), (GaussianInput, True)])
def test_randomised_says_what_the_reference_says(mnist_model, mnist_eval, wrap, randomised):
    model = wrap(mnist_model)
    x, y = mnist_eval[0][:50], mnist_eval[1][:50]
    torch.manual_seed(0)
    assert _reference_warns(reference.check_randomized, model, x, y) == randomised
    with torch.no_grad():
        outputs = [model(x) for _ in range(5)]
    assert (randomised_flag(outputs, y) is not None) == randomised


@pytest.mark.parametrize("softmax", [False, True])
def test_softmax_says_what_the_reference_says(mnist_model, mnist_eval, softmax):
    model = Softmaxed(mnist_model) if softmax else mnist_model
    x = mnist_eval[0][:50]
    assert _reference_warns(reference.check_range_output, model, x) == softmax
    with torch.no_grad():
        assert (softmax_flag(model(x)) is not None) == softmax


def test_zero_gradients_and_dynamic_say_what_the_reference_says(mnist_model, mnist_eval):
    x = mnist_eval[0][:8]
    grads = [torch.randn(8, 1, 28, 28), torch.zeros(8, 1, 28, 28)]
    grads[0][3] = 0
    for grad in grads + [torch.randn(8, 1, 28, 28)]:
        ours = zero_gradient_flag(grad) is not None
        assert _reference_warns(reference.check_zero_gradients, grad) == ours
    assert "1 of 8 images" in zero_gradient_flag(grads[0])["message"]
    # where the loss itself is flat at the logits (the DLR loss when the label is the 3rd most
    # likely class), the model is not to blame: left out
    logit_grad = torch.ones(8, 10)
    logit_grad[3] = 0
    assert zero_gradient_flag(grads[0], logit_grad) is None
    for model, dynamic in [(mnist_model, False), (AdaptsAtTestTime(mnist_model), True)]:
        reference.funcs.update(dict.fromkeys(reference.funcs, 0))  # the reference's counters are global
        with attack_mode(model):
            assert _reference_warns(reference.check_dynamic, model, x) == dynamic
            assert (dynamic_flag(model, x) is not None) == dynamic


@pytest.mark.parametrize("num_classes", [4, 5, 9, 10, 100])
def test_target_count_says_what_the_reference_says(num_classes):
    attacks = ["apgd-ce", "apgd-t", "fab-t", "square"]
    warns = _reference_warns(reference.check_n_classes, num_classes, attacks, 9, 9)
    assert warns == (target_count_flag(num_classes, {"apgd-t": 9, "fab-t": 9}) is not None)


@pytest.mark.parametrize("members, fooled", [
    (["apgd-ce", "apgd-t", "fab-t", "square"], [400, 30, 0, 3]),    # 0.3 points: flagged
    (["apgd-ce", "apgd-t", "fab-t", "square"], [400, 30, 0, 2]),    # 0.2 points: not
    (["apgd-ce", "apgd-t", "fab-t", "square"], [400, 30, 5, 0]),
    (["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"], [400, 10, 0, 40, 1, 0]),
    (["apgd-ce", "square"], [0, 9]),
    (["square"], [9]),                                              # Square alone: no comparison
])
def test_square_success_says_what_the_reference_says(members, fooled):
    total, clean_correct = 1000, 900
    acc, left = {"clean": clean_correct / total}, clean_correct
    for name, k in zip(members, fooled):
        left -= k
        acc[name] = left / total
    warns = _reference_warns(reference.check_square_sr, acc)
    assert warns == (square_success_flag(total, clean_correct, list(zip(members, fooled))) is not None)


def test_the_square_flag_comes_from_the_per_member_breakdown():
    members = ["apgd-ce", "apgd-t", "fab-t", "square"]
    counts = ClasswiseCounts(["aa"], 2, members={"aa": members})
    counts.clean_confusion = torch.tensor([[50, 0], [0, 50]])
    counts.member_broken["aa"] = torch.tensor([[20, 20], [2, 2], [0, 0], [1, 1]])
    counts.adv_confusion[0] = torch.tensor([[27, 23], [23, 27]])
    report = build_report(counts, ["a", "b"])
    flags = [f for f in report["flags"] if f["code"] == "square_stronger"]
    assert len(flags) == 1 and flags[0]["attacks"] == ["aa"] and "2.00 points" in flags[0]["message"]


# ---- on the evaluate path --------------------------------------------------------------------------

def _short_aa(model, seed=0):
    attack = AutoAttack(model, eps=0.1, seed=seed)
    for member in attack.members.values():
        for key, value in (("steps", 5), ("queries", 20), ("targets", 2)):
            if hasattr(member, key):
                setattr(member, key, value)
    return attack


def _report(model, x, y) -> dict:
    counts = evaluate_classwise(model, [(x, y)], 10, {"aa": _short_aa(model)})
    return build_report(counts, [str(c) for c in range(10)], attacks={"aa": {"name": "aa", "params": {}}})


@pytest.mark.parametrize("wrap, code", [(GaussianInput, "randomised_model"),
                                        (Quantised, "zero_gradients"),
                                        (Softmaxed, "softmax_output")])
def test_each_check_raises_its_flag_in_the_report(mnist_model, mnist_eval, wrap, code):
    x, y = mnist_eval[0][:30], mnist_eval[1][:30]
    report = _report(wrap(mnist_model), x, y)
    found = {f["code"]: f for f in report["flags"] if f["code"] in CHECK_CODES}
    # Square outdoing the gradient members is what noise and masked gradients cause: it may join
    assert code in found and set(found) <= {code, "square_stronger"}, found
    assert found[code]["attacks"] == ["aa"] and found[code]["message"].startswith("aa: ")
    assert f"`{code}`" in markdown(report) and f"FLAG [warning] {code}" in format_summary(report)
    if code == "randomised_model":
        assert "aa:version=rand" in found[code]["message"]


def test_a_deterministic_trained_model_raises_no_check(mnist_model, mnist_eval):
    x, y = mnist_eval[0][:30], mnist_eval[1][:30]
    report = _report(mnist_model, x, y)
    assert not [f for f in report["flags"] if f["code"] in CHECK_CODES]


@pytest.mark.parametrize("arch, shape", [("small_cnn", (1, 28, 28)), ("small_cnn", (3, 32, 32)),
                                         ("preact_resnet18", (3, 32, 32)), ("wrn34_10", (3, 32, 32)),
                                         ("resnet50", (3, 64, 64))])
def test_the_zoo_models_raise_no_check(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, 10, mean=[0.5] * shape[0], std=[0.25] * shape[0], in_channels=shape[0]) \
        if arch == "small_cnn" else build_model(arch, 10)
    x = torch.rand(4, *shape)
    with attack_mode(model):
        with torch.no_grad():
            y = model(x).argmax(dim=1)
        assert first_batch_flags(model, x, y, targets={"apgd-t": 9, "fab-t": 9}) == []


def test_the_checks_leave_the_rng_and_run_once(mnist_model, mnist_eval):
    """The checks draw nothing the attacks would see, and run on the first call only."""
    model = GaussianInput(mnist_model)
    x, y = mnist_eval[0][:8], mnist_eval[1][:8]
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    with attack_mode(model):
        flags = first_batch_flags(model, x, y)
    assert [f["code"] for f in flags] == ["randomised_model"]
    assert torch.equal(torch.random.get_rng_state(), state)
    attack = _short_aa(model)
    attack.run(x[:4], y[:4])
    first = attack.check_flags
    attack.run(x[4:], y[4:])
    assert attack.check_flags is first
    assert AutoAttack(model, version="rand").check_flags is None
