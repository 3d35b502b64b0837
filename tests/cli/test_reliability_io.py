"""Issue 25, I/O items: a full disk (ENOSPC, torch.save's enforce fail) is one NoSpaceError naming
the file, the previous file intact; a failed dataset download leaves no empty folders; the ffcv
loader's message for a folder:/npz: source says what can be typed; an empty checkpoint says it
holds no tensors."""

from __future__ import annotations

import builtins
import errno
import os

import numpy as np
import pytest
import torch
from helpers.cli import assert_refused, cli, snapshot

from cwr_fast import outputs
from cwr_fast.data import readers

UNEXPECTED_POS = "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"
NO_SPACE = "free space and run with --resume"


def _full_disk_open(monkeypatch, target_prefix: str):
    """open() of a file whose name starts with target_prefix gives a file whose write fails with
    ENOSPC, as on a full disk."""
    real_open = builtins.open

    class FullFile:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in str(mode) and os.path.basename(str(file)).startswith(target_prefix):
            return FullFile(f)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)


def test_no_space_text_write_is_one_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    outputs.write_text("old\n", path)
    _full_disk_open(monkeypatch, outputs.TMP_PREFIX)
    with pytest.raises(outputs.NoSpaceError) as info:
        outputs.write_text("new\n", path)
    err = info.value
    assert str(err) == f"no space left while writing {path}; {NO_SPACE}"
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert not isinstance(err, outputs.OutputError)  # a failure after starting (exit 1), not a bad input
    monkeypatch.undo()
    assert path.read_text() == "old\n"  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left behind


