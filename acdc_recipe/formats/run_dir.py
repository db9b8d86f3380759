"""Every folder this tool writes, and every file name in it, in one place.

`RunDir` is a run directory (`acdc run`): the resolved recipe, checkpoints with their digests,
the metrics, the summary, the dense and sparse models, the masks of the sparse model keyed by
parameter name, the report, and the exports made from it. It is built once (`RunDir.of`) and
passed down; nothing else spells a file name. `BuildDir` is what `acdc compile -o` writes,
`ExportDir` what `acdc export` writes, `TrainerDir` and `ModelFolder` what the trainer
callbacks write.

A folder that holds a run is never replaced without `--overwrite`, which then removes every
output of the earlier run (its exports too). `--resume` needs something to resume: a missing or
empty folder is an error, and a folder where a run started but never checkpointed starts again
from step 0. `RunDir.plan_start` decides which of these applies without touching a file (and
without torch); `StartPlan.carry_out` then does it.

A checkpoint's digest is written before the checkpoint file (each atomically), so a stop
between the two leaves a digest without its file: an unfinished write, removed when the run
continues from the checkpoint before it (or from step 0, when it was the first), and said so.
A checkpoint file is never left without its digest by a stop; one that has none was copied
alone, or is not ours, and resuming refuses it by name.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from acdc_recipe.errors import UserError
from acdc_recipe.files import folder_name, refuse_to_replace_recipe

RECIPE = "recipe.yaml"
DIGEST_SUFFIX = ".sha256"
_CHECKPOINT_FILE = re.compile(r"^checkpoint-(\d{9})\.pt$")
_CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d{9})$")
_EXPORT = "export-"


def digest_path(path: Path) -> Path:
    """The sha256 file beside `path` (`sha256sum` format: `sha256sum -c` checks it too)."""
    return path.with_name(path.name + DIGEST_SUFFIX)


def _by_step(folder: Path, pattern: re.Pattern[str], is_dir: bool) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if pattern.match(p.name) and p.is_dir() == is_dir]
    return sorted(found, key=lambda p: int(pattern.match(p.name)[1]), reverse=True)


class RunDirectoryError(UserError, ValueError):
    """The run directory cannot be used as asked (it holds a run, or nothing to resume)."""


@dataclass(frozen=True)
class StartPlan:
    """How a run begins in its directory: fresh, from a checkpoint, or again from step 0
    (`restart`: it stopped before its first checkpoint), and what to remove first."""

    kind: Literal["fresh", "resume", "restart"]
    remove: tuple[Path, ...] = ()
    note: str | None = None  # for the run's summary

    def carry_out(self) -> None:
        """Remove what the plan names (the main process only)."""
        for path in self.remove:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunDir:
    """A run directory and the name of everything `acdc run` and `acdc report` write in it."""

    path: Path

    @classmethod
    def of(cls, recipe_name: str, out: str | os.PathLike[str] | None = None) -> RunDir:
        """`out`, or runs/<recipe name> (made safe as a folder name)."""
        return cls(Path(out) if out is not None else Path("runs") / folder_name(recipe_name))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def dense_model(self) -> Path:
        return self.path / "dense.safetensors"

    @property
    def sparse_model(self) -> Path:
        return self.path / "sparse.safetensors"

    @property
    def masks(self) -> Path:
        """The sparse model's masks, bool tensors keyed by parameter name."""
        return self.path / "masks.safetensors"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def model(self, which: Literal["dense", "sparse"]) -> Path:
        return self.dense_model if which == "dense" else self.sparse_model

    def checkpoint_file(self, step: int) -> Path:
        return self.path / f"checkpoint-{step:09d}.pt"

    def checkpoint_folder(self, step: int) -> Path:
        """A sharded (FSDP2) run's checkpoint: a folder."""
        return self.path / f"checkpoint-{step:09d}"

    def unfinished_checkpoint_folder(self, step: int) -> Path:
        """Where the ranks write a checkpoint folder before it is renamed into place."""
        return self.path / f".checkpoint-{step:09d}.tmp"

    def unfinished_checkpoint_folders(self) -> list[Path]:
        return list(self.path.glob(".checkpoint-*.tmp")) if self.path.is_dir() else []

    def checkpoint_files(self) -> list[Path]:
        """Checkpoint files, newest (highest step) first."""
        return _by_step(self.path, _CHECKPOINT_FILE, is_dir=False)

    def unfinished_checkpoints(self) -> list[Path]:
        """The checkpoint files whose digest was written and which were not: writes a stop
        interrupted (the digest comes first), newest first. Their digests are the leftovers."""
        if not self.path.is_dir():
            return []
        found = [
            self.path / p.name.removesuffix(DIGEST_SUFFIX)
            for p in self.path.iterdir()
            if p.name.endswith(DIGEST_SUFFIX)
        ]
        found = [p for p in found if _CHECKPOINT_FILE.match(p.name) and not p.exists()]
        return sorted(found, key=_step_of, reverse=True)

    def checkpoint_folders(self) -> list[Path]:
        """Checkpoint folders of a sharded run, newest first."""
        return _by_step(self.path, _CHECKPOINT_FOLDER, is_dir=True)

    def checkpoints_held(self) -> str:
        """The checkpoints this folder holds, as a phrase for a message."""
        found = [str(p) for p in self.checkpoint_files() + self.checkpoint_folders()]
        if not found:
            return f"{self.path} holds no finished checkpoint"
        return (
            f"{self.path} holds {', '.join(found)} (a run removes older checkpoints as it "
            "writes new ones)"
        )

    def export(self, format_name: str) -> Path:
        """The default folder of an export in `format_name`."""
        return self.path / f"{_EXPORT}{format_name}"

    def exports(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.is_dir() and p.name.startswith(_EXPORT))

    def _named_outputs(self) -> tuple[Path, ...]:
        return (
            self.metrics,
            self.summary,
            self.dense_model,
            self.sparse_model,
            self.masks,
            self.report,
            self.tensorboard,
        )

    def outputs(self) -> list[Path]:
        """Everything an earlier run left here: checkpoints (with their digests), models,
        masks, metrics, summary, report, TensorBoard logs and exports. recipe.yaml alone is no
        run (`acdc compile -o` writes one too)."""
        found = self.checkpoint_files()
        found += [digest_path(p) for p in found if digest_path(p).exists()]
        found += [digest_path(p) for p in self.unfinished_checkpoints()]
        found += self.checkpoint_folders()
        return found + [p for p in self._named_outputs() if p.exists()] + self.exports()

    def leftovers(self) -> list[Path]:
        """What writes a stop interrupted left: temporary files of atomic writes
        (`.<name>.tmp-<pid>`, ours only) and the digests of checkpoints never written."""
        ours = (RECIPE, "checkpoint-", *(p.name for p in self._named_outputs()))
        found = self.path.glob(".*.tmp-*") if self.path.is_dir() else ()
        digests = [digest_path(p) for p in self.unfinished_checkpoints()]
        return [p for p in found if p.name[1:].startswith(ours)] + digests

    def plan_start(
        self, resolved: str, *, resume: bool, overwrite: bool, source: str | None = None
    ) -> StartPlan:
        """How a run of the recipe `resolved` (its resolved text) may start here; raise
        `RunDirectoryError` when it may not. Reads the folder, changes nothing, imports no
        torch. `source` is the recipe file being read (never replaced)."""
        if resume and overwrite:
            raise RunDirectoryError(
                "--resume continues the run in the folder and --overwrite removes it; give one"
            )
        # a resume may change some keys (`is_resumable`); the trainer checks which
        refuse_to_replace_recipe(self.recipe, resolved, "--out", source, others=overwrite or resume)
        if not resume:
            previous = self.outputs()
            if previous and not overwrite:
                raise RunDirectoryError(
                    f"{self.path} already holds a run ({_names(previous)}); continue it with "
                    "--resume, replace it with --overwrite, or choose another --out"
                )
            removed = ", ".join(p.name for p in previous)
            note = f"started fresh (--overwrite): removed {removed}" if previous else None
            return StartPlan("fresh", tuple(previous), note)
        if self.checkpoint_files() or self.checkpoint_folders():
            newest = (self.checkpoint_files() + self.checkpoint_folders())[0]
            unfinished = [  # older ones: a stop while older checkpoints were being removed
                p for p in self.unfinished_checkpoints() if _step_of(p) > _step_of(newest)
            ]
            note = (
                f"the run stopped while it wrote {_names(unfinished)}, so it continued from "
                "the checkpoint before it"
                if unfinished
                else None
            )
            return StartPlan("resume", tuple(self.leftovers()), note)
        return self._plan_restart(resolved)

    def _plan_restart(self, resolved: str) -> StartPlan:
        """`--resume` found no checkpoint: start again when the folder holds only the start-up
        of this recipe's run (killed before its first checkpoint)."""
        if not self.path.is_dir() or not any(self.path.iterdir()):
            state = "does not exist" if not self.path.exists() else "is empty"
            if self.path.exists() and not self.path.is_dir():
                state = "is not a folder"
            raise RunDirectoryError(
                f"nothing to resume: {self.path} {state}; --resume expects a run directory "
                "written by `acdc run` (checkpoint-*.pt files or folders); start the run "
                "without --resume"
            )
        recipe = self.recipe
        written = recipe.read_text(encoding="utf-8", errors="replace") if recipe.is_file() else None
        interrupted = self.leftovers()
        ours = [p for p in self.outputs() if p not in interrupted]
        only_start_up = all(p == self.metrics for p in ours)  # what a run writes first
        started = written == resolved or bool(ours) or bool(interrupted)
        if not (started and only_start_up and written in (None, resolved)):
            found = _names(ours) if ours else "no run's files"
            raise RunDirectoryError(
                f"{self.path} has no checkpoint to resume from ({found}); replace it with "
                "--overwrite, or choose another --out"
            )
        unfinished = self.unfinished_checkpoints()
        why = (
            f"the run stopped while it wrote its first checkpoint ({_names(unfinished)})"
            if unfinished
            else "no checkpoint was written before the run stopped"
        )
        return StartPlan(
            "restart", tuple(ours + interrupted), f"{why}, so it started again from step 0"
        )


