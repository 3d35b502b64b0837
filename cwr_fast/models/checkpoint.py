"""Loading weights into a model from a checkpoint file (`torch.load(weights_only=True)`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from cwr_fast.errors import UsageError

from cwr_fast.models.calibration import ClasswiseCalibration, is_calibrated_state

# where training scripts commonly put the weights inside a checkpoint dict, in order of preference
_STATE_KEYS = ("model_ema", "ema", "model", "state_dict", "model_state_dict", "net")
_PREFIXES = ("module.", "_orig_mod.")
# tensors that published checkpoints carry but their models never use, dropped when the model has
# no such tensors: TRADES' and MART's WideResNet define a block `sub_block1` that forward skips
_UNUSED_PREFIXES = ("sub_block1.",)
# where training scripts record the clean test accuracy beside the weights (robust_overfitting:
# test_acc), as a fraction or in percent
_ACCURACY_KEYS = ("test_acc", "clean_acc", "test_nat_acc", "nat_acc", "natural_acc", "best_acc", "acc")


class CheckpointMismatchError(UsageError):
    """The checkpoint's tensors do not fit the model's architecture (a usage error, exit 2).
    shapes_differ: some tensor the model has is in the checkpoint with another shape (e.g. the
    classifier of another number of classes)."""

    def __init__(self, message: str, shapes_differ: bool = False):
        super().__init__(message)
        self.shapes_differ = shapes_differ


class CheckpointNotFoundError(UsageError, FileNotFoundError):
    """The checkpoint file the user named is not there (a usage error, and a FileNotFoundError)."""


def extract_state_dict(checkpoint: object, key: str | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint: the object itself, or checkpoint[key] for key
    given or the first of model_ema, ema, model, state_dict, model_state_dict, net; prefixes of
    DistributedDataParallel ('module.') and torch.compile ('_orig_mod.') are removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"checkpoint holds a {type(checkpoint).__name__}, not a dict "
                                      "of tensors (save model.state_dict())")
    if key is not None:
        if key not in checkpoint:
            raise CheckpointMismatchError(f"checkpoint has no key {key!r}; its keys: "
                                          f"{sorted(checkpoint)[:10]}")
        checkpoint = checkpoint[key]
        if not isinstance(checkpoint, Mapping):
            raise CheckpointMismatchError(f"checkpoint[{key!r}] is of type {type(checkpoint).__name__}, "
                                          "not the model's state dict: pass the key of the weights "
                                          "(e.g. --checkpoint-key model)")
    elif not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = [k for k in _STATE_KEYS if isinstance(checkpoint.get(k), Mapping)]
        if not found:
            raise CheckpointMismatchError(f"checkpoint is a dict without tensors or any of the keys "
                                          f"{list(_STATE_KEYS)}; its keys: {sorted(checkpoint)[:10]}")
        checkpoint = checkpoint[found[0]]
    if not checkpoint:  # torch.save({}, p): all() of nothing is true, and every key would be "missing"
        where = f"checkpoint[{key!r}]" if key is not None else "the checkpoint"
        raise CheckpointMismatchError(f"{where} holds no tensors (an empty dict): not a model's "
                                      "weights; save model.state_dict()")
    odd = [(k, type(v).__name__) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointMismatchError(f"the state dict in the checkpoint holds values that are not "
                                      f"tensors (e.g. {odd[0][0]!r} of type {odd[0][1]}): not a model's weights")
    state, source = {}, {}
    for key, tensor in checkpoint.items():
        name = key
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        if name in state:  # 'x' and 'module.x': which one is the model's is anyone's guess
            raise CheckpointMismatchError(
                f"checkpoint holds both {source[name]!r} and {key!r}, the same tensor once with and once "
                "without a 'module.'/'_orig_mod.' prefix: keep one of them (or pass --checkpoint-key)")
        state[name], source[name] = tensor, key
    return state


def _without_unused(state: Mapping[str, torch.Tensor], model: nn.Module) -> Mapping[str, torch.Tensor]:
    own = model.state_dict()
    unused = [p for p in _UNUSED_PREFIXES if not any(k.startswith(p) for k in own)]
    return {k: v for k, v in state.items() if not k.startswith(tuple(unused))} if unused else state


def _wrong_shapes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    return [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in model.state_dict().items() if k in state and tuple(state[k].shape) != tuple(v.shape)]


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = _wrong_shapes(model, state)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:2]})")
    return problems


class Checkpoint(NamedTuple):
    state: dict[str, torch.Tensor]      # the model's state dict (extract_state_dict)
    config: dict | None                 # the training configuration cwr_fast.train saved beside it
    clean_accuracy: tuple[float, str] | None  # (the clean accuracy it records, where), if any


def recorded_clean_accuracy(checkpoint: object) -> tuple[float, str] | None:
    """The clean accuracy a checkpoint records, as a fraction, and where it was found: the last
    validation of a cwr_fast training run, or a key such as robust_overfitting's test_acc."""
    if not isinstance(checkpoint, Mapping):
        return None
    history = checkpoint.get("history")
    if isinstance(history, list):
        vals = [h["val"] for h in history if isinstance(h, Mapping) and isinstance(h.get("val"), Mapping)]
        if vals and isinstance(vals[-1].get("clean_mean"), (int, float)):
            return float(vals[-1]["clean_mean"]), "the checkpoint's last validation"
    for key in _ACCURACY_KEYS:
        value = checkpoint.get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 100:
            return (value / 100 if value > 1 else float(value)), f"the checkpoint's {key!r}"
    return None


