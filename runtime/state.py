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
over the gradients and one over the weights, with no host-device sync. Hooks are registered
once, so a `torch.compile`d model never sees a change at a phase boundary. FSDP2 parameters
are masked as local shards (`acdc_recipe.runtime.sharding`). With `sparse_kernels` "auto"
or "on", the masked Linear and Conv2d layers also compute sparse phases on CSR kernels
(`acdc_recipe.runtime.kernels`), installed once at attach as well.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from acdc_recipe.compiler import CompiledRecipe
from acdc_recipe.compiler.plan import MaskUpdate
from acdc_recipe.errors import UserError
from acdc_recipe.runtime.events import (
    DenseSnapshot,
    EmptiedLayerWarning,
    KernelsChosen,
    LayersEmptied,
    MasksComputed,
    PhaseStarted,
    RuntimeEvent,
    emptied_layers_note,
    event_from_dict,
    event_to_dict,
)
from acdc_recipe.runtime.kernels import SparseKernels
from acdc_recipe.runtime.mask_sync import verify_masks_identical, verify_sharded_masks
from acdc_recipe.runtime.masks import (
    apply_masks_,
    mask_change_fraction,
    mask_sparsity,
    select_masks_and_thresholds,
)
from acdc_recipe.runtime.optimizer_state import reset_optimizer_state_, zero_state_where_pruned_
from acdc_recipe.runtime.sharding import (
    live_parameters,
    local_grads,
    local_tensors,
    plan_sharding,
)
from acdc_recipe.runtime.threshold import NonFiniteWeightError, check_finite
from acdc_recipe.schema import SPARSE_KERNEL_MODES
from acdc_recipe.timeline import Phase, Timeline

FORMAT_VERSION = 1
Listener = Callable[[RuntimeEvent], None]


class RuntimeStateError(UserError, ValueError):
    """The runtime cannot run with this configuration or restore this state dict."""


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
    """Sorted steps at which the pre-step hook has something to do."""
    positions = {phase.start for phase in timeline.phases}
    for phase in timeline.phases:
        positions.update(phase.mask_updates())
    if snapshot_step is not None:
        positions.add(snapshot_step)
    return sorted(positions)


