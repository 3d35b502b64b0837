"""`aa` is the reference AutoAttack (Croce & Hein, 2020; pyautoattack is its code on the registry):
the same members, settings and schedules, and, run on the same adversarially trained models and
real images, the same robust accuracy overall and per class. Each member is also checked alone."""

from __future__ import annotations

import math

import pytest
import pyautoattack
import torch
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from cwr_fast.attacks import APGD, APGDT, FAB, FABT, AutoAttack, Square, attack_mode, parse_attack
from cwr_fast.attacks.apgd import apgd, checkpoints
from cwr_fast.attacks.autoattack import VERSIONS
from cwr_fast.attacks.fab import ALPHA_MAX, BETA, ETA
from cwr_fast.attacks.square import l2_bump, p_selection, window_side
from cwr_fast.classwise.stats import wilson_interval
from cwr_fast.runtime import to_channels_last

NORMS = {"linf": "Linf", "l2": "L2"}


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()


# ---- the protocol, as the reference declares it ------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("version", ["standard", "plus", "rand"])
def test_members_and_settings_are_the_references(version, norm):
    model = tiny_model()
    ref = pyautoattack.AutoAttack(model, norm=NORMS[norm], eps=0.1, version=version, device="cpu")
    ours = AutoAttack(model, eps=0.1, norm=norm, version=version)
    assert ours.member_names == ref.attacks_to_run
    for name, atk in ours.members.items():
        p = atk.params()
        assert (p["eps"], p["norm"]) == (0.1, norm)
        if name in ("apgd-ce", "apgd-dlr"):
            assert atk.loss == name.split("-")[1]
            assert (p["steps"], p["restarts"], p["eot"], p["rho"]) == \
                (ref.apgd.n_iter, ref.apgd.n_restarts, ref.apgd.eot_iter, ref.apgd.thr_decr)
        elif name == "apgd-t":
            t = ref.apgd_targeted
            assert (p["steps"], p["restarts"], p["targets"], p["rho"]) == \
                (t.n_iter, t.n_restarts, t.n_target_classes, t.thr_decr)
        elif name == "fab":
            assert (p["steps"], p["restarts"]) == (ref.fab.n_iter, ref.fab.n_restarts)
        elif name == "fab-t":  # the reference sets n_restarts = 1 when it runs fab-t
            assert (p["steps"], p["restarts"], p["targets"]) == (ref.fab.n_iter, 1, ref.fab.n_target_classes)
        elif name == "square":
            assert (p["queries"], p["p_init"], p["restarts"]) == \
                (ref.square.n_queries, ref.square.p_init, ref.square.n_restarts)
            # our Square assumes the reference's loss and schedule as AutoAttack runs it
            assert ref.square.loss == "margin" and not ref.square.rescale_schedule
        else:
            pytest.fail(f"unexpected member {name}")
    assert (ALPHA_MAX, ETA, BETA) == (ref.fab.alpha_max, ref.fab.eta, ref.fab.beta)


@pytest.mark.parametrize("steps", [1, 5, 10, 37, 100, 1000])
def test_apgd_checkpoints_are_the_references(steps):
    """The reference's counters (n_iter_2, size_decr, n_iter_min, counter3) replayed."""
    ref = APGDAttack(None, n_iter=steps, eps=0.1)
    k, counter, expected = ref.n_iter_2, 0, {}
    for i in range(steps):
        counter += 1
        if counter == k:
            expected[i] = k
            k, counter = max(k - ref.size_decr, ref.n_iter_min), 0
    assert checkpoints(steps) == expected


