"""Attacks on a small CNN trained on real MNIST (session fixture in conftest.py)."""

import sys

import pytest
import torch
import torchattacks
from torch import nn

from cwr_fast.attacks import (CW, FGSM, PGD, PGDL2, AttackSpecError, TemperaturePGD,
                              TorchattacksAutoAttack, choose_targets, parse_attack, parse_attacks)

EPS = 0.15


@pytest.fixture(scope="module")
def batch(mnist_eval):
    x, y = mnist_eval
    return x[:128], y[:128]


@torch.no_grad()
def predict(model, x):
    return model(x).argmax(dim=1)


def accuracy(model, x, y) -> float:
    return (predict(model, x) == y).float().mean().item()


@pytest.mark.parametrize("spec, norm, eps", [
    ("fgsm", "linf", EPS), ("pgd-5", "linf", EPS), ("tpgd-5:T=0.5", "linf", EPS),
    ("tpgd-5:T=5", "linf", EPS), ("cw-5", "linf", EPS), ("pgdl2-5", "l2", 2.0),
    ("pgd-3:restarts=2", "linf", EPS), ("pgd-5:rs=0", "linf", EPS),
])
def test_attacks_lower_accuracy_within_the_budget(spec, norm, eps, mnist_model, batch):
    x, y = batch
    clean = accuracy(mnist_model, x, y)
    assert clean > 0.85
    for track in ("final", "any"):
        atk = parse_attack(spec).build(mnist_model, eps=EPS, eps_l2=2.0, track=track)
        torch.manual_seed(0)
        result = atk.run(x, y)
        x_adv = result.x_adv
        assert x_adv.dtype == torch.float32 and x_adv.shape == x.shape
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-5).all(), f"{spec}: perturbation exceeds the budget"
        assert accuracy(mnist_model, x_adv, y) < clean - 0.2, f"{spec} ({track}) barely hurts"
        torch.testing.assert_close(result.pred, predict(mnist_model, x_adv), rtol=0, atol=0)
        torch.testing.assert_close(result.success, result.pred != y, rtol=0, atol=0)


def test_tpgd_with_t1_equals_pgd_exactly(mnist_model, batch):
    x, y = batch
    torch.manual_seed(3)
    a = PGD(mnist_model, eps=EPS, alpha=0.03, steps=5).run(x, y)
    torch.manual_seed(3)
    b = TemperaturePGD(mnist_model, eps=EPS, alpha=0.03, steps=5, temperature=1.0).run(x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.pred, b.pred)
    torch.manual_seed(3)
    c = TemperaturePGD(mnist_model, eps=EPS, alpha=0.03, steps=5, temperature=4.0).run(x, y)
    assert not torch.equal(a.x_adv, c.x_adv)  # T matters


def test_final_track_agrees_with_torchattacks_pgd(mnist_model, batch):
    x, y = batch
    torch.manual_seed(7)
    ours = PGD(mnist_model, eps=EPS, alpha=0.02, steps=10, random_start=True, track="final")(x, y)
    torch.manual_seed(7)
    theirs = torchattacks.PGD(mnist_model, eps=EPS, alpha=0.02, steps=10, random_start=True)(x, y)
    # same noise, same steps: equal up to a rare sign flip of a gradient entry that is ~0
    assert (ours != theirs).float().mean().item() < 1e-3
    assert (predict(mnist_model, ours) == predict(mnist_model, theirs)).float().mean().item() >= 0.99


def test_fgsm_and_l2_agree_with_torchattacks(mnist_model, batch):
    x, y = batch
    ours = FGSM(mnist_model, eps=EPS)(x, y)
    theirs = torchattacks.FGSM(mnist_model, eps=EPS)(x, y)
    assert (ours != theirs).float().mean().item() < 1e-3
    torch.manual_seed(1)
    ours = PGDL2(mnist_model, eps=2.0, alpha=0.4, steps=5)(x, y)
    torch.manual_seed(1)
    theirs = torchattacks.PGDL2(mnist_model, eps=2.0, alpha=0.4, steps=5)(x, y)
    # L2 steps use the gradient's values, not only its sign: rounding differences of the loss
    # gradient (sum vs mean) grow slightly over the steps
    assert (ours - theirs).abs().mean().item() < 1e-4
    assert (predict(mnist_model, ours) == predict(mnist_model, theirs)).float().mean().item() >= 0.98


def test_any_track_is_at_least_as_strong_and_skips_fooled_samples(mnist_model, batch):
    x, y = batch
    torch.manual_seed(0)
    final = PGD(mnist_model, eps=0.1, steps=8, track="final").run(x, y)
    torch.manual_seed(0)
    calls = []
    hook = mnist_model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        any_ = PGD(mnist_model, eps=0.1, steps=8, track="any").run(x, y)
    finally:
        hook.remove()
    # the same trajectories, so every sample fooled at the end was fooled at some iterate
    assert (any_.success | ~final.success).all()
    assert any_.success.sum() >= final.success.sum()
    assert calls[0] == x.shape[0] and calls[-1] < x.shape[0], "fooled samples must leave the batch"
    # an 'any' sample's x_adv is the iterate that fooled it
    assert (predict(mnist_model, any_.x_adv)[any_.success] != y[any_.success]).all()


