"""Training (cwr_fast.train, cwr_fast.training): methods, schedules, EMA, checkpoints, the CLI and
an end-to-end run on real (embedded) MNIST digits. Resume-after-SIGKILL and the 2-process gloo
run are in test_train_resume.py and test_train_ddp.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cwr_fast import outputs
from cwr_fast.outputs import save_torch
from cwr_fast import train as train_cli
from cwr_fast.data import make_loader
from cwr_fast.models import build_model, load_weights
from cwr_fast.training import checkpoint as ckpt
from cwr_fast.defenses import ClasswisePolicy
from cwr_fast.training.ema import EMA
from cwr_fast.methods import METHODS, BatchPolicy, build_method
from cwr_fast.training.schedules import LRSchedule, eps_at

from helpers.train import TINY, assert_state_dicts_identical, load_ckpt

EPS = 0.3


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """1,000 real training digits (100 per class), shuffled."""
    loader = make_loader("mnist-embedded", "train", 1000, train=False, per_class=100)
    x, y = next(iter(loader))
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def small_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("small_cnn", 10, (0.1307,), (0.3081,), 1)


def fixed_loss(method, model, x, y, seed=123, eps=EPS):
    torch.manual_seed(seed)
    batch = BatchPolicy(eps=eps, alpha=eps / 3)
    x_adv = method.perturb(model, x, y, batch)
    with torch.no_grad():
        return float(method.loss(model, x, x_adv, y, batch).loss)


# ---- methods ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_loss_goes_down(name, digits):
    """60 steps on 1,000 real digits (eps ramped to 0.1 as the trainer does): the method's own
    loss on a fixed batch, with a fixed attack seed, falls clearly."""
    x, y = digits
    torch.set_num_threads(1)
    model = small_cnn()
    method = build_method(name, steps=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    eps = 0.1
    before = fixed_loss(method, model, x[:200], y[:200], eps=eps)
    torch.manual_seed(0)
    for step, i in enumerate(list(range(0, 1000, 50)) * 3):
        xb, yb = x[i:i + 50], y[i:i + 50]
        eps_t = eps * min(1.0, (step + 1) / 30)
        batch = BatchPolicy(eps=eps_t, alpha=eps_t / 3)
        x_train = method.perturb(model, xb, yb, batch)
        out = method.loss(model, xb, x_train, yb, batch)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = fixed_loss(method, model, x[:200], y[:200], eps=eps)
    assert after < 0.6 * before, f"{name}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", ["pgd-at", "fgsm-rs", "trades", "mart"])
def test_attack_stays_in_per_sample_budget_and_restores_modes(name, digits):
    x, y = digits
    x, y = x[:40], y[:40]
    model = small_cnn()
    model.train()
    method = build_method(name, steps=3)
    eps = torch.linspace(0.0, 0.3, 40)
    x_adv = method.perturb(model, x, y, BatchPolicy(eps=eps, alpha=eps / 2))
    delta = (x_adv - x).abs().flatten(1).max(dim=1).values
    assert torch.all(delta <= eps + 1e-6)
    assert float(delta[-10:].min()) > 0.05  # it moved
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_fgsm_rs_uses_one_step_of_1_25_eps():
    from cwr_fast.training.config import build_parser, resolve
    cfg = resolve(build_parser().parse_args(["--method", "fgsm-rs", "--eps", "0.2"]))
    assert cfg.steps == 1 and math.isclose(cfg.alpha, 0.25)
    assert build_method("fgsm-rs", steps=7).steps == 1


@pytest.mark.parametrize("name", ["pgd-at", "trades", "mart"])
def test_fused_and_eager_paths_agree(name, digits):
    """The fused path (cwr_fast.ops; TRADES's closed-form KL gradient) against the same loop in
    eager PyTorch ops: same random start, same steps, same losses."""
    x, y = digits
    x, y = x[:64], y[:64]
    model = small_cnn(1)
    outs = {}
    for impl in ("fused", "eager"):
        method = build_method(name, steps=4, ops_impl=impl)
        torch.manual_seed(7)
        batch = BatchPolicy(eps=EPS, alpha=0.1)
        x_adv = method.perturb(model, x, y, batch)
        loss = method.loss(model, x, x_adv, y, batch).loss
        grads = torch.autograd.grad(loss, list(model.parameters()))
        outs[impl] = (x_adv, loss.detach(), grads)
    (xa, la, ga), (xb, lb, gb) = outs["fused"], outs["eager"]
    same = ((xa - xb).abs() <= 1e-5).float().mean()
    if name == "trades":
        # TRADES starts at x + 0.001 N(0, 1), where KL(f(x) || f(x')) and its gradient are ~0:
        # the sign of the tiniest input-gradient entries depends on rounding, so the two paths
        # part on a few pixels; the losses still agree closely.
        assert same > 0.9, f"x_adv agree on {same:.4%}"
        assert torch.allclose(la, lb, rtol=0.05)
        return
    assert same > 0.999, f"{name}: x_adv agree on {same:.4%}"
    assert torch.allclose(la, lb, rtol=1e-3, atol=1e-5)
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-4)


def test_trades_closed_form_kl_gradient():
    """d/dz sum_i KL(p_i || softmax(z_i)) = softmax(z_i) - p_i, the fused path's TRADES ascent."""
    torch.manual_seed(0)
    z = torch.randn(16, 10, requires_grad=True)
    p = torch.softmax(torch.randn(16, 10), dim=1)
    kl = torch.nn.functional.kl_div(torch.log_softmax(z, dim=1), p, reduction="sum")
    (grad,) = torch.autograd.grad(kl, z)
    assert torch.allclose(grad, torch.softmax(z, dim=1) - p, atol=1e-6)


def test_per_sample_weights_and_beta(digits):
    x, y = digits
    x, y = x[:32], y[:32]
    model = small_cnn()
    for name in METHODS:
        method = build_method(name, steps=2)
        torch.manual_seed(0)
        x_adv = method.perturb(model, x, y, BatchPolicy(eps=EPS, alpha=0.1))
        plain = method.loss(model, x, x_adv, y, BatchPolicy(eps=EPS, alpha=0.1)).loss
        ones = method.loss(model, x, x_adv, y, BatchPolicy(eps=EPS, alpha=0.1, weight=torch.ones(32))).loss
        twice = method.loss(model, x, x_adv, y, BatchPolicy(eps=EPS, alpha=0.1, weight=torch.full((32,), 2.0))).loss
        zero = method.loss(model, x, x_adv, y, BatchPolicy(eps=EPS, alpha=0.1, weight=torch.zeros(32))).loss
        assert torch.allclose(plain, ones, rtol=1e-5) and torch.allclose(twice, 2 * plain, rtol=1e-5), name
        assert float(zero.detach()) == 0.0, name
    trades = build_method("trades", steps=2)
    torch.manual_seed(0)
    x_adv = trades.perturb(model, x, y, BatchPolicy(eps=EPS, alpha=0.1))
    b6 = trades.loss(model, x, x_adv, y, BatchPolicy(eps=EPS, alpha=0.1, beta=6.0)).loss
    b6t = trades.loss(model, x, x_adv, y, BatchPolicy(eps=EPS, alpha=0.1, beta=torch.full((32,), 6.0))).loss
    assert torch.allclose(b6, b6t, rtol=1e-5)


def test_classwise_policy_extension_point():
    policy = ClasswisePolicy(num_classes=3, eps=0.3, alpha=0.1, beta=6.0)
    y = torch.tensor([0, 1, 2, 1])
    b = policy.batch_policy(y, 0.3, 0.1, 6.0)
    assert b.weight is None and b.eps == 0.3 and b.beta == 6.0
    policy.class_weight = torch.tensor([1.0, 2.0, 3.0])
    policy.class_eps_scale = torch.tensor([1.0, 0.5, 2.0])
    policy.class_beta = torch.tensor([6.0, 1.0, 0.0])
    b = policy.batch_policy(y, 0.2, 0.1, 6.0)
    assert b.weight.tolist() == [1.0, 2.0, 3.0, 2.0]
    assert torch.allclose(b.eps, torch.tensor([0.2, 0.1, 0.4, 0.1]))
    assert torch.allclose(b.alpha, torch.tensor([0.1, 0.05, 0.2, 0.05]))
    assert b.beta.tolist() == [6.0, 1.0, 0.0, 1.0]
    restored = ClasswisePolicy(num_classes=3, eps=0.3, alpha=0.1, beta=6.0)
    restored.load_state_dict(policy.state_dict())
    assert torch.equal(restored.class_eps_scale, policy.class_eps_scale)


# ---- schedules, EMA -------------------------------------------------------------------------------

def test_schedules():
    pw = LRSchedule("piecewise", 0.1, total_steps=100, steps_per_epoch=10, milestones=[5, 8])
    assert pw(0) == pw(49) == 0.1 and math.isclose(pw(50), 0.01) and math.isclose(pw(80), 0.001)
    cos = LRSchedule("cosine", 0.1, 100, 10)
    assert cos(0) == 0.1 and math.isclose(cos(50), 0.05) and cos(99) < 1e-3
    oc = LRSchedule("one-cycle", 0.2, 100, 10)
    peak = max(range(100), key=oc)
    assert 35 <= peak <= 40 and math.isclose(oc(peak), 0.2, rel_tol=0.03) and oc(0) > 0 and oc(99) == 0
    wu = LRSchedule("cosine", 0.1, 100, 10, warmup_epochs=1)
    assert math.isclose(wu(0), 0.1 * cos(0)) and wu(10) == cos(10)
    assert eps_at(0, 0.3, 3, 10) == pytest.approx(0.01) and eps_at(29, 0.3, 3, 10) == 0.3
    assert eps_at(5, 0.3, 0, 10) == 0.3
    with pytest.raises(ValueError, match="schedule must be"):
        LRSchedule("linear", 0.1, 10, 1)


def test_ema_tracks_weights():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # warm-up decay min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module.weight, d * before + (1 - d) * model.weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


# ---- checkpoints ----------------------------------------------------------------------------------

def test_atomic_save_and_clear_errors(tmp_path):
    path = tmp_path / "c.pt"
    save_torch({"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION,
                      "x": torch.arange(3), "rng": ckpt.rng_state()}, path)
    assert not list(tmp_path.glob(".*tmp*"))
    state = ckpt.load(path)
    ckpt.set_rng_state(state["rng"])
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ckpt.CheckpointError, match="corrupt, truncated"):
        ckpt.load(path)
    torch.save({"model": {}}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a cwr_fast training checkpoint"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.resolve_resume_path(tmp_path / "missing")


def test_rng_state_roundtrip():
    import random

    import numpy as np
    state = ckpt.rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


def test_validation_is_held_out_and_class_balanced():
    from cwr_fast.training.config import TrainConfig
    from cwr_fast.training.data import build_loaders
    cfg = TrainConfig(dataset="mnist-embedded", val_per_class=7, train_per_class=20, batch_size=16)
    loaders = build_loaders(cfg, torch.device("cpu"))
    val, train = loaders.val.order.indices, loaders.train.order.indices
    assert loaders.num_val == 70 and loaders.num_train == 200
    assert not set(val.tolist()) & set(train.tolist())
    labels = torch.cat([y for _, y in loaders.val])
    assert torch.bincount(labels).tolist() == [7] * 10
    loaders.train.set_epoch(3)
    first = [y.clone() for _, y in loaders.train]
    loaders.train.set_epoch(3)
    assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in loaders.train]))