def test_no_space_torch_enforce_fail_is_one_error(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    outputs.save_torch({"w": torch.arange(3)}, path)
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        f.write(b"PK")  # a start, as torch's zip writer makes one
        raise RuntimeError(UNEXPECTED_POS)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(outputs.NoSpaceError, match="no space left while writing .*last.pt; free space"):
        outputs.save_torch({"w": torch.arange(4)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["w"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_no_space_real_torch_save_on_full_file(tmp_path, monkeypatch):
    """torch.save itself into a file whose writes fail with ENOSPC: whatever torch makes of it
    (the OSError or its RuntimeError), the caller gets NoSpaceError."""
    path = tmp_path / "last.pt"
    outputs.save_torch({"w": torch.zeros(2)}, path)
    before = path.read_bytes()
    _full_disk_open(monkeypatch, outputs.TMP_PREFIX)
    with pytest.raises(outputs.NoSpaceError):
        outputs.save_torch({"w": torch.ones(1000)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_no_space_in_report_directory_keeps_earlier_files(tmp_path, monkeypatch):
    out = tmp_path / "r"
    outputs.write_files(out, "evaluation report", {"report.json": "{}\n", "summary.md": "old\n"})
    before = snapshot(out)
    real_write_text = type(out).write_text

    def full(self, *args, **kwargs):
        if self.name == "summary.md":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(type(out), "write_text", full)
    with pytest.raises(outputs.NoSpaceError) as info:
        outputs.write_files(out, "evaluation report", {"report.json": "{1}\n", "summary.md": "new\n"})
    assert str(info.value) == f"no space left while writing {out / 'summary.md'}; {NO_SPACE}"
    monkeypatch.undo()
    assert snapshot(out) == before


def test_other_errors_stay_what_they_are(tmp_path, monkeypatch):
    def broken(obj, f, *args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):
        outputs.save_torch({}, tmp_path / "x.pt")
    assert outputs.no_space_error(RuntimeError("x")) is None
    assert outputs.no_space_error(OSError(errno.EACCES, "denied")) is None
    found = outputs.no_space_error(OSError(errno.ENOSPC, "full", "/x/y"))
    assert str(found) == f"no space left while writing /x/y; {NO_SPACE}"
    assert outputs.is_no_space(RuntimeError(UNEXPECTED_POS))


def test_failed_download_removes_the_folders_it_created(tmp_path, monkeypatch):
    root = tmp_path / "data"  # not there yet, as ~/.cache/cwr_fast/data on a fresh machine
    (tmp_path / "mine.txt").write_text("mine\n")
    before = snapshot(tmp_path)

    def no_network(spec_root, split):  # as torchvision does: folders first, then the fetch fails
        (spec_root / "MNIST" / "raw").mkdir(parents=True)
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(readers, "MNIST", readers.MNIST.__class__(
        **{**readers.MNIST.__dict__, "download": no_network}))
    monkeypatch.setitem(readers.OFFICIAL, "mnist", readers.MNIST)
    with pytest.raises(readers.DatasetNotFoundError, match="the download failed"):
        readers.read_official("mnist", "test", root, download=True)
    assert snapshot(tmp_path) == before  # no empty data/MNIST/raw left behind


def test_failed_download_keeps_existing_folders_and_fetched_files(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "MNIST").mkdir(parents=True)
    (root / "cifar-10-batches-py").mkdir()

    def half(spec_root, split):
        raw = spec_root / "MNIST" / "raw"
        raw.mkdir()
        (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"fetched before the failure")
        (spec_root / "MNIST" / "tmp").mkdir()
        raise ConnectionError("reset by peer")

    monkeypatch.setitem(readers.OFFICIAL, "mnist", readers.MNIST.__class__(
        **{**readers.MNIST.__dict__, "download": half}))
    with pytest.raises(readers.DatasetError):
        readers.read_official("mnist", "test", root, download=True)
    assert (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file()
    assert not (root / "MNIST" / "tmp").exists()
    assert (root / "cifar-10-batches-py").is_dir()


def test_ffcv_loader_for_generic_source_says_what_to_type(tmp_path):
    from cwr_fast.data import make_loader

    path = tmp_path / "mine.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 255, (4, 1, 8, 8), dtype=np.uint8),
             labels=np.arange(4) % 2)
    with pytest.raises(ValueError) as info:
        make_loader(f"npz:{path}", "all", 2, train=False, loader="ffcv")
    msg = str(info.value)
    assert "beton=PATH" not in msg.split("make_loader")[0]  # nothing the command line cannot pass
    assert "--loader torch" in msg and "python -m cwr_fast.data.beton" in msg


def test_evaluate_ffcv_generic_source_is_one_line(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 255, (4, 1, 8, 8), dtype=np.uint8),
             labels=np.arange(4) % 2)
    from cwr_fast.models import build_model

    torch.save(build_model("small_cnn", 2, (0.5,), (0.5,), 1).state_dict(), tmp_path / "m.pt")
    before = snapshot(tmp_path)
    proc = cli("cwr_fast.evaluate", "--dataset", f"npz:{path}", "--arch", "small_cnn",
               "--checkpoint", tmp_path / "m.pt", "--loader", "ffcv", "--attacks", "fgsm",
               "--split", "all", "--eps", "0.1", "--no-plots", "--out", tmp_path / "r", cwd=tmp_path)
    assert_refused(proc, "--loader torch", "cwr_fast.data.beton")
    assert snapshot(tmp_path) == before


def test_empty_checkpoint_says_it_holds_no_tensors(tmp_path):
    from cwr_fast.models.checkpoint import CheckpointMismatchError, read_state_dict

    torch.save({}, tmp_path / "p.pt")
    torch.save({"model": {}}, tmp_path / "k.pt")
    with pytest.raises(CheckpointMismatchError, match="holds no tensors"):
        read_state_dict(tmp_path / "p.pt")
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint\['model'\] holds no tensors"):
        read_state_dict(tmp_path / "k.pt", key="model")
    before = snapshot(tmp_path)
    proc = cli("cwr_fast.evaluate", "--dataset", "mnist-embedded", "--arch", "small_cnn",
               "--checkpoint", tmp_path / "p.pt", "--limit", "10", "--attacks", "fgsm",
               "--out", tmp_path / "r", cwd=tmp_path)
    line = assert_refused(proc, "holds no tensors")
    assert not line.rstrip().endswith(":")
    assert snapshot(tmp_path) == before


def test_train_with_the_disk_full_is_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    """Issue 25, item 20, through the CLI's main: the checkpoint write fails for want of space;
    one line, exit 1; the earlier checkpoint is intact and --resume continues."""
    import torch

    from cwr_fast import outputs
    from cwr_fast.train import main
    from helpers.cli import TINY_TRAIN

    run = tmp_path / "run"
    args = [str(a) for a in TINY_TRAIN] + ["--epochs", "2", "--ckpt-every", "1", "--no-final-eval",
                                          "--out", str(run)]
    real_save, saves = torch.save, []

    def full_after_first(obj, f, *a, **k):
        saves.append(1)
        if len(saves) > 1:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_after_first)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cwr_fast.train: error: no space left while writing") and "--resume" in err[-1]
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)  # the first one, intact
    assert main(["--resume", str(run), "--no-final-eval"]) == 0