def test_more_restarts_never_weaker(mnist_model, batch):
    x, y = batch
    robust = {}
    for restarts in (1, 3):
        torch.manual_seed(5)
        robust[restarts] = (~PGD(mnist_model, eps=0.1, steps=3, restarts=restarts).run(x, y).success)
    assert (robust[3] <= robust[1]).all()


def test_targeted_attacks_move_toward_the_target(mnist_model, batch):
    x, y = batch
    logits = mnist_model(x).detach()
    for mode in ("random", "least", "next"):
        targets = choose_targets(mode, logits, y)
        assert (targets != y).all()
    torch.manual_seed(0)
    result = PGD(mnist_model, eps=0.3, steps=10, target="next", track="final").run(x, y)
    hit = result.pred == (y + 1) % 10
    assert torch.equal(result.success, hit)
    assert hit.float().mean() > 0.5
    result = CW(mnist_model, eps=0.3, steps=10, target="next", track="any").run(x, y)
    assert result.success.float().mean() > 0.5


def test_per_sample_eps(mnist_model, batch):
    x, y = batch
    eps = torch.where(y % 2 == 0, 0.0, EPS)
    x_adv = PGD(mnist_model, eps=eps, steps=3)(x, y)
    delta = (x_adv - x).flatten(1).abs().amax(dim=1)
    assert (delta[y % 2 == 0] == 0).all()
    assert (delta <= eps + 1e-6).all()
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        PGD(mnist_model, eps=torch.full((3,), 0.1), steps=3)(x, y)


def test_model_flags_are_restored(mnist_model, batch):
    x, y = batch
    model = nn.Sequential(nn.Dropout(0.5), mnist_model)
    for p in model.parameters():
        p.grad = None
    model.train()
    model[1].eval()  # mixed modes must survive
    first = next(model.parameters())
    first.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    PGD(model, eps=0.1, steps=2)(x[:8], y[:8])
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(784, 10)

        def forward(self, x):
            raise RuntimeError("boom")

    broken = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(broken, eps=0.1, steps=2)(x[:4], y[:4])
    assert broken.training and broken.lin.weight.requires_grad
    first.requires_grad_(True)
    mnist_model.eval()


def test_attacks_work_under_no_grad_and_with_bf16(mnist_model, batch):
    x, y = batch
    with torch.no_grad():
        x_adv = PGD(mnist_model, eps=EPS, steps=3)(x, y)
    assert accuracy(mnist_model, x_adv, y) < accuracy(mnist_model, x, y) - 0.2
    result = PGD(mnist_model, eps=EPS, steps=3, amp="bf16", track="any").run(x, y)
    assert result.x_adv.dtype == torch.float32
    assert accuracy(mnist_model, result.x_adv, y) < accuracy(mnist_model, x, y) - 0.2


def test_empty_batch(mnist_model):
    result = PGD(mnist_model, eps=0.1).run(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))
    assert result.x_adv.shape == (0, 1, 28, 28) and result.pred.shape == (0,)


