"""The model layer refuses the user's input (an --arch, a --model file or factory, a zoo model that
does not fit the dataset) with a UsageError at the source, each keeping its old built-in base, so
that the command lines exit 2 without turning every ValueError into a usage error (issue 27)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cwr_fast.errors import ConfigError, MissingInput, UsageError, UsageTypeError
from cwr_fast.models import sources
from cwr_fast.models.registry import (ModelCodeError, build_model, call_factory, canonical_name,
                                      load_factory, materialize_lazy)

USER_MODELS = """import torch
from torch import nn

def make(num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

def broken(num_classes):
    raise KeyError("no such layer")

def not_a_model(num_classes):
    return 3

NOT_CALLABLE = 1
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODELS)
    return path


def test_a_bad_architecture_or_build_argument_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown architecture 'nope'"):
        canonical_name("nope")
    with pytest.raises(UsageError, match="num_classes must be a positive int"):
        build_model("small_cnn", 0)
    with pytest.raises(UsageError, match="mean has 2 channels"):
        build_model("small_cnn", 10, mean=(0.5, 0.5), std=(0.5, 0.5), in_channels=3)


def test_a_bad_model_spec_or_file_is_a_usage_error_keeping_its_builtin_base(user_file, tmp_path):
    with pytest.raises(UsageError, match="path/to/file.py:factory"):
        load_factory(str(user_file))
    with pytest.raises(MissingInput, match="model file not found") as missing:
        load_factory(f"{tmp_path / 'nope.py'}:make")
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(UsageError, match="no callable named 'NOT_CALLABLE'"):
        load_factory(f"{user_file}:NOT_CALLABLE")
    (tmp_path / "syntax.py").write_text("def make(:\n")
    with pytest.raises(ModelCodeError, match=r"cannot load --model file .*SyntaxError"):
        load_factory(f"{tmp_path / 'syntax.py'}:make")


def test_a_failing_factory_is_a_usage_error_naming_it_from_the_original(user_file):
    with pytest.raises(ModelCodeError, match=r"the model factory broken\(num_classes\) raised: "
                                             r"KeyError: 'no such layer' \(.*my_models.py, line 8\)") as err:
        call_factory(load_factory(f"{user_file}:broken"), num_classes=10, in_channels=1)
    assert isinstance(err.value, UsageError) and isinstance(err.value.__cause__, KeyError)
    with pytest.raises(UsageTypeError, match="not a torch.nn.Module") as wrong:
        call_factory(load_factory(f"{user_file}:not_a_model"), num_classes=10)
    assert isinstance(wrong.value, TypeError)


def test_a_lazy_model_that_does_not_fit_the_images_is_a_usage_error(user_file):
    model = call_factory(load_factory(f"{user_file}:make"), num_classes=10)
    assert materialize_lazy(model, (1, 4, 4))[1].weight.shape == (10, 16)

    class Picky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.LazyLinear(10)

        def forward(self, x):
            raise TypeError("wants a tuple")

    with pytest.raises(ModelCodeError, match="first forward pass .* TypeError: wants a tuple") as err:
        materialize_lazy(Picky(), (1, 4, 4))
    assert isinstance(err.value.__cause__, TypeError)


def test_a_zoo_constructor_refusing_the_dataset_is_a_config_error(monkeypatch):
    def refuses(name, num_classes, in_channels):
        raise ValueError("needs images of at least 32 pixels")

    monkeypatch.setattr(sources, "_build_torchvision", refuses)
    with pytest.raises(ConfigError, match=r"--model torchvision:resnet18 cannot be built .*"
                                          r"ValueError: needs images of at least 32 pixels") as err:
        sources.build_from_source("torchvision:resnet18", dataset="cifar10", num_classes=10,
                                  in_channels=3, mean=None, std=None)
    assert isinstance(err.value.__cause__, ValueError)
    own = ConfigError("torchvision:resnet18 takes 3-channel images")

    def refuses_itself(name, num_classes, in_channels):
        raise own

    monkeypatch.setattr(sources, "_build_torchvision", refuses_itself)
    with pytest.raises(ConfigError) as err:
        sources.build_from_source("torchvision:resnet18", dataset="cifar10", num_classes=10,
                                  in_channels=1, mean=None, std=None)
    assert err.value is own, "cwr_fast's own usage errors pass unchanged"


def test_an_internal_bug_in_a_zoo_model_keeps_its_type():
    """Only the argument checks are usage errors: the model itself still raises what torch raises."""
    model = build_model("small_cnn", 10, mean=(0.5,), std=(0.5,), in_channels=1)
    with pytest.raises(RuntimeError) as err:
        model(torch.rand(2, 3, 28, 28))
    assert not isinstance(err.value, UsageError)
