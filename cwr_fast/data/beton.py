"""Writes a dataset split as an FFCV .beton.

    python -m cwr_fast.data.beton --dataset cifar10 --split train --out cifar10-train.beton
    python -m cwr_fast.data.beton --dataset imagenet --split train --write-mode proportion \\
        --max-resolution 512 --jpeg-quality 90 --compress-probability 0.5

Fixed-size datasets are stored as raw pixels (exact); ImageNet and folder: sources as RGB images,
JPEG-compressed per the options. The file appears under its final name only once complete; an
existing file is replaced only with --overwrite, and a temporary left by a killed run is removed
on the next run.
Without --out it goes to <data root>/ffcv/<dataset>-<split>.beton, where make_loader finds it.
"""

from __future__ import annotations

import argparse
import sys
import time

from cwr_fast.options import interrupted, usage_error
from cwr_fast.data.ffcv_io import WRITE_MODES, default_beton_path, write_beton
from cwr_fast.errors import ConfigError, RunError, UsageError

TOOL = "cwr_fast.data.beton"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cwr_fast.data.beton",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True,
                        help="a registered name (cifar10, imagenet, ...) or folder:PATH / npz:PATH")
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", default=None,
                        help="output path (default: <data root>/ffcv/<dataset>-<split>.beton)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--data-dir", default=None,
                        help="dataset root (default: $CWR_FAST_DATA, else ~/.cache/cwr_fast/data)")
    parser.add_argument("--write-mode", choices=WRITE_MODES, default=None,
                        help="ImageNet/folder: only; default proportion (fixed-size: raw)")
    parser.add_argument("--max-resolution", type=int, default=512,
                        help="ImageNet/folder: longest side kept (default 512)")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--compress-probability", type=float, default=0.5,
                        help="share of JPEG-compressed images in 'proportion' mode")
    parser.add_argument("--num-workers", type=int, default=-1, help="default: all CPUs")
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading missing dataset files")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    out = args.out
    try:
        out = args.out or default_beton_path(args.dataset, args.split, args.data_dir)
        if out is None:
            raise ConfigError(f"{args.dataset}: give the output path with --out (a generic source has "
                              "no default place)")
        path = write_beton(args.dataset, args.split, out, args.data_dir,
                           write_mode=args.write_mode, max_resolution=args.max_resolution,
                           jpeg_quality=args.jpeg_quality,
                           compress_probability=args.compress_probability,
                           num_workers=args.num_workers, download=not args.no_download,
                           overwrite=args.overwrite)
    except RunError as err:  # a failure after starting (the disk full): exit 1, nothing left behind
        print(f"{TOOL}: error: {err}", file=sys.stderr)
        return 1
    except (UsageError, OSError, ImportError) as err:  # bad input, an unwritable --out, no ffcv
        return usage_error(TOOL, err)
    except KeyboardInterrupt:
        return interrupted(TOOL, f"{out} was not written (the file appears only once complete): run "
                                 "the same command again")
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
