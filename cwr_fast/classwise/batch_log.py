"""Per-batch results of an evaluation, saved as they are computed, so that an interrupted
evaluation (AutoAttack on ImageNet takes hours) continues where it stopped.

    log = BatchLog("reports/imagenet.partial/attacks")
    counts = evaluate_classwise(model, loader, 1000, attacks, log=log)   # again after a kill

One file per batch, written atomically: a batch is either complete on disk or evaluated again.
Attack noise is seeded per (batch, attack), so the continued evaluation equals an uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cwr_fast.outputs import save_torch


class BatchLog:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, batch_index: int) -> Path:
        return self.directory / f"batch-{batch_index:07d}.pt"

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("batch-*.pt"))

    def load(self, batch_index: int, attack_names: list[str]) -> dict | None:
        """The saved record of a batch, or None when it was not evaluated yet."""
        path = self.path(batch_index)
        if not path.is_file():
            return None
        record = torch.load(path, map_location="cpu", weights_only=True)
        if record.get("attack_names") != attack_names:
            raise ValueError(f"{path} holds batch {batch_index} of an evaluation with the attacks "
                             f"{record.get('attack_names')}, not {attack_names}: remove "
                             f"{self.directory} to start over")
        return record

    def save(self, batch_index: int, record: dict, attack_names: list[str]) -> None:
        save_torch({**record, "attack_names": list(attack_names)}, self.path(batch_index))
