"""Targets and exact prune counts: global, uniform, ERK, rule targets, patterns."""

from __future__ import annotations

from dataclasses import replace
from math import prod

from hypothesis import given, settings
from hypothesis import strategies as st

from acdc_recipe.compiler.distribution import apportion, erk_densities, mask_groups, param_scope
from acdc_recipe.compiler.plan import PrunableParam

shape = st.one_of(
    st.tuples(st.integers(1, 64), st.integers(1, 64)),
    st.tuples(
        st.integers(1, 32), st.integers(1, 32), st.sampled_from([1, 3, 5]), st.sampled_from([1, 3])
    ),
)


def params(shapes, pattern="unstructured", scope="global", rule_target=None) -> list[PrunableParam]:
    return [
        PrunableParam(
            name=f"p{i}.weight",
            layer=f"p{i}",
            op="Linear",
            shape=tuple(s),
            rule=None,
            pattern=pattern,
            scope=param_scope(pattern, rule_target, scope),
            rule_target=rule_target,
            target=0.0,
            dense_flops=0,
        )
        for i, s in enumerate(shapes)
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(shape, min_size=1, max_size=12),
    st.floats(0.01, 0.99),
    st.sampled_from(["uniform", "erk"]),
)
def test_per_layer_counts_sum_exactly(shapes, overall, scope) -> None:
    plist = params(shapes, scope=scope)
    groups = mask_groups(plist, overall, 0.9)
    total = sum(prod(s) for s in shapes)
    assert [g.indices for g in groups] == [(i,) for i in range(len(shapes))]
    assert sum(g.prune for g in groups) == round(overall * total)
    for g in groups:
        assert 0 <= g.prune <= plist[g.indices[0]].numel


@settings(max_examples=200, deadline=None)
@given(st.lists(shape, min_size=1, max_size=12), st.floats(0.01, 0.99))
def test_erk_densities_are_capped_and_exact(shapes, overall) -> None:
    densities = erk_densities(shapes, 1 - overall)
    sizes = [prod(s) for s in shapes]
    assert all(0 < d <= 1.0 for d in densities)
    kept = sum(d * n for d, n in zip(densities, sizes))
    assert abs(kept - (1 - overall) * sum(sizes)) < 1e-6 * sum(sizes)


def test_erk_prefers_small_layers_and_caps_them() -> None:
    shapes = [(2, 3, 3, 3), (128, 128, 3, 3), (10, 256)]
    densities = erk_densities(shapes, 0.02)
    assert densities[0] == 1.0  # tiny first conv: its ERK density would exceed 1
    assert densities[2] > densities[1]  # the classifier keeps more than the big conv
    scores = [sum(s) / prod(s) for s in shapes]
    assert abs(densities[2] / densities[1] - scores[2] / scores[1]) < 1e-9


def test_apportion_respects_caps() -> None:
    assert apportion([2.5, 2.5, 0.0], 5, [3, 3, 0]) == [3, 2, 0]
    assert apportion([0.4, 0.4, 0.4], 1, [1, 1, 1]) == [1, 0, 0]
    assert sum(apportion([1.9, 0.0], 2, [2, 0])) == 2


def test_global_is_one_group() -> None:
    plist = params([(10, 10), (20, 5), (3, 3)])
    (group,) = mask_groups(plist, 0.9, 0.9)
    assert group.indices == (0, 1, 2) and group.prune == round(0.9 * 209)
    assert mask_groups(plist, 0.0, 0.9)[0].prune == 0


def test_rule_targets_scale_with_the_ramp() -> None:
    pool = params([(10, 10)])[0]
    plist = [
        pool,
        replace(pool, name="p1.weight", rule=0, rule_target=0.96, scope="layer"),
        replace(pool, name="p2.weight", shape=(8, 8), rule=1, pattern="2:4", scope="layer"),
    ]
    at_target = mask_groups(plist, 0.8, 0.8)
    assert [g.prune for g in at_target] == [80, 96, 32]
    halfway = mask_groups(plist, 0.4, 0.8)
    assert [g.prune for g in halfway] == [40, 48, 32]  # N:M keeps its pattern count
    beyond = mask_groups(plist, 0.9, 0.8)
    assert beyond[1].prune == 99  # 0.96 * 0.9 / 0.8 > 1: capped, one weight survives


