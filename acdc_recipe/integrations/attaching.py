"""What every trainer integration does the same way: read the recipe, compile it against the
trainer's model, check the trainer's length against the schedule, attach the engine to the
optimizer the trainer built, and turn the engine's events into scalar metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from acdc_recipe.compiler import CompiledRecipe
from acdc_recipe.errors import UserError
from acdc_recipe.formats.checkpoint import save_safetensors
from acdc_recipe.formats.mask_file import runtime_masks, save_masks
from acdc_recipe.formats.model_folder import ModelRecord, write_record
from acdc_recipe.formats.run_dir import TrainerDir
from acdc_recipe.language.loading import dump_recipe, load_recipe
from acdc_recipe.language.schema import Recipe
from acdc_recipe.models import compile_model
from acdc_recipe.runtime import (
    DenseSnapshot,
    LayersEmptied,
    MasksComputed,
    PhaseStarted,
    RuntimeEvent,
    SparsityRuntime,
    attach,
)


class IntegrationError(UserError, ValueError):
    """A trainer set up in a way the recipe cannot run with; the message says what to change."""


def as_recipe(recipe: Recipe | str | Path) -> Recipe:
    """A `Recipe` as given, or loaded from a file path or a shipped recipe's name."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    raise IntegrationError(
        f"the recipe must be a Recipe, a recipe file's path or a shipped recipe's name, not a "
        f"{type(recipe).__name__}"
    )


def compile_for(model: Any, recipe: Recipe, example_inputs: Any, owner: str) -> CompiledRecipe:
    """`recipe` compiled against the trainer's model (which must be a torch module)."""
    if not isinstance(model, nn.Module):
        raise IntegrationError(
            f"{owner} prunes a torch.nn.Module, but the trainer's model is a "
            f"{type(model).__name__}; give the trainer the torch model itself"
        )
    return compile_model(model, recipe, example_inputs)


def torch_optimizer(optimizer: Any, owner: str) -> torch.optim.Optimizer:
    """The torch optimizer the trainer steps (accelerate's wrapper holds it as `.optimizer`)."""
    if optimizer is None:
        raise IntegrationError(
            f"{owner} attaches to the trainer's optimizer, and the trainer has none yet; the "
            "callback attaches when training begins, after the trainer has built its optimizer, "
            "so let the trainer call it (trainer.train() / trainer.fit()) rather than calling "
            "it yourself"
        )
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer):
        raise IntegrationError(
            f"{owner} needs a torch.optim.Optimizer, the trainer's is a {type(inner).__name__}"
        )
    return inner


def refuse_loss_scaling(scaled: bool, setting: str, owner: str) -> None:
    """fp16 loss scaling skips optimizer steps whose gradients overflowed: the trainers count
    them, the engine does not (no weight changed), so every later phase would move."""
    if scaled:
        raise IntegrationError(
            f"{owner} cannot follow a schedule under {setting}: its loss scaler skips the "
            "optimizer steps whose gradients overflowed, the trainer counts them as steps and "
            "the engine does not, so the phases would drift from the recipe's timeline. Train "
            "in bf16 (no loss scaling) or fp32"
        )


