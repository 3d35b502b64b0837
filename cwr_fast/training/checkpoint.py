"""Training checkpoints: their format, `weights_only=True` reads, every RNG state (they are
written atomically by cwr_fast.outputs.save_torch).

A training checkpoint (`checkpoints/last.pt`) is a dict of tensors and plain Python values only:

    format, format_version      "cwr_fast.train_checkpoint", 1
    config                      the resolved training configuration (dict of plain values)
    model                       state dict of the bare model (no DDP / torch.compile prefixes)
    ema                         {decay, updates, module} or None
    optimizer, scaler           their state dicts (scaler: None without fp16)
    schedule                    the learning-rate schedule's settings (see schedules.LRSchedule)
    progress                    {epoch, batch, global_step}: the next batch to train is batch
                                `batch` of epoch `epoch` (data order is a function of seed, epoch)
    epoch_sums                  running train loss/accuracy sums of the current epoch
    defense                     state of the class-wise policy (cwr_fast.defenses)
    best                        best mean / worst-class validation robust accuracy so far
    history                     every metrics.jsonl record so far (re-written on resume)
    rng                         torch CPU/CUDA, Python `random` and NumPy global states
    num_threads                 torch.get_num_threads() of the writer (bit-identity needs the same)

`best_mean.pt` / `best_worst.pt` hold {format, model, epoch, metrics, config}: the evaluated
weights (the EMA weights when EMA is on) under the key "model", so `python -m cwr_fast.evaluate
--arch ... --checkpoint` reads them directly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from cwr_fast.errors import UsageError


FORMAT = "cwr_fast.train_checkpoint"
BEST_FORMAT = "cwr_fast.best_weights"
FORMAT_VERSION = 1


class CheckpointError(UsageError):
    """A checkpoint that cannot be read, or that does not fit this run."""


def load(path: str | os.PathLike, expect: str = FORMAT) -> dict:
    """Reads a checkpoint with weights_only=True; CheckpointError with the reason if it is missing,
    corrupt or truncated, not a cwr_fast training checkpoint, or of another format version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, non-allow-listed objects
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt, truncated or not written by "
                              f"cwr_fast; torch.load(weights_only=True) said: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    if not isinstance(state, dict) or state.get("format") != expect:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a cwr_fast training checkpoint (format {found!r}, "
                              f"expected {expect!r})")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {state.get('format_version')}, "
                              f"this cwr_fast reads version {FORMAT_VERSION}")
    return state


def resolve_resume_path(path: str | os.PathLike) -> Path:
    """A run directory -> its checkpoints/last.pt; a file -> itself."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise CheckpointError(f"--resume {path}: no checkpoints/last.pt in this directory")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint file or run directory")
    return path


# ---- RNG states -----------------------------------------------------------------------------------

def rng_state() -> dict:
    """Every global RNG state, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": _to_plain(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(value):
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value):
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value
