"""What every command-line tool shares: the argparse types, the bad-input error, how budgets are
written, and how a tool ends on bad input or Ctrl-C."""

from __future__ import annotations

import argparse
import math
import sys

from cwr_fast.errors import UsageError


class ConfigError(UsageError):
    """Bad command-line input: reported as one line before any work starts (exit status 2); a
    ValueError too, through UsageError."""


def number(text: str) -> float:
    """A finite float, also written as a fraction: '8/255', '2.67/255'."""
    try:
        parts = [float(part) for part in text.split("/")] if "/" in text else [float(text)]
        if len(parts) > 2:
            raise ValueError
        value = parts[0] / parts[1] if len(parts) == 2 else parts[0]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not all(math.isfinite(v) for v in (*parts, value)):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


MAX_SEED = 2 ** 63  # torch.manual_seed takes a signed 64-bit integer; numpy's seeds are >= 0


def seed(text: str) -> int:
    """A seed: a whole number in [0, 2**63), as both torch and numpy take it."""
    value = integer(text)
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be a whole number >= 0 and < 2**63, got {text}")
    return value


def most_workers() -> int:
    """The most loader or writer processes cwr_fast starts: 4 per CPU (one process each; more only
    contend, and thousands never finish starting)."""
    import os

    return 4 * (os.cpu_count() or 1)


def threads_problem(threads: int | None) -> str | None:
    """Why --threads N cannot be used (below 1, or more than this machine's CPUs: 100,000 threads
    exhaust the memory), or None."""
    import os

    cpus = os.cpu_count() or 1
    if threads is None:
        return None
    if threads < 1:
        return f"--threads must be >= 1, got {threads}"
    if threads > cpus:
        return (f"--threads {threads} is more than the {cpus} CPUs of this machine: give at most "
                f"{cpus} (more threads than CPUs only contend)")
    return None


def comma_list(cast=str, what: str = "values", allow_empty: bool = False):
    """An argparse type: 'a,b,c' -> [cast(a), cast(b), cast(c)], at least one item unless
    allow_empty ('' -> [])."""
    def parse(text: str) -> list:
        values = [cast(t.strip()) for t in text.split(",") if t.strip()]
        if not values and not allow_empty:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}")
        return values
    return parse


numbers = comma_list(number, "numbers")


def budget_problem(value: float) -> str | None:
    """Why a Linf budget is not one (pixel units in [0, 1]), or None."""
    if value < 0:
        return f"must be >= 0, got {value:g}"
    if value > 1:
        return (f"must lie in [0, 1] pixel units, got {value:g} (did you mean {value:g}/255 = "
                f"{value / 255:.4f}?)")
    return None


def fmt_budget(value: float) -> str:
    """How a budget is written: 0.0313725... -> '8/255', 0.0104575... -> '2.67/255', 0.3 -> '0.3'."""
    k = value * 255
    if 0 < value < 0.1 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    if 0 < value < 0.1 and len(f"{value:g}") > 5:
        return f"{k:.3g}/255"
    return f"{value:.4g}"


# ---- how every CLI ends on bad input or Ctrl-C (docs/RELIABILITY.md) --------------------------------

USAGE_ERROR = 2    # bad input: one line on stderr
INTERRUPTED = 130  # Ctrl-C, as the shell reports it


def usage_error(tool: str, err) -> int:
    print(f"{tool}: error: {err}", file=sys.stderr)
    return USAGE_ERROR


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is: the CLI says what was kept and how to go on."""


def interrupt_on_signals() -> None:
    """SIGTERM and SIGHUP raise Stopped (a KeyboardInterrupt) in the main thread, so that a CLI
    stopped by `kill`, a closed terminal or a job scheduler ends as it does on Ctrl-C."""
    import signal

    def stop(signum, _frame):
        raise Stopped(signal.Signals(signum).name)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def interrupted(tool: str, what_was_kept: str) -> int:
    print(f"{tool}: interrupted; {what_was_kept}", file=sys.stderr)
    return INTERRUPTED
