"""The checkpoints of the repositories people bring load as those repositories saved them:
TRADES and MART (WideResNet-34-10 with its unused `sub_block1`, raw [0, 1] inputs),
robust_overfitting (DataParallel `module.` keys; model_best.pth = {'state_dict', 'test_acc', ...}
or a plain state dict; CIFAR mean/std applied outside the model). The weights are random, saved
by the test in each layout. (fast_adversarial's PreActResNet-18 has no BatchNorm before the
classifier, unlike ours: it loads as RobustBench's Wong2020Fast, tests/models/test_model_sources.py.)"""

import json

import pytest
import torch

from cwr_fast.classwise.analysis import clean_accuracy_flags
from cwr_fast.classwise.counts import ClasswiseCounts
from cwr_fast.data import load_arrays
from cwr_fast.data.subset import class_balanced_subset
from cwr_fast.evaluate import main
from cwr_fast.models import NormalizedModel, build_model, load_weights
from cwr_fast.models.checkpoint import CheckpointMismatchError, read_checkpoint, recorded_clean_accuracy
from cwr_fast.models.preact_resnet import preact_resnet18
from cwr_fast.models.wide_resnet import wrn34_10

# robust_overfitting's (and fast_adversarial's) utils.py: cifar10_mean, cifar10_std
LOCUSLAB_MEAN, LOCUSLAB_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
LOCUSLAB = ",".join(map(str, LOCUSLAB_MEAN + LOCUSLAB_STD))


def seeded(make, seed=0):
    torch.manual_seed(seed)
    net = make()
    with torch.no_grad():  # random BatchNorm statistics, so that the buffers are checked too
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def trades_state(net):
    """TRADES' WideResNet state dict: ours plus `sub_block1`, a copy of block1 forward never uses."""
    state = dict(net.state_dict())
    state.update({"sub_block1." + k[len("block1."):]: torch.randn_like(v) if v.is_floating_point() else v
                  for k, v in net.state_dict().items() if k.startswith("block1.")})
    return state


def test_trades_and_mart_wideresnet_loads_with_its_unused_block(tmp_path):
    net = seeded(wrn34_10)
    path = tmp_path / "model-wideres-epoch76.pt"       # torch.save(model.state_dict(), ...)
    torch.save(trades_state(net), path)
    model = load_weights(build_model("wrn34_10", 10), path).eval()   # --normalize none: raw inputs
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    state = trades_state(net)
    state["sub_block2.layer.0.bn1.weight"] = torch.ones(160)   # only the known unused block is dropped
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        load_weights(build_model("wrn34_10", 10), path)


@pytest.fixture(scope="module")
def cifar(shared_data):
    source = f"npz:{shared_data / 'cifar10-subset' / 'cifar10_subset.npz'}"
    images, labels = load_arrays(source, "test")
    chosen = class_balanced_subset(labels, 2)                   # what --limit 20 evaluates
    return source, images[chosen].float() / 255, labels[chosen]


