"""Checkpoints of FSDP2 runs: one folder per checkpoint, written by every rank, verified whole.

    checkpoint-000000012/
        .metadata, __0_0.distcp, ...   torch.distributed.checkpoint: every DTensor of the
                                       checkpoint (parameters, optimizer moments), each rank
                                       writing its own shards
        rank-00000.pt, ...             everything else, per rank: its mask shards, RNG, buffers
                                       (batch-norm statistics differ between FSDP ranks), plain
                                       values; one `torch.save`d dict like a single-process one
        SHA256SUMS                     the sha256 of every other file (`sha256sum -c` format)

The ranks write into `.checkpoint-000000012.tmp`; rank 0 then hashes every file, writes
SHA256SUMS and renames the folder into place, so a crash leaves either the previous checkpoint
or this one complete. Reading verifies every digest before any byte reaches a loader. Rank
files are read with `weights_only=True`; torch.distributed.checkpoint holds only tensors here
(its planner refuses anything else), and its own `.metadata`, a pickle, is read after
verification by an unpickler that knows only the metadata's classes (`_MetadataOnly`). A folder written by another number of processes is
refused by name: mask shards and RNG states are per rank. torch.distributed.checkpoint is
imported by the functions that write and read the shards: it takes half a second to import,
which a run of one process does not need to pay.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from acdc_recipe import files
from acdc_recipe.formats import checkpoint as ckpt
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.runtime.sharding import is_sharded
from acdc_recipe.trainer.distributed import DistContext

MANIFEST = "SHA256SUMS"
_RANK_FILE = re.compile(r"^rank-(\d{5})\.pt$")


@dataclass(frozen=True)
class ShardedCheckpoint:
    """A verified checkpoint folder: this rank's own parts, and where the sharded ones are."""

    path: Path
    state: dict[str, Any]  # this rank's file, plus "step"
    refused: tuple[str, ...]  # why newer checkpoints were skipped, one line each


