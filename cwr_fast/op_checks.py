"""Argument rules of the ops that Python states itself, in one place for the wrappers of
`cwr_fast.ops`, the reference ops of `cwr_fast.reference` and the attacks that check early (the
compiled kernels state the same rules in csrc/checks.cpp)."""

from __future__ import annotations


def check_dlr_classes(num_classes: int, targeted: bool) -> None:
    """The DLR denominator needs the 3rd (targeted: 4th) largest logit."""
    need = 4 if targeted else 3
    if num_classes < need:
        raise ValueError(f"logits must have at least {need} classes for the "
                         f"{'targeted' if targeted else 'untargeted'} DLR loss, got {num_classes}")
