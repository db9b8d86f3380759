"""Data sources for `acdc run` and the deterministic batches drawn from them.

`DATA_SOURCES` maps every `DataSpec.source` literal to a loader returning a `DataBundle`
(train and validation datasets): images and classes here, token sequences for language models
in `token_data.py`. Shuffling is a pure function of (seed, epoch), and
augmentation of (seed, epoch, batch), so a resumed run sees exactly the batches it would
have seen; a run resumes mid-epoch by skipping to a batch index.
"""

from __future__ import annotations

import gzip
import importlib
import math
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from acdc_recipe.language.train_config import DataSpec
from acdc_recipe.trainer.data_paths import cifar_root, digits_file, idx_root, imagefolder_root
from acdc_recipe.trainer.datasets import DataBundle, DataError, TensorData
from acdc_recipe.trainer.token_data import load_python_source, load_text, load_tokens


def _standardize(train: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both splits by the training split's per-channel mean and std."""
    dims = [0] + list(range(2, train.dim()))
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (val - mean) / std


def load_digits(spec: DataSpec) -> DataBundle:
    """scikit-learn's 8x8 digits: 1797 images, a fixed split of 1437 train / 360 validation.
    Read from the CSV file scikit-learn ships (what `sklearn.datasets.load_digits` reads)."""
    rows = gzip.decompress(digits_file().read_bytes()).decode("ascii").split()
    table = torch.tensor([[float(v) for v in row.split(",")] for row in rows])
    images = table[:, :64].reshape(-1, 1, 8, 8).to(torch.float32) / 16.0
    labels = table[:, 64].to(torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1797))
    train_idx, val_idx = order[:1437], order[1437:]
    train_x, val_x = _standardize(images[train_idx], images[val_idx])
    return DataBundle(
        TensorData(train_x, labels[train_idx]), TensorData(val_x, labels[val_idx]), 10, (1, 8, 8)
    )


_IDX_DTYPES = {0x08: torch.uint8}


def read_idx(path: Path) -> torch.Tensor:
    """One IDX file (raw or .gz) as a uint8 tensor; malformed files raise `DataError`."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header is incomplete")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: shape {shape} needs {expected} bytes of data, "
            f"found {len(raw) - header}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (
        stem,
        f"{stem}.gz",
        stem.replace("-idx", ".idx"),
        f"{stem.replace('-idx', '.idx')}.gz",
    ):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root} has no {stem} or {stem}.gz")


def load_idx(spec: DataSpec) -> DataBundle:
    """The four IDX files of `fashion_mnist` or `mnist` (raw or .gz) in one folder."""
    root = idx_root(spec)
    try:
        splits = []
        for prefix in ("train", "t10k"):
            images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
            labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
            if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
                raise DataError(
                    f"{root}: {prefix} images {list(images.shape)} and labels "
                    f"{list(labels.shape)} do not match"
                )
            splits.append((images.unsqueeze(1).float() / 255.0, labels.long()))
    except DataError as error:
        raise DataError(f"data source '{spec.source}': {error}") from None
    (train_x, train_y), (val_x, val_y) = splits
    train_x, val_x = _standardize(train_x, val_x)
    shape = tuple(train_x.shape[1:])
    return DataBundle(TensorData(train_x, train_y), TensorData(val_x, val_y), 10, shape)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the CIFAR batch files (dicts, lists, bytes, numpy arrays) and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: Path, source: str, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with path.open("rb") as handle:
            batch = _ArraysOnly(handle, encoding="bytes").load()
        data = torch.as_tensor(batch[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
        labels = torch.as_tensor(batch[label_key], dtype=torch.long)
    except FileNotFoundError:
        raise DataError(f"data source '{source}': {path} is missing") from None
    except Exception as error:  # any malformed pickle: truncated, wrong keys, wrong size
        raise DataError(
            f"data source '{source}': {path} is not a {source} python batch file ({error})"
        ) from None
    if len(data) != len(labels):
        raise DataError(
            f"data source '{source}': {path} has {len(data)} images, {len(labels)} labels"
        )
    return data.float() / 255.0, labels


def load_cifar10(spec: DataSpec) -> DataBundle:
    """The python-pickle CIFAR-10 folder (cifar-10-batches-py: data_batch_1..5, test_batch)."""
    root = cifar_root(spec)
    parts = [_cifar_batch(root / f"data_batch_{i}", "cifar10", b"labels") for i in range(1, 6)]
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    val_x, val_y = _cifar_batch(root / "test_batch", "cifar10", b"labels")
    train_x, val_x = _standardize(train_x, val_x)
    return DataBundle(TensorData(train_x, train_y), TensorData(val_x, val_y), 10, (3, 32, 32))


def load_cifar100(spec: DataSpec) -> DataBundle:
    """The python-pickle CIFAR-100 folder (cifar-100-python: train, test; fine labels)."""
    root = cifar_root(spec)
    train_x, train_y = _cifar_batch(root / "train", "cifar100", b"fine_labels")
    val_x, val_y = _cifar_batch(root / "test", "cifar100", b"fine_labels")
    train_x, val_x = _standardize(train_x, val_x)
    return DataBundle(TensorData(train_x, train_y), TensorData(val_x, val_y), 100, (3, 32, 32))


def _image_folder(folder: Path) -> tuple[Dataset, list[str]]:
    """torchvision's ImageFolder when installed, else every image decoded with PIL up front."""
    try:
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import ToTensor
    except ImportError:
        ImageFolder = None
    if ImageFolder is not None:
        dataset = ImageFolder(str(folder), transform=ToTensor())
        return dataset, list(dataset.classes)
    from PIL import Image

    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as image:
                pixels = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32)
                images.append(pixels.T.reshape(3, image.height, image.width) / 255.0)
            labels.append(label)
    return TensorData(torch.stack(images), torch.tensor(labels)), classes


