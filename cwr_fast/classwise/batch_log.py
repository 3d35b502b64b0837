"""Per-batch results of an evaluation, saved as they are computed, so that an interrupted
evaluation (AutoAttack on ImageNet takes hours) continues where it stopped.

    log = BatchLog("reports/imagenet.partial/attacks")
    counts = evaluate_classwise(model, loader, 1000, attacks, log=log)   # again after a kill

One file per batch, written atomically: a batch is either complete on disk or evaluated again.
Attack noise is seeded per (batch, attack), so the continued evaluation equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from cwr_fast.errors import UsageError
from cwr_fast.outputs import save_torch


class BatchLog:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, batch_index: int) -> Path:
        return self.directory / f"batch-{batch_index:07d}.pt"

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("batch-*.pt"))

    def load(self, batch_index: int, attack_names: list[str], batch: tuple | None = None) -> dict | None:
        """The saved record of a batch, or None when it was not evaluated yet. With batch (the
        images and labels being evaluated), a record saved from other images is refused."""
        path = self.path(batch_index)
        if not path.is_file():
            return None
        record = torch.load(path, map_location="cpu", weights_only=True)
        if record.get("attack_names") != attack_names:
            raise UsageError(f"{path} holds batch {batch_index} of an evaluation with the attacks "
                             f"{record.get('attack_names')}, not {attack_names}: the kept batches "
                             f"in {self.directory} belong to another evaluation (start it over with "
                             "--overwrite)")
        if batch is not None and record.get("batch_sha256") not in (None, batch_digest(*batch)):
            raise UsageError(f"{path} holds batch {batch_index} of other images or labels than "
                             f"the dataset gives now: the dataset changed since the kept batches in "
                             f"{self.directory} were evaluated (restore it, or start over with "
                             "--overwrite)")
        return record

    def save(self, batch_index: int, record: dict, attack_names: list[str],
             batch: tuple | None = None) -> None:
        extra = {} if batch is None else {"batch_sha256": batch_digest(*batch)}
        save_torch({**record, "attack_names": list(attack_names), **extra}, self.path(batch_index))


def batch_digest(*tensors: torch.Tensor) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (a batch's images and labels)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
