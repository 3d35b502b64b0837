"""The dataset registry, the data root, class-balanced subsets, epoch orders and the device-side
augmentation: everything of the data layer that needs no dataset files."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cwr_fast.data import (DATASETS, Augment, DatasetError, EpochOrder, class_balanced_subset,
                           data_root, dataset_info)
from cwr_fast.data.augment import DeviceTransform, random_crop, random_flip
from cwr_fast.data.registry import DEFAULT_ROOT


# ---- registry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_has_consistent_info(name):
    info = dataset_info(name)
    assert info.name == name
    assert len(info.class_names) == len(set(info.class_names)) == info.num_classes
    assert len(info.mean) == len(info.std) == info.image_shape[0]
    assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)
    assert "train" in info.splits and info.eval_split in ("test", "val")


def test_registry_facts():
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("imagenet").class_names[:2] == ["tench", "goldfish"]
    assert dataset_info("stl10").image_shape == (3, 96, 96)
    assert dataset_info("svhn").splits == ("train", "test", "extra")
    # Digits are not flip-invariant: no flips for MNIST, the embedded MNIST and SVHN.
    for digits in ("mnist", "mnist-embedded", "svhn"):
        assert not dataset_info(digits).train_augment.flip
    assert dataset_info("mnist").train_augment == Augment()
    assert dataset_info("cifar10").train_augment == Augment(crop_pad=4, flip=True)
    assert not dataset_info("imagenet").fixed_size


def test_unknown_dataset_and_split_are_clear():
    with pytest.raises(DatasetError, match="unknown dataset 'cifar11'.*cifar10.*folder:PATH"):
        dataset_info("cifar11")
    with pytest.raises(DatasetError, match="mnist has no split 'val'; its splits are train, test"):
        dataset_info("mnist").check_split("val")


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("CWR_FAST_DATA", raising=False)
    assert data_root() == DEFAULT_ROOT.expanduser()
    monkeypatch.setenv("CWR_FAST_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"


# ---- class-balanced subsets ----------------------------------------------------------------------

def test_subset_takes_the_first_k_of_each_class():
    labels = torch.tensor([2, 0, 0, 1, 2, 0, 1, 2, 2])
    assert class_balanced_subset(labels, 2).tolist() == [0, 1, 2, 3, 4, 6]


def test_seeded_subset_is_reproducible_and_balanced():
    labels = torch.arange(1000) % 10
    a = class_balanced_subset(labels, 7, seed=1)
    assert torch.equal(a, class_balanced_subset(labels, 7, seed=1))
    assert not torch.equal(a, class_balanced_subset(labels, 7, seed=2))
    assert torch.bincount(labels[a]).tolist() == [7] * 10
    assert torch.equal(a, a.sort().values)


def test_subset_bad_inputs():
    with pytest.warns(UserWarning, match="fewer than 3"):
        assert class_balanced_subset([0, 0, 0, 1], 3).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="per_class"):
        class_balanced_subset([0, 1], 0)
    with pytest.raises(TypeError, match="integers"):
        class_balanced_subset(torch.tensor([0.5]), 1)
    with pytest.raises(ValueError, match=">= 0"):
        class_balanced_subset([0, -1], 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=60), st.integers(1, 8),
       st.one_of(st.none(), st.integers(0, 10)))
def test_subset_property(labels, k, seed):
    import warnings
    labels = torch.tensor(labels, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx = class_balanced_subset(labels, k, seed=seed)
    counts = torch.bincount(labels, minlength=6)
    assert torch.bincount(labels[idx], minlength=6).tolist() == counts.clamp(max=k).tolist()
    assert len(set(idx.tolist())) == len(idx)
    if seed is None:  # the first k of each class
        for c in range(6):
            assert labels[idx].eq(c).sum() == min(k, int(counts[c]))
            first = torch.nonzero(labels == c).flatten()[:k]
            assert set(first.tolist()) <= set(idx.tolist())


# ---- epoch orders --------------------------------------------------------------------------------

def test_shuffle_is_seeded_per_epoch():
    order = EpochOrder(torch.arange(100), batch_size=10, shuffle=True, drop_last=True, seed=5)
    again = EpochOrder(torch.arange(100), batch_size=10, shuffle=True, drop_last=True, seed=5)
    assert torch.equal(order.for_epoch(3), again.for_epoch(3))
    assert not torch.equal(order.for_epoch(0), order.for_epoch(1))
    assert sorted(order.for_epoch(0).tolist()) == list(range(100))


def test_eval_order_is_the_dataset_order_with_a_last_short_batch():
    order = EpochOrder(torch.arange(25), batch_size=10, shuffle=False, drop_last=False)
    assert [len(b) for b in order.batches(0)] == [10, 10, 5] and len(order) == 3
    assert torch.equal(torch.cat(order.batches(7)), torch.arange(25))
    dropping = EpochOrder(torch.arange(25), batch_size=10, shuffle=True, drop_last=True)
    assert len(dropping) == 2 and dropping.num_samples == 20 == len(dropping.for_epoch(4))


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_shards(world):
    def shards(train):
        return [EpochOrder(torch.arange(101), 8, shuffle=train, drop_last=train, seed=1,
                           rank=r, world_size=world) for r in range(world)]
    # eval: every sample exactly once over the ranks, nothing padded
    got = torch.cat([o.for_epoch(0) for o in shards(False)])
    assert sorted(got.tolist()) == list(range(101))
    # train: disjoint, and the same number of batches on every rank
    train = shards(True)
    parts = [set(o.for_epoch(2).tolist()) for o in train]
    assert sum(len(p) for p in parts) == len(set().union(*parts))
    assert len({len(o) for o in train}) == 1
    assert all(o.num_samples == len(o.for_epoch(2)) for o in train)


def test_order_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        EpochOrder(torch.arange(4), 0, False, False)
    with pytest.raises(ValueError, match="rank"):
        EpochOrder(torch.arange(4), 2, False, False, rank=2, world_size=2)


# ---- device-side augmentation --------------------------------------------------------------------

def test_random_crop_is_a_window_of_the_padded_image():
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])
                   for dy in range(5) for dx in range(5))
    assert (out == 0).any()  # some crops reach into the zero padding


def test_random_flip_mirrors_about_half():
    x = torch.randint(0, 256, (200, 1, 4, 4), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(2)) and not torch.equal(o, xi) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 60 < sum(flipped) < 140


def test_transform_converts_and_is_reproducible():
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    eval_t = DeviceTransform(Augment(crop_pad=2, flip=True), False, torch.device("cpu"))
    out = eval_t.for_epoch(0)(x)
    assert out.dtype == torch.float32 and torch.equal(out, x.float() / 255)
    train_t = DeviceTransform(Augment(crop_pad=2, flip=True), True, torch.device("cpu"), seed=3)
    assert torch.equal(train_t.for_epoch(1)(x), train_t.for_epoch(1)(x))
    assert not torch.equal(train_t.for_epoch(1)(x), train_t.for_epoch(2)(x))
    with pytest.raises(ValueError, match="crop_pad"):
        Augment(crop_pad=-1)
