"""Options declared once. A configuration is a dataclass whose fields carry their command-line
declaration (flag, help, group, type, whether a resumed run may change it, and a check), so the
parser, the resume rules and the simple checks are all derived from one place, in the spirit of
FFCV's examples (one declaration per parameter):

    @dataclass
    class Config:
        epochs: int = option(8, "training epochs", "optimisation", type=integer, check=at_least(1))

    add_options(parser, Config)               # --epochs, in the group "optimisation"
    given = given_options(parser.parse_args(), Config)   # only what the user typed
    check_options(cfg)                        # "--epochs must be an integer >= 1, got 0"

The parser's defaults are suppressed: a namespace holds only the options given on the command
line, and the configuration's code decides what an unset option means (a preset, a field default).

Below the declarations: what every command-line tool shares, the argparse types (`number` takes
'8/255'), how budgets are written, and how a tool ends on bad input or Ctrl-C.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Declaration:
    help: str
    group: str
    type: Callable | None = None
    choices: tuple | None = None
    action: object = None            # "store_true", argparse.BooleanOptionalAction, ...
    metavar: str | None = None
    fixed_on_resume: bool = False    # part of a run's trajectory: a resumed run must not change it
    check: Callable | None = None    # value -> the reason it is wrong ("must be >= 0, got -1") or None
    shown_default: str | None = None  # what --help says the default is (default: the field's)
    flag: str | None = None          # the option's name when it is not --field-name, e.g.
                                     # "--no-progress" (action="store_false") for a field progress


def option(default, help: str, group: str, **declaration):
    """A dataclass field with its command-line declaration (see Declaration)."""
    meta = {"option": Declaration(help, group, **declaration)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls) -> list[tuple[dataclasses.Field, Declaration]]:
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def flag(name: str, declaration: Declaration | None = None) -> str:
    if declaration is not None and declaration.flag is not None:
        return declaration.flag
    return "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls, groups: dict | None = None,
                shown_defaults: dict | None = None, suppress_defaults: bool = True) -> dict:
    """Adds every declared option of `cls` to `parser`, in argument groups by declaration.group
    (created on first use and returned, so a caller can add more to a group). shown_defaults:
    {field name: text} overrides what --help says of a default (e.g. 'dataset preset').
    suppress_defaults=False: the namespace holds every option, the field's default where none
    was typed (for a command that has no presets to fill in)."""
    groups = {} if groups is None else groups
    shown_defaults = shown_defaults or {}
    for f, d in declared(cls):
        if d.group not in groups:
            groups[d.group] = parser.add_argument_group(d.group)
        shown = shown_defaults.get(f.name, d.shown_default)
        if shown is None:
            shown = _shown(_default(f))
        default = argparse.SUPPRESS if suppress_defaults else _default(f)
        kwargs = {"dest": f.name, "default": default,
                  "help": f"{d.help} (default {shown})" if shown else d.help}
        for key in ("type", "choices", "action", "metavar"):
            value = getattr(d, key)
            if value is not None:
                kwargs[key] = value
        groups[d.group].add_argument(flag(f.name, d), **kwargs)
    return groups


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == [] or value == {}:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def given_options(args: argparse.Namespace, cls) -> dict:
    """{field name: value} of the declared options that were given on the command line."""
    names = {f.name for f, _ in declared(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def resume_rules(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the fields a resumed run must keep, the fields it may change)."""
    fixed = tuple(f.name for f, d in declared(cls) if d.fixed_on_resume)
    free = tuple(f.name for f, d in declared(cls) if not d.fixed_on_resume)
    return fixed, free


def check_options(cfg) -> str | None:
    """The first failed declared check, as '--flag <reason>', or None."""
    for f, d in declared(type(cfg)):
        if d.check is not None:
            reason = d.check(getattr(cfg, f.name))
            if reason:
                return f"{flag(f.name, d)} {reason}"
    return None


# ---- the checks ---------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def at_least(low: int, optional: bool = False):
    """An integer >= low (None allowed when optional, i.e. 'no limit')."""
    def check(v):
        if optional:
            return None if v is None or (_is_int(v) and v >= low) else f"must be >= {low}, got {v}"
        return None if _is_int(v) and v >= low else f"must be an integer >= {low}, got {v}"
    return check


def positive(v):
    return None if v is None or (not isinstance(v, bool) and v > 0) else f"must be > 0, got {v}"


def non_negative(v):
    return None if v is None or (not isinstance(v, bool) and v >= 0) else f"must be >= 0, got {v}"


def fraction(v):
    return None if 0 <= v <= 1 else (f"must be a fraction in [0, 1] (0.01 = 1 point of mean "
                                     f"accuracy), got {v:g}")


def one_of(*choices):
    def check(v):
        return None if v in choices else f"must be {' or '.join(map(str, choices))}, got {v!r}"
    return check


# ---- the argparse types, budgets and ends every command-line tool shares --------------------------


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
