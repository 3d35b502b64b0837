"""The class-wise calibration of the final layer (cwr_fast.classwise.calibration), on real MNIST:
part of the model, attacked through, fitted against adaptive attacks, saved and loaded by the
training and evaluation CLIs."""

from __future__ import annotations

import json

import pytest
import torch

from cwr_fast.attacks import build_attacks
from cwr_fast.attacks.attack import attack_mode
from cwr_fast.attacks.functional import perturb
from cwr_fast.classwise import evaluate_classwise
from cwr_fast.classwise.calibration import fit_calibration
from cwr_fast.data import load_arrays
from cwr_fast.evaluate import main as evaluate_main
from cwr_fast.models import CheckpointMismatchError, build_model, load_weights
from cwr_fast.models.calibration import ClasswiseCalibration
from cwr_fast.training import checkpoint as ckpt

from helpers.train import TINY, run_train

EPS = 0.1          # the fixture model is not adversarially trained: a budget that splits the classes
MAX_DROP = 0.01
RE_ATTACK_TOL = 0.03   # the independent re-attack uses other random starts and track="any"


@pytest.fixture(scope="module")
def val_batches(shared_data):
    """30 real MNIST test digits per class, none of them in mnist_eval (the first 300), as batches."""
    images, labels = load_arrays("mnist", "test", data_dir=shared_data)
    idx = torch.cat([(labels[1000:] == c).nonzero().squeeze(1)[:30] + 1000 for c in range(10)])
    x, y = images[idx].float() / 255, labels[idx]
    return [(x[i:i + 100], y[i:i + 100]) for i in range(0, len(y), 100)]


@pytest.fixture(scope="module")
def fitted(mnist_model, val_batches):
    return fit_calibration(mnist_model, val_batches, 10, EPS, steps=10, max_mean_drop=MAX_DROP,
                           rounds=3, seed=0)


def _robust(model, batches, seed):
    attacks = build_attacks("pgd-10", model, eps=EPS, track="any", num_classes=10)
    counts = evaluate_classwise(model, batches, 10, attacks, seed=seed, channels_last=False)
    return counts.robust_accuracy("pgd-10"), counts.clean_accuracy()


def test_identity_at_init_and_state_dict(mnist_model, mnist_eval):
    x, _ = mnist_eval
    cal = ClasswiseCalibration(mnist_model, 10)
    with torch.no_grad():
        assert torch.equal(cal(x[:64]), mnist_model(x[:64]))
    state = cal.state_dict()
    assert torch.equal(state["scale"], torch.ones(10)) and torch.equal(state["bias"], torch.zeros(10))
    assert set(state) == {"scale", "bias"} | {f"model.{k}" for k in mnist_model.state_dict()}
    cal.set_(scale=torch.full((10,), 2.0), bias=torch.arange(10.0))
    with torch.no_grad():
        assert torch.allclose(cal(x[:8]), mnist_model(x[:8]) * 2 + torch.arange(10.0))
    with pytest.raises(ValueError, match="scales must be > 0"):
        cal.set_(scale=-torch.ones(10))


def test_the_bias_is_attacked_through(mnist_model, mnist_eval):
    """PGD on the calibrated model fools at least as many points as PGD on the bare model with the
    bias added to the logits afterwards (the same random starts)."""
    x, y = mnist_eval
    bias = torch.tensor([3.0, -2.0, 1.0, 0.0, -1.0, 2.0, -3.0, 1.5, -1.5, 0.5])
    cal = ClasswiseCalibration(mnist_model, 10).set_(bias=bias)
    fooled = {}
    for name, attacked in (("calibrated", cal), ("bare", mnist_model)):
        torch.manual_seed(7)
        with attack_mode(attacked):
            x_adv = perturb(attacked, x, y, eps=EPS, alpha=2.5 * EPS / 10, steps=10, track="final").x_adv
        with torch.no_grad():
            pred = (mnist_model(x_adv) + bias).argmax(1)   # scored by the calibrated model
        fooled[name] = torch.bincount(y[pred != y], minlength=10)
    assert int(fooled["calibrated"].sum()) >= int(fooled["bare"].sum()), fooled
    assert int(fooled["calibrated"].sum()) > 0


