"""FFCV .beton files: writing them (atomically) and reading what they hold.

A .beton has two fields, 'image' and 'label' (IntField). The image field depends on the source:
  fixed-size datasets: NDArrayField uint8 [C, H, W], the raw pixels, byte for byte; grey images
    keep their one channel (FFCV's RGBImageField would force three);
  variable-size sources (ImageNet, folder:): RGBImageField, every image converted to RGB first,
    longest side cut to max_resolution, stored as JPEG of jpeg_quality in the proportion
    compress_probability ('proportion', FFCV's ImageNet recipe), or all 'jpg', 'raw' or 'smart'.
The default location is <data root>/ffcv/<name>-<split>.beton; `make_loader(loader="auto")`
uses a .beton found there.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import queue
import time
from pathlib import Path

import numpy as np

from cwr_fast.options import most_workers
from cwr_fast.data.decode import DecodedFiles
from cwr_fast.data.errors import DatasetError
from cwr_fast.data.registry import data_root, dataset_info, is_generic
from cwr_fast.data.sources import file_samples, load_arrays
from cwr_fast.errors import MissingInput, UsageError
from cwr_fast.outputs import (NoSpaceError, check_output_file, is_no_space, record_written_file,
                              temporary_prefix)

WRITE_MODES = ("raw", "jpg", "proportion", "smart")
_NO_SPACE = "no space left on the device"  # what a writer worker reports for a full disk
FFCV_HINT = ("FFCV is an optional extra: install Debian's libturbojpeg0-dev libopencv-dev "
             "pkg-config, then `pip install -e .[ffcv]`")


def ffcv_installed() -> bool:
    return importlib.util.find_spec("ffcv") is not None


def import_ffcv():
    """The ffcv module, or an ImportError that says how to install it."""
    try:
        import ffcv  # noqa: F401
        import ffcv.loader  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ffcv cannot be imported ({err}). {FFCV_HINT}") from err
    return ffcv


def default_beton_path(name: str, split: str, data_dir=None) -> Path | None:
    """<data root>/ffcv/<name>-<split>.beton for registered names; None for generic sources."""
    if is_generic(name):
        return None
    return data_root(data_dir) / "ffcv" / f"{name}-{split}.beton"


class _ArraySamples:
    """(uint8 [C, H, W] array, int label) of in-memory arrays, as the FFCV writer reads them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def _describe_failure(dataset, index: int, err: Exception) -> str:
    """One line naming the image that could not be written, and why."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    files = getattr(dataset, "samples", None)
    path = files[index][0] if files is not None else f"#{index}"
    if str(path) in message:
        return message
    return f"cannot write image {path}: {type(err).__name__}: {message}"


def _write_worker(input_queue, metadata_sm, metadata_type, fields, allocator, done_number,
                  allocations_queue, dataset, failures):
    """ffcv.writer.worker_job_indexed_dataset, except that a sample that cannot be read or
    encoded is reported on `failures` (naming its file) and ends the worker without a traceback,
    instead of leaving the parent waiting forever."""
    from ffcv.writer import handle_sample

    try:
        metadata = np.frombuffer(metadata_sm.buf, dtype=metadata_type)
        field_names = metadata_type.names
        with allocator:
            while (chunk := input_queue.get()) is not None:
                for dest_ix, source_ix in chunk:
                    try:
                        handle_sample(dataset[source_ix], dest_ix, field_names, metadata,
                                      allocator, fields)
                    except Exception as err:
                        failures.put(_NO_SPACE if is_no_space(err) else
                                     _describe_failure(dataset, source_ix, err))
                        return
                with done_number.get_lock():
                    done_number.value += len(chunk)
        allocations_queue.put(allocator.allocations)
    except Exception as err:
        failures.put(_NO_SPACE if is_no_space(err) else
                     f"the FFCV writer failed: {type(err).__name__}: {err}")
    except KeyboardInterrupt:
        pass


def _checked_writer_class():
    """FFCV 1.0.2's DatasetWriter, whose parent stops (and stops its workers) when a worker
    fails, instead of waiting forever for the samples that worker would have written."""
    from ffcv.writer import DatasetWriter

    class CheckedWriter(DatasetWriter):
        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            self.num_samples = num_samples
            self.prepare()
            workers = _WriterWorkers(self, queue_content, extra_worker_args)
            try:
                workers.start()
                workers.wait_until_counted(num_samples)
                self.finalize(workers.allocations())
            finally:
                workers.stop()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    return CheckedWriter


class _WriterWorkers:
    """The worker processes of one CheckedWriter write, watched: a worker that fails or ends
    early stops the parent with its failure instead of leaving it waiting."""

    def __init__(self, writer, queue_content, extra_worker_args):
        import ctypes
        from multiprocessing import Process, Queue, Value

        from ffcv.writer import MemoryAllocator

        self.fname = writer.fname
        workqueue, self.allocations_queue, self.failures = Queue(), Queue(), Queue()
        for todo in queue_content:
            workqueue.put(todo)
        for _ in range(writer.num_workers):
            workqueue.put(None)
        self.done_number = Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(writer.fname, writer.data_region_start, writer.page_size)
        args = (workqueue, writer.metadata_sm, writer.metadata_type, writer.fields, allocator,
                self.done_number, self.allocations_queue, *extra_worker_args, self.failures)
        self.processes = [Process(target=_write_worker, args=args)
                          for _ in range(writer.num_workers)]

    def start(self) -> None:
        for proc in self.processes:
            proc.start()

    def wait_until_counted(self, num_samples: int) -> None:
        """Until the workers have counted every sample, with a progress bar."""
        from time import sleep

        from tqdm import tqdm

        progress = tqdm(total=num_samples)
        try:
            previous = 0
            while previous != num_samples:
                self.check(lambda: self.done_number.value == num_samples)
                val = self.done_number.value
                if val > previous:
                    progress.update(val - previous)
                previous = val
                sleep(0.1)
        finally:
            progress.close()

    def check(self, finished) -> None:
        """Raises a worker's reported failure, or a DatasetError when a worker ended early."""
        try:
            self.fail(self.failures.get_nowait())
        except queue.Empty:
            pass
        codes = [proc.exitcode for proc in self.processes]
        dead = [c for c in codes if c not in (None, 0)]
        if dead or (all(c == 0 for c in codes) and not finished()):
            try:  # a failure reported just before its worker ended
                self.fail(self.failures.get(timeout=2))
            except queue.Empty:
                pass
            raise DatasetError(f"an FFCV writer worker ended (exit code {(dead or [0])[0]}) "
                               "before every image was written; nothing was written")

    def allocations(self) -> list:
        """Each worker's allocations, which it sends once its images are flushed to the file;
        a worker whose last flush fails (a full disk) has counted all its images already, so
        its failure is watched for here too, instead of waiting forever."""
        allocation_list, quiet_since = [], None
        for _ in self.processes:
            while True:
                try:
                    allocation_list.extend(self.allocations_queue.get(timeout=0.2))
                    break
                except queue.Empty:
                    self.check(lambda: True)
                    if all(proc.exitcode is not None for proc in self.processes):
                        quiet_since = quiet_since or time.monotonic()
                        if time.monotonic() - quiet_since > 10:
                            raise DatasetError("the FFCV writer workers ended without "
                                               "reporting their images; nothing was written")
        return allocation_list

    def fail(self, failure: str):
        if failure == _NO_SPACE:  # write_beton names the file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.fname)
        raise DatasetError(failure)

    def stop(self) -> None:
        """Ends the workers still running (after a failure) and waits for them briefly."""
        for proc in self.processes:
            if proc.is_alive():
                proc.terminate()
        for proc in self.processes:
            if proc.pid is not None:
                proc.join(5)


