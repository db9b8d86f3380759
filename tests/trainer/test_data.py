"""Data sources on tiny fake files, and the deterministic batch order that resume relies on."""

import os
import pickle

import numpy as np
import pytest
import torch

from acdc_recipe.language.train_config import DataSpec
from acdc_recipe.trainer.data import (
    DataError,
    EpochSampler,
    augment_batch,
    batches_per_epoch,
    load_data,
    make_loader,
    read_idx,
)

from ..conftest import write_idx_dataset


def fake_mnist(root, compress=True, train=12, test=5):
    write_idx_dataset(root, train, test, compress)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_load_gz_or_raw(tmp_path, compress):
    fake_mnist(tmp_path, compress)
    bundle = load_data(DataSpec(source="mnist", root=str(tmp_path)))
    assert len(bundle.train) == 12 and len(bundle.val) == 5
    assert bundle.sample_shape == (1, 28, 28) and bundle.num_classes == 10
    x, y = bundle.train[3]
    raw = read_idx(tmp_path / f"train-labels-idx1-ubyte{'.gz' if compress else ''}")
    assert y == int(raw[3]) and x.dtype == torch.float32


def test_truncated_idx_file_names_the_file(tmp_path):
    fake_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        load_data(DataSpec(source="fashion_mnist", root=str(tmp_path)))


def test_bad_magic_and_bad_gzip_are_clear_errors(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01abcd")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(tmp_path / "x")
    (tmp_path / "y.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "y.gz")


def test_missing_fashion_mnist_root_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        load_data(DataSpec(source="fashion_mnist", root=str(tmp_path / "nowhere")))
    assert "apt-get install dataset-fashion-mnist" in str(error.value)
    assert "train.data.root" in str(error.value)


def write_cifar(root, n=4):
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}  # fmt: skip
        (root / name).write_bytes(pickle.dumps(batch))


def test_cifar10_python_batches(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    bundle = load_data(DataSpec(source="cifar10", root=str(tmp_path)))  # parent folder works too
    assert len(bundle.train) == 20 and len(bundle.val) == 4
    assert bundle.train[0][0].shape == (3, 32, 32)


def test_cifar100_python_files_use_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(2)
    for name, n in (("train", 6), ("test", 3)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, n).tolist(),
                 b"coarse_labels": rng.integers(0, 20, n).tolist()}  # fmt: skip
        (root / name).write_bytes(pickle.dumps(batch))
    bundle = load_data(DataSpec(source="cifar100", root=str(tmp_path)))
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (6, 3, 100)
    assert int(bundle.val[2][1]) == batch[b"fine_labels"][2]
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        load_data(DataSpec(source="cifar100", root=str(tmp_path / "missing")))


def test_cifar10_truncated_and_hostile_pickles_are_refused(tmp_path):
    root = tmp_path / "cifar"
    write_cifar(root)
    (root / "data_batch_3").write_bytes((root / "data_batch_3").read_bytes()[:50])
    with pytest.raises(DataError, match="data_batch_3 is not a cifar10 python batch"):
        load_data(DataSpec(source="cifar10", root=str(root)))
    (root / "data_batch_3").write_bytes(pickle.dumps(print))  # a global that is not an array
    with pytest.raises(DataError, match="refusing to load"):
        load_data(DataSpec(source="cifar10", root=str(root)))


def test_imagefolder_reads_class_folders(tmp_path):
    from PIL import Image

    for split, count in (("train", 3), ("val", 2)):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (6, 5), (40 * i, 0, 200)).save(folder / f"{i}.png")
    bundle = load_data(DataSpec(source="imagefolder", root=str(tmp_path)))
    assert len(bundle.train) == 6 and len(bundle.val) == 4 and bundle.num_classes == 2
    assert bundle.sample_shape == (3, 5, 6)
    assert [bundle.train[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]


def test_imagefolder_without_val_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="has no val/ folder"):
        load_data(DataSpec(source="imagefolder", root=str(tmp_path)))


def make_datasets():
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.randn(10, 3), torch.arange(10)), TensorDataset(
        torch.randn(4, 3), torch.arange(4)
    )


def test_callable_source(tmp_path):
    bundle = load_data(DataSpec(source="callable", callable=f"{__name__}:make_datasets"))
    assert len(bundle.train) == 10 and bundle.sample_shape == (3,)
    with pytest.raises(DataError, match="cannot be imported"):
        load_data(DataSpec(source="callable", callable="no_such_module_xyz:fn"))


def test_digits_split_is_fixed():
    first, second = load_data(DataSpec()), load_data(DataSpec())
    assert (len(first.train), len(first.val)) == (1437, 360)
    assert torch.equal(first.train.labels, second.train.labels)
    assert first.train.inputs.shape[1:] == (1, 8, 8)


def test_epoch_order_is_seeded_by_seed_and_epoch_and_resumes_mid_epoch():
    whole = list(EpochSampler(23, 4, seed=3, epoch=2))
    assert list(EpochSampler(23, 4, seed=3, epoch=2)) == whole
    assert list(EpochSampler(23, 4, seed=3, epoch=3)) != whole
    assert list(EpochSampler(23, 4, seed=3, epoch=2, start_batch=4)) == whole[4:]
    assert len(whole) == batches_per_epoch(23, 4) == 6
    assert sorted(i for batch in whole for i in batch) == list(range(23))


def test_ranks_split_an_epoch_into_equal_disjoint_shards():
    shards = [
        EpochSampler(10, 2, seed=0, epoch=0, rank=r, world_size=3).indices() for r in range(3)
    ]
    assert all(len(shard) == 4 for shard in shards)  # padded to 12 like DistributedSampler
    assert set().union(*shards) == set(range(10))
    assert batches_per_epoch(10, 2, world_size=3) == 2


def test_loader_yields_whole_batches_of_in_memory_data():
    bundle = load_data(DataSpec())
    sampler = EpochSampler(len(bundle.train), 64, seed=0, epoch=0)
    inputs, labels = next(iter(make_loader(bundle.train, sampler)))
    first = sampler.indices()[:64]
    assert torch.equal(inputs, bundle.train.inputs[first]) and torch.equal(
        labels, bundle.train.labels[first]
    )


def test_augmentation_is_a_function_of_seed_epoch_and_batch():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    once = augment_batch(images, seed=0, epoch=1, batch=2)
    assert torch.equal(once, augment_batch(images, seed=0, epoch=1, batch=2))
    assert not torch.equal(once, augment_batch(images, seed=0, epoch=1, batch=3))
    assert once.shape == images.shape
    # a crop of the zero-padded image: every nonzero value comes from the original image
    assert set(once.unique().tolist()) - {0.0} <= set(images.unique().tolist())


DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir(DEBIAN_FASHION_MNIST),
    reason="Debian's dataset-fashion-mnist is not installed; the IDX loader is tested above on "
    "files the tests write",
)
def test_the_real_fashion_mnist_files_load_where_installed():
    bundle = load_data(DataSpec(source="fashion_mnist"))
    assert (len(bundle.train), len(bundle.val)) == (60000, 10000)
    assert bundle.sample_shape == (1, 28, 28) and bundle.num_classes == 10