def test_square_schedule_and_window_are_the_references():
    ref = SquareAttack(None, eps=0.1, norm="L2", resc_schedule=False)
    assert [p_selection(0.8, i) for i in range(10001)] == [ref.p_selection(i) for i in range(10001)]
    for h, w, c in [(28, 28, 1), (32, 32, 3), (96, 96, 3), (224, 224, 3)]:
        for i in (0, 11, 300, 4500, 9000):
            p = ref.p_selection(i)
            linf = min(max(int(round(math.sqrt(p * h * w * c / c))), 1), h, w)
            l2 = max(int(round(math.sqrt(p * h * w * c / c))), 3)
            l2 = min(l2 + (l2 % 2 == 0), h, w)
            assert window_side(p, h, w, "linf") == linf and window_side(p, h, w, "l2") == l2


@pytest.mark.parametrize("side", [3, 5, 7, 11, 15, 21, 27])
def test_square_l2_bump_is_the_references(side):
    ref = SquareAttack(None, eps=0.1, norm="L2", device="cpu")
    theirs = ref.eta(side).double()
    ours = l2_bump(side)
    assert torch.allclose(ours, theirs, atol=1e-6) or torch.allclose(ours.t(), theirs, atol=1e-6)


# ---- each member against the reference's, on real data ------------------------------------------

def _clean_correct(f):
    with torch.no_grad():
        ok = f.model(f.x).argmax(dim=1) == f.y
    return f.x[ok], f.y[ok]


@pytest.mark.parametrize("loss", ["dlr", "dlr-targeted", "ce"])
def test_apgd_follows_the_references_trajectory(mnist_robust, loss):
    """Same seed, same start, same schedule: the same samples fooled, and the same best loss of
    the robust ones (DLR: to 1e-4 everywhere; CE: our fused CE rounds differently from torch's, and
    a rounding that flips a gradient sign makes a trajectory drift, so the median)."""
    f = mnist_robust
    x, y = _clean_correct(f)
    model = f.model
    eps = 0.25
    if loss == "dlr-targeted":
        ref = APGDAttack_targeted(model, n_iter=100, eps=eps, norm="Linf", device="cpu")
        with torch.no_grad():
            target = model(x).argsort(dim=1, descending=True)[:, 1]
        ref.y_target = target
    else:
        ref = APGDAttack(model, n_iter=100, eps=eps, norm="Linf", device="cpu")
        ref.loss, target = loss, None
    ref.init_hyperparam(x)
    torch.manual_seed(0)
    _, robust_ref, best_ref, _ = ref.attack_single_run(x, y)
    with attack_mode(model):
        torch.manual_seed(0)
        ours, best = apgd(model, x, y, eps=eps, loss="ce" if loss == "ce" else "dlr", target=target,
                          return_best_loss=True)
    robust = ~ours.success
    assert 0 < int(robust.sum()) < len(y), "the test needs fooled and robust samples"
    assert torch.equal(robust, robust_ref), f"{int((robust != robust_ref).sum())} samples differ"
    rel = (best[robust] - best_ref[robust]).abs() / (1e-6 + best_ref[robust].abs())
    if loss == "ce":
        assert rel.median().item() < 1e-4, f"median relative difference {rel.median().item():.3g}"
    else:
        assert rel.max().item() < 1e-4, f"max relative difference {rel.max().item():.3g}"


