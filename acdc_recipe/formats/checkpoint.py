"""Atomic, verified training checkpoints and safetensors model files.

A checkpoint is one `torch.save`d dict of tensors and plain containers (loadable with
`weights_only=True`) with its sha256 beside it, in `sha256sum` format
(`checkpoint-<step>.pt.sha256`, so `sha256sum -c` checks it too). The digest is written first,
then the checkpoint, each to a temporary file, fsynced and renamed into place: a stop between
the two leaves a digest without a checkpoint, which the run directory knows as an unfinished
write, never a checkpoint without its digest. Reading verifies the digest before `torch.load` sees a byte, so
a file damaged anywhere (torch does not check the zip's CRCs) is refused by name, and resuming
takes the newest checkpoint that verifies, loads and belongs to this recipe. The newest two
are kept. Runs sharded with FSDP2 write checkpoint folders instead (`sharded_checkpoint`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from acdc_recipe import files
from acdc_recipe.errors import UserError
from acdc_recipe.formats.run_dir import RunDir, digest_path

FORMAT = "acdc-recipe-checkpoint"
FORMAT_VERSION = 2
KEEP = 2


class CheckpointError(UserError, ValueError):
    """No usable checkpoint; the message lists each candidate and why it was refused."""


def rename_into_place(temporary: Path, final: Path) -> None:
    """Rename a completed checkpoint folder into place (replacing a refused one of that step)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    files.fsync_directory(final.parent)


def rng_state() -> dict[str, Any]:
    """Every global random generator the training loop may draw from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        kind, keys, pos, has_gauss, gauss = numpy.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss]
    except ImportError:
        pass
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def save_checkpoint(run_dir: RunDir, step: int, state: dict[str, Any], recipe_hash: str) -> Path:
    """Write the digest of `state` for `step`, then `state` (each atomically), and delete all
    but the newest `KEEP` checkpoints."""
    path = run_dir.checkpoint_file(step)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "recipe_hash": recipe_hash}
    payload.update(step=step, **state)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    line = f"{hashlib.sha256(data).hexdigest()}  {path.name}\n"
    files.write_text_atomic(digest_path(path), line)
    files.write_atomic(path, lambda temporary: temporary.write_bytes(data))
    for old in run_dir.checkpoint_files()[KEEP:]:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]
    refused: tuple[str, ...]  # why newer checkpoints were skipped, one line each


def verified_bytes(path: Path) -> bytes:
    """The checkpoint's bytes, after checking them against its sha256 file."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path.name} cannot be read ({error.strerror})") from None
    try:
        expected = digest_path(path).read_text(encoding="utf-8").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        raise CheckpointError(
            f"{path.name} has no readable digest file {digest_path(path).name} (it was copied "
            "alone, or written by another tool or an earlier version), so it cannot be verified"
        ) from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{path.name} is damaged: its content does not match its sha256 digest (the file "
            "was truncated, overwritten or corrupted after it was written)"
        )
    return data


def read_checkpoint(path: Path, recipe_hash: str | None) -> dict[str, Any]:
    """Verify, load and validate one checkpoint; raise `CheckpointError` saying what is wrong.
    With `recipe_hash` None any recipe's checkpoint is accepted (its "recipe" entry says which)."""
    return checked_payload(verified_bytes(path), path.name, recipe_hash)


def checked_payload(data: bytes, name: str, recipe_hash: str | None) -> dict[str, Any]:
    """Load verified checkpoint bytes (`weights_only=True`) and check that they are a
    checkpoint of this format and recipe (any recipe with `recipe_hash` None); `name` is what
    errors call the file."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - verified bytes that torch cannot read: not ours
        raise CheckpointError(
            f"{name} is not an acdc-recipe checkpoint (its digest matches, but it does not "
            "hold the tensors and plain values a checkpoint holds)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{name} is not an acdc-recipe checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{name} has checkpoint format version {state.get('format_version')!r}, "
            f"this version reads {FORMAT_VERSION}"
        )
    if recipe_hash is not None and state.get("recipe_hash") != recipe_hash:
        raise CheckpointError(
            f"{name} was written for a different recipe (hash {state.get('recipe_hash')}, "
            f"this recipe's is {recipe_hash}); resume with the original recipe and --set values"
        )
    return state


def load_latest(run_dir: RunDir, recipe_hash: str) -> LoadedCheckpoint | None:
    """The newest valid checkpoint in `run_dir`; None when there are none at all.

    Raises `CheckpointError` when checkpoints exist but none is usable.
    """
    refused = []
    for path in run_dir.checkpoint_files():
        try:
            return LoadedCheckpoint(path, read_checkpoint(path, recipe_hash), tuple(refused))
        except CheckpointError as error:
            refused.append(str(error))
    if refused:
        raise CheckpointError(
            f"cannot resume from {run_dir}: no usable checkpoint. " + "; ".join(refused)
        )
    return None


def save_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write a model's tensors (contiguous CPU copies) as safetensors, atomically. The
    metadata is stored under one key (as sorted JSON), so equal content gives equal bytes."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    header = {"acdc_recipe": json.dumps(metadata, sort_keys=True)}
    files.write_atomic(path, lambda temporary: save_file(plain, str(temporary), metadata=header))


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
