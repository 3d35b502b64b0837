"""Issue 25, the data layer: hostile or careless datasets, run as a user would (the beton CLI in a
subprocess, the user's directory hashed before and after), or in-process where a condition cannot
be made for real (root reads files of mode 000)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from helpers.cli import BETON, assert_refused, cli, needs_ffcv, snapshot

from cwr_fast.data import DatasetError, generic, readers
from cwr_fast.data.sources import file_samples, load_arrays



def png_folder(root: Path, classes=("c0", "c1"), per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


# ---- 6. a folder: symlink loop is not followed -------------------------------------------------------

@needs_ffcv
def test_folder_symlink_loop_is_not_followed(tmp_path):
    from cwr_fast.data.ffcv_io import beton_contents
    data = png_folder(tmp_path / "d")
    (data / "c0" / "loop").symlink_to("..")
    before = snapshot(data)
    proc = cli(BETON, "--dataset", f"folder:{data}", "--split", "all", "--out", tmp_path / "o.beton",
               "--num-workers", "1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "c0/loop" in warnings[0], proc.stderr
    assert np.bincount(beton_contents(tmp_path / "o.beton")[2]).tolist() == [4, 4]
    assert snapshot(data) == before


def test_folder_links_out_of_the_tree_are_followed_once(tmp_path, capsys):
    outside = png_folder(tmp_path / "outside", classes=("x",), per_class=2) / "x"
    (outside / "again").symlink_to(outside)                    # a loop outside the dataset
    data = png_folder(tmp_path / "d")
    (data / "c1" / "more").symlink_to(outside)
    (data / "c1" / "up").symlink_to(data / "c0")               # another class's images
    samples = file_samples(f"folder:{data}", "all")
    assert np.bincount([y for _, y in samples]).tolist() == [4, 6]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "more such link" in err, err
    file_samples(f"folder:{data}", "all")
    assert "warning" not in capsys.readouterr().err          # said once


def test_folder_class_link_to_the_dataset_itself_is_refused(tmp_path):
    data = png_folder(tmp_path / "d")
    (data / "c2").symlink_to(data)
    with pytest.raises(DatasetError, match="holds the dataset itself"):
        file_samples(f"folder:{data}", "all")


# ---- 7. the npz layout is never guessed wrongly ------------------------------------------------------

def test_npz_ambiguous_layout_is_refused_naming_both_readings(tmp_path):
    images = np.arange(4 * 3 * 1 * 1, dtype=np.uint8).reshape(4, 3, 1, 1)   # 1x1 RGB, or 3x1 grey
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(4))
    before = snapshot(tmp_path)
    proc = cli(BETON, "--dataset", f"npz:{tmp_path / 'a.npz'}", "--split", "all",
               "--out", tmp_path / "o.beton", cwd=tmp_path)
    line = assert_refused(proc, "images", "[N, C, H, W] (3 channel(s), 1x1)",
                          "[N, H, W, C] (1 channel(s), 3x1)", "layout=")
    assert snapshot(tmp_path) == before, line


@pytest.mark.parametrize("how", ["layout", "mean"])
def test_npz_layout_from_the_channel_count_or_stated(tmp_path, how):
    nchw = np.random.default_rng(0).integers(0, 256, (4, 3, 5, 1), dtype=np.uint8)  # 5x1 RGB
    extra = {"layout": {"layout": "NCHW"},
             "mean": {"mean": np.full(3, 0.5), "std": np.full(3, 0.2)}}[how]
    np.savez(tmp_path / "a.npz", test_images=nchw, test_labels=np.arange(4), **extra)
    x, _ = load_arrays(f"npz:{tmp_path / 'a.npz'}", "test")
    assert np.array_equal(x.numpy(), nchw)


def test_npz_square_rgb_needs_the_layout_stated(tmp_path):
    nhwc = np.random.default_rng(0).integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nhwc, labels=np.arange(4), mean=np.full(3, .5), std=np.full(3, .2))
    with pytest.raises(DatasetError, match="reads two ways"):
        load_arrays(f"npz:{tmp_path / 'a.npz'}", "all")
    np.savez(tmp_path / "b.npz", images=nhwc, labels=np.arange(4), layout="NHWC")
    x, _ = load_arrays(f"npz:{tmp_path / 'b.npz'}", "all")
    assert np.array_equal(x.numpy(), nhwc.transpose(0, 3, 1, 2))


# ---- 9. the beton writer never hangs on a bad image ----------------------------------------------------

@needs_ffcv
@pytest.mark.parametrize("workers", ["1", "2"])
def test_beton_truncated_image_ends_the_run(tmp_path, workers):
    data = png_folder(tmp_path / "d")
    bad = data / "c1" / "2.png"
    bad.write_bytes(bad.read_bytes()[:60])
    before = snapshot(tmp_path)
    proc = cli(BETON, "--dataset", f"folder:{data}", "--split", "all", "--out", tmp_path / "o.beton",
               "--num-workers", workers, cwd=tmp_path, timeout=120)
    assert_refused(proc, str(bad), "truncated")
    assert snapshot(tmp_path) == before                      # no temporary, no output


def test_beton_max_resolution_zero_is_refused_up_front(tmp_path):
    data = png_folder(tmp_path / "d")
    before = snapshot(tmp_path)
    proc = cli(BETON, "--dataset", f"folder:{data}", "--split", "all", "--out", tmp_path / "o.beton",
               "--max-resolution", "0", cwd=tmp_path, timeout=120)
    assert_refused(proc, "--max-resolution", ">= 1")
    assert snapshot(tmp_path) == before


# ---- 23. a damaged .npz, a permission denied: one line -------------------------------------------------

@pytest.mark.parametrize("damage", ["junk", "truncated", "npy", "empty"])
def test_npz_that_is_not_valid_is_named(tmp_path, damage):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((4, 5, 5), np.uint8), labels=np.arange(4))
    if damage == "junk":
        path.write_bytes(b"this is not an npz\n" * 20)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "npy":
        np.save(tmp_path / "x.npy", np.zeros(3))
        path.write_bytes((tmp_path / "x.npy").read_bytes())
    else:
        path.write_bytes(b"")
    before = snapshot(tmp_path)
    proc = cli(BETON, "--dataset", f"npz:{path}", "--split", "all", "--out", tmp_path / "o.beton",
               cwd=tmp_path)
    line = assert_refused(proc, str(path), "not a valid .npz")
    assert "pickle" not in line
    assert snapshot(tmp_path) == before


def denied(path) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def test_npz_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((4, 5, 5), np.uint8), labels=np.arange(4))

    def no_open(file, *args, **kwargs):
        raise denied(file)
    monkeypatch.setattr(generic, "open", no_open, raising=False)
    with pytest.raises(DatasetError, match=f"^permission denied: {path}$"):
        load_arrays(f"npz:{path}", "all")


def test_mnist_raw_folder_permission_denied(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    is_file = Path.is_file

    def guarded(self):
        if raw in self.parents:
            raise denied(self)
        return is_file(self)
    monkeypatch.setattr(Path, "is_file", guarded)
    with pytest.raises(DatasetError, match=f"^permission denied: {raw}/"):
        readers.read_official("mnist", "test", tmp_path, download=False)


def test_folder_class_permission_denied_is_not_no_valid_file(tmp_path, monkeypatch):
    data = png_folder(tmp_path / "d")
    scandir = os.scandir

    def guarded(path="."):
        if str(path).endswith("c1"):
            raise denied(path)
        return scandir(path)
    monkeypatch.setattr(os, "scandir", guarded)
    with pytest.raises(DatasetError, match=f"^permission denied: {data / 'c1'}$"):
        file_samples(f"folder:{data}", "all")