@dataclass(frozen=True)
class BuildDir:
    """What `acdc compile -o` writes: the resolved recipe, the plan and the generated code."""

    path: Path

    @classmethod
    def of(cls, recipe_name: str, out: str | os.PathLike[str] | None = None) -> BuildDir:
        return cls(Path(out) if out is not None else Path("builds") / folder_name(recipe_name))

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def module(self) -> Path:
        return self.path / "module.py"


@dataclass(frozen=True)
class ExportDir:
    """What `acdc export` writes: the model's tensors, the manifest, a transformers-style
    config.json, and the resolved recipe of the run it came from."""

    path: Path

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE


@dataclass(frozen=True)
class ModelFolder:
    """A model as a trainer saves it (``save_pretrained``'s layout, or model.safetensors alone),
    with what the acdc callbacks add: the masks of a sparse model, and in a trainer's
    checkpoint folder the engine's state."""

    path: Path

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def weights_index(self) -> Path:
        """The index of a model saved in several safetensors files."""
        return self.path / "model.safetensors.index.json"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def masks(self) -> Path:
        return self.path / "masks.safetensors"

    @property
    def runtime_state(self) -> Path:
        """The engine's state beside a trainer checkpoint."""
        return self.path / "acdc_runtime.safetensors"

    def holds_weights(self) -> bool:
        """A model's weights are saved here (in one safetensors file or several)."""
        return self.weights.is_file() or self.weights_index.is_file()


