"""The run directory: what a run leaves in it, and when an existing one may be reused.

A folder that holds a run is never replaced without `--overwrite`, which then removes every
output of the earlier run. `--resume` needs something to resume: a missing or empty folder is
an error, and a folder where a run started but never checkpointed starts again from step 0.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from acdc_recipe.errors import UserError
from acdc_recipe.files import refuse_to_replace_recipe
from acdc_recipe.runtime.train import checkpoint as ckpt
from acdc_recipe.runtime.train import sharded_checkpoint as sharded_ckpt

# Everything `acdc run` and `acdc report` write into a run directory, beside the checkpoints
# and recipe.yaml (which alone is not a run: `acdc compile -o` writes one too).
RUN_OUTPUTS = (
    "metrics.jsonl",
    "summary.json",
    "dense.safetensors",
    "sparse.safetensors",
    "report.html",
    "tensorboard",
)
# What a run writes, beside recipe.yaml, before its first checkpoint.
START_UP = ("metrics.jsonl",)


class RunDirectoryError(UserError, ValueError):
    """The run directory cannot be used as asked (it holds a run, or nothing to resume)."""


def outputs(run_dir: Path) -> list[Path]:
    """Checkpoints (with their digests) and outputs of an earlier run in `run_dir`."""
    if not run_dir.is_dir():
        return []
    found = list(ckpt.list_checkpoints(run_dir))
    found += [ckpt.digest_path(p) for p in found if ckpt.digest_path(p).exists()]
    found += sharded_ckpt.list_checkpoints(run_dir)
    return found + [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def leftovers(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes a stop interrupted (`.<name>.tmp-<pid>`): ours only."""
    names = ("recipe.yaml", "checkpoint-", *RUN_OUTPUTS)
    found = run_dir.glob(".*.tmp-*") if run_dir.is_dir() else ()
    return [p for p in found if p.name[1:].startswith(names)]


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def start_fresh(run_dir: Path, overwrite: bool, resolved: str) -> list[str]:
    """Make room for a new run; return the names removed (only with `overwrite`)."""
    previous = outputs(run_dir)
    if previous and not overwrite:
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({_names(previous)}); continue it with --resume, "
            "replace it with --overwrite, or choose another --out"
        )
    refuse_to_replace_recipe(run_dir / "recipe.yaml", resolved, "--out", others=overwrite)
    remove(previous)
    return [p.name for p in previous]


def restart_unstarted(run_dir: Path, resolved: str) -> str:
    """`--resume` found no checkpoint: start again when the folder holds only the start-up of
    this recipe's run (killed before its first checkpoint); return the note saying so."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        state = "does not exist" if not run_dir.exists() else "is empty"
        if run_dir.exists() and not run_dir.is_dir():
            state = "is not a folder"
        raise RunDirectoryError(
            f"nothing to resume: {run_dir} {state}; --resume expects a run directory written by "
            "`acdc run` (checkpoint-*.pt files or folders); start the run without --resume"
        )
    recipe = run_dir / "recipe.yaml"
    written = recipe.read_text(encoding="utf-8", errors="replace") if recipe.is_file() else None
    ours = outputs(run_dir)
    interrupted = leftovers(run_dir)
    only_start_up = all(p.name in START_UP for p in ours)
    started = written == resolved or bool(ours) or bool(interrupted)
    if not (started and only_start_up and written in (None, resolved)):
        found = _names(ours) if ours else "no run's files"
        raise RunDirectoryError(
            f"{run_dir} has no checkpoint to resume from ({found}); replace it with --overwrite, "
            "or choose another --out"
        )
    remove(ours + interrupted)
    return "no checkpoint was written before the run stopped, so it started again from step 0"


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths[:4]) + (", ..." if len(paths) > 4 else "")
