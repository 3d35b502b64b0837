"""The training defenses "cwr" (cwr_fast/defenses/reweight.py: class-wise loss weights and eps
budgets from the validation robustness) and "frl" (cwr_fast/defenses/frl.py: Fair Robust
Learning, Xu et al. 2021): the update formulas on synthetic validation counts, checkpoints, option
errors, and short real-MNIST runs through `python -m cwr_fast.train` (in-process)."""

from __future__ import annotations

import io
import json
import math
import shutil

import pytest
import torch

from cwr_fast import train as train_cli
from cwr_fast.classwise.counts import ClasswiseCounts
from cwr_fast.defenses import DEFENSES, build_defense
from cwr_fast.defenses.frl import FairRobustLearning, lagrangian_coefficients
from cwr_fast.defenses.reweight import ClasswiseReweight
from cwr_fast.training.config import ConfigError
from cwr_fast.methods import build_method

from helpers.train import load_ckpt

C = 10
ATTACK = "pgd-5"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_counts(clean, robust, n=100, attack=ATTACK) -> ClasswiseCounts:
    """ClasswiseCounts with per-class clean / robust accuracies (fractions of n images; n may be a
    list, 0 for a class without images). Misclassified images go to the next class."""
    ns = n if isinstance(n, list) else [n] * len(clean)
    counts = ClasswiseCounts([attack], len(clean))
    for k, (ca, ra, nk) in enumerate(zip(clean, robust, ns)):
        cc, rb = round(ca * nk), round(ra * nk)
        assert rb <= cc <= nk
        other = (k + 1) % len(clean)
        counts.clean_confusion[k, k], counts.clean_confusion[k, other] = cc, nk - cc
        counts.adv_confusion[0, k, k], counts.adv_confusion[0, k, other] = rb, nk - rb
    return counts


class FakeContext:
    """What these defenses read of the run (cwr_fast.defenses.base.RunContext): val_attack."""

    def __init__(self, label=ATTACK):
        self.val_attack = label


def cwr(**options) -> ClasswiseReweight:
    return build_defense("cwr", options, num_classes=C, eps=0.3, alpha=0.01, beta=None)


def frl(eps=0.3, beta=None, **options) -> FairRobustLearning:
    return build_defense("frl", options, num_classes=C, eps=eps, alpha=0.01, beta=beta)


def with_class3(value_others, value3):
    v = [value_others] * C
    v[3] = value3
    return v


# ---- cwr: the formulas -------------------------------------------------------------------------

def test_registered():
    assert DEFENSES["cwr"] is ClasswiseReweight and DEFENSES["frl"] is FairRobustLearning


def test_cwr_weak_class_gets_larger_weight_and_budget():
    p = cwr()
    log = p.update(0, make_counts([0.95] * C, with_class3(0.8, 0.2)), {}, context=FakeContext())
    w, s = p.class_weight.double(), p.class_eps_scale.double()
    assert log["updated"] and log["robust_acc"][3] == pytest.approx(0.2)
    # w proportional to (1 - r + 0.1): class 3 gets 0.9 / 0.3 = 3 times the others' weight, mean 1
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert w[3].item() == pytest.approx(3 * w[0].item(), rel=1e-5)
    assert all(w[k].item() == pytest.approx(w[0].item()) for k in range(C) if k != 3)
    assert w[3] > 1 > w[0]
    # s = clip(1 + 0.2 (rbar - r) / (1 - rbar), 0.8, 1.25), rbar = 0.74
    assert s[3].item() == pytest.approx(1.25)                    # 1.415, clipped
    assert s[0].item() == pytest.approx(1 + 0.2 * (0.74 - 0.8) / 0.26, rel=1e-5)
    assert s[0] < 1 < s[3]
    # logged as plain numbers
    assert log["class_weight"] == pytest.approx(w.tolist(), abs=1e-5)
    assert log["class_eps_scale"] == pytest.approx(s.tolist(), abs=1e-5)
    json.dumps(log, allow_nan=False)


