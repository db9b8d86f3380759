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

What was compiled (the prunable tensors and the schedule) is printed once, by the main
process, when training begins. Phase switches and, at each mask computation, the target and
the achieved sparsity (overall and per pruned weight) go through ``trainer.log`` (so they
reach every ``report_to`` target) as ``acdc/*`` scalars, one entry per step. The engine's
state is written into each Trainer checkpoint (``acdc_runtime.safetensors`` and its sha256)
and restored on resume from the folder given to ``trainer.train(resume_from_checkpoint=...)``
(the callback wraps the trainer's ``train`` to see it), so a resumed run ends bitwise equal to
an uninterrupted one on CPU. The dense half of the pair is saved with
``save_pretrained`` into ``<output_dir>/dense`` when the last dense phase ends (a schedule
ending dense: when training ends), the sparse model into ``<output_dir>/sparse`` when the
schedule ends, its masks beside it; each config.json records the resolved recipe, its hash
and the achieved sparsity. `acdc export` reads the ``sparse`` folder or a checkpoint folder.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

from torch import nn

from acdc_recipe.formats.runtime_files import load_runtime_state, save_runtime_state
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
from acdc_recipe.runtime import SparsityRuntime

transformers = require("transformers", "hf", "acdc_recipe.integrations.huggingface")
trainer_utils = require("transformers.trainer_utils", "hf", "acdc_recipe.integrations.huggingface")

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


class AcdcCallback(AttachedViews, transformers.TrainerCallback):
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
            raise IntegrationError(
                f"AcdcCallback(trainer, recipe) needs the transformers Trainer it is added to "
                f"(it logs through trainer.log), got a {type(trainer).__name__}"
            )
        self.trainer = trainer
        self.recipe = as_recipe(recipe)
        self.example_inputs = example_inputs
        self.attached: AttachedRecipe | None = None
        self._masking: GradientMasking | None = None
        self._resume_argument: Any = None
        self._see_resume_argument(trainer)

    # -- Trainer events ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._close()
        refuse_loss_scaling(
            bool(getattr(args, "fp16", False)), "TrainingArguments(fp16=True)", OWNER
        )
        compiled = compile_for(model, self.recipe, self.example_inputs, OWNER)
        inner = torch_optimizer(optimizer, OWNER)
        per_epoch = steps_per_epoch(
            _length(kwargs.get("train_dataloader")),
            args.gradient_accumulation_steps,
            OWNER,
            compiled,
        )
        check_length(
            compiled,
            per_epoch,
            state.max_steps,
            "TrainingArguments(num_train_epochs={}) (with max_steps=-1)",
            "TrainingArguments(max_steps={})",
        )
        runtime = attach_runtime(compiled, inner, per_epoch)
        output = Path(args.output_dir)
        self.attached = AttachedRecipe(
            compiled, runtime, model, output, args.should_save, self.trainer.log
        )
        if state.global_step > 0:
            self._restore(args, output, state.global_step)
        self.attached.listen()
        self._masking = GradientMasking(runtime, compiled.parameters)
        if state.is_world_process_zero:  # the Trainer's logger stays quiet at info level
            print(summary_line(compiled), flush=True)
            for note in compiled.warnings:
                print(f"acdc: warning: {note}", flush=True)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.attached is not None:
            self._masking.restart()
            self.attached.begin_step()

    def on_step_end(self, args, state, control, **kwargs):
        if self.attached is not None:
            self.attached.after_step()

    def on_substep_end(self, args, state, control, **kwargs):
        if self._masking is not None:
            self._masking.restart()

    def on_save(self, args, state, control, **kwargs):
        folder = (
            Path(args.output_dir) / f"{trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )
        if self.attached is not None and args.should_save and folder.is_dir():
            save_runtime_state(self.attached.runtime, folder, dump_recipe(self.recipe))

    def on_train_end(self, args, state, control, **kwargs):
        if self.attached is not None:
            self.attached.finish()
        self._close()

    # -- helpers -------------------------------------------------------------------------------
    def _see_resume_argument(self, trainer: Any) -> None:
        """Wrap `trainer.train` to keep its `resume_from_checkpoint` argument: callbacks are
        not told which checkpoint folder the Trainer resumed from."""
        train = trainer.train
        signature = inspect.signature(train)

        @functools.wraps(train)
        def train_seen(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs).arguments
            self._resume_argument = bound.get("resume_from_checkpoint")
            return train(*args, **kwargs)

        trainer.train = train_seen

    def _resume_folder(self, args: Any, output: Path, step: int) -> Path:
        """The checkpoint folder the Trainer resumed from: the one given to `train()` (or in
        the arguments), else (`True`) the newest in `output_dir`, which is step's."""
        for given in (self._resume_argument, getattr(args, "resume_from_checkpoint", None)):
            if isinstance(given, (str, os.PathLike)) and str(given):
                return Path(given)
        return output / f"{trainer_utils.PREFIX_CHECKPOINT_DIR}-{step}"

    def _restore(self, args: Any, output: Path, step: int) -> None:
        folder = self._resume_folder(args, output, step)
        load_runtime_state(self.attached.runtime, folder)
        masks = self.attached.runtime.masks
        weights = self.attached.compiled.parameters
        if masks is not None and any(
            bool(w.detach()[m == 0].any()) for w, m in zip(weights, masks, strict=True)
        ):
            raise IntegrationError(
                f"the acdc state in {folder} does not belong to the weights the Trainer resumed "
                "with: they are not zero where its masks prune (the folder's files come from "
                "different runs); resume from a checkpoint folder written whole by one run "
                "with this callback"
            )
        if self.attached.runtime.step != step:
            raise IntegrationError(
                f"{folder} holds the acdc state of step {self.attached.runtime.step}, but the "
                f"Trainer resumed at step {step}; resume from a checkpoint folder written whole "
                "by one run with this callback"
            )

    def _close(self) -> None:
        if self._masking is not None:
            self._masking.remove()
            self._masking = None
        if self.attached is not None:
            self.attached.runtime.close()


def _length(dataloader: Any) -> int | None:
    try:
        return len(dataloader)
    except TypeError:
        return None
