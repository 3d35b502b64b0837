"""Model registry: `build_model(name, ...)` for the zoo, `load_factory("file.py:fn")` for any
model a user has."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from cwr_fast.errors import MissingInput, UsageError, UsageTypeError
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
        raise UsageError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)} "
                         "or pass --model path/to/file.py:factory")
    return key


def build_model(name: str, num_classes: int, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, in_channels: int | None = None) -> NormalizedModel:
    """A zoo model wrapped with its input normalisation: it takes images in [0, 1].

    in_channels defaults to len(mean), else 3.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive int, got {num_classes!r}")
    if in_channels is None:
        in_channels = len(mean) if mean is not None else 3
    if mean is not None and len(mean) not in (1, in_channels):
        raise UsageError(f"mean has {len(mean)} channels but in_channels={in_channels}")
    net = ARCHITECTURES[canonical_name(name)](num_classes, in_channels)
    return NormalizedModel(net, mean, std)


class ModelCodeError(UsageError):
    """The user's model code (their --model file, its factory, its first forward pass) raised: the
    user's input, told in one line naming the line of their file (`from` the original error)."""


def user_code_error(what: str, path: Path | None, err: Exception) -> ModelCodeError:
    """One line for an error raised by the user's model code, naming the line of their file
    where it happened (the traceback inside cwr_fast says nothing to them)."""
    line = err.lineno if isinstance(err, SyntaxError) else None
    if line is None and path is not None:
        mine = [f for f in traceback.extract_tb(err.__traceback__)
                if os.path.realpath(f.filename) == os.path.realpath(path)]
        line = mine[-1].lineno if mine else None
    reason = err.msg if isinstance(err, SyntaxError) else " ".join(str(err).split())
    return ModelCodeError(f"{what}: {type(err).__name__}: {reason}"
                          + (f" ({path}, line {line})" if line else ""))


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """'path/to/file.py:factory' -> the callable `factory` defined in that file."""
    path_str, sep, attr = spec.rpartition(":")
    if not sep or not path_str or not attr:
        raise UsageError(f"--model must look like path/to/file.py:factory, got {spec!r}")
    path = Path(path_str)
    if not path.is_file():
        raise MissingInput(f"model file not found: {path}")
    module_name = f"cwr_fast_user_model_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the user's folder
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's file: a syntax error, a missing import, ...
        sys.modules.pop(module_name, None)
        raise user_code_error(f"cannot load --model file {path}", path, err) from err
    finally:
        sys.dont_write_bytecode = dont_write
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{path} has no callable named {attr!r}")
    return factory


def materialize_lazy(model: nn.Module, image_shape: Sequence[int]) -> nn.Module:
    """A model with lazy modules (nn.LazyLinear, ...) gets its parameters' shapes from one forward
    pass of a blank image [1, *image_shape], in eval mode and without gradients, every module's
    mode restored; their values are drawn from torch's current generator (or replaced by the
    checkpoint loaded next). Anything else is left as it is. The forward pass is the user's model
    code: if it raises (a model that does not fit the images), ModelCodeError."""
    from torch.nn.parameter import is_lazy

    if not any(is_lazy(t) for t in (*model.parameters(), *model.buffers())):
        return model
    modes = [(m, m.training) for m in model.modules()]
    device = next((t.device for t in model.parameters() if not is_lazy(t)), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, device=device))
    except Exception as err:
        raise user_code_error(f"the model's first forward pass (on a blank {list(image_shape)} image, to "
                              "shape its lazy modules) raised", _source_file(type(model)), err) from err
    finally:
        for module, training in modes:
            module.training = training
    return model


def call_factory(factory: Callable[..., nn.Module], **available) -> nn.Module:
    """Calls factory with those of `available` (num_classes, in_channels, mean, std) it accepts."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError) as err:  # a callable without a signature Python can read
        raise UsageError(f"the model factory {factory!r} has no readable signature ({err})") from err
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in available.items() if takes_kwargs or k in params}
    try:
        model = factory(**kwargs)
    except Exception as err:
        source = _source_file(factory) if inspect.isfunction(factory) else None
        raise user_code_error(f"the model factory {getattr(factory, '__name__', factory)!s}({', '.join(kwargs)}) "
                              "raised", source, err) from err
    if not isinstance(model, nn.Module):
        raise UsageTypeError(f"model factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _source_file(obj) -> Path | None:
    """The file defining a function or class, or None (built in, or defined interactively)."""
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return Path(source) if source else None
