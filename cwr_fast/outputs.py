"""Where cwr_fast writes, and what it may replace there.

Every directory cwr_fast writes carries a manifest, `.cwr_fast.json`: which kind of output it is
(an evaluation report, a training run, a comparison, a reproduce study) and the files cwr_fast
put there. `--overwrite` replaces only the files of a manifest of the same kind; a non-empty
directory without one, or of another kind, is refused, so a checkpoint, a training run or a
user's own files are never deleted. Every CLI checks its output location (a directory, or a file
for .beton) before any compute: that it can be used, and that it is writable.

Files are written under temporary names in the same directory and renamed into place one by one,
which also works when the directory is a mount point. A run killed half-way leaves its temporary
behind; the next run in the same place removes it and says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from cwr_fast.errors import RunError, UsageError

MANIFEST = ".cwr_fast.json"
LOCK = ".cwr_fast.lock"  # the pid of the process writing the directory now (writer_lock)
TMP_PREFIX = ".cwr_fast-tmp-"  # + "<pid>-": a temporary whose process is gone is stale

Content = str | Callable[[Path], object]  # text, or a function writing the file at the given path


class OutputError(UsageError):
    """An output location cwr_fast must not or cannot write; the message names it and says why."""


class OutputExists(OutputError):
    """The location holds an earlier cwr_fast output of the same kind and overwrite was not given."""


class NoSpaceError(RunError, OSError):
    """The disk (or quota) filled up while cwr_fast wrote `path`. The write was atomic, so the
    previous file is intact and nothing done before is lost; str() is the one line to show:
    "no space left while writing FILE; free space and run with --resume". A RunError (exit 1: a
    failure after starting, not a bad input) and an OSError (errno ENOSPC), not an OutputError."""

    def __init__(self, path: str | os.PathLike, advice: str = "free space and run with --resume"):
        # OSError's own constructor (the MRO would pick RuntimeError's): errno, strerror, filename
        OSError.__init__(self, errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path, self.advice = Path(path), advice

    def __str__(self) -> str:
        return f"no space left while writing {self.path}; {self.advice}"


def no_space_error(err: BaseException) -> NoSpaceError | None:
    """err as a NoSpaceError when it is one or a failure for want of space (is_no_space), naming
    the file where known; else None. For the CLIs' last except clause."""
    if isinstance(err, NoSpaceError):
        return err
    if not is_no_space(err):
        return None
    return NoSpaceError(getattr(err, "filename", None) or "a file")


_NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_no_space(err: BaseException) -> bool:
    """A write that failed for want of space: OSError ENOSPC/EDQUOT, or torch.save's
    "[enforce fail at inline_container.cc:...]" RuntimeError (what it raises when its zip writer
    cannot write, e.g. "unexpected pos"), or an error caused by one of these."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, NoSpaceError):
            return True
        if isinstance(err, OSError) and err.errno in _NO_SPACE_ERRNOS:
            return True
        if isinstance(err, RuntimeError) and "inline_container" in str(err) and "enforce fail" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def read_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str):
        return None
    manifest["files"] = [f for f in manifest.get("files", []) if isinstance(f, str)]
    return manifest


def write_manifest(directory: Path, kind: str, files: Iterable[str]) -> None:
    text = json.dumps({"kind": kind, "files": sorted(set(files))}, indent=1) + "\n"
    write_atomic(directory / MANIFEST, "w", lambda f: f.write(text))


def check_output_dir(out: str | os.PathLike, kind: str, overwrite: bool,
                     resumable: bool = False) -> Path:
    """Checks, before any compute, that cwr_fast may write a `kind` output to `out`; returns it.

    Empty or absent: fine. Holding a cwr_fast output of the same kind: fine with `overwrite` (only
    its listed files get replaced) or when the kind is `resumable` (continued in place). Anything
    else that holds files is refused. A probe file is written there (and removed, with any folder
    made for it), so an unwritable location is reported now and not after the work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    if out.is_dir():
        remove_stale_temporaries(out)
        present = sorted(p.name for p in out.iterdir()
                         if p.name not in (MANIFEST, LOCK) and not _is_temporary(p.name))
        if present:
            manifest = read_manifest(out)
            if manifest is None:
                shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
                raise OutputError(f"{out} holds files cwr_fast did not write ({shown}); it replaces only "
                                  f"its own output: choose a new or empty directory")
            if manifest["kind"] != kind:
                raise OutputError(f"{out} holds a cwr_fast {manifest['kind']}, where a {kind} was to "
                                  f"go: choose another directory")
            if not (overwrite or resumable):
                raise OutputExists(f"{out} already holds a cwr_fast {kind} (pass --overwrite to "
                                  f"replace its files)")
    check_writable(out)
    return out


# The single files cwr_fast wrote (absolute path -> size, time, inode), kept out of the users'
# folders; $CWR_FAST_STATE overrides the place (the tests use their own)
def files_registry() -> Path:
    return Path(os.environ.get("CWR_FAST_STATE", "~/.cache/cwr_fast")).expanduser() / "written-files.json"


