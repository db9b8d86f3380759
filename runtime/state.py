"""`SparsityRuntime`: executes a compiled recipe's timeline from optimizer step hooks.

Attach it once (`attach(compiled, optimizer, steps_per_epoch=...)`) and the user's own loop
(`loss.backward(); optimizer.step()`) is enough. The runtime only decides *when*; what happens
at each moment is a public function of its own (`select_masks`, `apply_masks_`,
`zero_state_where_pruned_`, `reset_optimizer_state_`), usable without it. The runtime counts completed optimizer steps:
position `s` is the step about to run. Every side effect is a function of `s`:

- pre-step hook at `s`: emit `DenseSnapshot` when the last dense phase ends, then enter a phase
  starting at `s` (compute masks, or drop them and apply the optimizer-state policy), then
  mask the gradients (skipped if `mask_gradients()` already did it for this step);
- post-step hook: re-mask the weights, count the step.

Dense phases cost one integer comparison per step; sparse phases one fused `_foreach_mul_`
over the gradients and one over the weights, with no host-device sync (`MaskState` holds the
masks and does the masking). Hooks are registered once, so a `torch.compile`d model never
sees a change at a phase boundary. FSDP2 parameters are masked as local shards
(`acdc_recipe.runtime.sharding`). With `sparse_kernels` "auto" or "on", the masked Linear and
Conv2d layers also compute sparse phases on sparse kernels (`acdc_recipe.runtime.kernels`),
installed once at attach; they follow the runtime's events like any other listener.
"""

from __future__ import annotations

import bisect
import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from acdc_recipe.compiler import CompiledRecipe
from acdc_recipe.language.timeline import Phase, Timeline
from acdc_recipe.language.train_config import SPARSE_KERNEL_MODES
from acdc_recipe.runtime.events import (
    DenseSnapshot,
    EmptiedLayerWarning,
    LayersEmptied,
    PhaseStarted,
    RuntimeEvent,
    ScheduleEndedWarning,
    emptied_layers_note,
    event_from_dict,
    event_to_dict,
)
from acdc_recipe.runtime.kernels import SparseKernels
from acdc_recipe.runtime.mask_state import MaskState, RuntimeStateError
from acdc_recipe.runtime.sharding import (
    live_parameters,
    plan_sharding,
)

FORMAT_VERSION = 1
Listener = Callable[[RuntimeEvent], None]
StepListener = Callable[[int], None]


def timeline_in_steps(timeline: Timeline, steps_per_epoch: Any) -> Timeline:
    """The timeline in optimizer steps; epoch timelines need `steps_per_epoch`."""
    try:
        return timeline.to_steps(steps_per_epoch)
    except ValueError:
        raise RuntimeStateError(
            "the recipe's schedule is in epochs (schedule.unit: epoch), so attach() needs "
            f"steps_per_epoch, the number of optimizer steps per epoch (got {steps_per_epoch!r}); "
            "pass steps_per_epoch=len(train_loader), or write the schedule with unit: step"
        ) from None


_ATTACHED = "_acdc_runtime_attached"  # optimizer attribute: a runtime's hooks are registered


def _companion_parameters(compiled: CompiledRecipe) -> tuple[list[Tensor], list[str]]:
    """The other parameters of every module that holds a pruned weight (biases, ...; both
    owners of a tied weight) and their names: a NaN there also means the run diverged, so they
    are checked with the weights at each mask computation."""
    pruned = {id(p) for p in compiled.parameters}
    seen = set(pruned)
    tensors: list[Tensor] = []
    names: list[str] = []
    for layer, module in compiled.module.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not any(id(tensor) in pruned for _, tensor in own):
            continue
        for name, tensor in own:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append(tensor)  # the Parameter: it follows model.to(...), a view would not
                names.append(f"{layer}.{name}" if layer else name)
    return tensors, names


def _action_positions(timeline: Timeline, snapshot_step: int | None) -> list[int]:
    """Sorted steps at which the pre-step hook has something to do (the step after the
    schedule's end included: it warns that training runs past it)."""
    positions = {phase.start for phase in timeline.phases} | {timeline.length}
    for phase in timeline.phases:
        positions.update(phase.mask_updates())
    if snapshot_step is not None:
        positions.add(snapshot_step)
    return sorted(positions)


