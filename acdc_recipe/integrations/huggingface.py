"""`AcdcCallback`: AC/DC inside transformers' `Trainer` (``pip install 'acdc-recipe[hf]'``).

    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.add_callback(AcdcCallback(trainer, "recipe.yaml"))
    trainer.train()  # or trainer.train(resume_from_checkpoint=True)

When training begins (the Trainer has built its optimizer and, when resuming, loaded its
checkpoint) the callback compiles the recipe against ``trainer.model`` and attaches the engine
to the torch optimizer the Trainer steps. Then, for every optimizer step:

- ``on_step_begin``, before the first micro-batch's forward: the phase actions due at this step
  (``runtime.begin_step()``: masks chosen, dense snapshot, optimizer-state reset);
- after each micro-batch's backward, once every prunable weight's gradient is accumulated: the
  gradients are masked (``runtime.mask_gradients()``), so ``max_grad_norm`` clips masked
  gradients, as ``acdc run`` does;
- the optimizer's step hooks re-mask the weights and count the step.

The engine counts optimizer steps, which are the Trainer's global steps, so gradient
accumulation does not move a phase; an epoch is the Trainer's optimizer steps per epoch. The
Trainer must run exactly the recipe's schedule (``max_steps``, or ``num_train_epochs`` for an
epoch schedule); anything else is refused when training begins, with the value to set.

Phase switches and sparsity go through ``trainer.log`` (so they reach every ``report_to``
target) as ``acdc/*`` scalars. The engine's state is written into each Trainer checkpoint
(``acdc_runtime.safetensors`` and its sha256) and restored on resume, so a resumed run ends
bitwise equal to an uninterrupted one on CPU. The dense half of the pair is saved with
``save_pretrained`` into ``<output_dir>/dense`` when the last dense phase ends (a schedule
ending dense: when training ends), the sparse model into ``<output_dir>/sparse`` when the
schedule ends.
"""

from __future__ import annotations

import logging
import math
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
from acdc_recipe.integrations.runtime_files import load_runtime_state, save_runtime_state
from acdc_recipe.runtime import DenseSnapshot, RuntimeEvent, SparsityRuntime
from acdc_recipe.schema import Recipe

transformers = require("transformers", "hf", "acdc_recipe.integrations.huggingface")
trainer_utils = require("transformers.trainer_utils", "hf", "acdc_recipe.integrations.huggingface")

logger = logging.getLogger(__name__)
OWNER = "AcdcCallback (transformers Trainer)"


