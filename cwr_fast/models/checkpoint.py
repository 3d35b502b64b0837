"""Loading weights into a model from a checkpoint file (`torch.load(weights_only=True)`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from cwr_fast.models.calibration import ClasswiseCalibration, is_calibrated_state

# where training scripts commonly put the weights inside a checkpoint dict, in order of preference
_STATE_KEYS = ("model_ema", "ema", "model", "state_dict", "model_state_dict", "net")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model's architecture."""


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
    elif not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = [k for k in _STATE_KEYS if isinstance(checkpoint.get(k), Mapping)]
        if not found:
            raise CheckpointMismatchError(f"checkpoint is a dict without tensors or any of the keys "
                                          f"{list(_STATE_KEYS)}; its keys: {sorted(checkpoint)[:10]}")
        checkpoint = checkpoint[found[0]]
    state = {}
    for name, tensor in checkpoint.items():
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        state[name] = tensor
    return state


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:2]})")
    return problems


def read_checkpoint(path: str | Path, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(the model's state dict in a checkpoint file (see extract_state_dict), the training
    configuration saved beside it by cwr_fast.train (its "config" dict) or None);
    FileNotFoundError or CheckpointMismatchError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, non-tensor objects
        raise CheckpointMismatchError(f"cannot read checkpoint {path} with weights_only=True: {err}") from err
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    return extract_state_dict(checkpoint, key), config if isinstance(config, dict) else None


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict in a checkpoint file (see read_checkpoint)."""
    return read_checkpoint(path, key)[0]


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
    problems = {}
    for target in targets:
        problems[target] = state_dict_mismatch(target, state)
        if not problems[target]:
            target.load_state_dict(state, strict=True)
            return model
    closest = min(problems.values(), key=len)
    raise CheckpointMismatchError(f"checkpoint {path} does not match {arch_name}: " + "; ".join(closest))