@dataclass(frozen=True)
class TrainerDir:
    """What the trainer callbacks write into a trainer's output folder: the pair of models, each
    in a folder of its own (`ModelFolder`), and the engine's state beside each checkpoint."""

    path: Path

    def model_folder(self, which: Literal["dense", "sparse"]) -> Path:
        return self.path / which

    def model(self, which: Literal["dense", "sparse"]) -> ModelFolder:
        return ModelFolder(self.model_folder(which))

    def weights(self, which: Literal["dense", "sparse"]) -> Path:
        """A model folder's tensors, for models that are not transformers models."""
        return self.model(which).weights

    @staticmethod
    def runtime_state(checkpoint_folder: Path) -> Path:
        """The engine's state beside a trainer checkpoint."""
        return ModelFolder(checkpoint_folder).runtime_state


class ExportSourceError(UserError, ValueError):
    """What `acdc export` was given cannot be exported (checked before the model is read)."""


def check_export_source(source: Path) -> None:
    """Refuse, from the file names alone, a source `acdc export` cannot read: a path that does
    not exist (naming the checkpoints its folder does hold), an export, a sharded checkpoint
    folder, a run directory with no finished sparse model, or a folder that is neither a run
    directory nor a trainer's model folder. Files are read (and checked) by the exporter."""
    if source.is_file():
        return
    if source.is_dir():
        _check_export_folder(source)
        return
    run = RunDir(source.parent)
    if run.path.is_dir() and (run.recipe.is_file() or run.checkpoint_files()):
        finished = (
            f"; `acdc export {run}` exports the finished run's sparse model"
            if run.sparse_model.is_file()
            else ""
        )
        raise ExportSourceError(f"{source} does not exist; {run.checkpoints_held()}{finished}")
    raise ExportSourceError(
        f"{source} does not exist; give a run directory written by `acdc run`, one of its "
        "checkpoint-*.pt files, a Trainer checkpoint-N or sparse folder, or a Lightning .ckpt "
        "written with the acdc callback"
    )


