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


class ConfigError(UsageError):
    """Bad command-line input: reported as one line before any work starts (exit status 2)."""


class UsageTypeError(UsageError, TypeError):
    """The user's input is of the wrong kind (a model factory that returns no torch.nn.Module);
    a TypeError too, as it always was."""


class MissingInput(UsageError, FileNotFoundError):
    """A file the user named is not there (a --model file, a .beton); a FileNotFoundError too."""