def test_fit_raises_the_worst_class_at_a_bounded_mean_cost(mnist_model, val_batches, fitted):
    cal, info = fitted
    before, after = info["before"], info["after"]
    # the fit's own measurements (attacks on the uncalibrated and on the kept calibrated model)
    assert before["robust_worst"] < before["robust_mean"] - 0.2, "classes not split: test vacuous"
    assert after["robust_worst"] > before["robust_worst"]
    assert after["robust_mean"] >= before["robust_mean"] - MAX_DROP - 1e-9
    assert after["clean_mean"] >= before["clean_mean"] - MAX_DROP - 1e-9
    assert info["bias"] == cal.bias.tolist() and not cal.is_identity()
    assert torch.equal(cal.scale, torch.ones(10))   # default: biases only
    # an independent re-attack (other seeds, track="any") of both models on the same images
    r0, c0 = _robust(mnist_model, val_batches, seed=123)
    r1, c1 = _robust(cal, val_batches, seed=123)
    assert float(r1.min()) > float(r0.min()), (r0, r1)
    assert float(r1.mean()) >= float(r0.mean()) - MAX_DROP - RE_ATTACK_TOL
    assert float(c1.mean()) >= float(c0.mean()) - MAX_DROP - RE_ATTACK_TOL
    for param in mnist_model.parameters():   # the wrapped model is left as it was
        assert param.requires_grad


def test_fit_is_deterministic_and_never_worse_than_identity(mnist_model, val_batches, fitted):
    _, info = fitted
    _, again = fit_calibration(mnist_model, val_batches, 10, EPS, steps=10, max_mean_drop=MAX_DROP,
                               rounds=3, seed=0)
    assert again["bias"] == info["bias"] and again["history"] == info["history"]
    # max drop 0: the kept calibration may not cost any mean accuracy on the validation attack
    _, strict = fit_calibration(mnist_model, val_batches, 10, EPS, steps=5, max_mean_drop=0.0,
                                rounds=1, seed=1)
    assert strict["after"]["robust_worst"] >= strict["before"]["robust_worst"]
    assert strict["after"]["robust_mean"] >= strict["before"]["robust_mean"] - 1e-9
    assert strict["after"]["clean_mean"] >= strict["before"]["clean_mean"] - 1e-9