def write_beton(name: str, split: str, out: str | os.PathLike | None = None, data_dir=None, *,
                write_mode: str | None = None, max_resolution: int = 512, jpeg_quality: int = 90,
                compress_probability: float = 0.5, num_workers: int = -1,
                download: bool = True, overwrite: bool = False) -> Path:
    """Writes one split as a .beton (see the module doc) and returns its path.

    The file is written under a temporary name in the same folder and renamed at the end, so a
    file with the final name is always complete; an existing file is replaced only with
    overwrite=True and only if cwr_fast wrote it, and never the source being written
    (cwr_fast.outputs). FFCV shows a progress bar.
    """
    info = dataset_info(name)
    info.check_split(split)
    out = Path(out) if out is not None else default_beton_path(name, split, data_dir)
    if out is None:
        raise UsageError(f"{name}: give the output path (out=...) for a generic source")
    source = name.split(":", 1)[1] if is_generic(name) else None
    check_output_file(out, overwrite, inputs={"the dataset being written": source})
    if write_mode is not None and write_mode not in WRITE_MODES:
        raise UsageError(f"write_mode must be one of {', '.join(WRITE_MODES)}, got {write_mode!r}")
    if not 1 <= jpeg_quality <= 100 or not 0 <= compress_probability <= 1:
        raise UsageError("need 1 <= jpeg_quality <= 100 and 0 <= compress_probability <= 1")
    if isinstance(max_resolution, bool) or not isinstance(max_resolution, int) or max_resolution < 1:
        raise UsageError(f"max_resolution (--max-resolution) must be a whole number >= 1 "
                         f"(pixels of the longest side kept), got {max_resolution!r}")
    most = most_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or \
            not (num_workers == -1 or 1 <= num_workers <= most):
        raise UsageError(f"num_workers (--num-workers) must be -1 (all {os.cpu_count() or 1} CPUs) or "
                         f"1 to {most}, got {num_workers!r} (one writer process each: more than the "
                         "CPUs only contend, and thousands never finish starting)")
    import_ffcv()
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    DatasetWriter = _checked_writer_class()

    if info.fixed_size:
        if write_mode not in (None, "raw"):
            raise UsageError(f"{name} is written as raw pixels (exact, and small); "
                             f"write_mode={write_mode!r} is for ImageNet and folder: sources")
        images, labels = load_arrays(name, split, data_dir, download=download)
        samples = _ArraySamples(images.numpy(), labels.numpy())
        image_field = NDArrayField(np.dtype("uint8"), tuple(images.shape[1:]))
    else:
        samples = DecodedFiles(file_samples(name, split, data_dir), "full")
        image_field = RGBImageField(write_mode=write_mode or "proportion",
                                    max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                                    compress_probability=compress_probability)
    if len(samples) == 0:
        raise DatasetError(f"{name} split {split!r} has no images to write")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{temporary_prefix()}{out.name}")
    try:
        writer = DatasetWriter(str(tmp), {"image": image_field, "label": IntField()},
                               num_workers=num_workers)
        writer.from_indexed_dataset(samples)
        os.replace(tmp, out)
    except (OSError, RuntimeError) as err:  # a full disk, in this process or a writer worker
        if is_no_space(err):
            raise NoSpaceError(out, "free space and run the same command again") from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
    record_written_file(out)
    return out


def beton_contents(path: str | os.PathLike) -> tuple[str, tuple[int, ...] | None, np.ndarray]:
    """('ndarray' or 'rgb', the ndarray image shape or None, int64 labels) of a .beton, read from
    its metadata table without decoding any image."""
    import_ffcv()
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.reader import Reader

    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"no .beton at {path}")
    try:
        reader = Reader(str(path))
    except Exception as err:  # FFCV raises assorted errors on a damaged or foreign file
        raise DatasetError(f"{path} is not a readable .beton ({type(err).__name__}: {err})") from err
    fields = dict(reader.handlers)
    names = list(fields)
    if set(names) != {"image", "label"} or not isinstance(fields["label"], IntField):
        raise DatasetError(f"{path} has fields {names}; expected 'image' and 'label' (IntField), "
                           "as python -m cwr_fast.data.beton writes them")
    labels = np.asarray(reader.metadata[f"f{names.index('label')}"], dtype=np.int64).copy()
    image = fields["image"]
    if isinstance(image, NDArrayField):
        return "ndarray", tuple(int(s) for s in image.shape), labels
    if isinstance(image, RGBImageField):
        return "rgb", None, labels
    raise DatasetError(f"{path}: unsupported image field {type(image).__name__}")