def test_block_layers_get_their_own_group() -> None:
    plist = params([(4, 4), (8, 4)], "block:2x2")
    groups = mask_groups(plist, 0.5, 0.5)
    assert [(g.indices, g.prune, g.pattern) for g in groups] == [
        ((0,), 8, "block:2x2"),
        ((1,), 16, "block:2x2"),
    ]


def test_global_without_floors_is_the_papers_plain_group() -> None:
    (group,) = mask_groups(params([(10, 10), (20, 5)]), 0.9, 0.9)
    assert group.score == "magnitude" and group.floors == ()


@settings(max_examples=200, deadline=None)
@given(st.lists(shape, min_size=1, max_size=8), st.floats(0.01, 0.95), st.data())
def test_lamp_and_min_density_floors_with_the_exact_total(shapes, overall, data) -> None:
    scope = data.draw(st.sampled_from(["global", "lamp"]))
    floor = data.draw(st.one_of(st.none(), st.floats(0.001, 1 - overall)))
    plist = [replace(p, min_density=floor) for p in params(shapes, scope=scope)]
    sizes = [prod(s) for s in shapes]
    wanted = [
        max(-(-round(floor * 10**12) * n // 10**12) if floor else 0, scope == "lamp") for n in sizes
    ]
    if sum(wanted) > sum(sizes) - round(overall * sum(sizes)):
        return  # infeasible: the next test
    (group,) = mask_groups(plist, overall, 0.9)
    assert group.indices == tuple(range(len(shapes)))
    assert group.prune == round(overall * sum(sizes))
    assert group.score == ("lamp" if scope == "lamp" else "magnitude")
    if floor is None and scope == "global":
        assert group.floors == ()
    else:
        assert group.floors == tuple(wanted)


def test_min_density_is_the_decimal_fraction_rounded_up_and_per_layer() -> None:
    plist = params([(10, 3), (7, 1), (100, 1)])
    plist = [replace(plist[0], min_density=0.1), replace(plist[1], min_density=0.5), plist[2]]
    (group,) = mask_groups(plist, 0.5, 0.5)
    assert group.floors == (3, 4, 0)  # 0.1 x 30 is 3, not 4; 0.5 x 7 rounds up; no floor


def test_floors_the_target_cannot_leave_are_a_compile_error() -> None:
    import pytest

    from acdc_recipe.compiler import CompileError

    plist = [replace(p, min_density=0.2) for p in params([(10, 10), (10, 10)])]
    with pytest.raises(CompileError, match="min_density") as caught:
        mask_groups(plist, 0.9, 0.9)
    assert caught.value.path == ("sparsity", "min_density")
    lamp = params([(1, 2)] * 5, scope="lamp")
    with pytest.raises(CompileError, match="scope lamp") as caught:
        mask_groups(lamp, 0.9, 0.9)  # 10 weights keep 1, five layers need one each
    assert caught.value.path == ("sparsity", "target")


def test_min_per_channel_reserves_each_output_channel_and_caps_at_its_size() -> None:
    plist = params([(10, 3), (4, 2, 3, 3), (6, 8)])
    plist[2] = replace(plist[2], input_axis=0)  # Conv1D: 8 output channels of 6
    plist = [replace(p, min_per_channel=2) for p in plist[:2]] + [
        replace(plist[2], min_per_channel=7)
    ]
    (group,) = mask_groups(plist, 0.3, 0.3)
    assert group.channel_floors == (2, 2, 6)  # capped at the 6 weights of a channel
    assert group.floors == (20, 8, 48)  # channels x floor: 10 x 2, 4 x 2, 8 x 6
    off = [replace(p, min_per_channel=0) for p in plist]
    assert mask_groups(off, 0.3, 0.3)[0].floors == ()  # 0 is the paper's plain selection


def test_channel_floors_the_target_cannot_leave_are_a_compile_error() -> None:
    import pytest

    from acdc_recipe.compiler import CompileError

    plist = [replace(p, min_per_channel=3) for p in params([(10, 10), (10, 10)])]
    with pytest.raises(CompileError, match="min_per_channel") as caught:
        mask_groups(plist, 0.9, 0.9)  # 20 kept, 60 reserved
    assert caught.value.path == ("sparsity", "min_per_channel")