def _robust_counts(robust: torch.Tensor, y: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    return torch.bincount(y[robust], minlength=num_classes)


def assert_agrees(ours_robust, ref_robust, y, what, overall_points=0.5):
    """Overall robust accuracy within `overall_points` points; every class of ours within the 95%
    Wilson interval of the reference's."""
    n = torch.bincount(y, minlength=10)
    ours, ref = _robust_counts(ours_robust, y), _robust_counts(ref_robust, y)
    gap = 100 * abs(int(ours.sum()) - int(ref.sum())) / len(y)
    assert gap <= overall_points, f"{what}: overall robust {ours.sum()} vs reference {ref.sum()} of {len(y)}"
    low, high = wilson_interval(ref.numpy(), n.numpy())
    acc = ours.double() / n.double()
    bad = [(c, int(ours[c]), int(ref[c]), int(n[c])) for c in range(10)
           if not low[c] - 1e-12 <= acc[c].item() <= high[c] + 1e-12]
    assert not bad, f"{what}: classes outside the reference's 95% interval (class, ours, ref, n): {bad}"


@pytest.mark.parametrize("member", ["apgd-ce", "fab-t"])
def test_member_alone_matches_the_references(mnist_robust, member):
    f = mnist_robust
    x, y = _clean_correct(f)
    if member == "apgd-ce":
        ref = APGDAttack(f.model, n_iter=100, eps=f.eps, norm="Linf", seed=0, device="cpu")
        ref.loss = "ce"
        ours_attack = APGD(f.model, eps=f.eps)
    else:
        ref = FABAttack_PT(f.model, n_restarts=1, n_iter=100, eps=f.eps, seed=0, norm="Linf",
                           device="cpu", targeted=True, n_target_classes=3)
        ours_attack = FABT(f.model, eps=f.eps, targets=3)
    x_ref = ref.perturb(x, y)
    with torch.no_grad():
        ref_robust = f.model(x_ref).argmax(dim=1) == y
    torch.manual_seed(0)
    with attack_mode(f.model, channels_last=True):
        result = ours_attack.run(to_channels_last(x), y)
    assert_agrees(~result.success, ref_robust, y, member)
    assert ((result.x_adv - x).abs().amax() <= f.eps + 1e-6)


def test_square_alone_matches_the_references(mnist_robust):
    """Fewer queries (500) than in AutoAttack, so more images stay on the fence: a random search,
    compared in distribution. Across seeds each implementation's count of robust images varies by
    about 4 of these ~200 (measured), so the overall bound is 5 points (10 images)."""
    f = mnist_robust
    x, y = _clean_correct(f)
    eps = 0.3
    ref = SquareAttack(f.model, p_init=0.8, n_queries=500, eps=eps, norm="Linf", n_restarts=1, seed=0,
                       device="cpu", resc_schedule=False)
    with torch.no_grad():
        ref_robust = f.model(ref.perturb(x, y)).argmax(dim=1) == y
    torch.manual_seed(0)
    with attack_mode(f.model):
        result = Square(f.model, eps=eps, queries=500).run(x, y)
    assert int((~ref_robust).sum()) > 0, "the test needs Square to fool some images"
    assert_agrees(~result.success, ref_robust, y, "square", overall_points=5.0)
    assert ((result.x_adv - x).abs().amax() <= eps + 1e-6)


# ---- the whole of AutoAttack, in the class-wise evaluator -----------------------------------------

@pytest.mark.parametrize("fixture", ["mnist_robust", "cifar_robust"])
def test_aa_matches_run_standard_evaluation(fixture, request):
    """The CI version of bench/bench_autoattack.py: 200 class-balanced real test images; ours in
    the evaluator (channels-last, fooled images leaving the batch) against the reference's
    run_standard_evaluation, both seeded with 0 per member as the reference does."""
    from cwr_fast.classwise.engine import evaluate_classwise

    f = request.getfixturevalue(fixture)
    ref = pyautoattack.AutoAttack(f.model, norm="Linf", eps=f.eps, version="standard", seed=0, device="cpu")
    _, y_adv = ref.run_standard_evaluation(f.x, f.y, batch_size=len(f.y))
    ref_robust = y_adv == f.y
    attack = parse_attack("aa:seed=0").build(f.model, eps=f.eps)
    counts = evaluate_classwise(f.model, [(f.x, f.y)], 10, {"aa": attack})
    robust = counts.robust("aa")
    n = torch.bincount(f.y, minlength=10)
    assert 0 < int(ref_robust.sum()) < len(f.y), "the test needs fooled and robust images"
    # per class, as counts: ours within the reference's interval, overall within 0.5 points
    low, high = wilson_interval(_robust_counts(ref_robust, f.y).numpy(), n.numpy())
    acc = robust.double() / n.double()
    outside = [c for c in range(10) if not low[c] - 1e-12 <= acc[c].item() <= high[c] + 1e-12]
    assert not outside, f"{f.name}: classes {outside} outside the reference's 95% interval"
    gap = 100 * abs(int(robust.sum()) - int(ref_robust.sum())) / len(f.y)
    assert gap <= 0.5, f"{f.name}: {int(robust.sum())} robust vs the reference's {int(ref_robust.sum())}"
    # the breakdown adds up: clean errors + images each member fooled first + robust = n
    broken = counts.member_broken["aa"]
    assert counts.members["aa"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    torch.testing.assert_close(broken.sum(dim=0) + robust, counts.clean_correct)
    assert int(broken[0].sum()) > 0, "APGD-CE, the first member, fooled nothing"


# ---- the API ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, cls, settings", [
    ("aa", AutoAttack, {"version": "standard", "norm": "linf"}),
    ("aa:version=plus:norm=l2:eps=0.5", AutoAttack, {"version": "plus", "norm": "l2", "eps": 0.5}),
    ("apgd-ce", APGD, {"steps": 100, "restarts": 1}),
    ("apgd-dlr-20:restarts=3:rho=0.5", APGD, {"steps": 20, "restarts": 3, "rho": 0.5}),
    ("apgd-t:targets=3", APGDT, {"steps": 100, "targets": 3}),
    ("fab-50:restarts=2", FAB, {"steps": 50, "restarts": 2}),
    ("fab-t-10:targets=2", FABT, {"steps": 10, "targets": 2}),
    ("square-300:p=0.5", Square, {"queries": 300, "p_init": 0.5}),
])
def test_specs_build_the_members(spec, cls, settings):
    atk = parse_attack(spec).build(tiny_model(), eps=0.1, eps_l2=1.0)
    assert isinstance(atk, cls)
    params = atk.params()
    assert all(params[k] == v for k, v in settings.items()), (params, settings)