def test_checkpoint_round_trip_and_evaluate_cli(mnist_model, shared_data, tmp_path, capsys):
    cal = ClasswiseCalibration(mnist_model, 10).set_(bias=torch.tensor([100.0] + [0.0] * 9))
    path = tmp_path / "calibrated.pt"
    torch.save(cal.state_dict(), path)
    fresh = ClasswiseCalibration(build_model("small_cnn", 10, mean=[0.1307], std=[0.3081]), 10)
    load_weights(fresh, path)
    assert torch.equal(fresh.bias, cal.bias) and torch.equal(fresh.scale, cal.scale)
    with pytest.raises(CheckpointMismatchError, match="calibrated"):
        load_weights(build_model("small_cnn", 10, mean=[0.1307], std=[0.3081]), path)
    out = tmp_path / "report"
    rc = evaluate_main(["--arch", "small_cnn", "--checkpoint", str(path), "--dataset", "mnist",
                        "--data-dir", str(shared_data), "--attacks", "pgd-1", "--eps", "0.05",
                        "--limit", "30", "--out", str(out), "--no-plots", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["calibrated"] is True
    assert report["config"]["calibration"] == "from the checkpoint"
    # a bias of 100 on class 0 makes every prediction 0: the calibration is applied when evaluated
    clean = [r["clean_acc"] for r in report["clean"]["per_class"]]
    assert clean == [1.0] + [0.0] * 9


def test_evaluate_cli_fits_on_another_split(mnist_checkpoint, shared_data, tmp_path, capsys):
    out = tmp_path / "fit"
    rc = evaluate_main(["--arch", "small_cnn", "--checkpoint", str(mnist_checkpoint), "--dataset",
                        "mnist", "--data-dir", str(shared_data), "--attacks", "pgd-2", "--eps", "0.1",
                        "--limit", "30", "--calibrate-split", "train", "--calibrate-per-class", "6",
                        "--calibrate-steps", "2", "--calibrate-rounds", "1", "--out", str(out),
                        "--no-plots", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["calibrated"] is True and config["calibration"]["fitted_on"] == "train"
    assert config["calibration"]["num_images"] == 60 and len(config["calibration"]["bias"]) == 10
    plain = tmp_path / "plain"
    assert evaluate_main(["--arch", "small_cnn", "--checkpoint", str(mnist_checkpoint), "--dataset",
                          "mnist", "--data-dir", str(shared_data), "--attacks", "pgd-1", "--limit",
                          "20", "--out", str(plain), "--no-plots", "--no-progress"]) == 0
    assert json.loads((plain / "report.json").read_text())["config"]["calibrated"] is False


@pytest.mark.parametrize("flags, message", [
    (["--calibrate-split", "test"], "is the evaluated split"),
    (["--calibrate-split", "train", "--calibrate-max-drop", "-0.5"], "--calibrate-max-drop must be"),
    (["--calibrate-split", "train", "--calibrate-per-class", "0"], "--calibrate-per-class must be"),
    (["--calibrate-split", "nosuchsplit"], "nosuchsplit"),
])
def test_evaluate_bad_calibration_input(flags, message, mnist_checkpoint, shared_data, tmp_path, capsys):
    out = tmp_path / "never"
    rc = evaluate_main(["--arch", "small_cnn", "--checkpoint", str(mnist_checkpoint), "--dataset",
                        "mnist", "--data-dir", str(shared_data), "--out", str(out), "--no-progress",
                        *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("cwr_fast.evaluate: error:"), err
    assert not out.exists()


def test_calibrated_checkpoint_cannot_be_refitted(mnist_model, shared_data, tmp_path, capsys):
    path = tmp_path / "cal.pt"
    torch.save(ClasswiseCalibration(mnist_model, 10).state_dict(), path)
    rc = evaluate_main(["--arch", "small_cnn", "--checkpoint", str(path), "--dataset", "mnist",
                        "--data-dir", str(shared_data), "--calibrate-split", "train",
                        "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "already calibrated" in capsys.readouterr().err


def test_fit_calibration_bad_inputs(mnist_model, val_batches):
    with pytest.raises(ValueError, match="max_mean_drop"):
        fit_calibration(mnist_model, val_batches, 10, EPS, max_mean_drop=-0.1)
    with pytest.raises(ValueError, match="rounds"):
        fit_calibration(mnist_model, val_batches, 10, EPS, rounds=0)
    with pytest.raises(ValueError, match="params"):
        fit_calibration(mnist_model, val_batches, 10, EPS, params="scale-only")
    with pytest.raises(ValueError, match="already calibrated"):
        fit_calibration(ClasswiseCalibration(mnist_model, 10), val_batches, 10, EPS)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_calibration(mnist_model, [(val_batches[0][0], val_batches[0][1] + 10)], 10, EPS)


def test_train_cli_calibrate(tmp_path):
    out = tmp_path / "run"
    proc = run_train(*TINY, "--epochs", "1", "--no-plots", "--calibrate", "--calibrate-rounds", "1",
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "checkpoints" / "calibrated.pt").is_file() and (out / "calibration.json").is_file()
    state = ckpt.load(out / "checkpoints" / "calibrated.pt", expect=ckpt.BEST_FORMAT)
    assert state["calibrated"] is True and state["criterion"] == "calibrated"
    info = json.loads((out / "calibration.json").read_text())
    assert state["calibration"]["bias"] == info["bias"] == state["model"]["bias"].tolist()
    assert info["after"]["robust_worst"] >= info["before"]["robust_worst"]
    assert info["after"]["robust_mean"] >= info["before"]["robust_mean"] - 0.01 - 1e-9
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["config"]["calibrated"] is True
    assert report["config"]["calibration"] == "checkpoints/calibrated.pt"
    model = ClasswiseCalibration(build_model("small_cnn", 10, mean=[0.1307], std=[0.3081]), 10)
    load_weights(model, out / "checkpoints" / "calibrated.pt")
    assert model.bias.tolist() == info["bias"]
    # without --calibrate nothing changes: no calibration files, report says so
    plain = tmp_path / "plain"
    proc = run_train(*TINY, "--epochs", "1", "--no-plots", "--no-final-eval", "--out", str(plain))
    assert proc.returncode == 0, proc.stderr
    assert not (plain / "checkpoints" / "calibrated.pt").exists()
    assert not (plain / "calibration.json").exists()
    assert json.loads((plain / "config.json").read_text())["calibrate"] is False


def test_train_cli_bad_calibration_input(tmp_path):
    proc = run_train(*TINY, "--calibrate", "--calibrate-max-drop", "-1", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "--calibrate-max-drop must be" in proc.stderr
    proc = run_train(*TINY, "--calibrate", "--calibrate-steps", "0", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "--calibrate-steps must be" in proc.stderr
