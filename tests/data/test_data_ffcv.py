"""FFCV: the .beton writer CLI (raw round trips exact, atomic writes), the FFCV loader agreeing
with the other loaders, the JPEG path for ImageNet-style folders, and clear errors.
FFCV is an extra that CI installs: without it these tests FAIL with the install hint."""

import importlib.util
from pathlib import Path

import pytest
import torch

from cwr_fast.data import DatasetError, EpochOrder, load_arrays, make_loader
from cwr_fast.data import beton as beton_cli
from cwr_fast.data import ffcv_io
from cwr_fast.data.ffcv_io import FFCV_HINT, beton_contents, write_beton

BATCH = 256


@pytest.fixture(scope="module", autouse=True)
def ffcv_required():
    if importlib.util.find_spec("ffcv") is None:
        pytest.fail(f"ffcv is not installed. {FFCV_HINT}", pytrace=False)


@pytest.fixture(scope="module")
def cifar_beton(cifar_subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("betons") / "cifar-train.beton"
    assert beton_cli.main(["--dataset", cifar_subset, "--split", "train", "--out", str(out),
                           "--num-workers", "2"]) == 0
    return out


def collect(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_mnist_round_trip_is_exact(shared_data, tmp_path, capsys):
    out = tmp_path / "mnist-test.beton"
    assert beton_cli.main(["--dataset", "mnist", "--split", "test", "--data-dir", str(shared_data),
                           "--out", str(out), "--no-download", "--num-workers", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
    kind, shape, labels = beton_contents(out)
    assert kind == "ndarray" and shape == (1, 28, 28)  # grey stays one channel
    x_ref, y_ref = load_arrays("mnist", "test", shared_data, download=False)
    assert torch.equal(torch.from_numpy(labels), y_ref)
    loader = make_loader("mnist", "test", BATCH, train=False, loader="ffcv", beton=out,
                         num_workers=2)
    assert loader.backend == "ffcv" and len(loader) == 40
    x, y = collect(loader)
    assert torch.equal((x * 255).round().to(torch.uint8), x_ref) and torch.equal(y, y_ref)


@pytest.mark.parametrize("train", [False, True])
def test_ffcv_agrees_with_the_other_loaders(cifar_subset, cifar_beton, train):
    kwargs = dict(batch_size=BATCH, train=train, seed=11)
    ffcv = make_loader(cifar_subset, "train", loader="ffcv", beton=cifar_beton, num_workers=2,
                       **kwargs)
    gpu = make_loader(cifar_subset, "train", loader="gpu", **kwargs)
    assert len(ffcv) == len(gpu)
    for epoch in (0, 1):  # the raw round trip is exact, and orders and crops are shared
        for (a, b), (c, d) in zip(ffcv, gpu, strict=True):
            assert torch.equal(a, c) and torch.equal(b, d)
        if not train:
            break


def test_ffcv_shards_and_subsets_like_the_others(cifar_subset, cifar_beton):
    for rank in range(2):
        kwargs = dict(batch_size=100, train=True, distributed=True, rank=rank, world_size=2,
                      per_class=50)
        a = collect(make_loader(cifar_subset, "train", loader="ffcv", beton=cifar_beton,
                                num_workers=2, **kwargs))
        b = collect(make_loader(cifar_subset, "train", loader="gpu", **kwargs))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and len(a[1]) == 200


def test_ffcv_order_can_be_replaced(cifar_subset, cifar_beton):
    ffcv = make_loader(cifar_subset, "train", 100, train=False, loader="ffcv", beton=cifar_beton,
                       num_workers=2)
    ffcv.order = EpochOrder(torch.arange(1000, 1250), 100, shuffle=False, drop_last=False)
    x, y = collect(ffcv)
    images, labels = load_arrays(cifar_subset, "train")
    assert len(ffcv) == 3 and torch.equal(y, labels[1000:1250])
    assert torch.equal(x, images[1000:1250].float() / 255)


def test_auto_uses_a_beton_at_the_default_location(tmp_path, jpeg_folder):
    jpeg_folder(tmp_path / "data" / "imagenet", [f"n{i:08d}" for i in range(1000)], 1, "val")
    root = tmp_path / "data"
    assert make_loader("imagenet", "val", 100, train=False, data_dir=root).backend == "torch"
    path = write_beton("imagenet", "val", data_dir=root, num_workers=2)
    assert path == root / "ffcv" / "imagenet-val.beton"
    loader = make_loader("imagenet", "val", 100, train=False, data_dir=root, resolution=8,
                         num_workers=2)
    assert loader.backend == "ffcv" and loader.info.num_classes == 1000
    assert len(loader) == 10


def test_jpeg_folder_path(tmp_path, jpeg_folder):
    jpeg_folder(tmp_path / "src", ["a", "b", "c"], 8, "train")
    name = f"folder:{tmp_path / 'src'}"
    out = tmp_path / "folder.beton"
    # raw mode: the same decoded RGB pixels as PIL's, so eval crops match the torch loader's
    write_beton(name, "train", out, write_mode="raw", num_workers=2)
    assert beton_contents(out)[0] == "rgb"
    ffcv = make_loader(name, "train", 8, train=False, loader="ffcv", beton=out, resolution=12,
                       num_workers=2)
    workers = make_loader(name, "train", 8, train=False, loader="torch", resolution=12,
                          num_workers=0)
    (a, b), (c, d) = collect(ffcv), collect(workers)
    assert a.shape == c.shape == (24, 3, 12, 12) and torch.equal(b, d)
    assert (a - c).abs().mean() < 0.05  # resizing differs (OpenCV area vs PIL bilinear)

    jpg = tmp_path / "jpg.beton"
    write_beton(name, "train", jpg, write_mode="jpg", jpeg_quality=95, num_workers=2)
    train = make_loader(name, "train", 8, train=True, loader="ffcv", beton=jpg, resolution=12,
                        num_workers=2)
    x, y = collect(train)
    assert x.shape == (24, 3, 12, 12) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert sorted(y.tolist()) == sorted(d.tolist())


def test_write_is_atomic(cifar_subset, tmp_path, monkeypatch):
    from ffcv.writer import DatasetWriter

    def crash(self, dataset, *args, **kwargs):
        Path(self.fname).write_bytes(b"half a beton")
        raise OSError("disk full")
    monkeypatch.setattr(DatasetWriter, "from_indexed_dataset", crash)
    out = tmp_path / "never.beton"
    with pytest.raises(OSError, match="disk full"):
        write_beton(cifar_subset, "test", out)
    assert list(tmp_path.iterdir()) == []


def test_bad_betons_are_clear(cifar_subset, cifar_beton, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m cwr_fast.data.beton --dataset mnist "
                                                "--split test"):
        make_loader("mnist", "test", 8, False, loader="ffcv", data_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"raw images of shape \(3, 32, 32\).*another dataset"):
        make_loader("mnist-embedded", "test", 8, False, loader="ffcv", beton=cifar_beton)
    junk = tmp_path / "junk.beton"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(DatasetError, match="not a readable .beton"):
        make_loader(cifar_subset, "test", 8, False, loader="ffcv", beton=junk)
    with pytest.raises(ValueError, match="written as raw pixels"):
        write_beton(cifar_subset, "test", tmp_path / "x.beton", write_mode="jpg")
    assert beton_cli.main(["--dataset", "cifar11", "--split", "train"]) == 2
    assert ffcv_io.default_beton_path(cifar_subset, "train") is None