@pytest.mark.parametrize("seed", range(6))
def test_cwr_weights_normalised_clipped_and_monotone(seed):
    g = torch.Generator().manual_seed(seed)
    robust = (torch.rand(C, generator=g) ** (1 + 3 * seed / 5)).tolist()
    clean = [max(r, 0.99) for r in robust]
    max_weight = [1.5, 2.0, 3.0, 5.0, 1.2, 10.0][seed]
    p = cwr(gamma=[1, 2, 4, 0.5, 3, 6][seed], max_weight=max_weight, delta=0.05)
    p.update(0, make_counts(clean, robust, n=1000), {}, context=FakeContext())
    w, s, r = p.class_weight.double(), p.class_eps_scale.double(), p.robust_smoothed
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert float(w.min()) >= 1 / max_weight - 1e-6 and float(w.max()) <= max_weight + 1e-6
    assert float(s.min()) >= 0.8 - 1e-6 and float(s.max()) <= 1.25 + 1e-6
    for i in range(C):
        for j in range(C):
            if r[i] < r[j]:  # less robust: at least the weight and the budget of the more robust
                assert w[i] >= w[j] - 1e-6 and s[i] >= s[j] - 1e-6


def test_cwr_clipping_binds_at_both_ends():
    p = cwr(gamma=4, max_weight=2)
    p.update(0, make_counts([1.0] * C, with_class3(1.0, 0.0)), {}, context=FakeContext())
    w = p.class_weight.double()
    assert w[3].item() == pytest.approx(2.0, abs=1e-6)          # u_3 / u_k = 11^4: clipped
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)       # the others take the rest
    assert w[0].item() == pytest.approx(8 / 9, abs=1e-6)


def test_cwr_budget_never_above_one():
    p = build_defense("cwr", {"max_eps_scale": 2.0, "kappa": 1.0}, num_classes=C, eps=0.9,
                      alpha=0.1, beta=None)
    p.update(0, make_counts([0.95] * C, with_class3(0.9, 0.0)), {}, context=FakeContext())
    assert float(p.class_eps_scale.max()) * 0.9 <= 1.0 + 1e-6
    batch = p.batch_policy(torch.arange(C), 0.9, 0.1, None)
    assert float(batch.eps.max()) <= 1.0 + 1e-6


def test_cwr_smoothing_and_missing_classes():
    p = cwr(rho=0.25)
    first = with_class3(0.8, 0.2)
    p.update(0, make_counts([0.95] * C, first), {}, context=FakeContext())
    assert p.robust_smoothed.tolist() == pytest.approx(first)     # the first estimate as is
    second = with_class3(0.6, 0.6)
    n = [100] * C
    n[5] = 0                                                      # class 5: no validation images
    p.update(1, make_counts([0.95] * C, second, n=n), {}, context=FakeContext())
    expect = [0.25 * a + 0.75 * b for a, b in zip(first, second)]
    expect[5] = first[5]                                          # kept
    assert p.robust_smoothed.tolist() == pytest.approx(expect)
    assert p.num_updates == 2
    # missing class on the first estimate: the mean of the others
    q = cwr()
    q.update(0, make_counts([0.95] * C, first, n=n), {}, context=FakeContext())
    others = [v for k, v in enumerate(first) if k != 5]
    assert q.robust_smoothed[5].item() == pytest.approx(sum(others) / len(others))


def test_cwr_no_check_no_change():
    p = cwr()
    assert p.update(0, None, {}, context=FakeContext())["updated"] is False
    assert p.class_weight is None and p.class_eps_scale is None and p.robust_smoothed is None
    p.update(1, make_counts([0.95] * C, with_class3(0.8, 0.2)), {}, context=FakeContext())
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in p.state_dict().items()}
    log = p.update(2, None, {}, context=FakeContext())
    assert log["updated"] is False and log["class_weight"] == pytest.approx(before["class_weight"].tolist())
    for k, v in p.state_dict().items():
        assert torch.equal(v, before[k]) if isinstance(v, torch.Tensor) else v == before[k]


@pytest.mark.parametrize("mode", ["weight", "eps"])
def test_cwr_modes(mode):
    p = cwr(mode=mode)
    p.update(0, make_counts([0.95] * C, with_class3(0.8, 0.2)), {}, context=FakeContext())
    assert (p.class_weight is None) == (mode == "eps")
    assert (p.class_eps_scale is None) == (mode == "weight")
    assert p.class_beta is None


