"""cwr_fast's error hierarchy: what a command line does with each error is decided by its class.

- `UsageError`: the user's input is wrong (an argument, a file, a dataset, a checkpoint). A
  command line prints one line naming what is wrong and exits 2.
- `RunError`: the input was fine but the run cannot go on (disk full, a worker died, a training
  that diverged). One line, exit 1.
- Anything else is a bug in cwr_fast (or in the user's model) and keeps its traceback.

The older classes keep their built-in bases (`ValueError`, `RuntimeError`, ...) as well, so code
that catches those still works.
"""

from __future__ import annotations


class CwrFastError(Exception):
    """Base of every error cwr_fast raises on purpose."""


class UsageError(CwrFastError, ValueError):
    """The user's input is wrong; command lines exit 2 with one line."""


class RunError(CwrFastError, RuntimeError):
    """The run cannot go on for a reason outside the arguments; command lines exit 1 with one line."""