# ---- the CLI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nosuchset"], "unknown dataset"),
    (["--arch", "vgg"], "unknown architecture"),
    (["--eps", "-0.1"], "--eps must be >= 0"),
    (["--eps", "8"], "did you mean 8/255"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--final-attacks", "pgd-x"], "--final-attacks"),
    (["--defense", "nosuch"], "unknown defense"),
    (["--val-split", "train"], "is the training split"),
    (["--batch-size", "5000"], "does not fit the data"),
    (["--batch-size", "250", "--train-per-class", "20"], "does not fit the data"),
])
def test_bad_input_is_a_clear_error_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_cli.main(argv + ["--out", str(out), "--progress", "off"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith("cwr_fast.train: error:") and "Traceback" not in err
    assert not list(out.glob("checkpoints/*.pt")) and not (out / "metrics.jsonl").exists()


def test_unknown_method_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--method", "pgd-free"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    for needle in ("mnist-embedded", "cifar10", "imagenet", "8/255", "4/255", "0.3", "REDUCED",
                   "(default pgd-at)", "--amp", "one-cycle", "--resume", "torchrun"):
        assert needle in text, needle


def test_summary_fits_one_screen_for_many_classes():
    def section(accs):
        return {"per_class": [{"class": c, "class_name": str(c), "n": 10, "clean_acc": 1.0,
                               "robust_acc": a} for c, a in enumerate(accs)]}
    accs = [c / 100 for c in range(100)]
    report = {"clean": section(accs), "worst_case": section(accs), "attacks": [section(accs)]}
    short, note = train_cli._short_report(report, max_rows=12)
    assert [r["class"] for r in short["worst_case"]["per_class"]] == list(range(6)) + list(range(94, 100))
    assert [r["class"] for r in short["attacks"][0]["per_class"]] == list(range(6)) + list(range(94, 100))
    assert "6 worst and 6 best of 100" in note
    assert train_cli._short_report(section(accs[:10]) | {"worst_case": section(accs[:10])})[1] == ""


def test_non_empty_out_needs_resume_or_overwrite(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    for flags in ([], ["--overwrite"]):  # a folder cwr_fast did not write is never used
        assert train_cli.main(["--out", str(tmp_path), "--progress", "off", *flags]) == 2
        assert "did not write (x.txt)" in capsys.readouterr().err
    (tmp_path / "x.txt").unlink()
    outputs.write_manifest(tmp_path, train_cli.RUN_KIND, [])
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert train_cli.main(["--out", str(tmp_path), "--progress", "off"]) == 2
    assert "--resume" in capsys.readouterr().err


# ---- end to end -------------------------------------------------------------------------------------

def test_end_to_end_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_cli.main(TINY + ["--epochs", "2", "--out", str(out), "--ema", "0.9"])
    text = capsys.readouterr().out
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        v = r["val"]
        assert len(v["robust_acc"]) == len(v["clean_acc"]) == 10 and v["n"] == [4] * 10
        assert v["robust"] == [round(a * 4) for a in v["robust_acc"]] and v["model"] == "ema"
        assert set(r["train"]["time_split"]) == {"data", "attack", "fwd_bwd"}
        assert 0 <= r["train"]["acc"] <= 1 and len(r["train"]["per_class_acc"]) == 10
    assert (out / "per_class_robust_acc.png").stat().st_size > 10_000
    report = json.loads((out / "report" / "report.json").read_text())
    assert [a["label"] for a in report["attacks"]] == ["fgsm", "pgd-2"]
    assert report["dataset"]["num_images"] == 50 and report["config"]["source"] == "cwr_fast.train"
    assert "class-wise robustness" in text and "report.md" in text
    assert (out / "summary.txt").read_text().strip() in text
    # every checkpoint loads with weights_only=True; the best ones feed cwr_fast.evaluate
    last = load_ckpt(out / "checkpoints" / "last.pt")
    assert last["progress"] == {"epoch": 2, "batch": 0, "global_step": 20, "steps_per_epoch": 10}
    assert last["ema"] is not None and len(last["history"]) == 2
    for name in ("best_mean.pt", "best_worst.pt"):
        best = load_ckpt(out / "checkpoints" / name)
        assert best["epoch"] in (1, 2)
        model = build_model("small_cnn", 10, (0.1309,), (0.3080,), 1)
        load_weights(model, out / "checkpoints" / name)
    # resuming a finished run only redoes the final report (here: of the best worst-class weights)
    assert train_cli.main(["--resume", str(out), "--progress", "off", "--threads", "1",
                           "--final-model", "best-worst"]) == 0
    assert "resuming" in capsys.readouterr().out
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["config"]["weights"] == "best-worst (EMA)"
    assert_state_dicts_identical(last["model"], load_ckpt(out / "checkpoints" / "last.pt")["model"])


def test_resume_rejects_changed_settings_and_mismatched_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(TINY + ["--epochs", "1", "--out", str(out), "--no-final-eval",
                                  "--no-plots"]) == 0
    capsys.readouterr()
    assert train_cli.main(["--resume", str(out), "--eps", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--eps (checkpoint 0.3, given 0.1)" in err
    # a checkpoint whose weights do not fit the model
    path = out / "checkpoints" / "last.pt"
    state = load_ckpt(path)
    state["model"]["net.fc2.weight"] = torch.zeros(3, 3)
    save_torch(state, path)
    assert train_cli.main(["--resume", str(out), "--progress", "off"]) == 2
    err = capsys.readouterr().err
    assert "do not fit the model" in err and "shape mismatch" in err
    path.write_bytes(b"garbage")
    assert train_cli.main(["--resume", str(out)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_and_checkpoints_the_scaler(amp, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_cli.main(TINY + ["--epochs", "1", "--amp", amp, "--method", "trades",
                                  "--out", str(out), "--no-final-eval", "--no-plots",
                                  "--channels-last"])
    assert code == 0, capsys.readouterr().err
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(rec["train"]["loss"]) and rec["train"]["clean_acc"] is not None
    state = load_ckpt(out / "checkpoints" / "last.pt")
    assert (state["scaler"] is not None) == (amp == "fp16")
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0
