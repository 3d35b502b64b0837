"""Model registry: `build_model(name, ...)` for the zoo, `load_factory("file.py:fn")` for any
model a user has."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from cwr_fast.models.normalize import NormalizedModel
from cwr_fast.models.preact_resnet import preact_resnet18
from cwr_fast.models.resnet import resnet50
from cwr_fast.models.small_cnn import SmallCNN
from cwr_fast.models.wide_resnet import wrn34_10

# name -> constructor(num_classes, in_channels) of the bare network (inputs already normalised)
ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": lambda num_classes, in_channels: SmallCNN(num_classes, in_channels),
    "preact_resnet18": preact_resnet18,
    "wrn34_10": wrn34_10,
    "resnet50": resnet50,
}
_ALIASES = {"smallcnn": "small_cnn", "cnn": "small_cnn", "preactresnet18": "preact_resnet18",
            "wrn-34-10": "wrn34_10", "wrn_34_10": "wrn34_10", "wideresnet34_10": "wrn34_10",
            "resnet-50": "resnet50", "resnet_50": "resnet50"}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)} "
                         "or pass --model path/to/file.py:factory")
    return key


def build_model(name: str, num_classes: int, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, in_channels: int | None = None) -> NormalizedModel:
    """A zoo model wrapped with its input normalisation: it takes images in [0, 1].

    in_channels defaults to len(mean), else 3.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if in_channels is None:
        in_channels = len(mean) if mean is not None else 3
    if mean is not None and len(mean) not in (1, in_channels):
        raise ValueError(f"mean has {len(mean)} channels but in_channels={in_channels}")
    net = ARCHITECTURES[canonical_name(name)](num_classes, in_channels)
    return NormalizedModel(net, mean, std)


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """'path/to/file.py:factory' -> the callable `factory` defined in that file."""
    path_str, sep, attr = spec.rpartition(":")
    if not sep or not path_str or not attr:
        raise ValueError(f"--model must look like path/to/file.py:factory, got {spec!r}")
    path = Path(path_str)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    module_name = f"cwr_fast_user_model_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{path} has no callable named {attr!r}")
    return factory


def call_factory(factory: Callable[..., nn.Module], **available) -> nn.Module:
    """Calls factory with those of `available` (num_classes, in_channels, mean, std) it accepts."""
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in available.items() if takes_kwargs or k in params}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
