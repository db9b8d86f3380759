"""Pattern checks and exact prune counts for unstructured, N:M and block sparsity.

Both structured patterns read a weight in its logical layout ``[out, in, *kernel]``: the
layer kind's input axis (dim 1 for Linear and Conv weights, dim 0 for transformers' Conv1D,
stored ``(in, out)``) is moved to position 1.

- N:M keeps N of every M consecutive weights along the input axis (moved last for convs), so
  that axis must be a multiple of M. Transposed convs have no hardware-valid N:M layout here
  and are rejected.
- block:RxC prunes whole RxC blocks of the 2-D view ``[out, in * prod(kernel)]``, which both
  block sides must divide.
"""

from __future__ import annotations

from math import prod

from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.errors import KeyPath
from acdc_recipe.language.schema import parse_pattern


def logical_shape(shape: tuple[int, ...], input_axis: int) -> tuple[int, ...]:
    """`shape` with the input axis moved to position 1: ``[out, in, *kernel]``."""
    if len(shape) < 2:
        return tuple(shape)
    dims = list(shape)
    dims.insert(1, dims.pop(input_axis))
    return tuple(dims)


def check_pattern(
    pattern: str,
    layer: str,
    op: str,
    shape: tuple[int, ...],
    path: KeyPath,
    input_axis: int = 1,
) -> None:
    """Raise `CompileError` when a weight of `shape` cannot hold `pattern`."""
    kind, a, b = parse_pattern(pattern)
    stored, shape = shape, logical_shape(shape, input_axis)
    fix = (
        f"keep it dense with a rule {{match: {layer!r}, dense: true}} placed before any rule "
        "that matches it, or give it pattern: unstructured"
    )
    described = f"layer {layer!r} ({op}, weight {list(stored)})"
    if kind == "n:m":
        if op.startswith(("ConvTranspose", "conv_transpose")):
            raise CompileError(
                f"{described} is a transposed convolution, which has no valid {pattern} layout "
                f"along its input channels; {fix}.",
                path,
                layer,
            )
        if len(shape) < 2 or shape[1] % b:
            channels = shape[1] if len(shape) > 1 else 1
            raise CompileError(
                f"{described} has {channels} input channels, not a multiple of {b}, so it "
                f"cannot hold a valid {pattern} pattern; {fix}.",
                path,
                layer,
            )
    elif kind == "block":
        rows, cols = shape[0], prod(shape[1:])
        if rows % a or cols % b:
            raise CompileError(
                f"{described} is viewed as a {rows}x{cols} matrix, which {a}x{b} blocks do not "
                f"tile ({rows} % {a} or {cols} % {b} is not 0); {fix}.",
                path,
                layer,
            )


def implied_sparsity(pattern: str) -> float | None:
    """The sparsity an N:M pattern fixes ((M-N)/M); None for other patterns."""
    kind, n, m = parse_pattern(pattern)
    return (m - n) / m if kind == "n:m" else None


def prune_count(pattern: str, numel: int, target: float) -> int:
    """Entries to prune in one tensor of `numel` entries at sparsity `target` (0 means none).

    Unstructured and block targets are capped so at least one entry (one block) survives;
    N:M gives exactly numel * (M-N) / M whenever target > 0.
    """
    if target <= 0 or numel == 0:
        return 0
    kind, a, b = parse_pattern(pattern)
    if kind == "n:m":
        return numel // b * (b - a)
    unit = a * b if kind == "block" else 1
    units = numel // unit
    return min(round(target * units), units - 1) * unit
