"""N:M and block shape checks, and exact per-pattern prune counts."""

from __future__ import annotations

import pytest

from acdc_recipe.compiler.errors import CompileError
from acdc_recipe.compiler.patterns import check_pattern, implied_sparsity, prune_count

PATH = ("sparsity", "pattern")


def test_nm_needs_input_channels_divisible_by_m() -> None:
    check_pattern("2:4", "fc", "Linear", (10, 16), PATH)
    check_pattern("2:4", "conv", "Conv2d", (8, 4, 3, 3), PATH)
    with pytest.raises(CompileError) as info:
        check_pattern("2:4", "features.0.0", "Conv2d", (32, 3, 3, 3), PATH)
    message = str(info.value)
    assert "'features.0.0'" in message and "3 input channels" in message
    assert "{match: 'features.0.0', dense: true}" in message
    assert info.value.layer == "features.0.0"


def test_nm_on_transposed_conv_is_rejected() -> None:
    with pytest.raises(CompileError, match="transposed convolution"):
        check_pattern("2:4", "up", "ConvTranspose2d", (8, 8, 2, 2), PATH)


def test_block_must_tile_the_2d_view() -> None:
    check_pattern("block:4x4", "conv", "Conv2d", (8, 16, 1, 1), PATH)
    check_pattern("block:1x4", "conv", "Conv2d", (8, 4, 3, 3), PATH)  # 8 x 36
    with pytest.raises(CompileError, match="8x27 matrix, which 1x4 blocks do not tile"):
        check_pattern("block:1x4", "conv", "Conv2d", (8, 3, 3, 3), PATH)


def test_counts() -> None:
    assert prune_count("unstructured", 100, 0.9) == 90
    assert prune_count("unstructured", 10, 0.99) == 9  # at least one survives
    assert prune_count("unstructured", 100, 0.0) == 0
    assert prune_count("2:4", 64, 0.3) == 32  # the pattern decides
    assert prune_count("1:4", 64, 0.9) == 48
    assert prune_count("block:2x2", 64, 0.5) == 32  # 8 of 16 blocks
    assert prune_count("block:2x2", 64, 0.6) == 40  # round(9.6) = 10 blocks
    assert prune_count("block:2x2", 64, 1.0) == 60  # one block survives
    assert implied_sparsity("2:4") == 0.5 and implied_sparsity("unstructured") is None
