"""Schedule lowering: the paper's timelines, exactly, from every schedule form."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acdc_recipe.language.schema import Schedule
from acdc_recipe.language.timeline import Phase, ScheduleError, lower


def ranges(timeline):
    return [(p.kind[0].upper(), p.start, p.end - 1) for p in timeline.phases]


def imagenet(epochs):
    """The reference ImageNet timeline, written out by hand from acdc-reference.md."""
    expected = [("D", 0, 9)]
    start = 10
    while start + 5 <= epochs - 25:
        expected.append(("S", start, start + 4))
        if start + 10 <= epochs - 25:
            expected.append(("D", start + 5, start + 9))
        start += 10
    return expected + [("D", epochs - 25, epochs - 16), ("S", epochs - 15, epochs - 1)]


def test_imagenet_100_epochs_every_boundary():
    timeline = lower(Schedule(acdc={"epochs": 100}))
    assert ranges(timeline) == [
        ("D", 0, 9), ("S", 10, 14), ("D", 15, 19), ("S", 20, 24), ("D", 25, 29),
        ("S", 30, 34), ("D", 35, 39), ("S", 40, 44), ("D", 45, 49), ("S", 50, 54),
        ("D", 55, 59), ("S", 60, 64), ("D", 65, 69), ("S", 70, 74), ("D", 75, 84),
        ("S", 85, 99),
    ]  # fmt: skip
    assert timeline.sparse_units == 50
    assert sum(p.kind == "sparse" for p in timeline.phases) == 8  # 7 blocks + final


@pytest.mark.parametrize("epochs, last", [(150, [("D", 125, 134), ("S", 135, 149)]),
                                          (200, [("D", 175, 184), ("S", 185, 199)])])  # fmt: skip
def test_imagenet_longer_variants_keep_the_pattern(epochs, last):
    timeline = lower(Schedule(acdc={"epochs": epochs}))
    assert ranges(timeline) == imagenet(epochs)
    assert ranges(timeline)[-2:] == last
    assert timeline.length == epochs


def test_cifar_200_epochs_every_boundary():
    macro = {"epochs": 200, "warmup": 10, "sparse": 20, "dense": 20, "last_dense": 20,
             "final_sparse": 30}  # fmt: skip
    assert ranges(lower(Schedule(acdc=macro))) == [
        ("D", 0, 9), ("S", 10, 29), ("D", 30, 49), ("S", 50, 69), ("D", 70, 89),
        ("S", 90, 109), ("D", 110, 129), ("S", 130, 149), ("D", 150, 169), ("S", 170, 199),
    ]  # fmt: skip


def test_three_forms_compile_to_the_identical_timeline():
    macro = lower(Schedule(acdc={"epochs": 100}))
    reference = lower(
        Schedule(
            transitions={
                "epochs": 100,
                "sparse_at": [*range(10, 71, 10), 85],
                "dense_at": [*range(15, 66, 10), 75],
            }
        )
    )
    explicit = lower(
        Schedule(
            phases=[
                {"dense": 10},
                {"repeat": 6, "phases": [{"sparse": 5}, {"dense": 5}]},
                {"sparse": 5},
                {"dense": 10},
                {"sparse": 15},
            ]
        )
    )
    assert macro == reference == explicit


CIFAR_MACRO = {"epochs": 200, "warmup": 10, "sparse": 20, "dense": 20, "last_dense": 20,
               "final_sparse": 30}  # fmt: skip


@pytest.mark.parametrize(
    "macro, sparse_at, dense_at",
    [
        ({"epochs": 150}, [*range(10, 121, 10), 135], [*range(15, 116, 10), 125]),
        ({"epochs": 200}, [*range(10, 171, 10), 185], [*range(15, 166, 10), 175]),
        (CIFAR_MACRO, [*range(10, 131, 40), 170], [*range(30, 111, 40), 150]),
    ],
)
def test_reference_switch_epochs_equal_the_macro(macro, sparse_at, dense_at):
    """The reference code's prune/restore epoch lists give the macro's timeline, every variant."""
    epochs = macro["epochs"]
    reference = {"epochs": epochs, "sparse_at": sparse_at, "dense_at": dense_at}
    assert lower(Schedule(transitions=reference)) == lower(Schedule(acdc=macro))


def test_phase_at_and_to_steps():
    timeline = lower(Schedule(acdc={"epochs": 100}))
    assert timeline.phase_at(9).kind == "dense"
    assert timeline.phase_at(10).kind == "sparse"
    assert timeline.phase_at(14).kind == "sparse"
    assert timeline.phase_at(15).kind == "dense"
    assert timeline.phase_at(99) == timeline.phases[-1]
    steps = timeline.to_steps(7)
    assert steps.unit == "step" and steps.length == 700
    assert steps.phase_at(69).kind == "dense" and steps.phase_at(70).kind == "sparse"
    assert [p.start for p in steps.phases] == [p.start * 7 for p in timeline.phases]
    assert timeline.last_dense == Phase("dense", 75, 85)


def test_macro_that_does_not_fit_names_the_epochs_that_would():
    with pytest.raises(ScheduleError, match=r"epochs that fit: 100 or 110"):
        lower(Schedule(acdc={"epochs": 104}))


def test_transitions_out_of_range_and_conflicts():
    with pytest.raises(ScheduleError, match="outside"):
        lower(Schedule(transitions={"epochs": 10, "sparse_at": [12]}))
    with pytest.raises(ScheduleError, match="both"):
        lower(Schedule(transitions={"epochs": 10, "sparse_at": [4], "dense_at": [4]}))


def test_gradual_phase_ramps_cubically_to_the_target():
    timeline = lower(Schedule(phases=[{"dense": 2}, {"gradual": 10, "update": 2}, {"sparse": 3}]))
    ramp = timeline.phases[1]
    values = [ramp.sparsity_at(pos, 0.9) for pos in range(ramp.start, ramp.end)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.9)
    assert values == sorted(values)
    assert values[0] == values[1] and values[2] == values[3]  # constant between updates
    assert values[2] == pytest.approx(0.9 * (1 - (1 - 1 / 4) ** 3))
    assert list(ramp.mask_updates()) == [2, 4, 6, 8, 10]
    assert timeline.phases[2].sparsity_at(13, 0.9) == 0.9


def test_ending_dense_is_warned():
    timeline = lower(Schedule(phases=[{"sparse": 2}, {"dense": 2}]))
    assert any("ends with a dense phase" in w for w in timeline.warnings())
    assert lower(Schedule(phases=[{"dense": 3}])).warnings() == []


@given(
    st.lists(
        st.tuples(st.sampled_from(["dense", "sparse", "gradual"]), st.integers(1, 9)),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 13),
)
def test_any_phase_list_is_contiguous_and_covers_its_length(items, steps_per_epoch):
    timeline = lower(Schedule(phases=[{kind: n} for kind, n in items]))
    assert timeline.length == sum(n for _, n in items)
    assert timeline.phases[0].start == 0
    for before, after in zip(timeline.phases, timeline.phases[1:]):
        assert before.end == after.start
        assert not (before.kind == after.kind == "dense")  # adjacent dense phases merge
    steps = timeline.to_steps(steps_per_epoch)
    for position in range(0, steps.length, max(1, steps.length // 50)):
        assert steps.phase_at(position).kind == timeline.phase_at(position // steps_per_epoch).kind


def test_schedules_that_expand_without_bound_are_refused_cheaply():
    with pytest.raises(ScheduleError, match="more than the 100000 allowed"):
        lower(Schedule(acdc={"epochs": 400_000_029, "sparse": 2, "dense": 2}))
    nested = {
        "repeat": 10**6,
        "phases": [{"repeat": 10**6, "phases": [{"sparse": 1}, {"dense": 1}]}],
    }
    with pytest.raises(ScheduleError, match="expands to"):
        lower(Schedule(phases=[nested]))
    gradual = [{"gradual": 10**6, "update": 1}]
    with pytest.raises(ScheduleError, match="computes masks 1000000 times"):
        lower(Schedule(unit="step", phases=gradual))