def test_cwr_batch_policy_indexes_by_label():
    p = cwr()
    p.update(0, make_counts([0.95] * C, with_class3(0.8, 0.2)), {}, context=FakeContext())
    y = torch.tensor([3, 0, 3, 7])
    b = p.batch_policy(y, 0.3, 0.01, None)
    assert torch.equal(b.weight, p.class_weight[y])
    assert torch.allclose(b.eps, 0.3 * p.class_eps_scale[y])
    assert torch.allclose(b.alpha, 0.01 * p.class_eps_scale[y])


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # as checkpoints are read


def test_cwr_state_dict_round_trip():
    p = cwr(rho=0.3)
    p.update(0, make_counts([0.95] * C, with_class3(0.8, 0.2)), {}, context=FakeContext())
    q = cwr(rho=0.3)
    q.load_state_dict(_roundtrip(p.state_dict()))
    for key in ("class_weight", "class_eps_scale", "robust_smoothed"):
        assert torch.equal(getattr(p, key), getattr(q, key)), key
    assert q.num_updates == 1
    nxt = make_counts([0.95] * C, with_class3(0.5, 0.7))
    assert p.update(1, nxt, {}, context=FakeContext()) == q.update(1, nxt, {}, context=FakeContext())
    with pytest.raises(ValueError, match="frl"):
        q.load_state_dict(frl().state_dict())


@pytest.mark.parametrize("options, match", [
    ({"foo": 1}, "no option"), ({"mode": "all"}, "mode"), ({"gamma": 0}, "gamma"),
    ({"gamma": "x"}, "gamma"), ({"rho": 1}, "rho"), ({"max_weight": 0.5}, "max_weight"),
    ({"min_eps_scale": 1.2}, "min_eps_scale"), ({"max_eps_scale": 0.9}, "max_eps_scale"),
    ({"kappa": -1}, "kappa")])
def test_cwr_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        cwr(**options)


# ---- frl: the formulas -------------------------------------------------------------------------

def test_frl_multipliers_grow_for_the_violating_class_only():
    p = frl()
    clean, robust = with_class3(0.95, 0.7), with_class3(0.8, 0.2)
    log = p.update(0, make_counts(clean, robust), {}, context=FakeContext())
    # errors: clean 0.05 / 0.30 (class 3), boundary 0.15 / 0.50; totals 0.075, 0.185
    g_nat3, g_bndy3 = 0.30 - 0.075 - 0.1, 0.50 - 0.185 - 0.1
    g_bndy0 = 0.15 - 0.185 - 0.1
    assert log["g_nat"][3] == pytest.approx(g_nat3) and log["g_bndy"][3] == pytest.approx(g_bndy3)
    assert p.phi_nat[3].item() == pytest.approx(0.05 * g_nat3)
    assert p.phi_bndy[3].item() == pytest.approx(0.1 * g_bndy3)
    for k in range(C):
        if k != 3:
            assert p.phi_nat[k].item() == 0.0 and p.phi_bndy[k].item() == 0.0   # clipped at 0
            assert p.phi_rm[k].item() == pytest.approx(0.1 * g_bndy0)
    assert p.phi_rm[3].item() == pytest.approx(0.1 * g_bndy3)
    # reweight: loss weight C c_nat, beta = 6 c_bndy / c_nat
    w, beta = p.class_weight.double(), p.class_beta.double()
    assert w[3].item() == pytest.approx(1 + (C - 1) * 0.05 * g_nat3, rel=1e-5)
    assert w[0].item() == pytest.approx(1 - 0.05 * g_nat3, rel=1e-5)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert beta[3] > 6.0 > beta[0]
    c_nat, c_bndy = lagrangian_coefficients(p.phi_nat), lagrangian_coefficients(p.phi_bndy)
    assert torch.allclose(beta, 6.0 * c_bndy / c_nat)
    # remargin: eps_k = clip(exp(2 phi_rm), 0.98, 3) eps
    s = p.class_eps_scale.double()
    assert s[3].item() == pytest.approx(math.exp(2 * 0.1 * g_bndy3), rel=1e-5) and s[3] > 1
    assert s[0].item() == pytest.approx(0.98)                 # exp(-0.027) = 0.973, clipped
    # a second update with the same violations: the multipliers keep growing
    p.update(1, make_counts(clean, robust), {}, context=FakeContext())
    assert p.phi_nat[3].item() == pytest.approx(2 * 0.05 * g_nat3)
    assert p.phi_bndy[3].item() == pytest.approx(2 * 0.1 * g_bndy3)
    assert p.class_eps_scale[3].item() == pytest.approx(math.exp(4 * 0.1 * g_bndy3), rel=1e-5)
    json.dumps(log, allow_nan=False)


