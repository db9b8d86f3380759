"""`SparseKernels`: sparse forward and backward for the masked layers of an attached runtime.

At attach, every prunable weight owned by a plain Linear or Conv2d (`forms.form_of`) gets a
`KernelLayer`, and its module a forward of this package's own, once; nothing is added or
removed afterwards, so a `torch.compile`d model is never recompiled by a phase switch (under
compilation the forward is one opaque op, `compiled_op.py`). They follow the runtime's events
(`follow`): new masks (`MasksComputed`) build each layer's sparse structure, a dense phase
(`PhaseStarted`) drops it; the layers choose their kernel on the next training forward, and
after that optimizer step the choices become a `KernelsChosen` event.
MultiheadAttention's weights and functional calls have no sparse kernel; they stay dense.
On CUDA only 2:4 Linears have one (semi-structured, forward only).
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from acdc_recipe.errors import UserError
from acdc_recipe.runtime.events import KernelsChosen, MasksComputed, PhaseStarted, RuntimeEvent
from acdc_recipe.runtime.kernels import compiled_op
from acdc_recipe.runtime.kernels.forms import Form, form_of, inside_attention
from acdc_recipe.runtime.kernels.layer import KernelLayer
from acdc_recipe.runtime.kernels.timing import KernelTiming


class KernelSetupError(UserError, ValueError):
    """A layer cannot take the sparse kernels' forward (it already has a forward of its own)."""


def kernel_forward(module: nn.Module, x: Tensor) -> Tensor:
    """The forward of a module with a kernel layer (bound to the module, so it follows copies)."""
    layer: KernelLayer = module.acdc_kernel
    if torch.compiler.is_compiling():
        training = module.training and torch.is_grad_enabled()
        return compiled_op.kernel_layer(x, module.weight, module.bias, layer.slot, training)
    return layer.forward(module, x)


def _kernel_modules(
    root: nn.Module, parameters: Sequence[Tensor]
) -> dict[int, tuple[list[nn.Module], Form]]:
    """Parameter index -> (the modules computing with it, their form), for the weights a plain
    Linear or Conv2d owns and calls itself (MultiheadAttention reads its own weights)."""
    in_attention = inside_attention(root)
    index = {id(p): i for i, p in enumerate(parameters)}
    found: dict[int, tuple[list[nn.Module], Form]] = {}
    for module in root.modules():
        weight = getattr(module, "weight", None)
        if id(module) in in_attention or id(weight) not in index:
            continue
        form = form_of(module)
        if form is None:
            continue
        i = index[id(weight)]
        modules, first = found.setdefault(i, ([], form))
        if form == first and module not in modules:
            modules.append(module)
    return found


