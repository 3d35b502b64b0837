"""How a bench file runs as a script: `python bench/bench_X.py [--profile] [pytest args]`."""

from __future__ import annotations

import sys

import pytest


def main(path: str, profile) -> None:
    """--profile: run profile() (a torch.profiler table); else the file's benchmarks."""
    if "--profile" in sys.argv:
        profile()
    else:
        raise SystemExit(pytest.main([path, "--benchmark-only", *sys.argv[1:]]))
