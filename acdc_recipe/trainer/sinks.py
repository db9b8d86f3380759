"""Where a run's records go: the terminal (rich), metrics.jsonl, and TensorBoard when installed.

Every sink gets the same typed records (`records.py`, and the engine's events) through
`write`, and the per-step `StepUpdate` through `progress` (only the terminal shows it).
`acdc report` reads metrics.jsonl only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from acdc_recipe.console import make_console
from acdc_recipe.files import write_text_atomic
from acdc_recipe.formats.records import (
    EpochEnded,
    Note,
    Record,
    RunFinished,
    RunStarted,
    read_records,
    record_to_dict,
    records_until_checkpoint,
)
from acdc_recipe.runtime.events import (
    DenseSnapshot,
    KernelsChosen,
    LayersEmptied,
    MasksComputed,
    PhaseStarted,
    emptied_layers_note,
    kernels_note,
)


@dataclass(frozen=True)
class StepUpdate:
    """Where the loop is after one optimizer step (epochs 0-based, batches 1-based)."""

    epoch: int
    batch: int
    batches: int
    loss: float  # mean training loss of the epoch so far
    lr: float
    samples_per_second: float
    status: str  # "dense 0%" / "sparse 90%"


class Sink:
    """Receives records; `progress` is called after every step."""

    def write(self, record: Record) -> None:
        pass

    def progress(self, update: StepUpdate) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink(Sink):
    """One JSON object per line, flushed as written. On resume, the records written after the
    resumed checkpoint (work that is being redone) are dropped first, so the log reads as one
    uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = records_until_checkpoint(read_records(path), resume_step)
            write_text_atomic(path, "".join(_line(r) for r in kept))
        elif resume_step is None:
            path.unlink(missing_ok=True)
        self.handle = path.open("a", encoding="utf-8")

    def write(self, record: Record) -> None:
        self.handle.write(_line(record))
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _line(record: Record) -> str:
    return json.dumps(record_to_dict(record)) + "\n"