def _pool_threshold(groups: Sequence[Any], thresholds: Sequence[Tensor | None]) -> float | None:
    """The largest pruned |w| when one unstructured group holds every pruned entry, else None."""
    if len(groups) != 1 or thresholds[0] is None:
        return None
    return float(thresholds[0])


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
        self._parameters: list[Tensor] = live_parameters(compiled, optimizer)
        compiled = dataclasses.replace(compiled, parameters=self._parameters)
        self._sharding = plan_sharding(self._parameters, plan)
        self._names = plan.names
        self._input_axes = [param.input_axis for param in plan.params]
        self._companions = _companion_parameters(compiled)
        self._policy = plan.on_decompress
        dense = [i for i, p in enumerate(self.timeline.phases) if p.kind == "dense"]
        self._snapshot_phase = dense[-1] if dense else None
        self._snapshot_step = self.timeline.phases[dense[-1]].end if dense else None
        self._actions = _action_positions(self.timeline, self._snapshot_step)
        mask_steps = [s for p in self.timeline.phases for s in p.mask_updates()]
        self._last_mask_step = max(mask_steps, default=-1)
        self._listeners: list[Listener] = []
        self._history: list[RuntimeEvent] = []
        self._step = 0
        self._done_through = -1  # last step whose pre-step actions ran
        self._next_action = self._actions[0] if self._actions else -1
        self._target = 0.0
        self._masks: list[Tensor] | None = None  # in the weights' dtype, during sparse phases
        self._mask_view: tuple[Tensor, ...] | None = None
        self._previous: list[Tensor] | None = None  # the last mask, kept while dense
        self._masked_grad: tuple[Tensor, int] | None = None  # grads masked this step
        if getattr(optimizer, _ATTACHED, False):
            raise RuntimeStateError(
                "this optimizer already has a sparsity runtime attached; two would each mask "
                "and count every step. Call close() on the first runtime, or attach once"
            )
        if self._sharding is not None and sparse_kernels != "off":
            raise RuntimeStateError(
                f"sparse_kernels={sparse_kernels!r} needs whole weights; these parameters are "
                "FSDP2 shards, whose layers compute on gathered weights. Attach with "
                "sparse_kernels='off' (train.sparse_kernels: off) when sharding"
            )
        self._kernels = _sparse_kernels(compiled, sparse_kernels)
        setattr(optimizer, _ATTACHED, True)
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    # -- read-only views -------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Optimizer steps completed (steps skipped by a GradScaler are not counted)."""
        return self._step

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
        return self._mask_view

    @property
    def sparsity_target(self) -> float:
        """Overall target of the masks in force; 0.0 when no mask is."""
        return self._target

    @property
    def history(self) -> tuple[RuntimeEvent, ...]:
        return tuple(self._history)

    @property
    def kernels(self) -> dict[str, str]:
        """Per prunable weight, the kernel of its layer under the masks in force ("sparse",
        "dense", "undecided", "none"); empty when dense or attached with sparse_kernels off."""
        return {} if self._kernels is None else self._kernels.kernels()

    def release_kernels(self) -> None:
        """Give every layer its own dense forward back for good (as with sparse_kernels off
        from here on), to evaluate weights the masks do not describe, such as the dense twin:
        a layer on CSR kernels computes only the kept positions."""
        if self._kernels is not None:
            self._kernels.close()
            self._kernels = None

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` for every future event."""
        self._listeners.append(listener)

    def close(self) -> None:
        """Remove the optimizer hooks; masks stop being applied. The optimizer can be attached
        again."""
        if self._hooks:
            setattr(self.optimizer, _ATTACHED, False)
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._kernels is not None:
            self._kernels.close()

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

    def mask_gradients(self) -> None:
        """Run this step's phase actions and mask the gradients now, e.g. before clipping.

        Call it after `backward()` (and after `scaler.unscale_`). The pre-step hook then finds
        the same gradient tensors unchanged (same object, same version counter) and does not
        mask them twice; new gradients, e.g. after a step a GradScaler skipped, are masked.
        """
        self.begin_step()
        if self._masks is None:
            return
        grads = local_grads(self._parameters)
        first = (
            grads[0] if grads[0] is not None else next((g for g in grads if g is not None), None)
        )
        marked = self._masked_grad
        if first is None or (
            marked is not None and marked[0] is first and marked[1] == first._version
        ):
            return
        if first is grads[0] and all(g is not None for g in grads):
            torch._foreach_mul_(grads, self._masks)
        else:
            pairs = [(g, m) for g, m in zip(grads, self._masks) if g is not None]
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])
        self._masked_grad = (first, first._version)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.mask_gradients()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._masks is not None:
            with torch.no_grad():
                torch._foreach_mul_(self._local_weights(), self._masks)
        if self._kernels is not None:
            self._announce_kernels()
        self._step += 1
        self._masked_grad = None

    def _local_weights(self) -> list[Tensor]:
        """The prunable weights as this rank's local shards (themselves when not sharded)."""
        return self._parameters if self._sharding is None else local_tensors(self._parameters)

    # -- phase actions (rare) --------------------------------------------------------------
    def _emit(self, event: RuntimeEvent) -> None:
        self._history.append(event)
        for listener in self._listeners:
            listener(event)

    def _run_actions(self, step: int) -> tuple[str, ...]:
        """Everything the timeline does at `step`; returns the layers a new mask empties."""
        emptied: tuple[str, ...] = ()
        if step == self._snapshot_step:
            self._emit(DenseSnapshot(step, self._snapshot_phase))
        index = self.timeline.phase_index_at(step)
        phase = self.timeline.phases[index]
        if step == phase.start:
            self._emit(PhaseStarted(step, index, phase.kind, self.plan.phase_target(index)))
            if phase.kind == "dense":
                self._decompress()
        updates = phase.mask_updates()
        if step in updates:
            update = self.plan.updates[index][updates.index(step)]
            emptied = self._recompute_masks(step, index, update)
        self._done_through = step
        after = bisect.bisect_right(self._actions, step)
        self._next_action = self._actions[after] if after < len(self._actions) else -1
        return emptied

    def _announce_kernels(self) -> None:
        """Emit `KernelsChosen` when this step's forward chose (or changed) layer kernels."""
        news = self._kernels.announcement()
        if news is not None:
            kernels, timings = news
            mode = self._kernels.mode
            self._emit(KernelsChosen(self._step, self.phase_index, mode, kernels, timings))

    def _decompress(self) -> None:
        if self._kernels is not None:
            self._kernels.drop()
        if self._masks is None:
            return
        remask_later = self._step < self._last_mask_step  # keep it for the change statistics
        needed = remask_later or self._policy == "reset_reactivated"
        previous = list(self._masks) if needed else None  # the same tensors, no copy
        self._masks, self._mask_view, self._target = None, None, 0.0
        reset_optimizer_state_(self.optimizer, self._policy, self._parameters, previous)
        # Only the change statistics need it now: as bool, the dense phase holds 1 byte/weight.
        self._previous = [m.bool() for m in previous] if remask_later else None

    @torch.no_grad()
    def _recompute_masks(self, step: int, index: int, update: MaskUpdate) -> tuple[str, ...]:
        """Choose and apply new masks; return the layers they empty."""
        weights = [param.detach() for param in self._parameters]
        groups, target = update.groups, update.target
        # Unstructured selections detect NaN/inf in their first histogram pass; check the rest.
        others = [
            i
            for g in groups
            if g.pattern != "unstructured"
            or g.prune in (0, sum(weights[j].numel() for j in g.indices))
            for i in g.indices
        ]
        companions, companion_names = self._companions
        check_finite(
            local_tensors([weights[i] for i in others] + companions),
            [self._names[i] for i in others] + companion_names,
            across=self._sharding,
        )
        start = time.perf_counter()
        try:
            masks, thresholds = select_masks_and_thresholds(weights, groups, self._input_axes)
        except NonFiniteWeightError:  # raises the same error, naming the layer
            check_finite(local_tensors(weights), self._names, across=self._sharding)
            raise
        threshold = _pool_threshold(groups, thresholds)
        seconds = time.perf_counter() - start
        if self._sharding is None:
            verify_masks_identical(masks, self._names)
        else:
            verify_sharded_masks(masks, self._names, groups, thresholds, self._sharding)
        previous = self._previous if self._masks is None else self._masks
        changed, per_layer_changed = None, None
        if previous is not None:
            changed, per_changed = mask_change_fraction(previous, masks, self._sharding)
            per_layer_changed = dict(zip(self._names, per_changed, strict=True))
        apply_masks_(weights, masks)
        zero_state_where_pruned_(self.optimizer, self._parameters, masks)
        self._masks, self._mask_view, self._previous = masks, tuple(masks), None
        self._target = target
        if self._kernels is not None:
            self._kernels.use_masks(masks)
        achieved, per_layer = mask_sparsity(masks, self._sharding)
        self._emit(
            MasksComputed(
                step,
                index,
                target,
                achieved,
                dict(zip(self._names, per_layer, strict=True)),
                changed,
                per_layer_changed,
                threshold,
                seconds,
            )
        )
        emptied = tuple(name for name, value in zip(self._names, per_layer) if value >= 1.0)
        if emptied:
            self._emit(LayersEmptied(step, index, emptied))
        return emptied

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: step, masks (bool, CPU; under FSDP2 this
        rank's shards), history, recipe hash."""
        return {
            "format_version": FORMAT_VERSION,
            "recipe_hash": self.plan.recipe_hash,
            "steps_per_epoch": self.steps_per_epoch,
            "step": self._step,
            "done_through": self._done_through,
            "target": self._target,
            "masks": None if self._masks is None else [(m != 0).cpu() for m in self._masks],
            "previous_masks": None
            if self._previous is None
            else [(m != 0).cpu() for m in self._previous],
            "history": [event_to_dict(event) for event in self._history],
            "kernels": None if self._kernels is None else self._kernels.state_dict(),
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
        masks = self._restore_masks(state["masks"], dtype=True)
        previous = self._restore_masks(state["previous_masks"], dtype=False)
        self._step = int(state["step"])
        self._done_through = int(state["done_through"])
        self._target = float(state["target"])
        self._masks, self._previous = masks, previous
        self._mask_view = None if masks is None else tuple(masks)
        self._history = [event_from_dict(event) for event in state["history"]]
        self._masked_grad = None
        if self._kernels is not None:
            self._kernels.load_state_dict(state.get("kernels"), masks)
        after = bisect.bisect_right(self._actions, self._done_through)
        self._next_action = self._actions[after] if after < len(self._actions) else -1

    def _restore_masks(self, saved: Sequence[Tensor] | None, dtype: bool) -> list[Tensor] | None:
        if saved is None:
            return None
        if len(saved) != len(self._parameters):
            raise RuntimeStateError(
                f"the checkpoint holds {len(saved)} masks, the compiled model has "
                f"{len(self._parameters)} prunable parameters; was the model changed?"
            )
        restored = []
        local = local_tensors(self._parameters)
        for name, mask, param in zip(self._names, saved, local, strict=True):
            if tuple(mask.shape) != tuple(param.shape):
                raise RuntimeStateError(
                    f"the checkpoint's mask for {name} has shape {tuple(mask.shape)}, the "
                    f"parameter has shape {tuple(param.shape)}"
                )
            kind = param.dtype if dtype else torch.bool
            restored.append(mask.to(device=param.device, dtype=kind))
        return restored


def _sparse_kernels(compiled: CompiledRecipe, mode: str) -> SparseKernels | None:
    if mode not in SPARSE_KERNEL_MODES:
        raise RuntimeStateError(
            f"sparse_kernels must be one of {', '.join(map(repr, SPARSE_KERNEL_MODES))}, got "
            f"{mode!r}"
        )
    if mode == "off":
        return None
    return SparseKernels(compiled.module, compiled.parameters, compiled.plan.names, mode)


def attach(
    compiled: CompiledRecipe,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int | None = None,
    sparse_kernels: str = "off",
) -> SparsityRuntime:
    """Execute `compiled`'s plan through `optimizer`'s step hooks; see `SparsityRuntime`.

    `sparse_kernels`: "off" (dense kernels throughout), "auto" (each masked Linear/Conv2d
    runs sparse phases on CSR kernels where timing shows them faster) or "on" (wherever
    possible, untimed); see `acdc_recipe.runtime.kernels`.
    """
    return SparsityRuntime(
        compiled, optimizer, steps_per_epoch=steps_per_epoch, sparse_kernels=sparse_kernels
    )
