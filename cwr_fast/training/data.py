"""Training, validation and test loaders, built on cwr_fast.data.make_loader.

The validation subset is class-balanced: `val_per_class` images per class, either held out of the
training split (default; never trained on) or taken from another split. The training order is the
data layer's EpochOrder: a pure function of (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cwr_fast.data import BatchLoader, DatasetInfo, make_loader


@dataclass
class Loaders:
    train: BatchLoader
    val: BatchLoader
    info: DatasetInfo
    num_train: int     # training images (all ranks)
    num_val: int


def _subset_seed(seed: int) -> int:
    return 1_000 + int(seed)


def build_loaders(cfg, device: torch.device, rank: int = 0, world_size: int = 1) -> Loaders:
    """(train, val) loaders for the config. batch sizes: cfg.batch_size is global; each rank
    takes cfg.batch_size // world_size."""
    info_split = cfg.dataset
    common = dict(loader=cfg.loader, device=device, data_dir=cfg.data_dir,
                  num_workers=cfg.num_workers)
    from cwr_fast.data import dataset_info
    info = dataset_info(info_split)
    train_split = info.train_split
    per_rank = cfg.batch_size // world_size
    sseed = _subset_seed(cfg.seed)

    if cfg.val_split == "holdout":
        val = make_loader(cfg.dataset, train_split, cfg.val_batch_size, train=False,
                          per_class=cfg.val_per_class, subset_seed=sseed, **common)
        val_idx = val.order.indices
    else:
        val = make_loader(cfg.dataset, cfg.val_split, cfg.val_batch_size, train=False,
                          per_class=cfg.val_per_class, subset_seed=sseed, **common)
        val_idx = torch.empty(0, dtype=torch.long)

    train_per_class = None
    if cfg.train_per_class is not None:
        train_per_class = cfg.train_per_class + (cfg.val_per_class if cfg.val_split == "holdout" else 0)
    # class_balanced_subset with one seed is nested in k: with per_class = train + val, excluding
    # the held-out images leaves exactly train_per_class of each class.
    train = make_loader(cfg.dataset, train_split, per_rank, train=True, seed=cfg.seed,
                        per_class=train_per_class, subset_seed=sseed,
                        exclude=val_idx if len(val_idx) else None,
                        distributed=world_size > 1, rank=rank if world_size > 1 else None,
                        world_size=world_size if world_size > 1 else None, **common)
    return Loaders(train=train, val=val, info=train.info, num_train=len(train.order.indices),
                   num_val=len(val.order.indices))


def build_test_loader(cfg, device: torch.device, batch_size: int, split: str | None = None) -> BatchLoader:
    from cwr_fast.data import dataset_info
    info = dataset_info(cfg.dataset)
    per_class = None if cfg.final_limit is None else cfg.final_limit // info.num_classes
    return make_loader(cfg.dataset, split or info.eval_split, batch_size, train=False,
                       loader=cfg.loader, device=device, data_dir=cfg.data_dir,
                       num_workers=cfg.num_workers, per_class=per_class)