def test_frl_boundary_violation_only_moves_beta_and_budget():
    p = frl(tau=0.05)
    p.update(0, make_counts([0.95] * C, with_class3(0.8, 0.3)), {}, context=FakeContext())
    assert torch.equal(p.phi_nat, torch.zeros(C, dtype=torch.float64))
    assert torch.allclose(p.class_weight, torch.ones(C))
    assert p.phi_bndy[3] > 0 and int((p.phi_bndy > 0).sum()) == 1
    assert p.class_beta[3] > 6.0 and bool((p.class_beta[torch.arange(C) != 3] < 6.0).all())
    assert p.class_eps_scale[3] > 1 and bool((p.class_eps_scale[torch.arange(C) != 3] < 1).all())


def test_frl_projection_bounds_the_multipliers():
    p = frl(alpha1=10.0, lim=0.5, tau=0.0)
    clean = [0.5, 0.6, 0.7, 0.2, 0.9, 0.95, 0.99, 0.9, 0.8, 0.85]
    for epoch in range(3):
        p.update(epoch, make_counts(clean, [c / 2 for c in clean]), {}, context=FakeContext())
        for phi in (p.phi_nat, p.phi_bndy):
            assert float(phi.min()) >= 0 and float(phi.sum()) <= 0.5 + 1e-9
        assert float(p.class_weight.min()) > 0 and float(p.class_beta.min()) > 0
    assert int(p.class_weight.argmax()) == 3                  # the largest clean error


def test_frl_weighted_trades_loss_is_the_lagrangian():
    """The TRADES loss with the policy's per-sample knobs is mean_i C (c_nat CE_i + beta c_bndy KL_i)."""
    p = frl(beta=2.0)
    p.update(0, make_counts(with_class3(0.95, 0.6), with_class3(0.8, 0.1)), {}, context=FakeContext())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, C))
    x = torch.rand(12, 1, 4, 4)
    y = torch.tensor([3, 0, 1, 3, 5, 3, 9, 2, 3, 4, 8, 7])
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    method = build_method("trades", steps=1, beta=2.0, ops_impl="eager")
    batch = p.batch_policy(y, 0.3, 0.01, method.beta)
    loss = method.loss(model, x, x_adv, y, batch).loss
    logits, logits_adv = model(x), model(x_adv)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    kl = (torch.softmax(logits, 1) * (torch.log_softmax(logits, 1) - torch.log_softmax(logits_adv, 1))).sum(1)
    c_nat = lagrangian_coefficients(p.phi_nat).float()[y]
    c_bndy = lagrangian_coefficients(p.phi_bndy).float()[y]
    expect = (C * (c_nat * ce + 2.0 * c_bndy * kl)).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["reweight", "remargin"])
def test_frl_modes(mode):
    p = frl(mode=mode)
    p.update(0, make_counts(with_class3(0.95, 0.7), with_class3(0.8, 0.2)), {}, context=FakeContext())
    assert (p.class_weight is None) == (p.class_beta is None) == (mode == "remargin")
    assert (p.class_eps_scale is None) == (mode == "reweight")
    if mode == "remargin":
        assert float(p.phi_nat.abs().sum()) == 0 and float(p.phi_bndy.abs().sum()) == 0
    else:
        assert float(p.phi_rm.abs().sum()) == 0


def test_frl_budget_cap_and_no_check():
    p = frl(eps=0.5, alpha2=50.0)
    p.update(0, make_counts(with_class3(0.95, 0.7), with_class3(0.8, 0.2)), {}, context=FakeContext())
    assert p.class_eps_scale[3].item() == pytest.approx(2.0)  # exp(...) >> 3, capped at 1 / eps
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in p.state_dict().items()}
    assert p.update(1, None, {}, context=FakeContext())["updated"] is False
    for k, v in p.state_dict().items():
        assert torch.equal(v, before[k]) if isinstance(v, torch.Tensor) else v == before[k]


