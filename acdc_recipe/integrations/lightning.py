"""`AcdcCallback`: AC/DC inside Lightning's `Trainer` (``pip install 'acdc-recipe[lightning]'``).

    trainer = lightning.Trainer(max_epochs=..., callbacks=[AcdcCallback("recipe.yaml")])
    trainer.fit(module)  # or trainer.fit(module, ckpt_path="last")

When training starts (Lightning has built the optimizer and, when resuming, restored it) the
callback compiles the recipe against the LightningModule (or the submodule named by `module`)
and attaches the engine to the trainer's optimizer. Then:

- ``on_train_batch_start``, before each forward: the phase actions due at this optimizer step
  (``runtime.begin_step()``; no action runs twice under gradient accumulation);
- ``on_before_optimizer_step``, after the accumulated backward and before Lightning clips:
  the gradients are masked (``runtime.mask_gradients()``);
- the optimizer's step hooks re-mask the weights and count the step.

The engine counts optimizer steps, Lightning's ``global_step``; the trainer must run exactly
the recipe's schedule (``max_epochs`` for an epoch schedule, or ``max_steps``). Phase switches
and sparsity go to every logger of the trainer as ``acdc/*`` scalars; the engine's state is
the callback's state in Lightning's checkpoints, so ``ckpt_path=...`` resumes the schedule
exactly. The dense half of the pair is saved into ``<default_root_dir>/dense`` when the last
dense phase ends, the sparse model into ``<default_root_dir>/sparse`` (``save_pretrained``
for a transformers model, else ``model.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from acdc_recipe.compiler import CompiledRecipe
from acdc_recipe.integrations.attaching import (
    IntegrationError,
    as_recipe,
    attach_runtime,
    check_length,
    compile_for,
    event_metrics,
    save_model,
    summary_line,
    torch_optimizer,
)
from acdc_recipe.integrations.extras import require
from acdc_recipe.runtime import DenseSnapshot, RuntimeEvent, SparsityRuntime
from acdc_recipe.schema import Recipe

lightning = require("lightning.pytorch", "lightning", "acdc_recipe.integrations.lightning")
rank_zero_info = require(
    "lightning.pytorch.utilities", "lightning", "acdc_recipe.integrations.lightning"
).rank_zero_info
OWNER = "AcdcCallback (Lightning)"


class AcdcCallback(lightning.Callback):
    """Runs an AC/DC recipe's schedule in the Lightning trainer it is given to.

    `recipe` is a `Recipe`, a recipe file or a shipped recipe's name; `module` names the
    submodule of the LightningModule to prune (e.g. ``"model"``; default the whole module);
    `example_inputs` sizes the FLOPs figures (default the recipe's ``train.model.input_shape``).
    After training starts, `compiled` and `runtime` are the compiled recipe and the engine.
    """

    def __init__(
        self, recipe: Recipe | str | Path, module: str | None = None, example_inputs: Any = None
    ) -> None:
        self.recipe = as_recipe(recipe)
        self.module = module
        self.example_inputs = example_inputs
        self.compiled: CompiledRecipe | None = None
        self.runtime: SparsityRuntime | None = None
        self._restored: dict[str, Any] | None = None
        self._trainer: Any = None
        self._model: nn.Module | None = None

    # -- Lightning hooks -----------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._close()
        model = _selected(pl_module, self.module)
        compiled = compile_for(model, self.recipe, self.example_inputs, OWNER)
        optimizer = torch_optimizer(_only_optimizer(trainer, compiled), OWNER)
        per_epoch = _steps_per_epoch(trainer)
        check_length(
            compiled, per_epoch, trainer.estimated_stepping_batches, _fix(compiled, per_epoch)
        )
        runtime = attach_runtime(compiled, optimizer, per_epoch)
        self.compiled, self.runtime, self._trainer, self._model = compiled, runtime, trainer, model
        if self._restored is not None:
            runtime.load_state_dict(self._restored)
            self._restored = None
            if runtime.step != trainer.global_step:
                raise IntegrationError(
                    f"the checkpoint's acdc state is at step {runtime.step}, the trainer at "
                    f"global step {trainer.global_step}; resume from a checkpoint this callback "
                    "wrote"
                )
        runtime.add_listener(self._on_event)
        rank_zero_info(summary_line(compiled))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.runtime is not None:
            self.runtime.begin_step()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.runtime is not None:
            self.runtime.mask_gradients()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.runtime is None:
            return
        phases = self.runtime.timeline.phases
        if phases and self.runtime.step >= phases[-1].end:  # the schedule ran to its end
            self._save_model("dense" if phases[-1].kind == "dense" else "sparse")
        self._close()

    def state_dict(self) -> dict[str, Any]:
        return self.runtime.state_dict() if self.runtime is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) or None  # applied once the engine is attached

    # -- helpers -------------------------------------------------------------------------------
    def _on_event(self, event: RuntimeEvent) -> None:
        if isinstance(event, DenseSnapshot):
            self._save_model("dense")
        metrics = event_metrics(event)
        if metrics:
            for logger in self._trainer.loggers:
                logger.log_metrics(metrics, step=self._trainer.global_step)

    def _save_model(self, name: str) -> None:
        if self._trainer.is_global_zero:
            save_model(self._model, Path(self._trainer.default_root_dir) / name, self.compiled)

    def _close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()


def _selected(pl_module: nn.Module, path: str | None) -> nn.Module:
    """The LightningModule, or its submodule at `path`."""
    if not path:
        return pl_module
    try:
        return pl_module.get_submodule(path)
    except AttributeError:
        children = ", ".join(repr(name) for name, _ in pl_module.named_children())
        raise IntegrationError(
            f"AcdcCallback(module={path!r}): the LightningModule has no submodule {path!r}, or "
            f"it is not a torch.nn.Module; its submodules are {children or 'none'}"
        ) from None


def _only_optimizer(trainer: Any, compiled: CompiledRecipe) -> Any:
    """The one optimizer that steps the prunable weights."""
    pruned = {id(p) for p in compiled.parameters}
    holding = [
        optimizer
        for optimizer in trainer.optimizers
        if any(id(p) in pruned for group in optimizer.param_groups for p in group["params"])
    ]
    if len(holding) != 1:
        raise IntegrationError(
            f"{OWNER} attaches to the optimizer that steps the prunable weights; "
            + (
                "the trainer has no optimizer holding them yet (configure_optimizers must "
                "return one over the model's parameters)"
                if not holding
                else f"{len(holding)} optimizers hold them, so their masks would be applied twice"
            )
        )
    return holding[0]


def _steps_per_epoch(trainer: Any) -> int:
    """Optimizer steps per epoch: batches over accumulation, the last partial one counted."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int) or batches <= 0:
        raise IntegrationError(
            f"{OWNER} needs a train dataloader with a length to place the recipe's phases; with "
            "an iterable dataset write the schedule in steps (schedule.unit: step) and set "
            "max_steps"
        )
    return max(-(-batches // trainer.accumulate_grad_batches), 1)


def _fix(compiled: CompiledRecipe, steps_per_epoch: int) -> str:
    timeline = compiled.timeline
    steps = timeline.to_steps(steps_per_epoch).length
    if timeline.unit == "epoch":
        return f"set Trainer(max_epochs={timeline.length}) or max_steps={steps}"
    return f"set Trainer(max_steps={steps})"