def without_kernels(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose layers compute with their own forward again."""
    twin = copy.deepcopy(model)
    _uninstall(m for m in twin.modules() if hasattr(m, "acdc_kernel"))
    return twin


def _uninstall(modules: Iterable[nn.Module]) -> None:
    for module in modules:
        del module.forward
        del module.acdc_kernel


class FollowedRuntime(Protocol):
    """What the kernels need of the runtime they follow (`SparsityRuntime`)."""

    @property
    def masks(self) -> tuple[Tensor, ...] | None: ...

    @property
    def phase_index(self) -> int: ...

    def add_listener(self, listener: Callable[[RuntimeEvent], None]) -> None: ...

    def add_step_listener(self, listener: Callable[[int], None]) -> None: ...

    def emit(self, event: RuntimeEvent) -> None: ...


class SparseKernels:
    """The kernel layers of one runtime (see the module docstring)."""

    def __init__(
        self, root: nn.Module, parameters: Sequence[Tensor], names: Sequence[str], mode: str
    ) -> None:
        self.mode = mode
        self._parameters = list(parameters)
        self._names = list(names)
        self.layers: dict[int, KernelLayer] = {}
        self._installed: list[nn.Module] = []
        found = sorted(_kernel_modules(root, self._parameters).items())
        for i, (modules, _) in found:  # all checked before anything is installed
            if any("forward" in vars(m) or hasattr(m, "acdc_kernel") for m in modules):
                raise KernelSetupError(
                    f"the layer holding {self._names[i]} already has a forward of its own (an "
                    "instance attribute, or another runtime's sparse kernels); close that "
                    "runtime first, or attach with sparse_kernels='off'"
                )
        for i, (modules, form) in found:
            self.layers[i] = KernelLayer(self._names[i], form, mode)
            for module in modules:
                module.acdc_kernel = self.layers[i]
                module.forward = types.MethodType(kernel_forward, module)
                self._installed.append(module)
        self._announced: tuple[str, ...] | None = None
        self._settled = True  # nothing left to announce

    def close(self) -> None:
        """Give every module its own forward back."""
        _uninstall(self._installed)
        self._installed = []

    def follow(self, runtime: FollowedRuntime) -> None:
        """Follow `runtime`'s masks from its events, and report choices after its steps."""

        def on_event(event: RuntimeEvent) -> None:
            if isinstance(event, MasksComputed):
                self.use_masks(runtime.masks)
            elif isinstance(event, PhaseStarted) and event.kind == "dense":
                self.drop()

        def after_step(step: int) -> None:
            news = self.announcement()
            if news is not None:
                kernels, timings = news
                runtime.emit(KernelsChosen(step, runtime.phase_index, self.mode, kernels, timings))

        runtime.add_listener(on_event)
        runtime.add_step_listener(after_step)

    # -- following the masks ----------------------------------------------------------------
    def use_masks(self, masks: Sequence[Tensor]) -> None:
        """New masks: build each layer's CSR structure; kernels are chosen again."""
        for i, layer in self.layers.items():
            layer.use_mask(masks[i], self._parameters[i])
        self._announced, self._settled = None, not self.layers

    def drop(self) -> None:
        """A dense phase: every layer computes densely again."""
        for layer in self.layers.values():
            layer.drop()
        self._announced, self._settled = None, True

    def kernels(self) -> dict[str, str]:
        """Per prunable weight: "sparse", "dense", "undecided" (not yet run under this mask)
        or "none" (no sparse kernel for its layer, or none on its device); empty in a dense
        phase."""
        if not any(layer.masked for layer in self.layers.values()):
            return {}
        table = dict.fromkeys(self._names, "none")
        for layer in self.layers.values():
            if layer.operands is not None:
                table[layer.name] = layer.kernel or "undecided"
        return table

    def announcement(self) -> tuple[dict[str, str], dict[str, dict[str, float]]] | None:
        """(kernels, timings) when the choices changed since the last announcement, else None.
        Called after each optimizer step; O(1) once every layer has chosen."""
        if self._settled:
            return None
        current = tuple(layer.kernel or "undecided" for layer in self.layers.values())
        if current == self._announced:
            return None
        self._announced = current
        self._settled = "undecided" not in current
        timings = {
            layer.name: layer.timing.to_dict()
            for layer in self.layers.values()
            if layer.timing is not None
        }
        return self.kernels(), timings

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "layers": {
                layer.name: {
                    "kernel": layer.kernel,
                    "timing": None if layer.timing is None else layer.timing.to_dict(),
                }
                for layer in self.layers.values()
            },
            "announced": None if self._announced is None else list(self._announced),
            "settled": self._settled,
        }

    def load_state_dict(self, state: dict[str, Any] | None, masks: Sequence[Tensor] | None) -> None:
        """Rebuild the structure of the restored masks and restore the choices made under
        them (when the state was saved with the same mode)."""
        if masks is None:
            self.drop()
            return
        self.use_masks(masks)
        if state is None or state.get("mode") != self.mode:
            return
        saved = state["layers"]
        for layer in self.layers.values():
            choice = saved.get(layer.name)
            if choice is not None:
                timing = choice["timing"]
                layer.restore_choice(
                    choice["kernel"], None if timing is None else KernelTiming(**timing)
                )
        announced = state["announced"]
        self._announced = None if announced is None else tuple(announced)
        self._settled = bool(state["settled"])