def test_bad_inputs_raise_clear_errors(mnist_model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(mnist_model)((x - 0.5) * 4, y)
    with pytest.raises(ValueError, match="int64"):
        PGD(mnist_model)(x, y.int())
    with pytest.raises(ValueError, match="int64"):
        PGD(mnist_model)(x, y[:-1])
    with pytest.raises(TypeError, match="floating-point"):
        PGD(mnist_model)((x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        PGD(mnist_model, eps=-0.1)
    with pytest.raises(ValueError, match="did you mean 8/255"):
        PGD(mnist_model, eps=8)
    with pytest.raises(ValueError, match="steps"):
        PGD(mnist_model, steps=0)
    with pytest.raises(ValueError, match="track"):
        PGD(mnist_model, track="first")
    with pytest.raises(ValueError, match="target"):
        PGD(mnist_model, target="most")
    with pytest.raises(ValueError, match="temperature"):
        TemperaturePGD(mnist_model, temperature=0)
    with pytest.raises(ValueError, match="amp"):
        PGD(mnist_model, amp="fp8")
    with pytest.raises(TypeError, match="nn.Module"):
        PGD(lambda t: t)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        PGD(mnist_model)(x, y)


def test_spec_parsing():
    specs = parse_attacks("fgsm, pgd-20, tpgd-20:T=2, cw-30:restarts=2, pgdl2-5:eps=1.5, aa, pgd:eps=8/255")
    assert [s.label for s in specs] == ["fgsm", "pgd-20", "tpgd-20:T=2", "cw-30:restarts=2",
                                        "pgdl2-5:eps=1.5", "aa", "pgd-10:eps=0.0313725"]
    assert specs[2].params == {"T": 2.0} and specs[3].steps == 30
    assert specs[6].params["eps"] == pytest.approx(8 / 255)
    assert parse_attack("TPGD-5:temperature=0.5").params == {"T": 0.5}
    for bad, message in [
        ("pgd-20,fgsm,pgd-20", "listed twice"), ("deepfool", "unknown attack 'deepfool'"),
        ("pgd-abc", "steps must be a positive integer"), ("pgd-0", "steps must be a positive integer"),
        ("fgsm-10", "takes no step count"), ("pgd-10:gamma=2", "unknown parameter 'gamma'"),
        ("cw-10:T=2", "unknown parameter 'T'"), ("pgd-10:eps=-0.1", "eps must be >= 0"),
        ("pgd-10:eps=x", "not a number"), ("tpgd-10:T=0", "T must be > 0"),
        ("pgd-10:restarts=0", "restarts must be >= 1"), ("pgd-10:target=most", "target must be"),
        ("aa:version=fast", "version must be"), ("pgd-10:T", "expected key=value"), ("", "no attacks"),
    ]:
        with pytest.raises(AttackSpecError, match=message):
            parse_attacks(bad)


def test_spec_build_errors(mnist_model):
    with pytest.raises(AttackSpecError, match=r"an L2 attack: give it its budget, e.g. .*:eps=0.5"):
        parse_attack("pgdl2-5").build(mnist_model, eps=0.3)
    with pytest.raises(AttackSpecError, match="did you mean"):
        parse_attack("pgd-5:eps=8").build(mnist_model, eps=0.3)
    attack = parse_attack("pgd-5:alpha=0.01:rs=0").build(mnist_model, eps=0.3, track="final")
    assert (attack.alpha, attack.random_start, attack.track, attack.eps) == (0.01, False, "final", 0.3)


def test_aa_ta_runs_torchattacks(mnist_model, batch):
    x, y = batch
    atk = parse_attack("aa-ta").build(mnist_model, eps=0.2, num_classes=10)
    assert isinstance(atk, TorchattacksAutoAttack) and atk.name == "aa-ta"
    result = atk.run(x[:6], y[:6])
    assert result.x_adv.shape == (6, 1, 28, 28)
    assert ((result.x_adv - x[:6]).abs().amax() <= 0.2 + 1e-5)
    torch.testing.assert_close(result.pred, predict(mnist_model, result.x_adv), rtol=0, atol=0)


def test_aa_ta_without_torchattacks_says_so(mnist_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(RuntimeError, match="pip install torchattacks"):
        TorchattacksAutoAttack(mnist_model, eps=0.3)


def test_channels_last_inputs_keep_their_layout_and_results(mnist_model, batch):
    from cwr_fast.attacks.attack import attack_mode
    from cwr_fast.runtime import is_channels_last, to_channels_last

    x, y = batch
    x3 = x.expand(-1, 3, -1, -1).contiguous()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), mnist_model)
    torch.manual_seed(0)
    plain = PGD(model, eps=0.1, steps=4, track="any").run(x3, y)
    with attack_mode(model, channels_last=True):
        assert is_channels_last(model[0].weight)
        torch.manual_seed(0)
        fast = PGD(model, eps=0.1, steps=4, track="any").run(to_channels_last(x3), y)
    assert not is_channels_last(model[0].weight)
    assert is_channels_last(fast.x_adv)
    assert (fast.pred != plain.pred).float().mean() <= 0.02
    assert (fast.x_adv != plain.x_adv).float().mean() <= 0.02


# ---- torchattacks' conveniences -------------------------------------------------------------------

def test_set_normalization_used_attacks_the_bare_network_in_pixel_space(mnist_model, batch):
    """A network that expects normalised inputs, told its normalisation, is attacked exactly as
    the same network with the normalisation inside (images and eps stay in [0, 1] pixel units)."""
    x, y = batch
    bare = mnist_model.net  # SmallCNN on (x - 0.1307) / 0.3081
    mean, std = mnist_model.mean.flatten().tolist(), mnist_model.std.flatten().tolist()
    torch.manual_seed(3)
    inside = PGD(mnist_model, eps=EPS, steps=3).run(x, y)
    torch.manual_seed(3)
    told = PGD(bare, eps=EPS, steps=3).set_normalization_used(mean, std).run(x, y)
    assert torch.equal(told.x_adv, inside.x_adv) and torch.equal(told.pred, inside.pred)
    assert float(told.x_adv.min()) >= 0 and float(told.x_adv.max()) <= 1
    torch.manual_seed(3)
    untold = PGD(bare, eps=EPS, steps=3).run(x, y)  # attacking the bare net on pixels differs
    assert not torch.equal(untold.x_adv, inside.x_adv)


def test_torchattacks_mode_switches_map_onto_target(mnist_model, batch):
    x, y = batch
    for switch, mode in (("set_mode_targeted_random", "random"),
                         ("set_mode_targeted_least_likely", "least")):
        torch.manual_seed(4)
        a = getattr(PGD(mnist_model, eps=EPS, steps=3), switch)().run(x, y)
        torch.manual_seed(4)
        b = PGD(mnist_model, eps=EPS, steps=3, target=mode).run(x, y)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success), switch
    atk = PGD(mnist_model, eps=EPS, steps=3, target="next").set_mode_default()
    assert atk.target is None
    with pytest.raises(ValueError, match="kth_min"):
        PGD(mnist_model).set_mode_targeted_least_likely(kth_min=2)