class TensorBoardSink(Sink):
    """Scalars for TensorBoard under `run_dir/tensorboard`."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def write(self, record: Record) -> None:
        if isinstance(record, EpochEnded):
            for key in ("train_loss", "val_loss", "top1", "sparsity", "lr"):
                self.writer.add_scalar(f"train/{key}", getattr(record, key), record.step)
        elif isinstance(record, MasksComputed):
            step = record.step
            self.writer.add_scalar("masks/achieved_sparsity", record.achieved_sparsity, step)
            if record.changed_fraction is not None:
                self.writer.add_scalar("masks/changed_fraction", record.changed_fraction, step)

    def close(self) -> None:
        self.writer.close()


def tensorboard_sink(folder: Path) -> Sink | None:
    """A TensorBoard sink, or None when the tensorboard package is not installed."""
    try:
        return TensorBoardSink(folder)
    except ImportError:
        return None


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# The epoch table's columns and widths: a row fits in 80 columns.
EPOCH_COLUMNS = ("epoch", "phase", "train loss", "val loss", "top-1", "sparsity", "lr", "time")
_WIDTHS = (7, 7, 10, 9, 7, 8, 9, 7)


def epoch_row(cells: tuple[str, ...]) -> str:
    """One row of the epoch table (the phase left-aligned, numbers right-aligned)."""
    return "  ".join(
        cell.ljust(width) if index == 1 else cell.rjust(width)
        for index, (cell, width) in enumerate(zip(cells, _WIDTHS, strict=True))
    ).rstrip()


class TerminalSink(Sink):
    """On a terminal: progress bars (loss, lr, samples/s). Off one: a step line every
    `log_every` seconds. Always: a line per phase switch and mask computation, a row of the
    epoch table (under 80 columns) per epoch, and the summary table at the end. A closed stdout (`acdc run ... | head`) silences the console
    (`make_console`); training and every file go on."""

    def __init__(self, console: Console | None = None, log_every: float = 10.0) -> None:
        self.console = console or make_console()
        self.log_every = log_every
        self.bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
            transient=True,
        )
        self.epochs_task: Any = None
        self.batch_task: Any = None
        self.last_epoch = 0
        self.steps_per_epoch = 1
        self.epoch_header_shown = False
        self.last_line = time.monotonic()
        self.handlers: dict[type, Callable[[Any], None]] = {
            RunStarted: self._run_started,
            PhaseStarted: self._phase_started,
            MasksComputed: self._masks_computed,
            LayersEmptied: self._layers_emptied,
            DenseSnapshot: self._dense_snapshot,
            KernelsChosen: self._kernels_chosen,
            EpochEnded: self._epoch_ended,
            Note: lambda note: self._line(f"note: {note.text}"),
            RunFinished: self._run_finished,
        }

    def write(self, record: Record) -> None:
        handler = self.handlers.get(type(record))
        if handler is not None:
            handler(record)

    def progress(self, update: StepUpdate) -> None:
        if not self.bars.disable:
            if self.batch_task is not None:
                self._update_bar(update)
        elif time.monotonic() - self.last_line >= self.log_every:
            self._line(
                f"epoch {update.epoch} step {update.batch}/{update.batches}: loss "
                f"{update.loss:.4f}  lr {update.lr:.4g}  {update.samples_per_second:,.0f} "
                f"samples/s  {update.status}"
            )

    def close(self) -> None:
        self.bars.stop()

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _where(self, step: int) -> str:
        return f"epoch {step / self.steps_per_epoch:g} (step {step})"

    def _run_started(self, record: RunStarted) -> None:
        self.last_epoch, self.steps_per_epoch = record.epochs - 1, record.steps_per_epoch
        self.console.print(
            f"[bold]{record.recipe}[/]: epochs 0-{record.epochs - 1} x "
            f"{record.steps_per_epoch} steps on {record.device}"
            + (f" ({record.world_size} processes)" if record.world_size > 1 else "")
            + f", {record.threads} torch thread{'s' if record.threads != 1 else ''}"
            + (f", resumed at step {record.resumed_from}" if record.resumed_from else "")
        )
        self.bars.start()
        start_epoch = (record.resumed_from or 0) // self.steps_per_epoch
        self.epochs_task = self.bars.add_task(
            "epochs", total=record.epochs, completed=start_epoch, status=""
        )
        self.batch_task = self.bars.add_task("batches", total=self.steps_per_epoch, status="")

    def _phase_started(self, record: PhaseStarted) -> None:
        if record.kind == "dense":
            self._line(f"{self._where(record.step)}: dense phase {record.phase_index}")

    def _masks_computed(self, record: MasksComputed) -> None:
        changed = record.changed_fraction
        self._line(
            f"{self._where(record.step)}: sparse phase {record.phase_index}, sparsity "
            f"{_percent(record.achieved_sparsity)} (target {_percent(record.target)}), "
            f"mask changed {_percent(changed) if changed is not None else '- (first mask)'}, "
            f"{_emptied_channels(record.emptied_channels)}{record.seconds:.3f}s"
        )

    def _layers_emptied(self, record: LayersEmptied) -> None:
        self._line(f"warning: {emptied_layers_note(record.names)}")

    def _dense_snapshot(self, record: DenseSnapshot) -> None:
        self._line(
            f"{self._where(record.step)}: saved the dense model (end of the last dense phase)"
        )

    def _kernels_chosen(self, record: KernelsChosen) -> None:
        self._line(f"{self._where(record.step)}: kernels: {kernels_note(record)}")

    def _epoch_ended(self, record: EpochEnded) -> None:
        if not self.epoch_header_shown:
            self.epoch_header_shown = True
            self._line(epoch_row(EPOCH_COLUMNS))
        self._line(
            epoch_row(
                (
                    f"{record.epoch}/{self.last_epoch}",
                    record.phase,
                    f"{record.train_loss:.4f}",
                    f"{record.val_loss:.4f}",
                    _percent(record.top1),
                    _percent(record.sparsity),
                    f"{record.lr:.4g}",
                    f"{record.seconds:.1f}s",
                )
            )
        )
        if self.epochs_task is not None:
            self.bars.update(self.epochs_task, completed=record.epoch + 1)

    def _update_bar(self, update: StepUpdate) -> None:
        self.bars.update(
            self.batch_task,
            completed=update.batch,
            total=update.batches,
            status=f"{update.status} loss {update.loss:.4f} lr {update.lr:.3g} "
            f"{update.samples_per_second:,.0f}/s",
            description=f"epoch {update.epoch}",
        )

    def _run_finished(self, record: RunFinished) -> None:
        self.bars.stop()
        self.console.print(summary_table(record.summary))


def emptied_layers(per_layer_sparsity: dict[str, float]) -> list[str]:
    """Layers whose every prunable weight is zero."""
    return [name for name, sparsity in per_layer_sparsity.items() if sparsity >= 1.0]


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run table: accuracies, sparsity, FLOPs multipliers, files."""
    table = Table(
        title=f"{summary['recipe']}: done in {summary['wall_seconds']:.1f}s", show_header=False
    )
    table.add_column(style="bold")
    table.add_column()
    table.add_row("dense top-1", _percent(summary.get("dense_top1")))
    table.add_row("sparse top-1", _percent(summary.get("sparse_top1")))
    table.add_row("achieved sparsity", _percent(summary.get("achieved_sparsity")))
    table.add_row("training FLOPs (x dense)", f"{summary['training_flops_multiplier']:.3f}")
    table.add_row("inference FLOPs (x dense)", f"{summary['inference_flops_multiplier']:.3f}")
    table.add_row("dense model", summary.get("dense_model") or "-")
    table.add_row("sparse model", summary.get("sparse_model") or "-")
    table.add_row("run directory", summary["run_dir"])
    return table


def _emptied_channels(per_layer: dict[str, int] | None) -> str:
    """'9 output channels without a weight (min_per_channel keeps them), ' or ''."""
    total = sum((per_layer or {}).values())
    if not total:
        return ""
    plural = "s" if total > 1 else ""
    return f"{total} output channel{plural} without a weight (min_per_channel keeps them), "
