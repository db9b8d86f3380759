"""The registry of prunable layer kinds: which module types hold prunable weights, and how.

`LAYER_KINDS` maps a kind's name (what ``sparsity.prunable`` and ``type:`` rules say) to a
`LayerKind`: the module type, the weights it applies (attribute path and role), the axis of
those weights that holds the layer's input features (N:M runs along it) and the FLOPs of one
call. It is a plain dict, so a layer of your own becomes prunable without editing the compiler:

    from acdc_recipe.compiler import LAYER_KINDS, LayerKind, linear_flops
    LAYER_KINDS["MyLinear"] = LayerKind(MyLinear, flops=linear_flops)

`layer_kinds()` is what the compiler reads: the dict above plus transformers' ``Conv1D`` (the
GPT-2 family's projections, weight stored ``(in, out)``, so its input axis is 0) whenever
transformers is imported, which a model holding one has done. transformers itself is never
imported here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

from torch import nn

# (role, weight shape, call args, call kwargs, call output) -> FLOPs of that call (multiply-add = 2)
FlopsFunction = Callable[[str, tuple[int, ...], tuple, dict, Any], int]
Weights = tuple[tuple[str, str], ...] | Callable[[nn.Module], tuple[tuple[str, str], ...]]


def linear_flops(
    role: str, weight_shape: tuple[int, ...], args: tuple, kwargs: dict, output
) -> int:
    """2 x (output positions) x weight size: Linear, transformers' Conv1D, ``addmm``."""
    out = _first(output)
    return 2 * (out.numel() // out.shape[-1]) * prod(weight_shape)


def conv_flops(role: str, weight_shape: tuple[int, ...], args: tuple, kwargs: dict, output) -> int:
    """2 x output elements x (input channels per group x kernel)."""
    return 2 * _first(output).numel() * prod(weight_shape[1:])


def conv_transpose_flops(
    role: str, weight_shape: tuple[int, ...], args: tuple, kwargs: dict, output
) -> int:
    """2 x input elements x (output channels per group x kernel)."""
    first = args[0] if args else kwargs["input"]
    return 2 * first.numel() * prod(weight_shape[1:])


def attention_flops(
    role: str, weight_shape: tuple[int, ...], args: tuple, kwargs: dict, output
) -> int:
    """The projections of `nn.MultiheadAttention` (scores and softmax are not counted)."""
    names = ("query", "key", "value")
    q, k, v = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))
    tokens = {"q": _tokens(q), "k": _tokens(k), "v": _tokens(v)}
    if role == "in_proj":
        embed = weight_shape[0] // 3
        return 2 * embed * weight_shape[1] * (tokens["q"] + tokens["k"] + tokens["v"])
    if role == "out_proj":
        return 2 * tokens["q"] * prod(weight_shape)
    return 2 * tokens[role[0]] * prod(weight_shape)


def attention_weights(module: nn.Module) -> tuple[tuple[str, str], ...]:
    """`nn.MultiheadAttention`'s packed or separate input projections, then its output one."""
    if module.in_proj_weight is not None:
        found = [("in_proj_weight", "in_proj")]
    else:
        found = [(f"{p}_proj_weight", f"{p}_proj") for p in "qkv"]
    return (*found, ("out_proj.weight", "out_proj"))


@dataclass(frozen=True)
class LayerKind:
    """A module type whose weights are prunable.

    `weights` lists (attribute path, role) of the weights one call applies, or is a function of
    the module returning them; `input_axis` is the axis of those weights that holds the input
    features (1 for ``[out, in, *kernel]`` weights, 0 for ``(in, out)`` storage); `flops` counts
    one call for one weight role.
    """

    module_type: type[nn.Module]
    flops: FlopsFunction
    weights: Weights = (("weight", "weight"),)
    input_axis: int = 1

    def weights_of(self, module: nn.Module) -> tuple[tuple[str, str], ...]:
        return self.weights(module) if callable(self.weights) else self.weights


LAYER_KINDS: dict[str, LayerKind] = {
    "Linear": LayerKind(nn.Linear, linear_flops),
    "Conv1d": LayerKind(nn.Conv1d, conv_flops),
    "Conv2d": LayerKind(nn.Conv2d, conv_flops),
    "Conv3d": LayerKind(nn.Conv3d, conv_flops),
    "ConvTranspose1d": LayerKind(nn.ConvTranspose1d, conv_transpose_flops, input_axis=0),
    "ConvTranspose2d": LayerKind(nn.ConvTranspose2d, conv_transpose_flops, input_axis=0),
    "ConvTranspose3d": LayerKind(nn.ConvTranspose3d, conv_transpose_flops, input_axis=0),
    "MultiheadAttention": LayerKind(nn.MultiheadAttention, attention_flops, attention_weights),
}

# Kinds of optional libraries: name -> (module that defines the type, type name, input axis).
OPTIONAL_KINDS: dict[str, tuple[str, str, int]] = {
    "Conv1D": ("transformers.pytorch_utils", "Conv1D", 0),
}


def layer_kinds() -> dict[str, LayerKind]:
    """`LAYER_KINDS` plus the optional kinds whose library is already imported."""
    kinds = dict(LAYER_KINDS)
    for name, (module_name, type_name, axis) in OPTIONAL_KINDS.items():
        module = sys.modules.get(module_name)
        if name not in kinds and module is not None and hasattr(module, type_name):
            kinds[name] = LayerKind(getattr(module, type_name), linear_flops, input_axis=axis)
    return kinds


def kind_of(module: nn.Module, kinds: Mapping[str, LayerKind]) -> str | None:
    """The name of the most specific registered kind `module` is an instance of, or None."""
    mro = type(module).__mro__
    matching = [
        (mro.index(kind.module_type) if kind.module_type in mro else len(mro), name)
        for name, kind in kinds.items()
        if isinstance(module, kind.module_type)
    ]
    return min(matching)[1] if matching else None


def known_kind_names() -> tuple[str, ...]:
    """Every name `sparsity.prunable` may list: the registered kinds and the optional ones."""
    return tuple(dict.fromkeys([*LAYER_KINDS, *OPTIONAL_KINDS]))


def _first(output: Any) -> Any:
    return output[0] if isinstance(output, (tuple, list)) else output


def _tokens(tensor: Any) -> int:
    return tensor.numel() // tensor.shape[-1]