def steps_per_epoch(
    batches: Any, accumulation: int, owner: str, compiled: CompiledRecipe
) -> int | None:
    """Optimizer steps per epoch: `batches` per epoch over `accumulation`, the last partial
    accumulation counted (as both trainers count it). None for a schedule in steps over a
    loader without a length (an iterable dataset), which needs none."""
    if compiled.timeline.unit == "step" and not (isinstance(batches, int) and batches > 0):
        return None
    if not isinstance(batches, int) or batches <= 0:
        raise IntegrationError(
            f"{owner} needs a train dataloader with a length (an epoch's size) to place the "
            "recipe's phases; with an iterable dataset, write the schedule in steps "
            "(schedule.unit: step) and set max_steps"
        )
    return max(-(-batches // accumulation), 1)


def check_length(
    compiled: CompiledRecipe,
    steps_per_epoch: int | None,
    trainer_steps: Any,
    epochs_setting: str,
    steps_setting: str,
) -> None:
    """Refuse a trainer that would stop before, or train past, the end of the schedule; the
    message fills in the trainer's own settings (``"max_epochs={}"``, ``"max_steps={}"``)."""
    timeline = compiled.timeline
    wanted = timeline.to_steps(steps_per_epoch).length
    if trainer_steps == wanted:
        return
    fix = steps_setting.format(wanted)
    epochs = ""
    if timeline.unit == "epoch":
        fix = f"{epochs_setting.format(timeline.length)} or {fix}"
        epochs = f" ({timeline.length} epochs of {steps_per_epoch})"
    raise IntegrationError(
        f"the trainer will run {trainer_steps} optimizer steps, but recipe "
        f"{compiled.recipe.name!r} schedules {wanted}{epochs}; its phases ({timeline.compact()} "
        f"{timeline.unit}s) only hold when the run has exactly that length: set {fix}"
    )


def attach_runtime(
    compiled: CompiledRecipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int | None
) -> SparsityRuntime:
    steps = steps_per_epoch if compiled.timeline.unit == "epoch" else None
    return attach(compiled, optimizer, steps_per_epoch=steps)


def event_metrics(event: RuntimeEvent) -> dict[str, float]:
    """The scalars a trainer's loggers get for one engine event (none for the others): the
    phase at its start (with the target 0 of a dense phase), the target and the achieved
    sparsity, overall and per pruned weight (``acdc/sparsity/<name>``), and the output channels
    left without a weight, at each mask computation."""
    if isinstance(event, PhaseStarted):
        metrics = {
            "acdc/phase": float(event.phase_index),
            "acdc/sparse_phase": float(event.kind != "dense"),
        }
        if event.kind == "dense":  # a sparse phase's target comes with its masks
            metrics["acdc/target"] = 0.0
        return metrics
    if isinstance(event, MasksComputed):
        metrics = {"acdc/sparsity": event.achieved_sparsity, "acdc/target": event.target}
        if event.changed_fraction is not None:
            metrics["acdc/mask_changed"] = event.changed_fraction
        for name, sparsity in event.per_layer_sparsity.items():
            metrics[f"acdc/sparsity/{name}"] = sparsity
        if event.emptied_channels is not None:
            metrics["acdc/emptied_channels"] = float(sum(event.emptied_channels.values()))
        return metrics
    if isinstance(event, LayersEmptied):
        return {"acdc/emptied_layers": float(len(event.names))}
    return {}


def save_model(
    model: nn.Module,
    output: TrainerDir,
    which: Literal["dense", "sparse"],
    compiled: CompiledRecipe,
    runtime: SparsityRuntime,
) -> None:
    """`model` into its folder of `output`: ``save_pretrained`` for a transformers model, else
    its state dict as safetensors (tied tensors stored once each, as copies); then its record
    in config.json (the resolved recipe, its hash, the achieved sparsity) and, beside the sparse
    model, its masks (`formats.model_folder`)."""
    folder = output.model(which)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder.path)
    else:
        folder.path.mkdir(parents=True, exist_ok=True)
        metadata = {"recipe": compiled.recipe.name, "recipe_hash": compiled.recipe_hash}
        save_safetensors(folder.weights, model.state_dict(), metadata)
    masks = runtime_masks(runtime) if which == "sparse" else None
    if masks is not None:
        save_masks(folder.masks, masks, compiled.recipe.name, compiled.recipe_hash)
    record = ModelRecord(
        dump_recipe(compiled.recipe),
        compiled.recipe_hash,
        which,
        None if masks is None else masks.sparsity,
    )
    write_record(folder, record)


@dataclass
class AttachedRecipe:
    """What a callback drives once training starts: the compiled recipe, the engine attached to
    the trainer's optimizer, the model it prunes, where the pair of models goes (`folder`,
    written only where `saves`: the main process) and how the trainer logs scalars."""

    compiled: CompiledRecipe
    runtime: SparsityRuntime
    model: nn.Module
    folder: Path
    saves: bool
    log: Callable[[dict[str, float]], None]
    _saved_final: bool = field(default=False, init=False)
    _pending: dict[str, float] | None = field(default=None, init=False)

    def listen(self) -> None:
        """From now on: the dense half when the last dense phase ends, metrics for events."""
        self.runtime.add_listener(self._on_event)

    def begin_step(self) -> None:
        """The phase actions due at this step (`runtime.begin_step()`), their metrics logged
        together, once."""
        self._pending = {}
        try:
            self.runtime.begin_step()
        finally:
            pending, self._pending = self._pending, None
        if pending:
            self.log(pending)

    def after_step(self) -> None:
        """Save the final model (the sparse half, or the dense one for a schedule ending
        dense) right after the schedule's last step, once: before the trainer may load other
        weights into the model (transformers' `load_best_model_at_end`)."""
        phases = self.runtime.timeline.phases
        if not self._saved_final and phases and self.runtime.step >= phases[-1].end:
            self._saved_final = True
            self._save("dense" if phases[-1].kind == "dense" else "sparse")

    def finish(self) -> None:
        """Save the final model if `after_step` has not, and detach the engine."""
        self.after_step()
        self.runtime.close()

    def _on_event(self, event: RuntimeEvent) -> None:
        if isinstance(event, DenseSnapshot):
            self._save("dense")
        metrics = event_metrics(event)
        if metrics and self._pending is not None:
            self._pending.update(metrics)
        elif metrics:
            self.log(metrics)

    def _save(self, name: str) -> None:
        if self.saves:
            save_model(self.model, TrainerDir(self.folder), name, self.compiled, self.runtime)


class AttachedViews:
    """`compiled` and `runtime` of a callback's `attached` recipe (None before training)."""

    attached: AttachedRecipe | None

    @property
    def compiled(self) -> CompiledRecipe | None:
        return self.attached.compiled if self.attached is not None else None

    @property
    def runtime(self) -> SparsityRuntime | None:
        return self.attached.runtime if self.attached is not None else None


def summary_line(compiled: CompiledRecipe) -> str:
    """One line: what was compiled, how the model was read, what is pruned."""
    how = (
        f"traced by {compiled.tracer}"
        if compiled.traced
        else f"module tree walked ({compiled.tracer}: {compiled.trace_error})"
    )
    weights = sum(p.numel for p in compiled.params)
    tensors = len(compiled.params)
    return (
        f"acdc: recipe {compiled.recipe.name!r}, {how}; {tensors} prunable "
        f"tensor{'s' if tensors != 1 else ''} ({weights:,} weights), schedule "
        f"{compiled.timeline.compact()} {compiled.timeline.unit}s"
    )
