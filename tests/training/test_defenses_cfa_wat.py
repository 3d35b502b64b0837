"""The CFA (Wei et al., CVPR 2023) and WAT (Li and Liu, AAAI 2023) defenses: their update rules on
synthetic inputs, state round trips, and short real-MNIST runs through `python -m cwr_fast.train`
(in-process) including an exact resume of CFA+FAWA from a mid-run step checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from cwr_fast import train as train_cli
from cwr_fast.defenses import DEFENSES, build_defense
from cwr_fast.models import build_model
from cwr_fast.training.trainer import Trainer

from helpers.train import TINY, assert_state_dicts_identical, load_ckpt

C, EPS, ALPHA, BETA = 10, 0.3, 0.1, 6.0


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _counts(acc):
    n = torch.full((C,), 50, dtype=torch.int64)
    return {"n": n, "correct": (torch.tensor(acc, dtype=torch.float64) * 50).round().long()}


ACC = [0.8, 0.9, 0.7, 0.1, 0.8, 0.6, 0.9, 0.5, 0.4, 0.7]   # class 3 is the vulnerable one


# ---- CFA: CCM / CCR ----------------------------------------------------------------------------

def test_registered():
    assert {"cfa", "wat"} <= set(DEFENSES)


def test_cfa_eps_and_beta_follow_the_formula():
    policy = build_defense("cfa", {"begin": 0, "lambda1": 0.3, "lambda2": 0.6},
                           num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)
    log = policy.update(0, None, _counts(ACC))
    t = torch.tensor(ACC, dtype=torch.float64)
    assert torch.allclose(policy.class_eps_scale.double(), 0.3 + t, atol=1e-6)
    assert log["eps"] == pytest.approx([(0.3 + a) * EPS for a in ACC], abs=1e-6)
    beta_k = (0.6 + t) * BETA
    assert torch.allclose(policy.class_beta.double(), beta_k, atol=1e-5)
    assert torch.allclose(policy.class_weight.double(), (1 + BETA) / (1 + beta_k), atol=1e-6)
    # the vulnerable class gets the smallest margin and regulariser, the largest CE share
    assert int(policy.class_eps_scale.argmin()) == 3 and int(policy.class_beta.argmin()) == 3
    assert int(policy.class_weight.argmax()) == 3
    # per-sample knobs: eps_y = (lambda1 + t_y) eps, alpha unscaled (authors' code), beta_y
    y = torch.tensor([3, 1])
    batch = policy.batch_policy(y, EPS, ALPHA, BETA)
    assert batch.eps.tolist() == pytest.approx([(0.3 + 0.1) * EPS, (0.3 + 0.9) * EPS], abs=1e-6)
    assert batch.alpha == ALPHA
    assert batch.beta.tolist() == pytest.approx([(0.6 + 0.1) * BETA, (0.6 + 0.9) * BETA], abs=1e-5)
    scaled = build_defense("cfa", {"begin": 0, "scale_alpha": True}, num_classes=C, eps=EPS,
                           alpha=ALPHA, beta=BETA)
    scaled.update(0, None, _counts(ACC))
    assert scaled.batch_policy(y, EPS, ALPHA, BETA).alpha.tolist() == \
        pytest.approx([0.6 * ALPHA, 1.4 * ALPHA], abs=1e-6)


def test_cfa_begin_momentum_and_switches():
    policy = build_defense("cfa", {"begin": 2, "momentum": 0.5}, num_classes=C, eps=EPS,
                           alpha=ALPHA, beta=BETA)
    policy.update(0, None, _counts([0.2] * C))          # next epoch 1 < begin: uniform
    assert policy.class_eps_scale is None and policy.class_beta is None
    policy.update(1, None, _counts(ACC))                 # next epoch 2: calibrated, smoothed t
    t = 0.5 * 0.2 + 0.5 * torch.tensor(ACC, dtype=torch.float64)
    assert torch.allclose(policy.class_eps_scale.double(), 0.5 + t, atol=1e-6)
    off = build_defense("cfa", {"begin": 0, "ccm": False, "ccr": False, "fawa": False},
                        num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)
    off.update(0, None, _counts(ACC))
    assert off.class_eps_scale is None and off.class_beta is None and off.class_weight is None
    assert off.averaged_model(torch.nn.Linear(2, 2)) is None
    no_beta = build_defense("cfa", {"begin": 0}, num_classes=C, eps=EPS, alpha=ALPHA, beta=None)
    no_beta.update(0, None, _counts(ACC))                # PGD-AT: CCR is a no-op
    assert no_beta.class_beta is None and no_beta.class_eps_scale is not None


# ---- CFA: FAWA --------------------------------------------------------------------------------

def _net(seed):
    torch.manual_seed(seed)
    return build_model("small_cnn", 10, (0.1307,), (0.3081,), 1)


def test_fawa_absorbs_only_above_the_threshold():
    policy = build_defense("cfa", {"threshold": 0.3, "decay": 0.8}, num_classes=C, eps=EPS,
                           alpha=ALPHA, beta=BETA)
    w0, w1, w2, w3 = (_net(s) for s in range(4))
    avg = policy.averaged_model(w0)
    assert avg is not w0 and not any(p.requires_grad for p in avg.parameters())
    key = [k for k, v in avg.state_dict().items() if v.is_floating_point()][-1]  # last layer
    sd = lambda m: m.state_dict()[key].clone()  # noqa: E731

    # below the threshold before any absorption: mirrors the training weights, absorbs nothing
    assert policy.absorb(w1, 0.29) is False and policy.fawa_count == 0
    assert torch.equal(sd(avg), sd(w1))
    # first absorption: the average starts at these weights
    assert policy.absorb(w2, 0.3) is True and policy.fawa_count == 1
    assert torch.equal(sd(avg), sd(w2))
    # below: unchanged although the training weights moved
    assert policy.absorb(w3, 0.1) is False and policy.fawa_count == 1
    assert torch.equal(sd(avg), sd(w2))
    assert policy.absorb(w3, None) is False and policy.absorb(w3, float("nan")) is False
    # above: decay * avg + (1 - decay) * new
    assert policy.absorb(w3, 0.9) is True and policy.fawa_count == 2
    assert torch.allclose(sd(avg), 0.8 * sd(w2) + 0.2 * sd(w3), atol=1e-6)
    # integer buffers are copied, not averaged
    for k, v in avg.state_dict().items():
        if not v.is_floating_point():
            assert torch.equal(v, w3.state_dict()[k])


def test_cfa_state_dict_round_trip():
    opts = {"begin": 0, "momentum": 0.3, "threshold": 0.2}
    a = build_defense("cfa", opts, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)
    a.averaged_model(_net(0))
    a.update(0, None, _counts(ACC))
    a.absorb(_net(1), 0.5)
    a.absorb(_net(2), 0.5)
    state = a.state_dict()
    b = build_defense("cfa", opts, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)
    b.averaged_model(_net(7))
    b.load_state_dict(state)
    for name in ("class_eps_scale", "class_beta", "class_weight", "train_robust"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert b.fawa_count == 2
    assert_state_dicts_identical(a.avg_model.state_dict(), b.avg_model.state_dict(), "fawa")
    # the same next step from both
    a.update(1, None, _counts(ACC[::-1]))
    b.update(1, None, _counts(ACC[::-1]))
    assert torch.equal(a.class_eps_scale, b.class_eps_scale)
    # loading before the module exists (resume order) also works
    c = build_defense("cfa", opts, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)
    c.load_state_dict(state)
    c.averaged_model(_net(9))
    assert_state_dicts_identical(state["avg_model"],
                                 {k: v.cpu() for k, v in c.avg_model.state_dict().items()}, "fawa")
    with pytest.raises(ValueError, match="defense"):
        build_defense("wat", {}, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA).load_state_dict(state)


@pytest.mark.parametrize("opts", [{"decay": 1.0}, {"threshold": 1.5}, {"lambda1": -1},
                                  {"begin": -1}, {"ccm": "maybe"}, {"bogus": 1}])
def test_cfa_bad_options(opts):
    with pytest.raises(ValueError, match="cfa"):
        build_defense("cfa", opts, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)


# ---- WAT --------------------------------------------------------------------------------------

def test_wat_hedge_update():
    policy = build_defense("wat", {"eta": 0.5}, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)
    assert torch.allclose(policy.class_weight, torch.full((C,), 2 * C / (C + 1)))
    losses = torch.tensor([1.0] * C + [1.0], dtype=torch.float64)
    losses[3] = 3.0                                     # class 3: the largest validation loss
    policy.hedge(losses)
    p = policy.probs
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12) and bool((p > 0).all())
    expect = torch.exp(0.5 * losses) / torch.exp(0.5 * losses).sum()
    assert torch.allclose(p, expect, atol=1e-12)
    assert torch.allclose(policy.class_weight.double(), C * (p[:C] + p[C]), atol=1e-6)
    w1 = policy.class_weight.clone()
    assert int(w1.argmax()) == 3 and w1[3] > 2 * C / (C + 1)
    # cumulative: the same losses again make class 3 heavier still; stays normalised
    policy.hedge(losses)
    assert policy.class_weight[3] > w1[3] and float(policy.probs.sum()) == pytest.approx(1.0)
    # a huge loss does not overflow (softmax of the cumulative losses)
    policy.hedge(torch.tensor([1e4] + [0.0] * C))
    assert torch.isfinite(policy.probs).all() and float(policy.probs.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        policy.hedge(torch.zeros(C))


def test_wat_state_round_trip_and_options():
    a = build_defense("wat", {}, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)
    a.hedge(torch.arange(C + 1, dtype=torch.float64))
    b = build_defense("wat", {}, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)
    b.load_state_dict(a.state_dict())
    for name in ("cum_loss", "probs", "class_weight"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for bad in ({"eta": 0}, {"eta": "x"}, {"gamma": 1}):
        with pytest.raises(ValueError, match="wat"):
            build_defense("wat", bad, num_classes=C, eps=EPS, alpha=ALPHA, beta=BETA)


# ---- real MNIST runs through the CLI ----------------------------------------------------------

def _args(shared_data, out, *extra):
    args = list(TINY)
    args[args.index("mnist-embedded")] = "mnist"
    return args + ["--data-dir", str(shared_data), "--epochs", "2", "--no-final-eval",
                   "--no-plots", "--seed", "3", "--out", str(out), *extra]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


CFA_ARGS = ("--method", "trades", "--defense", "cfa", "--defense-opt", "begin=0",
            "--defense-opt", "threshold=0.0", "--defense-opt", "decay=0.5", "--deterministic")


def test_cfa_trains_on_mnist(shared_data, tmp_path):
    out = tmp_path / "cfa"
    assert train_cli.main(_args(shared_data, out, *CFA_ARGS)) == 0
    recs = _records(out)
    assert len(recs) == 2
    for r in recs:
        d = r["defense"]
        acc = r["train"]["per_class_acc"]
        # t_k is this epoch's training robust accuracy; eps_k and beta_k follow it
        assert d["train_robust"] == pytest.approx(acc, abs=1e-6)
        assert d["eps"] == pytest.approx([(0.5 + a) * 0.3 for a in acc], abs=1e-5)
        assert d["beta"] == pytest.approx([(0.5 + a) * 6.0 for a in acc], abs=1e-4)
        lo, hi = min(range(C), key=acc.__getitem__), max(range(C), key=acc.__getitem__)
        if acc[lo] < acc[hi]:
            assert d["eps"][lo] < d["eps"][hi] and d["weight"][lo] > d["weight"][hi]
        # FAWA: the training weights were validated and (threshold 0) absorbed
        assert d["fawa"]["absorbed"] is True and d["fawa"]["count"] == r["epoch"]
        assert d["fawa"]["train_weights_val"]["robust_worst"] is not None
        assert r["val"]["model"] == "cfa average"
    state = load_ckpt(out / "checkpoints" / "last.pt")["defense"]
    assert state["name"] == "cfa" and state["fawa_count"] == 2
    assert state["avg_model"].keys() == load_ckpt(out / "checkpoints" / "last.pt")["model"].keys()
    # the average differs from the training weights (two absorbed epochs, decay 0.5)
    model = load_ckpt(out / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(state["avg_model"][k], model[k]) for k in model
               if model[k].is_floating_point())
    best = load_ckpt(out / "checkpoints" / "best_mean.pt")["model"]
    assert best.keys() == model.keys()


def test_cfa_fawa_resume_from_a_mid_run_checkpoint_is_identical(shared_data, tmp_path, monkeypatch):
    extra = CFA_ARGS + ("--ckpt-every", "1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert train_cli.main(_args(shared_data, ref, *extra)) == 0

    class Crash(RuntimeError):
        pass

    original = Trainer.train_step
    target = {}

    def crashing_step(self, x, y):
        target.setdefault("at", self.steps_per_epoch + 3)   # 3 steps into epoch 2
        if self.global_step == target["at"]:
            raise Crash
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", crashing_step)
    with pytest.raises(Crash):
        train_cli.main(_args(shared_data, run, *extra))
    monkeypatch.setattr(Trainer, "train_step", original)
    mid = load_ckpt(run / "checkpoints" / "last.pt")
    assert mid["progress"]["epoch"] == 1 and mid["progress"]["batch"] == 3
    assert mid["defense"]["fawa_count"] == 1

    assert train_cli.main(["--resume", str(run), "--progress", "off", "--threads", "1"]) == 0
    a, b = load_ckpt(ref / "checkpoints" / "last.pt"), load_ckpt(run / "checkpoints" / "last.pt")
    assert a["progress"] == b["progress"]
    assert_state_dicts_identical(a["model"], b["model"], "model")
    assert_state_dicts_identical(a["defense"]["avg_model"], b["defense"]["avg_model"], "fawa")
    assert torch.equal(a["defense"]["class_eps_scale"], b["defense"]["class_eps_scale"])
    assert_state_dicts_identical(load_ckpt(ref / "checkpoints" / "best_mean.pt")["model"],
                                 load_ckpt(run / "checkpoints" / "best_mean.pt")["model"], "best")
    ra, rb = _records(ref), _records(run)
    assert [r["defense"] for r in ra] == [r["defense"] for r in rb]
    assert [r["val"]["robust"] for r in ra] == [r["val"]["robust"] for r in rb]


def test_wat_trains_on_mnist(shared_data, tmp_path):
    out = tmp_path / "wat"
    assert train_cli.main(_args(shared_data, out, "--method", "pgd-at", "--defense", "wat",
                                "--defense-opt", "eta=2")) == 0
    recs = _records(out)
    cum = torch.zeros(C + 1, dtype=torch.float64)
    for r in recs:
        d = r["defense"]
        losses = torch.tensor(d["val_loss"] + [d["val_loss_avg"]], dtype=torch.float64)
        assert bool((losses > 0).all())
        cum += losses
        p = torch.tensor(d["probs"] + [d["prob_avg"]], dtype=torch.float64)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(p, torch.softmax(2.0 * cum, 0), atol=1e-6)
        assert d["weight"] == pytest.approx((C * (p[:C] + p[C])).tolist(), rel=1e-5)
        # the class with the largest cumulative validation loss has the largest weight, and it
        # grew above the uniform start
        worst = int(cum[:C].argmax())
        assert max(d["weight"]) == pytest.approx(d["weight"][worst])
        assert d["weight"][worst] > 2 * C / (C + 1)
    # the validation losses are the adversarial ones: larger on a class with lower robust acc
    last = recs[-1]
    rob = last["val"]["robust_acc"]
    vl = last["defense"]["val_loss"]
    assert vl[min(range(C), key=rob.__getitem__)] > vl[max(range(C), key=rob.__getitem__)]
    state = load_ckpt(out / "checkpoints" / "last.pt")["defense"]
    assert state["name"] == "wat"
    assert torch.allclose(state["cum_loss"], cum, atol=1e-9)


@pytest.mark.parametrize("opt", [("cfa", "decay=2"), ("cfa", "nope=1"), ("wat", "eta=-1")])
def test_bad_option_is_a_clear_error(shared_data, tmp_path, capsys, opt):
    name, item = opt
    rc = train_cli.main(_args(shared_data, tmp_path / "bad", "--defense", name,
                              "--defense-opt", item))
    err = capsys.readouterr().err
    assert rc == 2 and name in err and item.split("=")[0] in err and "Traceback" not in err