def load_imagefolder(spec: DataSpec) -> DataBundle:
    """`root/train/<class>/*` and `root/val/<class>/*` images, all of one size."""
    root = imagefolder_root(spec)
    try:
        train, classes = _image_folder(root / "train")
        val, val_classes = _image_folder(root / "val")
    except Exception as error:  # unreadable or odd-sized images
        raise DataError(
            f"data source 'imagefolder': cannot read images under {root}: {error}"
        ) from None
    if val_classes != classes:
        raise DataError(
            f"imagefolder: train classes {classes} differ from val classes {val_classes}"
        )
    return DataBundle(train, val, len(classes), tuple(train[0][0].shape))


def load_callable(spec: DataSpec) -> DataBundle:
    """'package.module:fn' returning (train_dataset, val_dataset)."""
    target = spec.callable or ""
    module_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise DataError(
            f"train.data.callable {target!r} cannot be imported ({error}); expected 'package.module:fn'"
        ) from None
    result = fn()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise DataError(f"train.data.callable {target!r} must return (train_dataset, val_dataset)")
    train, val = result
    if isinstance(train, DataLoader):
        train, val = train.dataset, val.dataset
    sample = train[0][0]
    return DataBundle(train, val, None, tuple(sample.shape) if hasattr(sample, "shape") else None)


DATA_SOURCES: dict[str, Callable[[DataSpec], DataBundle]] = {
    "digits": load_digits,
    "fashion_mnist": load_idx,
    "mnist": load_idx,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagefolder": load_imagefolder,
    "callable": load_callable,
    "text": load_text,
    "tokens": load_tokens,
    "python_source": load_python_source,
}


def load_data(spec: DataSpec) -> DataBundle:
    """The bundle for `spec.source`; raises `DataError` with a fix when it cannot be loaded."""
    return DATA_SOURCES[spec.source](spec)


class EpochSampler(Sampler[list[int]]):
    """Batches of one epoch for one rank: a (seed, epoch)-seeded permutation, padded to a
    multiple of the world size and dealt out like `DistributedSampler`, from `start_batch`."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.size, self.batch_size = size, batch_size
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % 2**63)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        per_rank = math.ceil(self.size / self.world_size)
        padded = order + order[: per_rank * self.world_size - self.size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.indices()
        for start in range(self.start_batch * self.batch_size, len(mine), self.batch_size):
            yield mine[start : start + self.batch_size]

    def __len__(self) -> int:
        return max(
            0, batches_per_epoch(self.size, self.batch_size, self.world_size) - self.start_batch
        )


def batches_per_epoch(size: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch (the last batch may be smaller)."""
    return math.ceil(math.ceil(size / world_size) / batch_size)


def _whole_batch(batch: Any) -> Any:
    return batch


def make_loader(dataset: Dataset, sampler: EpochSampler, num_workers: int = 0) -> DataLoader:
    """A DataLoader over `sampler`'s batches; in-memory data is sliced a batch at a time."""
    collate = _whole_batch if isinstance(dataset, TensorData) else default_collate
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate)


def augment_batch(inputs: torch.Tensor, seed: int, epoch: int, batch: int) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, seeded by (seed, epoch, batch)."""
    generator = torch.Generator().manual_seed(
        ((seed * 100_003 + epoch) * 1_000_003 + batch) % 2**63
    )
    n, _, height, width = inputs.shape
    padded = torch.nn.functional.pad(inputs, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(height)[None, :])[:, None, :, None]
    cols = dx[:, None] + torch.arange(width)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch_index = torch.arange(n)[:, None, None, None]
    channel = torch.arange(inputs.shape[1])[None, :, None, None]
    return padded[batch_index, channel, rows, cols]
