"""Threat models as objects (cwr_fast.attacks.threat), the interface the class-wise engine reads from
every attack, the one backend switch of the op layer, and the attack-spec error's class."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from cwr_fast import ops
from cwr_fast.attacks import APGD, CW, FAB, FGSM, PGD, PGDL2, AttackSpecError, AutoAttack, Square
from cwr_fast.attacks import parse_attack
from cwr_fast.attacks.threat import NORMS, L2, Linf, ThreatModel, threat_model
from cwr_fast.errors import UsageError
from cwr_fast.methods import build_method
from cwr_fast.op_checks import check_dlr_classes

ATTACKS = Path(__file__).resolve().parents[2] / "cwr_fast" / "attacks"


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


# ---- the lookup --------------------------------------------------------------------------------

def test_lookup_by_the_names_attacks_accept():
    assert NORMS == ("linf", "l2")
    assert isinstance(threat_model("linf"), Linf) and isinstance(threat_model("l2"), L2)
    assert threat_model("linf") is threat_model("linf")  # one instance each
    threat = threat_model("l2")
    assert threat_model(threat) is threat
    assert (threat_model("linf").reference_name, threat_model("l2").reference_name) == ("Linf", "L2")


@pytest.mark.parametrize("name", ["l1", "Linf", "L2", "", None, ["linf"]])
def test_lookup_refuses_other_names_as_the_attacks_did(name):
    with pytest.raises(ValueError, match=r"norm must be one of \('linf', 'l2'\)"):
        threat_model(name)
    with pytest.raises(ValueError, match=r"^AutoAttack norm must be one of"):
        threat_model(name, what="AutoAttack norm")


# ---- the operations, against their formulas ------------------------------------------------------

def test_norms_and_dual_norms():
    t = torch.tensor([[3.0, -4.0, 0.0], [1.0, 1.0, -1.0]])
    linf, l2 = threat_model("linf"), threat_model("l2")
    torch.testing.assert_close(linf.norm(t), torch.tensor([4.0, 1.0]))
    torch.testing.assert_close(linf.dual_norm(t), torch.tensor([7.0, 3.0]))  # L1
    torch.testing.assert_close(l2.norm(t), torch.tensor([5.0, 3.0 ** 0.5]))
    torch.testing.assert_close(l2.dual_norm(t), l2.norm(t))
    per_row = t.view(1, 2, 3)  # FAB's [N, K, D]: over the dims from 2 on
    torch.testing.assert_close(linf.dual_norm(per_row, start_dim=2), torch.tensor([[7.0, 3.0]]))


@pytest.mark.parametrize("name", NORMS)
def test_project_lands_in_the_ball_and_the_box(name):
    torch.manual_seed(0)
    threat = threat_model(name)
    x_nat = torch.rand(6, 3, 4, 4)
    x = x_nat + torch.randn_like(x_nat)
    eps = 0.1 if name == "linf" else 0.5
    out = threat.project(x, x_nat, eps)
    assert out.min() >= 0 and out.max() <= 1
    assert (threat.norm(out - x_nat) <= eps + 1e-6).all()
    inside = x_nat + 0.5 * (threat.project(x, x_nat, eps) - x_nat)  # already in the ball: unchanged
    torch.testing.assert_close(threat.project(inside, x_nat, eps), inside, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", NORMS)
def test_step_and_projection_ops_come_from_the_backend_module(name):
    threat, eager = threat_model(name), ops.backend_module("eager")
    assert threat.step_op() is getattr(ops, f"{name}_pgd_step_")
    assert threat.step_op(eager) is getattr(eager, f"{name}_pgd_step_")
    assert threat.hyperplane_projection(ops) is getattr(ops, f"hyperplane_projection_{name}")


def test_random_start_draws_as_torchattacks_pgd():
    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(5)
    expected = torch.clamp(x + torch.empty_like(x).uniform_(-0.1, 0.1), 0, 1)
    torch.manual_seed(5)
    torch.testing.assert_close(threat_model("linf").random_start(x, 0.1), expected, rtol=0, atol=0)
    torch.manual_seed(5)
    start = threat_model("l2").random_start(x, 0.5)
    assert (threat_model("l2").norm(start - x) <= 0.5 + 1e-6).all()


def test_random_start_keeps_the_layout_and_the_draw():
    x = torch.rand(4, 3, 8, 8)
    for name in NORMS:
        torch.manual_seed(1)
        plain = threat_model(name).random_start(x, 0.1)
        torch.manual_seed(1)
        channels_last = threat_model(name).random_start(x.to(memory_format=torch.channels_last), 0.1)
        assert channels_last.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(channels_last, plain, rtol=0, atol=0)


def test_start_direction_is_drawn_on_the_cpu_as_the_reference_draws_it():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    torch.manual_seed(2)
    expected = (torch.rand(x.shape) * 2 - 1).double(), torch.randn(x.shape).double()
    torch.manual_seed(2)
    got = threat_model("linf").start_direction(x), threat_model("l2").start_direction(x)
    for a, b in zip(got, expected):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_budgets_are_bounded_only_in_linf():
    with pytest.raises(ValueError, match="Linf budgets are in pixel units"):
        threat_model("linf").check_budget("eps", 8.0)
    threat_model("linf").check_budget("eps", 1.0)
    threat_model("l2").check_budget("eps", 8.0)
    with pytest.raises(ValueError, match="exceeds 1"):
        PGD(_tiny_model(), eps=8)
    PGDL2(_tiny_model(), eps=8)


# ---- attacks hold a threat model ---------------------------------------------------------------

@pytest.mark.parametrize("make, name", [
    (lambda m: PGD(m), "linf"), (lambda m: PGDL2(m), "l2"), (lambda m: CW(m), "linf"),
    (lambda m: APGD(m, norm="l2", eps=0.5), "l2"), (lambda m: FAB(m, norm="l2", eps=0.5), "l2"),
    (lambda m: Square(m), "linf"), (lambda m: AutoAttack(m, norm="l2", eps=0.5), "l2"),
])
def test_attacks_hold_their_threat_model_and_report_its_name(make, name):
    atk = make(_tiny_model())
    assert isinstance(atk.threat, ThreatModel) and atk.threat.name == name
    assert atk.norm == name  # the report's params keep the name
    if "norm" in atk.params():
        assert atk.params()["norm"] == name


def test_autoattack_members_share_its_threat_model():
    atk = AutoAttack(_tiny_model(), norm="l2", eps=0.5)
    assert all(member.threat is atk.threat for member in atk.members.values())


def test_no_attack_branches_on_the_name_of_its_norm():
    tests = [f"{path.name}:{i}" for path in sorted(ATTACKS.glob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"""norm\s*[!=]=|[!=]=\s*["'](l2|linf|Linf|L2)["']""", line)]
    assert tests == []


def test_a_spec_knows_its_threat_model():
    assert isinstance(parse_attack("pgdl2-5").threat, L2)
    assert isinstance(parse_attack("apgd-ce:norm=l2").threat, L2)
    assert isinstance(parse_attack("pgd-5").threat, Linf)
    assert parse_attack("aa:norm=l2").eps(0.3, eps_l2=0.5) == 0.5
    with pytest.raises(AttackSpecError, match="norm must be linf or l2"):
        parse_attack("aa:norm=Linf")  # the spec language keeps its one spelling


# ---- what the engine reads from every attack -----------------------------------------------------

@pytest.mark.parametrize("make, unit, members", [
    (lambda m: PGD(m), "step", []), (lambda m: FGSM(m), "step", []), (lambda m: PGDL2(m), "step", []),
    (lambda m: APGD(m), "fooled", []), (lambda m: Square(m), "fooled", []),
    (lambda m: AutoAttack(m), "member", ["apgd-ce", "apgd-t", "fab-t", "square"]),
])
def test_the_engine_interface_is_declared_on_every_attack(make, unit, members):
    atk = make(_tiny_model())
    assert atk.broken_at_unit == unit
    assert atk.member_names == members
    assert dict(atk.member_seconds) == ({m: 0.0 for m in members} if members else {})
    assert atk.check_flags is None and atk.keeps_model_mode is False


def test_the_declared_unit_is_what_the_result_carries():
    torch.manual_seed(0)
    model = _tiny_model()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    for atk, field in ((PGD(model, eps=0.3, steps=2), "step"), (AutoAttack(model, eps=0.3, seed=0), "broken_by")):
        result = atk.run(x, y)
        assert getattr(result, field) is not None
        assert {"step": "step", "member": "broken_by"}[atk.broken_at_unit] == field


# ---- one backend switch --------------------------------------------------------------------------

def test_backend_module_is_the_one_switch():
    assert ops.backend_module("fused") is ops
    eager = ops.backend_module("eager")
    assert eager is not ops and eager.__name__ == "cwr_fast.reference"
    with pytest.raises(ValueError, match="ops must be fused or eager, got 'compiled'"):
        ops.backend_module("compiled")
    assert ops.BACKENDS == ("fused", "eager")
    assert build_method("pgd-at", steps=1, ops_impl="eager").ops is eager
    assert build_method("pgd-at", steps=1, ops_impl="fused").ops is ops
    with pytest.raises(ValueError, match="ops must be fused or eager"):
        build_method("pgd-at", steps=1, ops_impl="reference")


def test_the_dlr_class_rule_is_shared():
    check_dlr_classes(3, targeted=False)
    check_dlr_classes(4, targeted=True)
    with pytest.raises(ValueError, match="at least 4 classes for the targeted DLR loss, got 3"):
        check_dlr_classes(3, targeted=True)
    with pytest.raises(ValueError, match="at least 3 classes for the untargeted DLR loss, got 2"):
        ops.backend_module("eager").dlr_loss_fwd_bwd(torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64))


# ---- errors --------------------------------------------------------------------------------------

def test_attack_spec_errors_are_usage_errors_and_still_value_errors():
    assert issubclass(AttackSpecError, UsageError) and issubclass(AttackSpecError, ValueError)
    with pytest.raises(UsageError):
        parse_attack("nonsense-3")