def _rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def save_checkpoint(
    run_dir: RunDir, step: int, state: dict[str, Any], recipe_hash: str, context: DistContext
) -> Path:
    """Write one checkpoint folder from every rank (a collective): the DTensors of `state`
    through torch.distributed.checkpoint, the rest into this rank's file. Keeps the newest
    `ckpt.KEEP`."""
    import torch.distributed.checkpoint as dcp

    final = run_dir.checkpoint_folder(step)
    temporary = run_dir.unfinished_checkpoint_folder(step)
    if context.is_main:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    dist.barrier()
    sharded, own = split_dtensors(state)
    dcp.save(sharded, checkpoint_id=temporary)
    write_rank_file(temporary, context.rank, {"recipe_hash": recipe_hash, "step": step, **own})
    dist.barrier()
    if context.is_main:
        write_manifest(temporary)
        ckpt.rename_into_place(temporary, final)
        for old in run_dir.checkpoint_folders()[ckpt.KEEP :]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def write_rank_file(folder: Path, rank: int, state: dict[str, Any]) -> None:
    """This rank's part of a checkpoint, in the single-process checkpoint format."""
    buffer = io.BytesIO()
    torch.save({"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, **state}, buffer)
    files.write_atomic(folder / _rank_file(rank), lambda path: path.write_bytes(buffer.getvalue()))


def write_manifest(folder: Path) -> None:
    """SHA256SUMS over every file in `folder`, the last file a checkpoint folder gets."""
    lines = [f"{files.sha256_of(path)}  {path.name}\n" for path in sorted(folder.iterdir())]
    files.write_text_atomic(folder / MANIFEST, "".join(lines))


_NOTHING = object()


def split_dtensors(value: Any) -> tuple[Any, Any]:
    """(the DTensors in `value`, everything else), each in `value`'s nesting of dicts; a
    part without DTensors is `{}` on the left."""
    if is_sharded(value):
        return value, _NOTHING
    if not isinstance(value, dict):
        return _NOTHING, value
    sharded, rest = {}, {}
    for key, item in value.items():
        left, right = split_dtensors(item)
        if left is not _NOTHING:
            sharded[key] = left
        if right is not _NOTHING:
            rest[key] = right
    return sharded, rest


def merge_dtensors(rest: Any, sharded: Any) -> Any:
    """Undo `split_dtensors`."""
    if not isinstance(sharded, dict):
        return sharded
    merged = dict(rest)
    for key, item in sharded.items():
        merged[key] = merge_dtensors(rest.get(key, {}), item)
    return merged


def verify_folder(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file the manifest lists, after checking each; raises
    `ckpt.CheckpointError` saying what is missing, extra or damaged."""
    try:
        lines = (folder / MANIFEST).read_text(encoding="utf-8").splitlines()
        listed = {name: digest for digest, name in (line.split(maxsplit=1) for line in lines)}
    except (OSError, UnicodeDecodeError, ValueError):
        raise ckpt.CheckpointError(
            f"{folder.name} has no readable {MANIFEST} (the run was stopped while writing it, "
            "or the folder was copied in part), so it cannot be verified"
        ) from None
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    if present != set(listed):
        missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
        raise ckpt.CheckpointError(
            f"{folder.name} does not hold the files its {MANIFEST} lists "
            f"(missing: {', '.join(missing) or 'none'}; not listed: {', '.join(extra) or 'none'})"
        )
    for name, expected in listed.items():
        if files.sha256_of(folder / name) != expected:
            raise ckpt.CheckpointError(
                f"{folder.name}/{name} is damaged: its content does not match its sha256 "
                "digest (the file was truncated, overwritten or corrupted after it was written)"
            )
    return listed


class WorldSizeError(ckpt.CheckpointError):
    """The checkpoint was written by another number of processes."""


def refuse_unsharded_resume(run_dir: RunDir, world_size: int) -> None:
    """Raise `WorldSizeError` when `run_dir` holds checkpoint folders, which only a sharded run
    of their number of processes can resume."""
    folders = run_dir.checkpoint_folders()
    if not folders:
        return
    try:
        lines = (folders[0] / MANIFEST).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        lines = []
    saved = sum(1 for word in lines if _RANK_FILE.match(word))
    raise WorldSizeError(
        f"the checkpoints in {run_dir} were written by {saved or 'several'} processes sharded "
        f"with FSDP2 (train.distributed: fsdp) and this run has {world_size}, unsharded; "
        f"resume with --nproc-per-node {saved or 'N'}"
    )


def read_checkpoint(folder: Path, recipe_hash: str, context: DistContext) -> dict[str, Any]:
    """Verify the folder, check it was written by this many processes, and read this rank's
    file; raise `ckpt.CheckpointError` saying what is wrong."""
    listed = verify_folder(folder)
    saved = sum(1 for name in listed if _RANK_FILE.match(name))
    if saved != context.world_size:
        raise WorldSizeError(
            f"the checkpoint was written by {saved} processes and this run has "
            f"{context.world_size}; resume with --nproc-per-node {saved}"
        )
    name = _rank_file(context.rank)
    data = (folder / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != listed[name]:
        raise ckpt.CheckpointError(f"{folder.name}/{name} changed while it was read")
    return ckpt.checked_payload(data, f"{folder.name}/{name}", recipe_hash)


def load_latest(
    run_dir: RunDir, recipe_hash: str, context: DistContext
) -> ShardedCheckpoint | None:
    """The newest checkpoint folder every rank can use; None when there are none at all.

    Every rank reads the same folders, and one exchange of verdicts per folder makes them
    agree, so all pick one folder or all raise `ckpt.CheckpointError` (when checkpoints exist
    but none is usable).
    """
    refused = []
    if context.is_main:
        for stale in run_dir.unfinished_checkpoint_folders():  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)
    for folder in run_dir.checkpoint_folders():
        state, reason = None, f"{folder.name} is not usable on every rank"
        try:
            state = read_checkpoint(folder, recipe_hash, context)
        except WorldSizeError:
            raise  # the same verdict on every rank, from the same manifest
        except ckpt.CheckpointError as error:
            reason = str(error)
        verdicts: list[bool | None] = [None] * context.world_size
        dist.all_gather_object(verdicts, state is not None)  # any backend, NCCL included
        if all(verdicts):
            return ShardedCheckpoint(folder, state, tuple(refused))
        refused.append(reason)
    if refused:
        raise ckpt.CheckpointError(
            f"cannot resume from {run_dir}: no usable checkpoint. " + "; ".join(refused)
        )
    return None


class _MetadataOnly(pickle.Unpickler):
    """Unpickles torch.distributed.checkpoint's `.metadata` (its dataclasses, sizes, dtypes)
    and nothing else: no class or function outside these can be named by the file."""

    ALLOWED = {
        *(
            ("torch.distributed.checkpoint.metadata", name)
            for name in (
                "Metadata", "ChunkStorageMetadata", "TensorStorageMetadata",
                "BytesStorageMetadata", "TensorProperties", "MetadataIndex", "StorageMeta",
                "_MEM_FORMAT_ENCODING",
            )
        ),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("collections", "OrderedDict"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


@functools.cache
def _loading_classes() -> tuple[type, type]:
    """torch.distributed.checkpoint's reader and load planner with this module's checks: the
    reader reads `.metadata` with `_MetadataOnly`, the planner refuses non-tensor values
    (which it would unpickle; these checkpoints keep them in the rank files)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta

    class VerifiedReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = Path(self.path) / ".metadata"
            try:
                with path.open("rb") as handle:
                    metadata = _MetadataOnly(handle).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
                raise ckpt.CheckpointError(
                    f"{path.parent.name}/.metadata is not torch.distributed.checkpoint metadata "
                    f"this version reads ({error})"
                ) from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class TensorsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            raise ckpt.CheckpointError(
                f"{read_item.dest_index.fqn} is stored as a pickled object, which acdc-recipe "
                "checkpoints never write"
            )

    return VerifiedReader, TensorsOnlyPlanner


def load_state(checkpoint: ShardedCheckpoint, templates: dict[str, Any]) -> dict[str, Any]:
    """The whole checkpoint state for this rank: its file, with the DTensors of `templates`
    (state shaped and sharded like this run's) filled in place from the verified folder.
    Every rank calls it."""
    import torch.distributed.checkpoint as dcp

    reader, planner = _loading_classes()
    sharded, _ = split_dtensors(templates)
    dcp.load(sharded, storage_reader=reader(checkpoint.path), planner=planner())
    return merge_dtensors(checkpoint.state, sharded)


@torch.no_grad()
def create_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter its optimizer state (zeros) with one step of zero gradients at
    learning rate 0, so that a checkpoint has tensors to be loaded into. Call it before the
    sparsity runtime attaches: the runtime counts every optimizer step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.requires_grad:
                param.grad = torch.zeros_like(param)
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)
