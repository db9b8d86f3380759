"""Where a run's records go: the terminal (rich), metrics.jsonl, and TensorBoard when installed.

The trainer hands every sink the same plain-dict records (each with an `event` name and the
optimizer `step`): `run_started`, `epoch`, `checkpoint`, `run_finished`, and the runtime's
events (`PhaseStarted`, `MasksComputed`, `DenseSnapshot`) as `event_to_dict` writes them.
`acdc report` reads metrics.jsonl only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from acdc_recipe.files import write_text_atomic


class Sink:
    """Receives records; `progress` is called every step (only the terminal uses it)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def progress(
        self, epoch: int, batch: int, batches: int, loss: float | None, status: str
    ) -> None:
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
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None:
            path.unlink(missing_ok=True)
        self.handle = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def records_until_checkpoint(records: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """The records up to the `checkpoint` record of `step` (those with an earlier step when
    that record is missing)."""
    marks = [i for i, r in enumerate(records) if r["event"] == "checkpoint" and r["step"] == step]
    if marks:
        return records[: marks[-1] + 1]
    return [r for r in records if r.get("step", 0) < step]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a crash mid-write) and lines that are
    not event records are ignored."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("event"), str):
            records.append(record)
    return records


class TensorBoardSink(Sink):
    """Scalars for TensorBoard under `run_dir/tensorboard`."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step", 0)
        if record["event"] == "epoch":
            for key in ("train_loss", "val_loss", "top1", "sparsity", "lr"):
                if record.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", record[key], step)
        elif record["event"] == "MasksComputed":
            self.writer.add_scalar("masks/achieved_sparsity", record["achieved_sparsity"], step)
            if record["changed_fraction"] is not None:
                self.writer.add_scalar("masks/changed_fraction", record["changed_fraction"], step)

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


class TerminalSink(Sink):
    """Progress bars while training (only on a terminal), a line per phase switch and epoch,
    and the summary table at the end."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
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
        self.epochs_task = None
        self.batch_task = None
        self.epochs = 0
        self.steps_per_epoch = 1

    def write(self, record: dict[str, Any]) -> None:
        kind = record["event"]
        if kind == "run_started":
            self.epochs, self.steps_per_epoch = record["epochs"], record["steps_per_epoch"]
            self.console.print(
                f"[bold]{record['recipe']}[/]: {record['epochs']} epochs x "
                f"{record['steps_per_epoch']} steps on {record['device']}"
                + (f" ({record['world_size']} processes)" if record["world_size"] > 1 else "")
                + (
                    f", resumed at step {record['resumed_from']}"
                    if record.get("resumed_from")
                    else ""
                )
            )
            for note in record.get("refused_checkpoints") or ():
                self._line(f"note: {note}")
            self.bars.start()
            start_epoch = (record.get("resumed_from") or 0) // self.steps_per_epoch
            self.epochs_task = self.bars.add_task(
                "epochs", total=self.epochs, completed=start_epoch, status=""
            )
            self.batch_task = self.bars.add_task("batches", total=self.steps_per_epoch, status="")
        elif kind == "PhaseStarted" and record["kind"] == "dense":
            self._line(f"{self._where(record)}: dense phase {record['phase_index']}")
        elif kind == "MasksComputed":
            changed = record["changed_fraction"]
            self._line(
                f"{self._where(record)}: sparse phase {record['phase_index']}, sparsity "
                f"{_percent(record['achieved_sparsity'])} (target {_percent(record['target'])}), "
                f"mask changed {_percent(changed) if changed is not None else '- (first mask)'}, "
                f"{record['seconds']:.3f}s"
            )
            emptied = emptied_layers(record["per_layer_sparsity"])
            if emptied and record["target"] < 1.0:
                self._line(f"warning: {emptied_layers_note(emptied)}")
        elif kind == "DenseSnapshot":
            self._line(
                f"{self._where(record)}: saved the dense model (end of the last dense phase)"
            )
        elif kind == "epoch":
            self._epoch_line(record)
        elif kind == "run_finished":
            self.bars.stop()
            self.console.print(summary_table(record["summary"]))

    def _where(self, record: dict[str, Any]) -> str:
        return f"epoch {record['step'] / self.steps_per_epoch:g} (step {record['step']})"

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _epoch_line(self, record: dict[str, Any]) -> None:
        self._line(
            f"epoch {record['epoch'] + 1}/{self.epochs} ({record['phase']})  "
            f"train loss {record['train_loss']:.4f}  val loss {record['val_loss']:.4f}  "
            f"top-1 {_percent(record['top1'])}  sparsity {_percent(record['sparsity'])}  "
            f"{record['seconds']:.1f}s"
        )
        if self.epochs_task is not None:
            self.bars.update(self.epochs_task, completed=record["epoch"] + 1)

    def progress(
        self, epoch: int, batch: int, batches: int, loss: float | None, status: str
    ) -> None:
        if self.batch_task is None or self.bars.disable:
            return
        text = status + (f" loss {loss:.4f}" if loss is not None else "")
        self.bars.update(
            self.batch_task,
            completed=batch,
            total=batches,
            status=text,
            description=f"epoch {epoch + 1}",
        )

    def close(self) -> None:
        self.bars.stop()


def emptied_layers(per_layer_sparsity: dict[str, float]) -> list[str]:
    """Layers whose every prunable weight is zero."""
    return [name for name, sparsity in per_layer_sparsity.items() if sparsity >= 1.0]


def emptied_layers_note(names: list[str]) -> str:
    return (
        f"every weight of {', '.join(names)} is pruned; such a layer passes on only its bias, "
        "which can collapse training (global magnitude pruning empties small or low-magnitude "
        "layers first); consider scope: erk or uniform, or a rule that keeps the layer denser"
    )


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
