"""make_loader with the gpu (in-memory) and torch backends: what they yield, that they agree,
seeded shuffles and augmentation, class-balanced subsets, distributed shards, clear errors.
(The FFCV backend: tests/data/test_data_ffcv.py.)"""

import pytest
import torch

from cwr_fast.data import Augment, DatasetError, load_arrays, make_loader

BATCH = 512


def collect(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_eval_yields_the_split_in_order(shared_data):
    x_ref, y_ref = load_arrays("mnist", "test", shared_data, download=False)
    loader = make_loader("mnist", "test", BATCH, train=False, data_dir=shared_data, download=False)
    assert loader.backend == "gpu" and len(loader) == 20 and loader.num_samples == 10000
    assert loader.info.name == "mnist" and loader.info.num_classes == 10
    batches = list(loader)
    assert [len(y) for _, y in batches] == [512] * 19 + [272]
    x, y = batches[0]
    assert x.shape == (512, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, y = collect(batches)
    assert torch.equal(x, x_ref.float() / 255) and torch.equal(y, y_ref)


@pytest.mark.parametrize("train", [False, True])
def test_gpu_and_torch_loaders_agree(cifar_subset, train):
    kwargs = dict(batch_size=BATCH, train=train, seed=7)
    gpu = make_loader(cifar_subset, "train", loader="gpu", **kwargs)
    workers = make_loader(cifar_subset, "train", loader="torch", num_workers=2, **kwargs)
    assert gpu.backend == "gpu" and workers.backend == "torch" and len(gpu) == len(workers)
    for (a, b), (c, d) in zip(gpu, workers, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_training_shuffles_augments_and_is_reproducible(cifar_subset):
    def epoch(seed, epoch, **kwargs):
        loader = make_loader(cifar_subset, "test", 128, train=True, seed=seed, **kwargs)
        loader.set_epoch(epoch)
        return collect(loader)

    x, y = epoch(0, 0)
    assert len(y) == 1017 // 128 * 128  # drop_last
    x_again, y_again = epoch(0, 0)
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert not torch.equal(y, epoch(0, 1)[1])
    assert not torch.equal(y, epoch(1, 0)[1])

    x_plain, y_plain = epoch(0, 0, augment=Augment())
    assert torch.equal(y_plain, y)  # augmentation draws do not change the order
    def zero_edges(images):  # images with an all-black row or column, as padding leaves
        black = (images == 0).all(1)
        return int((black.all(2).any(1) | black.all(1).any(1)).sum())
    assert zero_edges(x) > 0.5 * len(x) and zero_edges(x_plain) < 0.05 * len(x)


def test_loader_counts_epochs_itself():
    loader = make_loader("mnist-embedded", "train", 1000, train=True)
    first, second = [y for _, y in loader], [y for _, y in loader]
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in loader]), torch.cat(first))
    assert not torch.equal(torch.cat(first), torch.cat(second))


def test_mnist_is_not_augmented():
    x_ref, _ = load_arrays("mnist-embedded", "train")
    loader = make_loader("mnist-embedded", "train", 4000, train=True, shuffle=False)
    (x, _), = list(loader)
    assert torch.equal(x, x_ref.float() / 255)


def test_per_class_subset(cifar_subset):
    loader = make_loader(cifar_subset, "test", 64, train=False, per_class=20)
    x, y = collect(loader)
    assert loader.num_samples == 200 and torch.bincount(y).tolist() == [20] * 10
    x_all, y_all = load_arrays(cifar_subset, "test")
    first = torch.cat([torch.nonzero(y_all == c).flatten()[:20] for c in range(10)]).sort().values
    assert torch.equal(x, x_all[first].float() / 255)
    drawn = make_loader(cifar_subset, "test", 64, train=False, per_class=20, subset_seed=1)
    assert torch.bincount(collect(drawn)[1]).tolist() == [20] * 10