class GradientMasking:
    """Calls ``runtime.mask_gradients()`` once per backward, when the last prunable gradient
    has been accumulated (post-accumulate-grad hooks), i.e. before the Trainer clips."""

    def __init__(self, runtime: SparsityRuntime, parameters: list[nn.Parameter]) -> None:
        self.runtime = runtime
        trained = [p for p in parameters if p.requires_grad]
        self.expected = len(trained)
        self.pending = self.expected
        self.handles = [p.register_post_accumulate_grad_hook(self._ready) for p in trained]

    def _ready(self, parameter: nn.Parameter) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.pending = self.expected
            self.runtime.mask_gradients()

    def restart(self) -> None:
        """A new backward begins (a step or a micro-step boundary)."""
        self.pending = self.expected

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class AcdcCallback(transformers.TrainerCallback):
    """Runs an AC/DC recipe's schedule in the `trainer` it is added to (see the module doc).

    `recipe` is a `Recipe`, a recipe file or a shipped recipe's name; `example_inputs` (a
    tensor or tuple, e.g. ``torch.zeros(1, 128, dtype=torch.long)``) sizes the FLOPs figures,
    by default the recipe's ``train.model.input_shape`` and ``input_dtype``. After training
    begins, `compiled` and `runtime` are the compiled recipe and the attached engine.
    """

    def __init__(
        self, trainer: Any, recipe: Recipe | str | Path, example_inputs: Any = None
    ) -> None:
        if not isinstance(trainer, transformers.Trainer):
            raise TypeError(
                f"AcdcCallback(trainer, recipe) needs the transformers Trainer it is added to "
                f"(it logs through trainer.log), got a {type(trainer).__name__}"
            )
        self.trainer = trainer
        self.recipe = as_recipe(recipe)
        self.example_inputs = example_inputs
        self.compiled: CompiledRecipe | None = None
        self.runtime: SparsityRuntime | None = None
        self._masking: GradientMasking | None = None
        self._model: nn.Module | None = None
        self._output_dir = Path(".")
        self._should_save = True

    # -- Trainer events ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._close()
        compiled = compile_for(model, self.recipe, self.example_inputs, OWNER)
        inner = torch_optimizer(optimizer, OWNER)
        per_epoch = _steps_per_epoch(kwargs.get("train_dataloader"), args)
        check_length(compiled, per_epoch, state.max_steps, _length_fix(compiled, per_epoch))
        runtime = attach_runtime(compiled, inner, per_epoch)
        self.compiled, self.runtime, self._model = compiled, runtime, model
        self._output_dir, self._should_save = Path(args.output_dir), args.should_save
        if state.global_step > 0:
            self._restore(args, state.global_step)
        runtime.add_listener(self._on_event)
        self._masking = GradientMasking(runtime, compiled.parameters)
        logger.info(summary_line(compiled))
        for note in compiled.warnings:
            logger.info("acdc: %s", note)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.runtime is not None:
            self._masking.restart()
            self.runtime.begin_step()

    def on_substep_end(self, args, state, control, **kwargs):
        if self._masking is not None:
            self._masking.restart()

    def on_save(self, args, state, control, **kwargs):
        folder = self._output_dir / f"{trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.runtime is not None and args.should_save and folder.is_dir():
            save_runtime_state(self.runtime, folder)

    def on_train_end(self, args, state, control, **kwargs):
        if self.runtime is None:
            return
        phases = self.runtime.timeline.phases
        if phases and self.runtime.step >= phases[-1].end:  # the schedule ran to its end
            self._save_model("dense" if phases[-1].kind == "dense" else "sparse")
        self._close()

    # -- helpers -------------------------------------------------------------------------------
    def _on_event(self, event: RuntimeEvent) -> None:
        if isinstance(event, DenseSnapshot):
            self._save_model("dense")
        metrics = event_metrics(event)
        if metrics:
            self.trainer.log(metrics)

    def _restore(self, args: Any, step: int) -> None:
        given = getattr(args, "resume_from_checkpoint", None)
        folder = (
            Path(given)
            if isinstance(given, str) and given
            else self._output_dir / f"{trainer_utils.PREFIX_CHECKPOINT_DIR}-{step}"
        )
        load_runtime_state(self.runtime, folder)
        if self.runtime.step != step:
            raise IntegrationError(
                f"{folder} holds the acdc state of step {self.runtime.step}, but the Trainer "
                f"resumed at step {step}; resume from a checkpoint folder the Trainer wrote in "
                "args.output_dir, or name it in TrainingArguments(resume_from_checkpoint=...)"
            )

    def _save_model(self, name: str) -> None:
        if self._should_save and self._model is not None:
            save_model(self._model, self._output_dir / name, self.compiled)

    def _close(self) -> None:
        if self._masking is not None:
            self._masking.remove()
            self._masking = None
        if self.runtime is not None:
            self.runtime.close()


def _steps_per_epoch(dataloader: Any, args: Any) -> int:
    """Optimizer steps per epoch, as the Trainer counts them."""
    try:
        batches = len(dataloader)
    except TypeError:
        raise IntegrationError(
            f"{OWNER} needs a train dataloader with a length (an epoch's size) to place the "
            "recipe's phases; with an iterable dataset, write the schedule in steps "
            "(schedule.unit: step) and set max_steps"
        ) from None
    return max(math.ceil(batches / args.gradient_accumulation_steps), 1)


def _length_fix(compiled: CompiledRecipe, steps_per_epoch: int) -> str:
    timeline = compiled.timeline
    steps = timeline.to_steps(steps_per_epoch).length
    if timeline.unit == "epoch":
        return f"set TrainingArguments(num_train_epochs={timeline.length}) (max_steps=-1) or max_steps={steps}"
    return f"set TrainingArguments(max_steps={steps})"