def _check_export_folder(source: Path) -> None:
    run, folder = RunDir(source), ModelFolder(source)
    if ExportDir(source).manifest.is_file():
        raise ExportSourceError(
            f"{source} is an export, not a model to export; export the run it came from, or "
            "load it with acdc_recipe.load_model"
        )
    if run.recipe.is_file():
        if not run.sparse_model.is_file():
            raise ExportSourceError(
                f"{source} has no sparse model ({run.sparse_model.name}): the run has not "
                "finished, or its schedule ends with a dense phase; export one of its "
                f"checkpoints of a sparse phase instead ({run.checkpoints_held()})"
            )
        return
    if folder.holds_weights():
        return
    if _CHECKPOINT_FOLDER.match(source.name):
        raise ExportSourceError(
            f"{source} is a checkpoint folder of a sharded (FSDP2) run; export its run "
            f"directory ({source.parent}), which holds the gathered sparse model"
        )
    raise ExportSourceError(
        f"{source} is not a run directory (it has no {RECIPE}) nor a trainer's model folder "
        f"(no {folder.weights.name}); give a folder written by `acdc run` or by a trainer "
        "with the acdc callback"
    )


def check_export_target(target: Path) -> None:
    """Refuse an export folder that exists and is not empty (an export never overwrites)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportSourceError(
            f"{target} already exists; export into a new folder (-o DIR), or remove it first"
        )


def default_export_folder(source: Path, format_name: str) -> Path:
    """Where an export of `source` goes unless told: inside a run directory, beside anything
    else (a checkpoint file, a trainer's folder)."""
    run = RunDir(source)
    return (run if run.recipe.is_file() else RunDir(source.parent)).export(format_name)


def _step_of(checkpoint: Path) -> int:
    """The step of a checkpoint file or folder, from its name."""
    return int(
        (_CHECKPOINT_FILE.match(checkpoint.name) or _CHECKPOINT_FOLDER.match(checkpoint.name))[1]
    )


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths[:4]) + (", ..." if len(paths) > 4 else "")
