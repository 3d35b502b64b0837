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

import importlib.util
import os
from pathlib import Path

import numpy as np

from cwr_fast.data.decode import DecodedFiles
from cwr_fast.data.errors import DatasetError
from cwr_fast.data.registry import data_root, dataset_info, is_generic
from cwr_fast.data.sources import file_samples, load_arrays
from cwr_fast.outputs import check_output_file, record_written_file, temporary_prefix

WRITE_MODES = ("raw", "jpg", "proportion", "smart")
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
        raise ValueError(f"{name}: give the output path (out=...) for a generic source")
    source = name.split(":", 1)[1] if is_generic(name) else None
    check_output_file(out, overwrite, inputs={"the dataset being written": source})
    if write_mode is not None and write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {', '.join(WRITE_MODES)}, got {write_mode!r}")
    if not 1 <= jpeg_quality <= 100 or not 0 <= compress_probability <= 1:
        raise ValueError("need 1 <= jpeg_quality <= 100 and 0 <= compress_probability <= 1")
    import_ffcv()
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    if info.fixed_size:
        if write_mode not in (None, "raw"):
            raise ValueError(f"{name} is written as raw pixels (exact, and small); "
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
        raise FileNotFoundError(f"no .beton at {path}")
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