def test_frl_state_dict_round_trip():
    p = frl(beta=3.0)
    counts = make_counts(with_class3(0.95, 0.7), with_class3(0.8, 0.2))
    p.update(0, counts, {}, context=FakeContext())
    q = frl(beta=3.0)
    q.load_state_dict(_roundtrip(p.state_dict()))
    for key in ("phi_nat", "phi_bndy", "phi_rm", "class_weight", "class_beta", "class_eps_scale"):
        assert torch.equal(getattr(p, key), getattr(q, key)), key
    assert q.num_updates == 1 and q.base_beta == 3.0
    assert p.update(1, counts, {}, context=FakeContext()) == q.update(1, counts, {}, context=FakeContext())
    bad = p.state_dict()
    bad["phi_rm"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="phi_rm"):
        frl().load_state_dict(bad)


def test_frl_needs_trades():
    p = frl()
    with pytest.raises(ConfigError, match="--method trades"):
        p.batch_policy(torch.tensor([0, 1]), 0.3, 0.01, None)       # pgd-at: no beta
    with pytest.raises(ConfigError, match="--method trades"):
        p.check_method("mart")
    with pytest.raises(ConfigError, match="--method trades"):  # built with its method: at start-up
        build_defense("frl", {}, method=build_method("mart"), num_classes=C, eps=0.3, alpha=0.01,
                      beta=None)
    p.check_method("trades")
    p.update(0, make_counts([0.9] * C, [0.5] * C), {}, context=FakeContext())


@pytest.mark.parametrize("options, match", [
    ({"foo": 1}, "no option"), ({"mode": "rwrm"}, "mode"), ({"lim": 1.0}, "lim"),
    ({"tau": 0.1, "tau1": 0.2}, "tau"), ({"alpha1": -0.1}, "alpha1"),
    ({"eps_scale_max": 0.5}, "eps_scale_max"), ({"tau2": "high"}, "tau2")])
def test_frl_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        frl(**options)


# ---- real MNIST through python -m cwr_fast.train ----------------------------------------------

def mnist_args(shared_data, out, *extra):
    return ["--dataset", "mnist", "--data-dir", str(shared_data), "--train-per-class", "50",
            "--val-per-class", "20", "--batch-size", "50", "--epochs", "2", "--eps", "0.1",
            "--alpha", "0.025", "--steps", "3", "--val-steps", "5", "--val-batch-size", "100",
            "--eps-warmup-epochs", "0", "--progress", "off", "--threads", "1", "--no-final-eval",
            "--no-plots", "--out", str(out), *extra]


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cwr_mnist_run_favours_the_worst_validation_class(shared_data, tmp_path):
    out = tmp_path / "cwr"
    assert train_cli.main(mnist_args(shared_data, out, "--defense", "cwr")) == 0
    records = read_metrics(out)
    assert len(records) == 2
    val = [r["val"]["robust_acc"] for r in records]
    for i, r in enumerate(records):
        d = r["defense"]
        assert d["updated"] and d["num_updates"] == i + 1 and d["attack"] == r["val"]["attack"]
        assert d["robust_acc"] == pytest.approx(val[i])           # the validation check's values
        expect = val[0] if i == 0 else [0.5 * a + 0.5 * b for a, b in zip(val[0], val[1])]
        smoothed = d["robust_smoothed"]
        assert smoothed == pytest.approx(expect, abs=1e-6)
        assert max(smoothed) > min(smoothed), "all classes equally robust: the check says nothing"
        worst, best = smoothed.index(min(smoothed)), smoothed.index(max(smoothed))
        w, s = d["class_weight"], d["class_eps_scale"]
        assert w[worst] == pytest.approx(max(w)) and w[worst] > 1 > w[best]
        assert s[worst] == pytest.approx(max(s)) and s[worst] > 1 > s[best]
        assert sum(w) / C == pytest.approx(1.0, abs=1e-5)
    state = load_ckpt(out / "checkpoints" / "last.pt")["defense"]
    assert state["name"] == "cwr" and state["num_updates"] == 2
    last = records[-1]["defense"]
    assert state["class_weight"].tolist() == pytest.approx(last["class_weight"], abs=1e-5)
    assert state["robust_smoothed"].tolist() == pytest.approx(last["robust_smoothed"], abs=1e-5)


