"""A block that computes on a dense copy of itself at the batch sizes where, as a whole, it
measured faster dense even with its sparse layers computing dense: a block with a fused
inference path (`TransformerEncoderLayer`'s), which its sparse layers turn off.

`route_dense_at(block, dense, dispatch)` makes `block`'s forward send each call whose first
tensor has a number of elements `dispatch` names "dense" to `dense` (a dense copy of the block,
kept out of the module tree: not in the state dict, not saved), and every other call through the
block's own forward. `dense_state(block)` is the state dict of the dense module a block with
sparse twins computes, to fill such a copy when an export is loaded.
"""

from __future__ import annotations

import types
from typing import Any

from torch import Tensor, nn

from acdc_recipe.runtime.kernels.attention import CsrAttention
from acdc_recipe.runtime.kernels.csr_layer import CsrLayer, Dispatch

ROUTES = ("dense", "sparse")
_ROUTE = "_acdc_dense_route"  # instance attribute: (dense copy, dispatch)


def _first_tensor(args: tuple, kwargs: dict[str, Any]) -> Tensor | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)


def _routed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    dense, dispatch = self.__dict__[_ROUTE]
    x = _first_tensor(args, kwargs)
    if x is not None and dispatch.kernel(x.numel()) == "dense":
        return dense(*args, **kwargs)
    return type(self).forward(self, *args, **kwargs)


def route_dense_at(block: nn.Module, dense: nn.Module, dispatch: Dispatch) -> None:
    """See the module docstring; `dispatch` maps elements of the first input to "dense" or
    "sparse". A deep copy of `block` routes to a deep copy of `dense`."""
    unknown = set(dispatch.kernels) - set(ROUTES)
    if unknown:
        raise ValueError(f"unknown route {sorted(unknown)[0]!r}; one of {', '.join(ROUTES)}")
    block.__dict__[_ROUTE] = (dense.eval(), dispatch)
    block.forward = types.MethodType(_routed_forward, block)


def unroute(block: nn.Module) -> None:
    """Undo `route_dense_at`."""
    block.__dict__.pop(_ROUTE, None)
    block.__dict__.pop("forward", None)


def dense_route(block: nn.Module) -> tuple[nn.Module, Dispatch] | None:
    """(the dense copy, the dispatch) of a routed block; None for any other module."""
    return block.__dict__.get(_ROUTE)


def dense_state(module: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """The state dict of the dense module `module` computes: its CSR twins as the dense
    weights they hold (a `CsrLayer` as a Linear or Conv2d, a `CsrAttention` as a
    `MultiheadAttention`), everything else as it is."""
    if isinstance(module, CsrLayer):
        state = {f"{prefix}weight": module.dense_weight().detach()}
        if module.bias is not None:
            state[f"{prefix}bias"] = module.bias.detach()
        return state
    if isinstance(module, CsrAttention):
        return {f"{prefix}{k}": v for k, v in module.dense_attention().state_dict().items()}
    state = {f"{prefix}{n}": p.detach() for n, p in module._parameters.items() if p is not None}
    state.update(
        {
            f"{prefix}{n}": b
            for n, b in module._buffers.items()
            if b is not None and n not in module._non_persistent_buffers_set
        }
    )
    for name, child in module.named_children():
        state.update(dense_state(child, f"{prefix}{name}."))
    return state


def bytes_of(module: nn.Module) -> int:
    """The bytes of a module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