@pytest.mark.parametrize("bad, message", [
    ("apgd-ce:rho=0", "rho must lie in"), ("apgd-t:targets=0", "targets must be >= 1"),
    ("square:p=2", "p must lie in"), ("apgd-ce:eot=0", "eot must be >= 1"),
    ("aa-ta-10", "takes no step count"), ("fab:targets=3", "unknown parameter 'targets'"),
    ("aa:version=fast", "version must be"),
])
def test_bad_member_specs(bad, message):
    from cwr_fast.attacks import AttackSpecError

    with pytest.raises(AttackSpecError, match=message):
        parse_attack(bad)


def test_bad_arguments_are_clear():
    model = tiny_model()
    for make, message in [
        (lambda: AutoAttack(model, version="fast"), "version must be one of"),
        (lambda: AutoAttack(model, norm="l1"), "norm must be one of"),
        (lambda: AutoAttack(model, eps=8), "exceeds 1"),
        (lambda: APGD(model, loss="margin"), "loss must be one of"),
        (lambda: APGD(model, steps=0), "steps must be an int >= 1"),
        (lambda: APGD(model, eps=torch.full((3,), 0.1)), "one eps"),
        (lambda: FABT(model, targets=0), "targets must be an int >= 1"),
        (lambda: Square(model, p_init=0), "p_init must lie in"),
        (lambda: Square(model, eps=float("inf"), norm="l2"), "finite"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            make()
    with pytest.raises(ValueError, match="at least 4 classes"):
        four = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
        APGDT(four, eps=0.1, steps=2).run(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 5 x 5"):
        small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10)).eval()
        Square(small, eps=0.5, norm="l2", queries=2).run(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("version", ["standard", "plus", "rand"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_every_version_and_norm_runs_within_the_budget(mnist_robust, version, norm, eps):
    """A few images, the members shortened: each stays in the ball and in [0, 1], a reported
    prediction is the model's at x_adv, and broken_by names the member that fooled it."""
    f = mnist_robust
    x, y = _clean_correct(f)
    x, y = x[:12], y[:12]
    atk = AutoAttack(f.model, eps=eps, norm=norm, version=version, seed=1)
    for member in atk.members.values():
        for key in ("steps", "queries"):
            if hasattr(member, key):
                setattr(member, key, 3)
        if hasattr(member, "eot"):
            member.eot = 2
    result = atk.run(x, y)
    delta = (result.x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(f.model(result.x_adv).argmax(dim=1), result.pred)
    assert torch.equal(result.success, result.pred != y)
    assert torch.equal(result.broken_by >= 0, result.success)
    assert int(result.broken_by.max()) < len(atk.members)
    # a seed makes a call reproducible and leaves the caller's RNG alone
    state = torch.random.get_rng_state()
    again = atk.run(x, y)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again.broken_by, result.broken_by)


def test_torchattacks_variant_gets_input_gradients_in_the_default_memory_format():
    """torchattacks' FAB `.view`s input gradients, which fails on the channels_last gradients of a
    channels_last model (seen on the CIFAR-10 subset's trained small CNN); aa-ta hands it the
    model through a wrapper that makes them contiguous."""
    from torch import nn

    from cwr_fast.attacks.torchattacks_aa import _ContiguousGradients

    class ChannelsLastView(nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)

    torch.manual_seed(0)
    model = nn.Sequential(ChannelsLastView(), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    raw, = torch.autograd.grad(model(x).sum(), x)
    assert not raw.is_contiguous()
    wrapped, = torch.autograd.grad(_ContiguousGradients(model)(x).sum(), x)
    assert wrapped.is_contiguous() and torch.equal(wrapped, raw)
    wrapped.view(2, 3, -1)  # what FAB does


# ---- version rand, on a randomised model ---------------------------------------------------------

class GaussianInput(torch.nn.Module):
    """A randomised defense: Gaussian noise of std sigma added to the input on every forward pass
    (drawn from the global RNG, as the attacks' noise is)."""

    def __init__(self, model: torch.nn.Module, sigma: float = 0.3):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


RAND_SEEDS, RAND_STEPS, RAND_EOT = range(5), 20, 5


def test_rand_matches_the_references_robust_count(mnist_model, mnist_eval):
    """The issue's setting (small MNIST CNN, Gaussian input noise sigma 0.3, eps 0.1), on 100 real
    test images, with APGD shortened to 20 steps and 5 EOT passes on both sides (the full 100 x 20
    on 60 images gave, seeds 0-7: reference 33, 40, 37, 33, 32, 31, 29, 34 robust, mean 33.6; ours
    33, 31, 32, 34, 33, 32, 35, 33, mean 32.9; before the fix, 13).
    Each side runs seeds 0-4: on a randomised model the count is a random variable, so the claim is
    that both sample the same distribution. Bound: under that null, the difference of two means of
    k runs each has standard deviation sd * sqrt(2 / k), sd the reference's run-to-run spread
    (estimated here from its k runs); the means must lie within 3 of those, and at least 4 images
    apart may always pass (an sd from 5 runs can come out low by chance: 1.6 here against 3.7 over
    10 seeds in another build of this model). Measured: reference 61, 62, 59, 61, 58 robust of
    100, ours 60, 59, 57, 61, 58. The rule this replaced (the first noisy misclassification
    counts, no fresh pass) left ~27 robust: over 30 images off."""
    from cwr_fast.classwise.engine import evaluate_classwise

    model = GaussianInput(mnist_model)
    x, y = mnist_eval[0][:100], mnist_eval[1][:100]
    ref_robust, ours_robust = [], []
    for seed in RAND_SEEDS:
        ref = pyautoattack.AutoAttack(model, norm="Linf", eps=0.1, version="rand", seed=seed, device="cpu")
        ref.apgd = APGDAttack(model, n_iter=RAND_STEPS, eot_iter=RAND_EOT, eps=0.1, norm="Linf",
                              seed=seed, device="cpu", logger=ref.logger)  # its schedule from n_iter
        torch.manual_seed(seed)
        _, y_adv = ref.run_standard_evaluation(x, y, batch_size=len(y))
        ref_robust.append(int((y_adv == y).sum()))
        attack = parse_attack(f"aa:version=rand:seed={seed}").build(model, eps=0.1)
        for member in attack.members.values():
            member.steps, member.eot = RAND_STEPS, RAND_EOT
        counts = evaluate_classwise(model, [(x, y)], 10, {"aa": attack}, seed=seed)
        ours_robust.append(int(counts.robust("aa").sum()))
    k = len(RAND_SEEDS)
    ref_mean, ours_mean = sum(ref_robust) / k, sum(ours_robust) / k
    sd = math.sqrt(sum((r - ref_mean) ** 2 for r in ref_robust) / (k - 1))
    bound = max(3 * sd * math.sqrt(2 / k), 4.0)
    assert 0 < ref_mean < len(y), "the test needs fooled and robust images"
    assert abs(ours_mean - ref_mean) <= bound, \
        f"robust of 100, per seed: ours {ours_robust}, reference {ref_robust} (bound {bound:.1f})"


class _ModeRecorder(torch.nn.Module):
    """Records the train/eval flag of each forward pass; dropout keeps the model random in train."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(3 * 8 * 8, 10))
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.net(x)


@pytest.mark.parametrize("version", ["rand", "standard"])
def test_rand_leaves_the_models_mode_the_others_use_eval(version):
    """rand attacks the model in the mode its user set (dropout stays random), standard in eval
    mode; in the evaluator too (its clean pass included); the flags are restored afterwards."""
    from cwr_fast.classwise.engine import evaluate_classwise

    model = _ModeRecorder().train()
    attack = AutoAttack(model, eps=0.1, version=version, seed=0)
    for member in attack.members.values():
        for key in ("steps", "queries"):
            if hasattr(member, key):
                setattr(member, key, 2)
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6)
    attack.run(x, y)
    assert model.seen and set(model.seen) == {version == "rand"}
    model.seen.clear()
    evaluate_classwise(model, [(x, y)], 10, {"aa": attack})
    assert model.seen and set(model.seen) == {version == "rand"}
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_apgd_track_last_fools_what_track_first_fools(mnist_model, mnist_eval):
    """On a deterministic model the reference's rule for randomised ones (every sample runs all the
    steps, the last fooling iterate is kept) fools the same images as the first-iterate rule, and
    its x_adv fools the model there."""
    x, y = mnist_eval[0][:64], mnist_eval[1][:64]
    results = {}
    with attack_mode(mnist_model):
        for track in ("first", "last"):
            torch.manual_seed(0)
            results[track] = apgd(mnist_model, x, y, eps=0.1, steps=10, loss="dlr", track=track)
        with torch.no_grad():
            pred = mnist_model(results["last"].x_adv).argmax(dim=1)
    first, last = results["first"], results["last"]
    assert 0 < int(first.success.sum()) < len(y), "the test needs fooled and robust images"
    assert torch.equal(first.success, last.success)
    assert torch.equal(pred[last.success], last.pred[last.success])
    assert (pred[last.success] != y[last.success]).all()
    with pytest.raises(ValueError, match="track must be one of"):
        apgd(mnist_model, x, y, eps=0.1, track="best")


# ---- random starts drawn as the reference draws them (on the CPU, then copied) -------------------

@pytest.mark.parametrize("draw, reference", [("uniform_like", torch.rand), ("normal_like", torch.randn)])
def test_starts_are_drawn_on_the_cpu_whatever_the_device(draw, reference):
    """The same seed gives the reference's draw, torch.rand(x.shape) from the CPU generator, for an
    image on any device: on a 'meta' image (a device without data) the CPU generator advances
    exactly as for the CPU draw, so the values, copied over, are the CPU's."""
    from cwr_fast.attacks import threat as noise

    x = torch.zeros(3, 1, 5, 5)
    torch.manual_seed(7)
    expected = reference(x.shape)
    after_cpu = torch.random.get_rng_state()
    torch.manual_seed(7)
    assert torch.equal(getattr(noise, draw)(x), expected)
    torch.manual_seed(7)
    on_meta = getattr(noise, draw)(x.to("meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == x.shape
    assert torch.equal(torch.random.get_rng_state(), after_cpu)
    torch.manual_seed(7)
    channels_last = getattr(noise, draw)(to_channels_last(torch.zeros(2, 3, 4, 4)))
    torch.manual_seed(7)
    assert channels_last.is_contiguous() and torch.equal(channels_last, reference((2, 3, 4, 4)))


@pytest.mark.cuda
@pytest.mark.parametrize("draw", ["uniform_like", "normal_like"])
def test_starts_on_cuda_equal_the_cpus(draw):
    from cwr_fast.attacks import threat as noise

    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(0)
    on_cpu = getattr(noise, draw)(x)
    torch.manual_seed(0)
    on_cuda = getattr(noise, draw)(x.cuda())
    assert on_cuda.is_cuda and torch.equal(on_cuda.cpu(), on_cpu)


@pytest.mark.parametrize("norm, draw", [("linf", torch.rand), ("l2", torch.randn)])
def test_apgds_start_comes_from_the_cpu_generator_on_any_device(norm, draw):
    """APGD's start for an image on another device ('meta': a device without data) advances the CPU
    generator exactly as the reference's torch.rand(x.shape) / torch.randn(x.shape) does, so the
    start is the CPU's, copied over; on the CPU it is the reference's draw, as before."""
    from cwr_fast.attacks.apgd import random_start

    x = torch.rand(3, 1, 5, 5)
    torch.manual_seed(7)
    u = draw(x.shape)
    after = torch.random.get_rng_state()
    torch.manual_seed(7)
    assert random_start(x.to("meta"), 0.1, norm).device.type == "meta"
    assert torch.equal(torch.random.get_rng_state(), after)
    torch.manual_seed(7)
    u = 2 * u - 1 if norm == "linf" else u
    flat = u.flatten(1)
    size = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
    expected = torch.clamp(x + 0.1 * u / (size.view(-1, 1, 1, 1) + 1e-12), 0.0, 1.0)
    torch.testing.assert_close(random_start(x, 0.1, norm), expected, rtol=0, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgds_start_on_cuda_equals_the_cpus(norm):
    """aa:seed=0 starts from the same points on a GPU (L2: up to the rounding of the norm there)."""
    from cwr_fast.attacks.apgd import random_start

    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(0)
    on_cpu = random_start(x, 8 / 255, norm)
    torch.manual_seed(0)
    on_cuda = random_start(x.cuda(), 8 / 255, norm)
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=1e-6)


def test_set_normalization_used_reaches_every_member():
    """The members attack the model AutoAttack holds when they run: after set_normalization_used,
    the normalised one (they were built in the constructor before, on the raw model, so AutoAttack's
    own clean pass and its members saw different models)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    atk = AutoAttack(model, eps=0.1)
    before = atk.members["apgd-ce"].model
    atk.set_normalization_used([0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    assert before is model
    assert all(member.model is atk.model and member.model is not model for member in atk.members.values())


@pytest.mark.parametrize("version, needed", [("standard", 4), ("plus", 4), ("rand", 3)])
def test_min_classes_is_known_before_the_members_are_built(version, needed):
    atk = AutoAttack(torch.nn.Linear(3, 10), eps=0.1, version=version)
    assert atk.min_classes == needed and not atk._members
    assert needed == max(member.min_classes for member in atk.members.values())
