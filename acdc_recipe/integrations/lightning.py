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
exactly, and `acdc export` reads the masks, their parameters and the recipe from a ``.ckpt``.
The dense half of the pair is saved into ``<default_root_dir>/dense`` when the last dense
phase ends, the sparse model into ``<default_root_dir>/sparse`` (``save_pretrained`` for a
transformers model, else ``model.safetensors``) with its masks, each config.json recording
the resolved recipe, its hash and the achieved sparsity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from acdc_recipe.compiler import CompiledRecipe
from acdc_recipe.formats.runtime_files import callback_state, saved_callback_state
from acdc_recipe.integrations.attaching import (
    AttachedRecipe,
    AttachedViews,
    IntegrationError,
    as_recipe,
    attach_runtime,
    check_length,
    compile_for,
    refuse_loss_scaling,
    steps_per_epoch,
    summary_line,
    torch_optimizer,
)
from acdc_recipe.integrations.extras import require
from acdc_recipe.language.loading import dump_recipe
from acdc_recipe.language.schema import Recipe

lightning = require("lightning.pytorch", "lightning", "acdc_recipe.integrations.lightning")
rank_zero_info = require(
    "lightning.pytorch.utilities", "lightning", "acdc_recipe.integrations.lightning"
).rank_zero_info
OWNER = "AcdcCallback (Lightning)"


class AcdcCallback(AttachedViews, lightning.Callback):
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
        self.attached: AttachedRecipe | None = None
        self._restored: dict[str, Any] | None = None

    # -- Lightning hooks -----------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if self.attached is not None:
            self.attached.runtime.close()
        precision = str(getattr(trainer, "precision", ""))
        refuse_loss_scaling(precision == "16-mixed", f"Trainer(precision={precision!r})", OWNER)
        model = _selected(pl_module, self.module)
        compiled = compile_for(model, self.recipe, self.example_inputs, OWNER)
        optimizer = torch_optimizer(_only_optimizer(trainer, compiled), OWNER)
        per_epoch = steps_per_epoch(
            trainer.num_training_batches, trainer.accumulate_grad_batches, OWNER, compiled
        )
        check_length(
            compiled,
            per_epoch,
            trainer.estimated_stepping_batches,
            "Trainer(max_epochs={})",
            "Trainer(max_steps={})",
        )
        runtime = attach_runtime(compiled, optimizer, per_epoch)

        def log(metrics: dict[str, float]) -> None:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

        folder = Path(trainer.default_root_dir)
        self.attached = AttachedRecipe(
            compiled, runtime, model, folder, trainer.is_global_zero, log
        )
        if self._restored is not None:
            runtime.load_state_dict(self._restored)
            self._restored = None
            if runtime.step != trainer.global_step:
                raise IntegrationError(
                    f"the checkpoint's acdc state is at step {runtime.step}, the trainer at "
                    f"global step {trainer.global_step}; resume from a checkpoint this callback "
                    "wrote"
                )
        self.attached.listen()
        rank_zero_info(summary_line(compiled))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.attached is not None:
            self.attached.begin_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.attached is not None:
            self.attached.after_step()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.attached is not None:
            self.attached.runtime.mask_gradients()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.attached is not None:
            self.attached.finish()

    def state_dict(self) -> dict[str, Any]:
        if self.attached is None:
            return {}
        return callback_state(self.attached.runtime, dump_recipe(self.recipe), self.module)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = saved_callback_state(state_dict)
        # applied once the engine is attached; a plain runtime state is an earlier version's
        self._restored = saved[0].state if saved is not None else (dict(state_dict) or None)


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
