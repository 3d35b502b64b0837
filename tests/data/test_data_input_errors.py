"""The data layer refuses the user's input (a --loader, a missing .beton, the beton writer's options)
with a UsageError at the source, each keeping its old built-in base; the beton command line exits 2
for those and keeps the traceback of anything else (issue 27: no `except ValueError` shim)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cwr_fast.data import beton, loader, make_loader
from cwr_fast.data.ffcv_io import beton_contents, write_beton
from cwr_fast.data.order import EpochOrder
from cwr_fast.data.subset import class_balanced_subset
from cwr_fast.errors import MissingInput, UsageError, UsageTypeError


@pytest.fixture
def npz(tmp_path) -> str:
    """A user's own 28x28 dataset of 20 images: the npz: source name."""
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    path = tmp_path / "mine.npz"
    np.savez(path, train_images=images, train_labels=labels, test_images=images, test_labels=labels)
    return f"npz:{path}"


def test_make_loader_refuses_bad_arguments_with_a_usage_error(npz):
    with pytest.raises(UsageError, match="loader must be one of"):
        make_loader(npz, "test", 8, train=False, loader="fast")
    with pytest.raises(UsageError, match="has fixed 28x28 images"):
        make_loader(npz, "test", 8, train=False, resolution=64)
    with pytest.raises(UsageError, match="without distributed=True"):
        make_loader(npz, "test", 8, train=False, rank=1, world_size=2)
    with pytest.raises(UsageError, match="use --loader torch or --loader gpu"):
        make_loader(npz, "test", 8, train=False, loader="ffcv")
    with pytest.raises(UsageError, match="batch_size must be a positive int"):
        EpochOrder(torch.arange(4), 0, shuffle=False, drop_last=False)
    with pytest.raises(UsageError, match="per_class must be a positive int"):
        class_balanced_subset(torch.arange(4), 0)
    with pytest.raises(UsageTypeError, match="labels must be integers") as err:
        class_balanced_subset(torch.rand(4), 1)
    assert isinstance(err.value, TypeError)


def test_a_missing_beton_is_a_usage_error_and_a_file_not_found_error(npz, tmp_path):
    pytest.importorskip("ffcv")  # CI installs FFCV (scripts/test.sh --with-ffcv): this runs there
    missing = tmp_path / "none.beton"
    for call in (lambda: make_loader(npz, "test", 8, train=False, loader="ffcv", beton=missing),
                 lambda: beton_contents(missing)):
        with pytest.raises(MissingInput, match="none.beton") as err:
            call()
        assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, UsageError)


@pytest.mark.parametrize("option, match", [
    (dict(write_mode="webp"), "write_mode must be one of"), (dict(jpeg_quality=0), "jpeg_quality"),
    (dict(max_resolution=0), "max_resolution"), (dict(num_workers=0), "num_workers"),
    (dict(write_mode="jpg"), "written as raw pixels"),
])
def test_write_beton_refuses_its_options_with_a_usage_error(npz, tmp_path, option, match):
    if option.get("write_mode") == "jpg":
        pytest.importorskip("ffcv")  # checked once FFCV is imported
    with pytest.raises(UsageError, match=match):
        write_beton(npz, "test", tmp_path / "out.beton", **option)


def test_beton_cli_exits_2_on_a_usage_error_and_keeps_a_bugs_traceback(npz, tmp_path, monkeypatch,
                                                                        capsys):
    args = ["--dataset", npz, "--split", "test", "--out", str(tmp_path / "out.beton")]
    assert beton.main([*args, "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cwr_fast.data.beton: error: num_workers (--num-workers) must be")
    assert len(err.strip().splitlines()) == 1

    def internal_bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(beton, "write_beton", internal_bug)
    with pytest.raises(ValueError, match="an internal bug"):  # was exit 2, as if the input were wrong
        beton.main(args)


def test_an_internal_error_inside_make_loader_keeps_its_type(npz, monkeypatch):
    def internal_bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(loader, "DeviceTransform", internal_bug)
    with pytest.raises(ValueError, match="an internal bug") as err:
        make_loader(npz, "test", 8, train=False)
    assert not isinstance(err.value, UsageError)