def check_output_file(out: str | os.PathLike, overwrite: bool,
                      inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Like check_output_dir, for one file (a .beton, per-image outcomes): never a directory, never
    one of the run's `inputs` ({what: path}, e.g. {"the dataset": "data/mine.npz"}) whatever
    overwrite says, and an existing file only with `overwrite` and only if cwr_fast wrote it (as
    the registry of written files records it, unchanged since); the folder must be writable."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{out} is a directory: give the path of the file to write")
    for what, path in (inputs or {}).items():
        if path is not None and same_file(out, path):
            raise OutputError(f"{out} is {what} of this run: an output never replaces an input, "
                              "whatever --overwrite says; choose another file name")
    if out.exists():
        if not overwrite:
            raise OutputError(f"{out} exists (pass --overwrite to replace it)")
        if not written_by_cwr_fast(out):
            raise OutputError(f"{out} was not written by cwr_fast (or changed since): --overwrite "
                              "replaces only cwr_fast's own files; choose another name, or remove "
                              "the file yourself")
    check_writable(out.parent)
    remove_stale_temporaries(out.parent)
    return out


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same file: one resolved path, or one file reached through two names (a link)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _registry() -> dict:
    try:
        entries = json.loads(files_registry().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def record_written_file(path: str | os.PathLike) -> Path:
    """Notes in the registry of written files that cwr_fast wrote `path` (its size, time and
    inode), so that a later --overwrite may replace it, and nothing else. Best effort: where the
    registry cannot be written, the file is simply not replaceable with --overwrite."""
    path = Path(path)
    entries = {k: v for k, v in _registry().items() if Path(k).exists()}  # forget removed files
    entries[str(path.resolve())] = _fingerprint(path)
    text = json.dumps(entries, indent=1, sort_keys=True) + "\n"
    try:
        write_atomic(files_registry(), "w", lambda f: f.write(text))
    except OSError:
        pass
    return path


def written_by_cwr_fast(path: str | os.PathLike) -> bool:
    path = Path(path)
    entry = _registry().get(str(path.resolve()))
    try:
        return isinstance(entry, dict) and entry == _fingerprint(path)
    except OSError:
        return False


def check_writable(directory: Path) -> None:
    """Creates a probe file in directory (creating the directory if needed, and removing again
    what it created), so that a location that cannot be written fails now, with its reason."""
    directory = Path(directory)
    missing = [d for d in [directory, *directory.parents] if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix(), dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"cannot write to {directory}: {err.strerror or err}") from None
    finally:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:
                break


def temporary_prefix() -> str:
    return f"{TMP_PREFIX}{os.getpid()}-"


def write_files(out: str | os.PathLike, kind: str, files: Mapping[str, Content],
                overwrite: bool = True) -> Path:
    """Writes `files` (name -> text or writer) into out (checked as check_output_dir does),
    replacing what an earlier cwr_fast output of the same kind put there and nothing else; the
    manifest is written last."""
    out = check_output_dir(out, kind, overwrite)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    previous = set((read_manifest(out) or {}).get("files", []))
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(), dir=out))
    current = out
    try:
        for name, content in files.items():
            current = out / name
            if callable(content):
                content(tmp / name)
            else:
                (tmp / name).write_text(content, encoding="utf-8")
        current = out
        for name in files:
            os.replace(tmp / name, out / name)
        for name in previous - set(files):
            (out / name).unlink(missing_ok=True)
        write_manifest(out, kind, files)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:  # an error leaves nothing behind where there was nothing
            shutil.rmtree(out, ignore_errors=True)
        if is_no_space(err) and not isinstance(err, NoSpaceError):  # earlier files are intact
            raise NoSpaceError(current) from err
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def writer_lock(directory: str | os.PathLike, tool: str):
    """One writer at a time: while the block runs, directory/.cwr_fast.lock holds this process's
    pid, and another process asking for the lock is refused (OutputError) as long as that pid
    runs; a lock left by a process that is gone is taken over. A directory the lock created is
    removed again on exit if nothing else was written into it."""
    directory = Path(directory)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write to {directory}: {err.strerror or err}") from None
    path = directory / LOCK
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is not None and owner != os.getpid() and _process_alive(owner):
                raise OutputError(f"another {tool} (pid {owner}) is writing {directory} now: wait "
                                  "for it to finish or stop it first (two writers would mix their "
                                  "files)") from None
            path.unlink(missing_ok=True)  # left by a process that is gone
            continue
        except OSError as err:
            raise OutputError(f"cannot write to {directory}: {err.strerror or err}") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise OutputError(f"cannot take the lock {path}")
    try:
        yield directory
    finally:
        if _lock_owner(path) == os.getpid():
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty


def _lock_owner(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Removes the temporaries of cwr_fast processes that no longer run (a killed evaluation or
    .beton writer can leave gigabytes); says so on stderr."""
    removed = []
    try:
        candidates = [p for p in directory.iterdir() if _is_temporary(p.name)]
    except OSError:
        return removed
    for path in candidates:
        if _process_alive(_owner_pid(path.name)):
            continue
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            continue
        removed.append(path)
        print(f"cwr_fast: removed {path}, a temporary left by an interrupted run", file=sys.stderr)
    return removed


def write_atomic(path: str | os.PathLike, mode: str, write) -> Path:
    """Writes through write(file) to a temporary file in the same directory (named as
    remove_stale_temporaries knows them), fsyncs it, renames it over `path` and fsyncs the
    directory: a file with the final name is always complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{temporary_prefix()}{path.name}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_no_space(err) and not isinstance(err, NoSpaceError):  # the old file is intact
            raise NoSpaceError(path) from err
        raise
    fsync_dir(path.parent)
    return path


def write_text(text: str, path: str | os.PathLike) -> Path:
    """The text file `path`, written atomically (write_atomic)."""
    return write_atomic(path, "w", lambda f: f.write(text))


def save_torch(obj, path: str | os.PathLike) -> Path:
    """torch.save(obj) to `path`, atomically (write_atomic): a crash leaves the old or the new file."""
    import torch
    return write_atomic(path, "wb", lambda f: torch.save(obj, f))


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_temporary(name: str) -> bool:
    return name.startswith(TMP_PREFIX) and _owner_pid(name) is not None


def _owner_pid(name: str) -> int | None:
    pid = name[len(TMP_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _process_alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