def test_exclude_holds_out_indices(cifar_subset):
    val = make_loader(cifar_subset, "test", 50, train=False, per_class=10, subset_seed=3)
    train = make_loader(cifar_subset, "test", 50, train=True, per_class=40, subset_seed=3,
                        exclude=val.order.indices)
    assert train.order.num_samples == 300 and train.num_samples == 300
    assert not torch.isin(train.order.indices, val.order.indices).any()
    assert torch.bincount(collect(train)[1]).tolist() == [30] * 10


@pytest.mark.parametrize("train", [False, True])
def test_distributed_ranks_partition_the_data(cifar_subset, train):
    shards = [make_loader(cifar_subset, "test", 100, train=train, distributed=True, rank=r,
                          world_size=3, augment=Augment()) for r in range(3)]
    rows = [collect(s)[0].flatten(1) for s in shards]
    seen = torch.cat(rows)
    assert len(torch.unique(seen, dim=0)) == len(seen)  # disjoint
    if train:
        assert len({len(s) for s in shards}) == 1
    else:  # every test image exactly once
        assert len(seen) == 1017


def test_folder_source_through_the_torch_loader(tmp_path, jpeg_folder):
    jpeg_folder(tmp_path, ["a", "b"], 6, "train")
    name = f"folder:{tmp_path}"
    auto = make_loader(name, "train", 4, train=True, resolution=16, num_workers=0, seed=2)
    assert auto.backend == "torch" and auto.info.image_shape == (3, 16, 16)
    x, y = collect(auto)
    assert x.shape == (12, 3, 16, 16) and sorted(y.tolist()) == [0] * 6 + [1] * 6
    again = make_loader(name, "train", 4, train=True, resolution=16, num_workers=2, seed=2)
    assert torch.equal(collect(again)[0], x)  # the crops are seeded, whatever the workers
    evaluation = make_loader(name, "train", 5, train=False, resolution=16, num_workers=0)
    in_memory = make_loader(name, "train", 5, train=False, resolution=16, loader="gpu")
    x_eval, y_eval = collect(evaluation)
    assert torch.equal(x_eval, collect(in_memory)[0])
    assert torch.equal(x_eval, load_arrays(name, "train", resolution=16)[0].float() / 255)


def test_bad_arguments_are_clear(tmp_path, jpeg_folder):
    with pytest.raises(ValueError, match="loader must be one of auto, gpu, ffcv, torch"):
        make_loader("mnist-embedded", "train", 8, True, loader="dali")
    with pytest.raises(ValueError, match="resolution= is for ImageNet"):
        make_loader("mnist-embedded", "train", 8, True, resolution=32)
    with pytest.raises(RuntimeError, match="torch.distributed initialised"):
        make_loader("mnist-embedded", "train", 8, True, distributed=True)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader("mnist-embedded", "train", 0, True)
    with pytest.raises(DatasetError, match="has no split 'val'"):
        make_loader("mnist-embedded", "val", 8, True)
    jpeg_folder(tmp_path, ["a"], 1)
    with pytest.raises(DatasetError, match="loader='gpu' holds fixed-size images"):
        make_loader(f"folder:{tmp_path}", "train", 8, True, loader="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            make_loader("mnist-embedded", "train", 8, True, device="cuda")


@pytest.mark.cuda
def test_gpu_loader_on_cuda(cifar_subset):
    cpu = make_loader(cifar_subset, "train", BATCH, train=False)
    cuda = make_loader(cifar_subset, "train", BATCH, train=False, device="cuda")
    assert cuda.backend == "gpu" and cuda.images.is_cuda
    for (a, b), (c, d) in zip(cpu, cuda, strict=True):
        assert c.is_cuda and d.is_cuda and torch.equal(a, c.cpu()) and torch.equal(b, d.cpu())
    train = make_loader(cifar_subset, "train", BATCH, train=True, device="cuda")
    x, y = next(iter(train))
    assert x.shape == (BATCH, 3, 32, 32) and x.is_cuda and 0 <= x.min() and x.max() <= 1
