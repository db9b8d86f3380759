"""The block-by-block check of an inference model, one batch size at a time: every module
holding a sparse twin is timed as a whole against its dense form, innermost first; where it is
not faster its layers compute dense at that batch size, and where that still leaves it slower
(a block with a fused inference path its twins turn off, `FUSED_BLOCKS`, always; any other when
slower than its dense form by more than timing noise) it computes on a dense copy of itself
there (`dense_routes`). `without_fused_paths` turns those fused paths off where twins are."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from acdc_recipe.runtime.kernels.attention import CsrAttention
from acdc_recipe.runtime.kernels.choices import BlockRoute, LayerChoice
from acdc_recipe.runtime.kernels.csr_layer import CsrLayer, no_fast_path
from acdc_recipe.runtime.kernels.dense_routes import route_dense_at, unroute
from acdc_recipe.runtime.kernels.semi_structured_layer import SemiStructuredLinear
from acdc_recipe.runtime.kernels.timing import time_paths

HOLDER_ROUNDS = 5  # one disturbed round must not revert a whole block
# A block whose layers compute dense is routed to a dense copy of itself only when it is slower
# than that copy by more than timing noise (a fused path it lost: 2x for an encoder layer).
ROUTE_MARGIN = 0.8
Calls = dict[str, tuple[tuple, dict[str, Any]]]
TWINS = (CsrLayer, CsrAttention, SemiStructuredLinear)
FUSED_BLOCKS = (nn.TransformerEncoderLayer,)  # an inference path that reads dense weights


def replace_module(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put `layer` at `name` (a dotted submodule path) in `model`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def without_fused_paths(model: nn.Module) -> None:
    """Make every transformer block holding a sparse twin compute on its own layers.

    A `TransformerEncoderLayer`'s fused inference path reads its layers' dense weights, which
    no twin has: a no-op forward pre-hook on the block turns it off (once). A
    `TransformerEncoder`'s nested-tensor path (taken with a key padding mask) does the same on
    nested tensors, which no twin takes: such an encoder then computes as one built with
    `enable_nested_tensor=False` does (padded positions hold computed values, not zeros)."""
    for module in model.modules():
        if not any(isinstance(inner, TWINS) for inner in module.modules()):
            continue
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
        if isinstance(module, FUSED_BLOCKS) and no_fast_path not in [
            *module._forward_pre_hooks.values()
        ]:
            module.register_forward_pre_hook(no_fast_path)


def _first_elements(call: tuple) -> int:
    args, kwargs = call
    first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
    return 0 if first is None else first.numel()


class BlockChecks:
    """The block-by-block check of `sparse_inference_model`, one batch size at a time."""

    def __init__(
        self, model: nn.Module, sparse: nn.Module, layers: dict[str, nn.Module],
        choices: dict[str, LayerChoice], calls: Mapping[int, Calls],
    ) -> None:  # fmt: skip
        self.model, self.sparse, self.layers = model, sparse, layers
        self.choices, self.calls = choices, calls
        self.dense_at: dict[str, dict[int, str]] = {}  # holder -> batch -> route

    def check(self, batch: int) -> None:
        """Time every module holding a twin at `batch`, innermost first. Where that left
        nothing sparse at `batch` but some block on its dense copy, the whole model computes
        on its own dense copy there (one hop instead of one per block)."""
        calls, choices = self.calls[batch], self.choices
        holders = {a for n in choices if self._twinned_at(n, batch) for a in ancestors(n)}
        for holder in sorted(holders, key=lambda n: (-n.count(".") if n else 1, n)):
            inside = [n for n in choices if self._twinned_at(n, batch) and _within(n, holder)]
            if not inside or holder not in calls or self._faster(holder, calls[holder]):
                continue
            before = {name: choices[name] for name in inside}
            self._layers_dense(inside, batch, holder)
            fused = [  # their layers now all dense here: nothing beats their fused path
                name
                for name, module in self.model.named_modules()
                if isinstance(module, FUSED_BLOCKS)
                and (name == holder or _within(name, holder))
                and any(_within(layer, name) for layer in inside)
            ]
            for block in fused:
                self._route_dense(block, batch, before)
            if holder in fused or self._faster(holder, calls[holder], ROUTE_MARGIN):
                continue
            self._route_dense(holder, batch, before)
        routed = any(batch in routes for routes in self.dense_at.values())
        if routed and "" in calls and not any(self._sparse_at(n, batch) for n in choices):
            self._route_dense("", batch, {})  # all dense there: one dense copy, one hop

    def _twinned_at(self, name: str, batch: int) -> bool:
        """Whether a twin computes the layer at `batch`: it has one (it is sparse at some
        batch size; at the others it computes dense in the twin, where a block's fused path
        cannot) and no block around it computes dense there."""
        routed = any(self.dense_at.get(a, {}).get(batch) == "dense" for a in ancestors(name))
        return self.choices[name].kernel != "dense" and not routed

    def _sparse_at(self, name: str, batch: int) -> bool:
        """Whether the layer computes on a sparse kernel at `batch`."""
        choice = self.choices[name]
        at = [b.kernel for b in choice.batches if b.batch == batch]
        sparse = choice.kernel == "semi_structured" or any(k != "dense" for k in at)
        return sparse and self._twinned_at(name, batch)

    def _faster(self, holder: str, call: tuple, margin: float = 1.0) -> bool:
        """Whether the sparse block computes this call faster than the dense one (with
        `margin` below 1: not slower than the dense one by more than its inverse)."""
        args, kwargs = call
        dense = self.model.get_submodule(holder)
        sparse = self.sparse.get_submodule(holder)
        timing = time_paths(
            partial(dense, *args, **kwargs), partial(sparse, *args, **kwargs),
            device_of(args), rounds=HOLDER_ROUNDS,
        )  # fmt: skip
        return margin * timing.sparse_ms < timing.dense_ms

    def _layers_dense(self, names: list[str], batch: int, holder: str) -> None:
        for name in names:
            choice = self.choices[name]
            if choice.kernel == "semi_structured":
                replace_module(self.sparse, name, copy.deepcopy(self.layers[name]))
                self.choices[name] = replace(choice, kernel="dense", reverted_by=holder)
                continue
            batches = tuple(
                replace(b, kernel="dense", reverted_by=holder) if b.batch == batch else b
                for b in choice.batches
            )
            self._set(name, choice.with_batches(batches))

    def _set(self, name: str, choice: LayerChoice) -> None:
        self.choices[name] = choice
        twin = self.sparse.get_submodule(name)
        if isinstance(twin, CsrLayer | CsrAttention):
            twin.dispatch = choice.dispatch

    def _route_dense(self, block: str, batch: int, before: dict[str, LayerChoice]) -> None:
        """`block` computes on a dense copy of itself at `batch`; its layers' choices there
        go back to what they were (the copy computes them)."""
        for name, choice in before.items():
            if _within(name, block) and choice.kernel != "semi_structured":
                self._set(name, choice)
        self.dense_at.setdefault(block, {})[batch] = "dense"
        dense = copy.deepcopy(self.model.get_submodule(block))
        route_dense_at(self.sparse.get_submodule(block), dense, self.route(block).dispatch)

    def route(self, holder: str) -> BlockRoute:
        dense = self.dense_at.get(holder, {})
        return BlockRoute(
            holder,
            tuple(
                (b, _first_elements(calls[holder]), dense.get(b, "sparse"))
                for b, calls in sorted(self.calls.items())
                if holder in calls
            ),
        )

    def routes(self) -> list[BlockRoute]:
        """Every block's route, less those the whole model's makes moot (dense only where the
        model is), which are removed."""
        whole = {b for b, route in self.dense_at.get("", {}).items() if route == "dense"}
        for block in [b for b in self.dense_at if b]:
            if {b for b, r in self.dense_at[block].items() if r == "dense"} <= whole:
                del self.dense_at[block]
                unroute(self.sparse.get_submodule(block))
        return [self.route(holder) for holder in sorted(self.dense_at)]


def device_of(args: tuple) -> torch.device:
    """Where a recorded call computes: its first argument's device."""
    return args[0].device if args and isinstance(args[0], Tensor) else torch.device("cpu")


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]  # "" is the model itself


def _within(name: str, holder: str) -> bool:
    return holder == "" or name.startswith(holder + ".")
