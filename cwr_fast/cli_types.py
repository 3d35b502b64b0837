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


def comma_list(cast=str, what: str = "values"):
    """An argparse type: 'a,b,c' -> [cast(a), cast(b), cast(c)], at least one item."""
    def parse(text: str) -> list:
        values = [cast(t.strip()) for t in text.split(",") if t.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}")
        return values
    return parse
