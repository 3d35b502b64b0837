"""MALT: targets chosen by the linearised boundary distance (attacks/malt.py), and the fast
AutoAttack mode built on it (aa:version=malt)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cwr_fast.attacks import AutoAttack, parse_attack
from cwr_fast.attacks.apgd import APGDT
from cwr_fast.attacks.malt import MALT, boundary_distances, malt_targets
from cwr_fast.attacks.spec import AttackSpecError
from cwr_fast.attacks.threat import threat_model
from cwr_fast.classwise import evaluate_classwise
from cwr_fast.classwise.analysis import build_report


class Linear(nn.Module):
    """z = W x + b on flattened images: the linearised distances are exact."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


def near_but_unlikely(d: int = 64) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    """5 classes, one image of class 0 at x = 0.5, logits 5, 4, 3, 2, 1. Class 1 is the most likely
    other class (gap 1) but its boundary is far (Linf distance 1: its weights move one logit per
    unit over 32 pixels); class 2 is less likely (gap 2) but steep over 32 other pixels (distance
    0.125), so its boundary is the nearest. Classes 1 and 2 use disjoint pixels, so moving toward
    one does not reach the other."""
    w = torch.zeros(5, d)
    w[1, :32] = -1 / 32        # ||w_0 - w_1||_1 = 1:  Linf distance 1
    w[2, 32:] = -0.5           # ||w_0 - w_2||_1 = 16: Linf distance 2 / 16 = 0.125
    w[3, 0] = 1.0              # ||w_0 - w_3||_1 = 1:  distance 3
    w[4, :] = 1 / 16           # ||w_0 - w_4||_1 = 4:  distance 1, tied with class 1
    x = torch.full((1, 1, 1, d), 0.5)
    z0 = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    bias = z0 - (x.flatten(1) @ w.T)[0]
    return Linear(w, bias), x, torch.tensor([0])


def test_distances_are_the_linear_models_boundary_distances():
    model, x, y = near_but_unlikely()
    for norm, expected in (("linf", {1: 1.0, 2: 0.125, 3: 3.0, 4: 1.0}),
                           ("l2", {1: 32 ** 0.5, 2: 4 / 32 ** 0.5, 3: 3.0, 4: 8.0})):
        classes, distances = boundary_distances(model, x, y, threat_model(norm), candidates=100)
        assert classes[0].tolist() == [1, 2, 3, 4]  # the candidates, most likely first
        got = dict(zip(classes[0].tolist(), distances[0].tolist()))
        assert got == pytest.approx(expected, rel=1e-5), norm


def test_targets_are_ranked_by_distance_not_by_confidence():
    """The planted bug of issue 28 (ranking by confidence) gives [1, 2, ...]; MALT gives class 2
    (nearest) first, then 1 and 4 (tied at distance 1: the more likely first), then 3."""
    model, x, y = near_but_unlikely()
    assert malt_targets(model, x, y, threat_model("linf"), targets=4).tolist() == [[2, 1, 4, 3]]
    assert malt_targets(model, x, y, threat_model("linf"), targets=2).tolist() == [[2, 1]]
    # only the `candidates` most likely classes are scored
    assert malt_targets(model, x, y, threat_model("linf"), targets=4, candidates=1).tolist() == [[1]]


def test_one_target_of_malt_breaks_what_one_target_of_apgd_t_cannot():
    """With eps between the two distances only the near, unlikely class is reachable: MALT's first
    target fools the image, APGD-T's first (the most likely class) cannot."""
    model, x, y = near_but_unlikely()
    eps = 0.2  # > 0.125 (class 2), < 1 (classes 1 and 4)
    malt = MALT(model, eps=eps, targets=1, steps=20).run(x, y)
    apgd_t = APGDT(model, eps=eps, targets=1, steps=20).run(x, y)
    assert malt.success.tolist() == [True] and int(malt.pred[0]) == 2 and malt.broken_by.tolist() == [0]
    assert apgd_t.success.tolist() == [False]


def test_a_class_the_gradient_cannot_move_ranks_last():
    model, x, y = near_but_unlikely()
    with torch.no_grad():
        model.weight[1] = model.weight[0]  # z_0 - z_1 is constant: no linear step reaches class 1
    assert malt_targets(model, x, y, threat_model("linf"), targets=4)[0, -1] == 1