def evaluate_clean(cifar, checkpoint, normalize, out):
    source, _, _ = cifar
    assert main(["--arch", "preact_resnet18", "--checkpoint", str(checkpoint), "--dataset", source,
                 "--normalize", normalize, "--limit", "20", "--attacks", "fgsm", "--eps", "0.01",
                 "--no-plots", "--no-progress", "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def expected_confusion(net, mean, std, cifar):
    _, x, y = cifar
    with torch.no_grad():
        pred = NormalizedModel(net, mean, std).eval()(x).argmax(1)
    return torch.bincount(y * 10 + pred, minlength=100).view(10, 10).tolist()


def test_robust_overfitting_best_checkpoint_with_module_prefix(cifar, tmp_path):
    net = seeded(preact_resnet18, seed=1)
    path = tmp_path / "model_best.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "test_robust_acc": 0.53, "test_robust_loss": 1.3, "test_loss": 0.6, "test_acc": 0.83}, path)
    report = evaluate_clean(cifar, path, LOCUSLAB, tmp_path / "ro")
    assert report["clean"]["confusion"] == expected_confusion(net, LOCUSLAB_MEAN, LOCUSLAB_STD, cifar)
    assert report["config"]["normalize"] == LOCUSLAB
    # random weights: far below the 83% the checkpoint records, which the summary flags
    codes = {f["code"]: f for f in report["flags"]}
    assert "clean_accuracy_below_recorded" in codes
    assert "test_acc" in codes["clean_accuracy_below_recorded"]["message"]


def test_plain_preact_resnet_state_dict_and_its_normalisation(cifar, tmp_path):
    net = seeded(preact_resnet18, seed=2)
    with torch.no_grad():  # a random deep net predicts one class; larger weights spread its logits
        net.linear.weight.mul_(30)
    path = tmp_path / "model_199.pth"     # robust_overfitting's per-epoch torch.save(model.state_dict())
    torch.save(net.state_dict(), path)
    right = evaluate_clean(cifar, path, LOCUSLAB, tmp_path / "normalised")
    assert right["clean"]["confusion"] == expected_confusion(net, LOCUSLAB_MEAN, LOCUSLAB_STD, cifar)
    raw = evaluate_clean(cifar, path, "none", tmp_path / "raw")   # the wrong normalisation
    assert raw["clean"]["confusion"] == expected_confusion(net, None, None, cifar)
    assert len({p for row in right["clean"]["confusion"] for p, n in enumerate(row) if n}) > 1
    assert raw["clean"]["confusion"] != right["clean"]["confusion"]


def test_recorded_clean_accuracy():
    assert recorded_clean_accuracy({"state_dict": {}, "test_acc": 0.83}) == (0.83, "the checkpoint's 'test_acc'")
    assert recorded_clean_accuracy({"model": {}, "best_acc": 84.5})[0] == pytest.approx(0.845)
    history = [{"val": None}, {"val": {"clean_mean": 0.97}}, {"val": None}]
    assert recorded_clean_accuracy({"model": {}, "history": history}) == (0.97, "the checkpoint's last validation")
    assert recorded_clean_accuracy({"weight": torch.zeros(1)}) is None
    assert recorded_clean_accuracy({"acc": True}) is None


def test_read_checkpoint_returns_what_the_file_records(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"state_dict": {"module.w": torch.ones(1)}, "test_acc": 0.5, "config": {"eps": 0.1}}, path)
    checkpoint = read_checkpoint(path)
    assert list(checkpoint.state) == ["w"] and checkpoint.config == {"eps": 0.1}
    assert checkpoint.clean_accuracy == (0.5, "the checkpoint's 'test_acc'")


def counts_with(correct_per_class, n_per_class=10, c=10):
    counts = ClasswiseCounts([], c)
    for k in range(c):
        counts.clean_confusion[k, k] = correct_per_class
        counts.clean_confusion[k, (k + 1) % c] = n_per_class - correct_per_class
    return counts


def test_clean_accuracy_flags():
    assert clean_accuracy_flags(counts_with(9), expected=0.9) == []             # as recorded
    assert clean_accuracy_flags(counts_with(8), expected=0.85) == []            # inside the interval
    flag, = clean_accuracy_flags(counts_with(3), expected=0.9)
    assert flag["code"] == "clean_accuracy_below_recorded" and "--normalize" in flag["message"]
    flag, = clean_accuracy_flags(counts_with(1))
    assert flag["code"] == "clean_accuracy_near_chance"
    assert clean_accuracy_flags(counts_with(5)) == []


def test_a_key_holding_a_number_or_non_tensors_is_one_clear_error(tmp_path):
    """Issue 25, item 22: `--checkpoint-key epoch` (a number there) and {"model": {k: 1}} raised
    AttributeError from deep inside."""
    from helpers.cli import assert_refused, cli

    path = tmp_path / "k.pt"
    torch.save({"model": {"w": 1}, "epoch": 3}, path)
    common = ["--dataset", "mnist-embedded", "--arch", "small_cnn", "--checkpoint", path, "--attacks", "fgsm",
              "--limit", "20", "--no-plots", "--out", tmp_path / "r"]
    assert_refused(cli("cwr_fast.evaluate", *common, "--checkpoint-key", "epoch"), "checkpoint['epoch']",
                   "type int", "--checkpoint-key")
    assert_refused(cli("cwr_fast.evaluate", *common, "--checkpoint-key", "model"), "not tensors", "'w'")
