"""Shared test data: small IDX files in the Fashion-MNIST layout, made on the spot (tests never
need a dataset package)."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# Tiny transformers models, built from configs (no download). transformers is imported only by
# the tests that use them.
TOKEN_VOCAB = 64


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def tiny_gpt2(seed: int = 0, layers: int = 2):
    """A GPT-2 language model: Conv1D projections, input/output embeddings tied."""
    transformers = _quiet_transformers()
    config = transformers.GPT2Config(
        n_layer=layers, n_embd=32, n_head=2, vocab_size=TOKEN_VOCAB, n_positions=32,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    import torch

    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


def tiny_bert(seed: int = 0, labels: int = 3):
    """A BERT sequence classifier: Linear projections, word/position/type embeddings."""
    transformers = _quiet_transformers()
    config = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        vocab_size=TOKEN_VOCAB, max_position_embeddings=32, num_labels=labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    import torch

    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config)


def tiny_vit(seed: int = 0, labels: int = 3):
    """A ViT image classifier on 16x16 images in 4x4 patches: a Conv2d patch embedding, Linear
    projections, a class token and position embeddings held as plain parameters."""
    transformers = _quiet_transformers()
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, num_hidden_layers=2, hidden_size=32,
        num_attention_heads=2, intermediate_size=64, num_labels=labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    import torch

    torch.manual_seed(seed)
    return transformers.ViTForImageClassification(config)


# Two gloo processes for the tests of process-group code (FSDP2 shards, mask agreement).
def _on_rank(rank: int, function: Callable[..., Any], init: str, out: str, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        result = function(rank, *args)
    finally:
        dist.destroy_process_group()
    torch.save(result, f"{out}.{rank}")


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[Any]]:
    """`two_ranks(function, *args)` runs `function(rank, *args)` (a module-level function) in
    two processes joined in a gloo process group and returns what each returned, rank 0
    first (tensors and plain values, saved with torch.save)."""

    def run(function: Callable[..., Any], *args: Any) -> list[Any]:
        import torch
        import torch.multiprocessing as mp

        folder = tmp_path_factory.mktemp("ranks")
        init, out = f"file://{folder / 'rendezvous'}", str(folder / "result")
        mp.spawn(_on_rank, args=(function, init, out, args), nprocs=2, join=True)
        return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]

    return run


E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whole CLI runs (tests/e2e) and distributed tests are slow ones too."""
    for item in items:
        whole_runs = E2E in item.path.parents
        if (whole_runs or item.get_closest_marker("distributed")) and not item.get_closest_marker(
            "slow"
        ):
            item.add_marker(pytest.mark.slow)