def test_broken_by_names_the_target_rank_through_restarts():
    model, x, y = near_but_unlikely()
    x = x.repeat(3, 1, 1, 1)
    y = y.repeat(3)
    atk = MALT(model, eps=0.2, targets=2, restarts=2, steps=10)
    result = atk.run(x, y)
    assert atk.member_names == ["target-1", "target-2"] and atk.broken_at_unit == "member"
    assert result.broken_by.tolist() == [0, 0, 0]  # rank 0 for both restarts of target 1
    assert set(atk.member_seconds) == {"target-1", "target-2"} and atk.member_seconds["target-1"] > 0


def test_specs_build_malt_and_the_fast_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    atk = parse_attack("malt-50:targets=3:candidates=4:restarts=2").build(model, eps=0.1)
    assert isinstance(atk, MALT) and (atk.steps, atk.targets, atk.candidates, atk.restarts) == (50, 3, 4, 2)
    assert parse_attack("malt:norm=l2").build(model, eps=0.1, eps_l2=0.5).threat.name == "l2"
    fast = parse_attack("aa:version=malt").build(model, eps=0.1)
    assert isinstance(fast, AutoAttack) and fast.member_names == ["apgd-ce", "malt", "fab-t"]
    assert (fast.members["malt"].targets, fast.members["malt"].restarts, fast.members["fab-t"].targets) == (3, 2, 1)
    for bad in ("malt:candidates=0", "malt:targets=0", "malt:T=2"):
        with pytest.raises(AttackSpecError):
            parse_attack(bad).build(model, eps=0.1)
    with pytest.raises(AttackSpecError, match="4 classes"):
        parse_attack("malt").build(nn.Linear(3, 3), eps=0.1, num_classes=3)


def test_the_report_breaks_malt_down_by_target_rank_and_states_the_fast_modes_misses(mnist_model, mnist_eval):
    x, y = mnist_eval
    x, y = x[:60], y[:60]
    attacks = {"aa": parse_attack("aa:seed=0").build(mnist_model, eps=0.05),
               "aa:version=malt": parse_attack("aa:version=malt:seed=0").build(mnist_model, eps=0.05),
               "malt-20": parse_attack("malt-20:targets=2").build(mnist_model, eps=0.05)}
    counts = evaluate_classwise(mnist_model, [(x, y)], 10, attacks)
    assert counts.members["malt-20"] == ["target-1", "target-2"]
    report = build_report(counts, [str(c) for c in range(10)], attacks=attacks)
    section = next(s for s in report.autoattack if s.label == "malt-20")
    assert sum(section.overall[m] for m in section.members) == int(
        (counts.clean_correct - counts.robust("malt-20")).sum())
    agreement = [f for f in report.flags if f.code == "fast_mode_agreement"]
    assert [f.attacks for f in agreement] == [["aa:version=malt", "aa"], ["malt-20", "aa"]]
    for flag in agreement:
        fast = flag.attacks[0]
        missed = int(counts.gain[counts.index(fast), counts.index("aa")].sum())
        assert flag.message.startswith(f"{fast} missed {missed} of the ")
        assert flag.severity == ("warning" if missed else "info")


@pytest.mark.parametrize("spec, amp", [("malt-10:targets=2:norm=l2", None), ("malt-10:targets=2", "bf16")])
def test_malt_runs_under_l2_and_bf16_with_float32_verdicts(mnist_model, mnist_eval, spec, amp):
    x, y = mnist_eval
    x, y = x[:16], y[:16]
    atk = parse_attack(spec).build(mnist_model, eps=0.1, eps_l2=1.0, amp=amp)
    result = atk.run(x, y)
    with torch.no_grad():
        pred32 = mnist_model(result.x_adv).argmax(dim=1)
    assert torch.equal(result.success, pred32 != y)  # a fooled verdict is the float32 model's
    delta = (result.x_adv - x).flatten(1)
    bound = delta.norm(dim=1) if atk.threat.name == "l2" else delta.abs().amax(dim=1)
    assert float(bound.max()) <= (1.0 if atk.threat.name == "l2" else 0.1) + 1e-5