def checkpoint_file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be a checkpoint file before reading it (missing, a directory, empty), or None."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        return (f"checkpoint {path} is a directory: give the weights file in it"
                + (f", e.g. {last}" if last.is_file() else ""))
    if not path.is_file():
        return f"checkpoint not found: {path}"
    if path.stat().st_size == 0:
        return f"checkpoint {path} is empty (0 bytes): not a model's weights (an interrupted copy or save?)"
    return None


def read_checkpoint(path: str | Path, key: str | None = None) -> Checkpoint:
    """The model's state dict in a checkpoint file (see extract_state_dict), with what the file
    records beside it (Checkpoint); CheckpointNotFoundError (a FileNotFoundError) or
    CheckpointMismatchError."""
    path = Path(path)
    problem = checkpoint_file_problem(path)
    if problem:
        raise (CheckpointMismatchError if path.exists() else CheckpointNotFoundError)(problem)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, non-tensor objects
        # a foreign file gives bare reasons such as KeyError(101) or EOFError()
        reason = str(err) if len(str(err)) > 8 else (f"not a file written by torch.save (a zip "
                                                      f"archive or a pickle) ({type(err).__name__}"
                                                      + (f": {err}" if str(err) else "") + ")")
        raise CheckpointMismatchError(f"cannot read checkpoint {path} with weights_only=True: "
                                      f"{reason}") from err
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    return Checkpoint(extract_state_dict(checkpoint, key), config if isinstance(config, dict) else None,
                      recorded_clean_accuracy(checkpoint))


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict in a checkpoint file (see read_checkpoint)."""
    return read_checkpoint(path, key).state


def load_weights(model: nn.Module, path: str | Path, key: str | None = None,
                 arch_name: str = "the model", state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Loads a checkpoint into model (in place) and returns it.

    The checkpoint may hold the state dict of the model itself or, for a NormalizedModel, of the
    bare network inside it (`model.net`; the normalisation buffers then keep their values).
    A class-wise calibrated checkpoint (keys `scale`, `bias`, `model.*`) needs the model wrapped in
    cwr_fast.models.calibration.ClasswiseCalibration first (`python -m cwr_fast.evaluate` does it itself).
    state: the state dict already read from path (read_state_dict), to avoid reading it twice.
    Raises FileNotFoundError or CheckpointMismatchError with what does not fit.
    """
    path = Path(path)
    if state is None:
        state = read_state_dict(path, key)
    if is_calibrated_state(state) and not isinstance(model, ClasswiseCalibration):
        raise CheckpointMismatchError(
            f"checkpoint {path} holds a class-wise calibrated model (keys scale, bias, model.*): "
            "wrap the model first, ClasswiseCalibration(model, num_classes), then load it "
            "(python -m cwr_fast.evaluate detects it by itself)")
    targets = [model] + ([model.net] if isinstance(getattr(model, "net", None), nn.Module) else [])
    tried = []
    for target in targets:
        state = _without_unused(state, target)
        problems = state_dict_mismatch(target, state)
        if not problems:
            target.load_state_dict(state, strict=True)
            return model
        tried.append((problems, target, state))
    closest, target, state = min(tried, key=lambda t: len(t[0]))
    raise CheckpointMismatchError(f"checkpoint {path} does not match {arch_name}: " + "; ".join(closest),
                                  shapes_differ=bool(_wrong_shapes(target, state)))