def test_frl_mnist_run_raises_multipliers_of_the_violating_classes(shared_data, tmp_path):
    out = tmp_path / "frl"
    assert train_cli.main(mnist_args(shared_data, out, "--method", "trades", "--defense", "frl",
                                     "--defense-opt", "tau=0")) == 0
    records = read_metrics(out)
    phi_bndy_prev = [0.0] * C
    for i, r in enumerate(records):
        d, v = r["defense"], r["val"]
        assert d["updated"] and d["num_updates"] == i + 1
        # the errors come from the validation check: boundary = clean-correct but not robust
        n, cc, rob = v["n"], v["clean_correct"], v["robust"]
        assert d["clean_err"] == pytest.approx([1 - a / b for a, b in zip(cc, n)], abs=1e-6)
        assert d["bndy_err"] == pytest.approx([(a - c) / b for a, c, b in zip(cc, rob, n)], abs=1e-6)
        g = d["g_bndy"]
        assert max(g) > 0, "no class above the mean boundary error: the check says nothing"
        worst = g.index(max(g))                                    # worst boundary error
        for k in range(C):
            moved = d["phi_bndy"][k] - phi_bndy_prev[k]
            if g[k] > 0 and i == 0:
                assert d["phi_bndy"][k] > 0
            if g[k] < 0:
                assert moved <= 1e-9                               # never up for a class within tau
        assert d["class_beta"][worst] == pytest.approx(max(d["class_beta"]))
        assert d["class_eps_scale"][worst] == pytest.approx(max(d["class_eps_scale"]))
        assert d["class_eps_scale"][worst] > 1 and min(d["class_eps_scale"]) == pytest.approx(0.98)
        phi_bndy_prev = d["phi_bndy"]
    state = load_ckpt(out / "checkpoints" / "last.pt")["defense"]
    assert state["name"] == "frl" and state["num_updates"] == 2
    assert state["phi_bndy"].tolist() == pytest.approx(records[-1]["defense"]["phi_bndy"], abs=1e-6)
    assert state["class_beta"].tolist() == pytest.approx(records[-1]["defense"]["class_beta"], abs=1e-5)


@pytest.mark.parametrize("defense", [["--defense", "cwr"],
                                     ["--method", "trades", "--defense", "frl", "--defense-opt", "tau=0"]],
                         ids=["cwr", "frl"])
def test_resume_after_epoch_1_restores_the_defense_exactly(defense, shared_data, tmp_path, monkeypatch):
    from cwr_fast.training.trainer import Trainer

    ref, part, resumed = tmp_path / "ref", tmp_path / "epoch1.pt", tmp_path / "resumed"
    original = Trainer._end_epoch

    def end_epoch(self, seconds):  # keep the epoch-1 checkpoint of the reference run
        original(self, seconds)
        if self.epoch == 1:
            shutil.copy(self.run_dir / "checkpoints" / "last.pt", part)

    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch)
    assert train_cli.main(mnist_args(shared_data, ref, *defense)) == 0
    monkeypatch.setattr(Trainer, "_end_epoch", original)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(part, resumed / "checkpoints" / "last.pt")
    assert train_cli.main(["--resume", str(resumed / "checkpoints" / "last.pt"), "--progress", "off",
                           "--threads", "1", "--no-final-eval", "--no-plots"]) == 0
    a = load_ckpt(ref / "checkpoints" / "last.pt")["defense"]
    b = load_ckpt(resumed / "checkpoints" / "last.pt")["defense"]
    assert a.keys() == b.keys() and a["num_updates"] == 2
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k
    assert [r["defense"] for r in read_metrics(ref)] == [r["defense"] for r in read_metrics(resumed)]


@pytest.mark.parametrize("extra, match", [
    (["--defense", "cwr", "--defense-opt", "gamma=-1"], "gamma"),
    (["--defense", "cwr", "--defense-opt", "foo=1"], "no option"),
    (["--method", "trades", "--defense", "frl", "--defense-opt", "lim=2"], "lim"),
    (["--method", "pgd-at", "--defense", "frl"], "--method trades")],
    ids=["cwr-gamma", "cwr-unknown", "frl-lim", "frl-pgd-at"])
def test_bad_option_is_a_one_line_error_with_exit_2(extra, match, shared_data, tmp_path, capsys):
    assert train_cli.main(mnist_args(shared_data, tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert "cwr_fast.train: error:" in err and match in err and "Traceback" not in err
