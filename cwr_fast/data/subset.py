"""Class-balanced subsets: the first k images of each class, or k drawn with a seed."""

from __future__ import annotations

import warnings

import torch

from cwr_fast.errors import UsageError, UsageTypeError


def class_balanced_subset(labels, per_class: int, seed: int | None = None) -> torch.Tensor:
    """Indices (int64, ascending) of up to `per_class` images of each class.

    seed=None: the first `per_class` of each class in dataset order (deterministic, and stable
    when the dataset grows at the end). seed=int: a uniform draw without replacement per class,
    reproducible from the seed. A class with fewer images gives all of them, with a warning.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise UsageTypeError(f"labels must be integers, got {labels.dtype}")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise UsageError(f"per_class must be a positive int, got {per_class!r}")
    labels = labels.cpu().long()
    if len(labels) == 0:
        return torch.empty(0, dtype=torch.long)
    if labels.min() < 0:
        raise UsageError(f"labels must be >= 0, got {int(labels.min())}")
    candidates = torch.arange(len(labels))
    if seed is not None:  # a random order first, so that "first k" below means "k at random"
        candidates = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    by_class = candidates[torch.sort(labels[candidates], stable=True).indices]
    sorted_labels = labels[by_class]
    counts = torch.bincount(sorted_labels)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(len(labels)) - starts[sorted_labels]
    short = [c for c, n in enumerate(counts.tolist()) if 0 < n < per_class]
    if short:
        warnings.warn(f"class_balanced_subset: {len(short)} class(es) have fewer than {per_class} "
                      f"images (e.g. class {short[0]}: {int(counts[short[0]])}); taking all of "
                      "theirs", stacklevel=2)
    return torch.sort(by_class[rank_in_class < per_class]).values
