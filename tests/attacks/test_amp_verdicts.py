"""Mixed precision may cost speed, never a rosier number (attacks/attack.py): under bf16
autocast the attacks steer by the reduced-precision model, but whether an image counts as fooled
or robust is the float32 model's verdict. Planted models whose autocast and float32 answers differ
show each direction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cwr_fast.attacks import parse_attack
from cwr_fast.classwise.engine import evaluate_classwise

EPS = 0.1


class Disagrees(nn.Module):
    """Ten logits; class 0 at the clean images (constant grey). In float32, class 1 wins wherever
    the pixels spread (any perturbation the attacks start from does that): fooled_in_float32=True;
    under autocast the other answer. So one precision sees every image robust, the other every
    image fooled."""

    def __init__(self, fooled_in_float32: bool):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so the model has a device
        self.fooled_in_float32 = fooled_in_float32

    def forward(self, x):
        spread = x.flatten(1).std(dim=1) * self.scale
        fooled = self.fooled_in_float32 != torch.is_autocast_enabled(x.device.type)
        z1 = 100 * spread - 1 if fooled else spread - 10
        others = [spread * 0 - 10] * 8
        return torch.stack([spread * 0, z1, *others], dim=1)


def bf16_attack(spec: str, model):
    attack = parse_attack(spec).build(model, eps=EPS, amp="bf16")
    for member in getattr(attack, "members", {}).values():  # aa, shortened: the rule is tested
        for key in ("steps", "queries"):
            if hasattr(member, key):
                setattr(member, key, 3)
    return attack


def grey_images(n=6):
    return torch.full((n, 1, 8, 8), 0.5), torch.zeros(n, dtype=torch.int64)


@pytest.mark.parametrize("spec", ["aa:seed=0", "pgd-5", "apgd-ce-5", "square-20"])
@pytest.mark.parametrize("fooled_in_float32", [True, False], ids=["float32-fooled", "float32-robust"])
def test_bf16_verdicts_are_float32s(spec, fooled_in_float32):
    """float32 fooled, bf16 not: never counted robust; bf16 fooled, float32 not: never counted
    fooled (a bf16-only success)."""
    model = Disagrees(fooled_in_float32=fooled_in_float32)
    x, y = grey_images()
    counts = evaluate_classwise(model, [(x, y)], 10, {"atk": bf16_attack(spec, model)}, amp="bf16")
    assert int(counts.clean_correct.sum()) == len(y)
    assert int(counts.robust("atk").sum()) == (0 if fooled_in_float32 else len(y))


def test_float32_runs_see_the_float32_model():
    """Without amp nothing changes: the float32 model is fooled everywhere off the clean image."""
    model = Disagrees(fooled_in_float32=True)
    x, y = grey_images()
    counts = evaluate_classwise(model, [(x, y)], 10, {"pgd": parse_attack("pgd-5").build(model, eps=EPS)})
    assert int(counts.robust("pgd").sum()) == 0


def test_fab_runs_in_float32_under_any_amp():
    from cwr_fast.attacks.fab import fab

    model = Disagrees(fooled_in_float32=True)
    x, y = grey_images(3)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(torch.is_autocast_enabled("cpu")))
    fab(model, x, y, eps=EPS, steps=2, random_start=True, amp="bf16")
    assert seen and not any(seen)


def test_auto_amp_says_what_it_chose():
    from cwr_fast.runtime import choose_amp

    amp, line = choose_amp("auto", "cpu", lambda: 2.0)
    assert "amp auto" in line
    assert (amp, "bf16" in line) in ((None, False), ("bf16", True))
    amp, line = choose_amp("auto", "cpu", lambda: 0.5)
    assert amp is None and "float32" in line
    amp, line = choose_amp("bf16", "cpu", lambda: 0.4)
    assert amp == "bf16" and line.startswith("warning") and "0.40x" in line
    assert choose_amp("off", "cpu", lambda: 9.0)[0] is None
    assert choose_amp("auto", "cuda")[0] == "bf16"


def test_fab_under_bf16_is_fab_in_float32(mnist_robust):
    """Issue 25, item 5: under bf16 autocast FAB-20 left 55 of 100 MNIST images robust where float32
    left 33. FAB now ignores amp: the same images fooled, the same points, whatever amp says."""
    from cwr_fast.attacks import FAB, FABT, attack_mode

    f = mnist_robust
    x, y = f.x[:40], f.y[:40]
    for cls, extra in ((FAB, {}), (FABT, {"targets": 3})):
        results = []
        for amp in (None, "bf16"):
            torch.manual_seed(0)
            with attack_mode(f.model):
                results.append(cls(f.model, eps=0.15, steps=20, amp=amp, **extra).run(x, y))
        assert torch.equal(results[0].success, results[1].success), cls.__name__
        assert int(results[0].success.sum()) > 0
        assert torch.equal(results[0].x_adv, results[1].x_adv)
