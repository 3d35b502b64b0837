"""argparse types shared by the command-line tools."""

from __future__ import annotations

import argparse
from fractions import Fraction


def number(text: str) -> float:
    """A float, also written as a fraction: '8/255'."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
