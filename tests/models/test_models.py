"""The model zoo: registry, normalisation wrapper, checkpoint loading, user factories."""

import pytest
import torch
from torch import nn

from cwr_fast.models import (CheckpointMismatchError, NormalizedModel, SmallCNN, build_model,
                             call_factory, load_factory, load_weights)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, num_classes, in_channels, size, expected_params", [
    ("small_cnn", 10, 1, 28, None),
    ("small_cnn", 10, 3, 32, None),
    ("preact_resnet18", 10, 3, 32, 11_172_170),  # with the final BN, as Wong et al. / Rice et al.
    ("preact_resnet18", 100, 3, 32, None),
    ("wrn34_10", 10, 3, 32, 46_160_474),
    ("resnet50", 1000, 3, 64, 25_557_032),
    ("resnet50", 10, 1, 64, None),
])
def test_zoo_models_build_and_run(name, num_classes, in_channels, size, expected_params):
    mean, std = [0.5] * in_channels, [0.25] * in_channels
    model = build_model(name, num_classes, mean, std, in_channels).eval()
    assert isinstance(model, NormalizedModel)
    if expected_params is not None:
        assert n_params(model) == expected_params
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_aliases_and_unknown_name():
    assert isinstance(build_model("WRN-34-10", 10).net, nn.Module)
    with pytest.raises(ValueError, match="unknown architecture 'vgg'.*small_cnn"):
        build_model("vgg", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small_cnn", 0)


def test_normalized_model_applies_mean_and_std_inside():
    net = nn.Identity()
    model = NormalizedModel(net, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0])
    x = torch.rand(4, 3, 5, 5)
    expected = (x - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), expected)
    assert set(model.state_dict()) == {"mean", "std"}  # the normalisation travels with checkpoints
    torch.testing.assert_close(NormalizedModel(net)(x), x)
    with pytest.raises(ValueError, match="positive"):
        NormalizedModel(net, [0.0], [0.0])
    with pytest.raises(ValueError, match="both"):
        NormalizedModel(net, [0.0], None)
    with pytest.raises(ValueError, match="channels"):
        build_model("small_cnn", 10, mean=[0.1, 0.2], std=[1, 1], in_channels=3)


def test_wrn_parameter_names_follow_trades():
    names = set(build_model("wrn34_10", 10).net.state_dict())
    assert {"conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.4.bn2.running_var",
            "bn1.weight", "fc.bias"} <= names


def test_small_cnn_is_small():
    assert n_params(SmallCNN()) < 200_000


def test_load_weights_accepts_wrapper_bare_net_nested_and_ddp(tmp_path):
    torch.manual_seed(0)
    source = build_model("small_cnn", 10, [0.1307], [0.3081])
    x = torch.rand(3, 1, 28, 28)
    expected = source(x)
    variants = {
        "wrapper.pt": source.state_dict(),
        "net.pt": source.net.state_dict(),
        "nested.pt": {"epoch": 3, "model": source.state_dict()},
        "ddp.pt": {f"module.{k}": v for k, v in source.state_dict().items()},
        "compiled.pt": {f"_orig_mod.{k}": v for k, v in source.net.state_dict().items()},
    }
    for name, state in variants.items():
        torch.save(state, tmp_path / name)
        target = build_model("small_cnn", 10, [0.1307], [0.3081])
        load_weights(target, tmp_path / name)
        torch.testing.assert_close(target(x), expected, msg=name)


def test_load_weights_errors(tmp_path):
    model = build_model("small_cnn", 10, [0.1307], [0.3081])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_weights(model, tmp_path / "missing.pt")
    torch.save(build_model("small_cnn", 7).state_dict(), tmp_path / "seven.pt")
    with pytest.raises(CheckpointMismatchError, match="does not match.*shape mismatch"):
        load_weights(model, tmp_path / "seven.pt")
    torch.save(build_model("preact_resnet18", 10).state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_weights(model, tmp_path / "resnet.pt", arch_name="small_cnn")
    torch.save({"epoch": 1, "optimizer": {"lr": 0.1}}, tmp_path / "nothing.pt")
    with pytest.raises(CheckpointMismatchError, match="without tensors"):
        load_weights(model, tmp_path / "nothing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot read"):
        load_weights(model, tmp_path / "garbage.pt")


def test_load_factory_and_call_factory(tmp_path):
    source = tmp_path / "my_models.py"
    source.write_text(
        "import torch.nn as nn\n"
        "def make(num_classes, in_channels=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, num_classes))\n"
        "def bad():\n"
        "    return 3\n"
        "NOT_CALLABLE = 1\n")
    factory = load_factory(f"{source}:make")
    model = call_factory(factory, num_classes=5, in_channels=1, mean=(0.5,), std=(0.5,))
    assert model(torch.rand(2, 1, 2, 2)).shape == (2, 5)
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        call_factory(load_factory(f"{source}:bad"))
    with pytest.raises(ValueError, match="no callable named 'NOT_CALLABLE'"):
        load_factory(f"{source}:NOT_CALLABLE")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_factory(f"{tmp_path / 'nope.py'}:make")
    with pytest.raises(ValueError, match="path/to/file.py:factory"):
        load_factory(str(source))
