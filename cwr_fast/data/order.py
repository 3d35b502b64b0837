"""Which samples each epoch visits, in which order, on which rank: one definition for all loaders.

Every backend (gpu, torch, ffcv) takes its batches from an EpochOrder, so with the same seed
they see the same samples in the same order, and shuffles are reproducible:

  1. the selected indices (the whole split, or a class-balanced subset) in dataset order;
  2. shuffled (train) with a generator seeded by (seed, epoch): the same on every rank;
  3. distributed: with drop_last (train), cut to a multiple of world_size so every rank gets the
     same number of batches; rank r then takes positions r, r + world_size, ... Without drop_last
     (eval) nothing is cut or padded: each sample is seen exactly once over all ranks, and ranks
     may differ by one sample (and one batch);
  4. batches of batch_size; with drop_last the last incomplete batch is dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from cwr_fast.errors import UsageError


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, rank, purpose...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


class EpochOrder:
    def __init__(self, indices: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
            raise UsageError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def for_epoch(self, epoch: int) -> torch.Tensor:
        """The dataset indices this rank visits in `epoch`, in order (int64, CPU)."""
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0x5EED))
            idx = idx[torch.randperm(len(idx), generator=g)]
        if self.world_size > 1:
            if self.drop_last:
                idx = idx[: len(idx) // self.world_size * self.world_size]
            idx = idx[self.rank::self.world_size]
        if self.drop_last:
            idx = idx[: len(idx) // self.batch_size * self.batch_size]
        return idx

    def batches(self, epoch: int) -> list[torch.Tensor]:
        return list(torch.split(self.for_epoch(epoch), self.batch_size))

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank (the same every epoch)."""
        n = len(self.indices)
        if self.world_size > 1:
            if self.drop_last:
                n = n // self.world_size * self.world_size
            n = len(range(self.rank, n, self.world_size))
        return n // self.batch_size * self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return -(-self.num_samples // self.batch_size)
