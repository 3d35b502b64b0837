"""The data layer's errors: each says what is wrong and what to do about it. All are usage errors
(the dataset asked for, or its files, are the user's input: command lines exit 2 with one line),
and RuntimeErrors as they always were."""

from cwr_fast.errors import UsageError


class DatasetError(UsageError, RuntimeError):
    """A dataset cannot be read as asked (bad name, split or file contents)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The files of a dataset are missing; the message lists which files to put where."""


class ChecksumError(DatasetError):
    """A dataset file is present but its md5 is not the official one."""
