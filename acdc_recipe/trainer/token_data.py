"""Token sequences for language models: your text files (byte- or character-level), arrays of
token ids, and the Python standard library's own source files, which every machine has.

A source reads one token stream (files in sorted order, at most ``max_tokens``) and cuts it
into windows of ``sequence_length + 1`` tokens that overlap by one: a sample is a window's
first ``sequence_length`` tokens, its labels the same tokens shifted by one (the next token at
every position, `objective.py`). The last tenth of the windows (at least one) is the validation
split; ``num_classes`` is the vocabulary size the model must score.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from acdc_recipe.language.train_config import DataSpec
from acdc_recipe.trainer.data_paths import python_source_files, text_files, tokens_file
from acdc_recipe.trainer.datasets import DataBundle, DataError, TensorData

BYTE_VOCABULARY = 256


def load_text(spec: DataSpec) -> DataBundle:
    """`root`: a text file, or a folder whose files matching `glob` are read in sorted order."""
    paths = text_files(spec)
    what = f"text under {spec.root}"
    return _windows(_tokenize(_read(paths, spec), spec.tokenizer), spec, what)


def load_python_source(spec: DataSpec) -> DataBundle:
    """The .py files at the top of this Python's standard library (the same text on every
    machine with this Python version)."""
    text = _read(python_source_files(), spec)
    return _windows(_tokenize(text, spec.tokenizer), spec, "the Python standard library")


def load_tokens(spec: DataSpec) -> DataBundle:
    """`root`: a .npy array (read without pickle) or a .safetensors file holding one tensor
    (or a tensor named "tokens") of integer token ids; it is read as one flat stream."""
    path = tokens_file(spec)
    ids = _read_array(path)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise DataError(f"data source 'tokens': {path} holds {ids.dtype} values, not token ids")
    ids = ids.reshape(-1).to(torch.int64)
    if ids.numel() and int(ids.min()) < 0:
        raise DataError(f"data source 'tokens': {path} holds negative token ids")
    if spec.max_tokens is not None:
        ids = ids[: spec.max_tokens]
    vocabulary = int(ids.max()) + 1 if ids.numel() else 0
    return _windows((ids, vocabulary), spec, str(path))


def _read(paths: list[Path], spec: DataSpec) -> bytes:
    """The files' bytes, concatenated, stopping once `max_tokens` bytes are read (a byte is at
    most one token, so this is enough for either tokenizer)."""
    chunks, total = [], 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise DataError(f"cannot read {path}: {error.strerror}") from None
        chunks.append(data)
        total += len(data)
        if spec.max_tokens is not None and total >= spec.max_tokens:
            break
    return b"".join(chunks)


def _tokenize(data: bytes, tokenizer: str) -> tuple[torch.Tensor, int]:
    """Token ids and the vocabulary size: bytes (256), or the text's sorted characters."""
    if tokenizer == "byte":
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64), BYTE_VOCABULARY
    text = data.decode("utf-8", errors="replace")
    characters = sorted(set(text))
    index = {c: i for i, c in enumerate(characters)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64), len(characters)


def _read_array(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        import numpy

        try:
            return torch.from_numpy(numpy.load(path, allow_pickle=False))
        except (ValueError, OSError) as error:
            raise DataError(
                f"data source 'tokens': cannot read {path} as a .npy array ({error})"
            ) from None
    if path.suffix == ".safetensors":
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise DataError(f"data source 'tokens': cannot read {path} ({error})") from None
        if "tokens" in tensors:
            return tensors["tokens"]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise DataError(
            f"data source 'tokens': {path} holds {len(tensors)} tensors; name the token ids "
            "'tokens', or store only them"
        )
    raise DataError(f"data source 'tokens': {path} is neither a .npy nor a .safetensors file")


def _windows(stream: tuple[torch.Tensor, int], spec: DataSpec, what: str) -> DataBundle:
    tokens, vocabulary = stream
    if spec.max_tokens is not None:
        tokens = tokens[: spec.max_tokens]
    length = spec.sequence_length
    count = (tokens.numel() - 1) // length
    if count < 2:
        raise DataError(
            f"{what} gives {tokens.numel()} tokens, fewer than two sequences of "
            f"train.data.sequence_length + 1 = {length + 1}; give more text or a shorter "
            "sequence_length"
        )
    used = tokens[: count * length + 1]
    inputs = used[:-1].reshape(count, length)
    labels = used[1:].reshape(count, length)
    held_out = max(1, count // 10)
    train = TensorData(inputs[:-held_out].clone(), labels[:-held_out].clone())
    val = TensorData(inputs[-held_out:].clone(), labels[-held_out:].clone())
    return DataBundle(train, val, vocabulary, (length,))
