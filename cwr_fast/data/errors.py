"""The data layer's errors: each says what is wrong and what to do about it."""


class DatasetError(RuntimeError):
    """A dataset cannot be read as asked (bad name, split or file contents)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The files of a dataset are missing; the message lists which files to put where."""


class ChecksumError(DatasetError):
    """A dataset file is present but its md5 is not the official one."""
