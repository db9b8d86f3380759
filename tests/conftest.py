"""Shared test data: small IDX files in the Fashion-MNIST layout, made on the spot (tests never
need a dataset package)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_idx_dataset(
    root: Path, train: int = 12, test: int = 5, compress: bool = True, learnable: bool = False
) -> Path:
    """The four IDX files of an MNIST-style dataset of 28x28 images under `root`. With
    `learnable`, each class lights up its own band of rows (plus noise), so a model can learn it."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 256 if not learnable else 96, (n, 28, 28))
        if learnable:
            for image, label in zip(images, labels, strict=True):
                image[2 + 2 * label : 4 + 2 * label, :] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return root


@pytest.fixture(scope="session")
def fashion_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable Fashion-MNIST-shaped dataset (600 train, 300 test images)."""
    return write_idx_dataset(
        tmp_path_factory.mktemp("fashion-like"), 600, 300, compress=True, learnable=True
    )