class SparsityRuntime:
    """Phase-state machine over a `CompiledRecipe`, driven by the optimizer's step hooks."""

    def __init__(
        self,
        compiled: CompiledRecipe,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int | None = None,
        sparse_kernels: str = "off",
    ) -> None:
        plan = compiled.plan
        self.plan = plan
        self.optimizer = optimizer
        self.timeline = timeline_in_steps(plan.timeline, steps_per_epoch)
        epochs = plan.timeline.unit == "epoch"
        self.steps_per_epoch = int(steps_per_epoch) if epochs else None  # a plain int to save
        parameters = live_parameters(compiled, optimizer)
        compiled = dataclasses.replace(compiled, parameters=parameters)
        sharding = plan_sharding(parameters, plan)
        self._state = MaskState(plan, parameters, sharding, _companion_parameters(compiled))
        self._names = plan.names
        self._policy = plan.on_decompress
        dense = [i for i, p in enumerate(self.timeline.phases) if p.kind == "dense"]
        self._snapshot_phase = dense[-1] if dense else None
        self._snapshot_step = self.timeline.phases[dense[-1]].end if dense else None
        self._actions = _action_positions(self.timeline, self._snapshot_step)
        mask_steps = [s for p in self.timeline.phases for s in p.mask_updates()]
        self._last_mask_step = max(mask_steps, default=-1)
        self._listeners: list[Listener] = []
        self._step_listeners: list[StepListener] = []
        self._history: list[RuntimeEvent] = []
        self._step = 0
        self._done_through = -1  # last step whose pre-step actions ran
        self._next_action = self._actions[0] if self._actions else -1
        if getattr(optimizer, _ATTACHED, False):
            raise RuntimeStateError(
                "this optimizer already has a sparsity runtime attached; two would each mask "
                "and count every step. Call close() on the first runtime, or attach once"
            )
        _check_kernel_mode(sparse_kernels, sharded=sharding is not None)
        self._kernels = (
            None
            if sparse_kernels == "off"
            else SparseKernels(compiled.module, parameters, plan.names, sparse_kernels)
        )
        setattr(optimizer, _ATTACHED, True)
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        if self._kernels is not None:
            self._kernels.follow(self)

    # -- read-only views -------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Optimizer steps completed (steps skipped by a GradScaler are not counted)."""
        return self._step

    @property
    def finished(self) -> bool:
        """Whether every step of the schedule has run (`timeline.length` steps): a loop over
        the schedule runs `while not runtime.finished`."""
        return self._step >= self.timeline.length

    @property
    def phase_index(self) -> int:
        return self.timeline.phase_index_at(self._step)

    @property
    def phase(self) -> Phase:
        """The phase (positions in steps) holding the next step."""
        return self.timeline.phase_at(self._step)

    @property
    def masks(self) -> tuple[Tensor, ...] | None:
        """Masks in force (1 keep, 0 pruned), aligned with `compiled.params`; None when dense.

        The same tuple object is returned until the masks change, so `is` detects a change.
        """
        return self._state.view

    @property
    def sparsity_target(self) -> float:
        """Overall target of the masks in force; 0.0 when no mask is."""
        return self._state.target

    @property
    def history(self) -> tuple[RuntimeEvent, ...]:
        return tuple(self._history)

    @property
    def kernels(self) -> dict[str, str]:
        """Per prunable weight, the kernel of its layer under the masks in force ("sparse",
        "dense", "undecided", "none"); empty when dense or attached with sparse_kernels off."""
        return {} if self._kernels is None else self._kernels.kernels()

    # -- listeners -------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` for every future event."""
        self._listeners.append(listener)

    def add_step_listener(self, listener: StepListener) -> None:
        """Call `listener(step)` after every optimizer step, before the step is counted (for
        extensions that report what a step did, such as the sparse kernels' choice)."""
        self._step_listeners.append(listener)

    def emit(self, event: RuntimeEvent) -> None:
        """Record `event` in the history (and the state dict) and pass it to the listeners."""
        self._history.append(event)
        for listener in self._listeners:
            listener(event)

    def close(self) -> None:
        """Remove the optimizer hooks and give every layer its own forward back; masks stop
        being applied. The optimizer can be attached again."""
        if self._hooks:
            setattr(self.optimizer, _ATTACHED, False)
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._kernels is not None:
            self._kernels.close()
            self._kernels = None

    # -- the per-step path -----------------------------------------------------------------
    def begin_step(self) -> None:
        """Run this step's phase actions now, before the forward pass.

        Optional but exact: without it the actions run in the pre-step hook, after this step's
        backward, so the first step of a sparse phase would use a gradient (and batch-norm
        statistics) of the still-dense model, and a `DenseSnapshot` would come after one more
        forward pass. The hooks never run an action twice.
        """
        if self._step == self._next_action:
            emptied = self._run_actions(self._step)
            if emptied:  # here, so the warning points at the caller's line
                warnings.warn(emptied_layers_note(emptied), EmptiedLayerWarning, stacklevel=2)
            if self._step == self.timeline.length:
                warnings.warn(self._past_the_end(), ScheduleEndedWarning, stacklevel=2)

    def mask_gradients(self) -> None:
        """Run this step's phase actions and mask the gradients now, e.g. before clipping.

        Call it after `backward()` (and after `scaler.unscale_`). The pre-step hook then finds
        the same gradient tensors unchanged (same object, same version counter) and does not
        mask them twice; new gradients, e.g. after a step a GradScaler skipped, are masked.
        """
        self.begin_step()
        self._state.mask_gradients()

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.mask_gradients()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._state.mask_weights()
        for listener in self._step_listeners:
            listener(self._step)
        self._step += 1

    def _past_the_end(self) -> str:
        last = self.timeline.phases[-1] if self.timeline.phases else None
        held = (
            f"the last phase ({last.kind}) holds from here on"
            if last is not None
            else "the schedule is empty"
        )
        per_epoch = f", {self.steps_per_epoch} per epoch" if self.steps_per_epoch else ""
        return (
            f"training continues past the end of the recipe's schedule: it has "
            f"{self.timeline.length} optimizer steps{per_epoch} "
            f"({self.plan.timeline.compact()} {self.plan.timeline.unit}s), and step "
            f"{self._step} is about to run; {held}. Stop the loop when runtime.finished is "
            "True (after runtime.timeline.length steps)"
        )

    # -- phase actions (rare) --------------------------------------------------------------
    def _run_actions(self, step: int) -> tuple[str, ...]:
        """Everything the timeline does at `step`; returns the layers a new mask empties."""
        emptied: tuple[str, ...] = ()
        if step == self._snapshot_step:
            self.emit(DenseSnapshot(step, self._snapshot_phase))
        index = self.timeline.phase_index_at(step)
        phase = self.timeline.phases[index]
        if step == phase.start:
            self.emit(PhaseStarted(step, index, phase.kind, self.plan.phase_target(index)))
            if phase.kind == "dense":
                keep = step < self._last_mask_step  # for the next mask's change statistics
                self._state.decompress(self.optimizer, self._policy, keep)
        updates = phase.mask_updates()
        if step in updates:
            update = self.plan.updates[index][updates.index(step)]
            for event in self._state.recompute(self.optimizer, step, index, update):
                self.emit(event)
                if isinstance(event, LayersEmptied):
                    emptied = event.names
        self._done_through = step
        after = bisect.bisect_right(self._actions, step)
        self._next_action = self._actions[after] if after < len(self._actions) else -1
        return emptied

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: step, masks (bool, CPU; under FSDP2 this
        rank's shards), history, recipe hash, and the names of the parameters the masks belong
        to (so a reader of the file needs no model)."""
        return {
            "format_version": FORMAT_VERSION,
            "recipe_hash": self.plan.recipe_hash,
            "steps_per_epoch": self.steps_per_epoch,
            "step": self._step,
            "done_through": self._done_through,
            **self._state.state_dict(),
            "history": [event_to_dict(event) for event in self._history],
            "kernels": None if self._kernels is None else self._kernels.state_dict(),
            "names": list(self._names),
            "patterns": [param.pattern for param in self.plan.params],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; masks are restored as saved, never recomputed."""
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise RuntimeStateError(
                f"runtime state has format_version {version!r}; this version of acdc-recipe "
                f"reads format_version {FORMAT_VERSION}"
            )
        if state["recipe_hash"] != self.plan.recipe_hash:
            raise RuntimeStateError(
                f"the checkpoint was written for a different recipe (hash {state['recipe_hash']}) "
                f"than the one compiled now (hash {self.plan.recipe_hash}); resume with the "
                "recipe (and --set values) of the original run"
            )
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise RuntimeStateError(
                f"the checkpoint was written with steps_per_epoch={state['steps_per_epoch']}, "
                f"the runtime was attached with {self.steps_per_epoch}; phase boundaries would "
                "move, so use the same batch size and data as the original run"
            )
        names = list(state.get("names", self._names))
        if names != list(self._names):
            raise RuntimeStateError(
                f"the checkpoint's masks belong to {len(names)} parameters "
                f"({', '.join(names[:3])}, ...), the compiled model prunes {len(self._names)} "
                f"({', '.join(self._names[:3])}, ...); resume with the model and recipe of the "
                "original run"
            )
        self._state.load_state_dict(state)
        self._step = int(state["step"])
        self._done_through = int(state["done_through"])
        self._history = [event_from_dict(event) for event in state["history"]]
        if self._kernels is not None:
            self._kernels.load_state_dict(state.get("kernels"), self._state.masks)
        after = bisect.bisect_right(self._actions, self._done_through)
        self._next_action = self._actions[after] if after < len(self._actions) else -1


def _check_kernel_mode(mode: str, sharded: bool) -> None:
    """The `sparse_kernels` argument's one check (a recipe's is validated with the recipe)."""
    if mode not in SPARSE_KERNEL_MODES:
        raise RuntimeStateError(
            f"sparse_kernels must be one of {', '.join(map(repr, SPARSE_KERNEL_MODES))}, got "
            f"{mode!r}"
        )
    if sharded and mode != "off":
        raise RuntimeStateError(
            f"sparse_kernels={mode!r} needs whole weights; these parameters are FSDP2 shards, "
            "whose layers compute on gathered weights. Attach with sparse_kernels='off' "
            "(train.sparse_kernels: off) when sharding"
        )


def attach(
    compiled: CompiledRecipe,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int | None = None,
    sparse_kernels: str = "off",
) -> SparsityRuntime:
    """Execute `compiled`'s plan through `optimizer`'s step hooks; see `SparsityRuntime`.

    `sparse_kernels`: "off" (dense kernels throughout), "auto" (each masked Linear/Conv2d
    runs sparse phases on sparse kernels where timing shows them faster) or "on" (wherever
    possible, untimed); see `acdc_recipe.runtime.kernels`.
    """
    return SparsityRuntime(
        compiled, optimizer, steps_per_epoch=steps_per_epoch, sparse_kernels=sparse_kernels
    )
