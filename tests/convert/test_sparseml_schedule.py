"""SparseML recipes convert to SparseML's own timeline, epoch by epoch.

The expected timeline comes from a simulation written here, apart from the converter: it steps
through training as SparseML's scheduled modifiers do (start pending, an update every
`update_frequency` epochs after the last one, end pending, `leave_enabled`), with the ACDC
modifier's phase rule and its end-epoch adjustment as SparseML's source states them.
"""

from __future__ import annotations

import itertools
import math

import pytest

from acdc_recipe.convert import ConversionError, convert_text
from acdc_recipe.language.timeline import lower

DOC_RECIPE = """\
<!-- SparseML's AC/DC recipe card (ac_dc_recipy.md, first version) -->
---
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 100
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 5
    lr_func: linear
    init_lr: 0.0512
    final_lr: 0.256
  - !LearningRateFunctionModifier
    start_epoch: 5
    end_epoch: 100
    lr_func: cosine
    init_lr: 0.256
    final_lr: 0.0512
pruning_modifiers:
  - !ACDCPruningModifier
    compression_sparsity: 0.90
    start_epoch: 5
    end_epoch: 85
    update_frequency: 5
    params: ['re:.*conv*', 're:.*.fc.weight']
    global_sparsity: True
  - !GMPruningModifier
    init_sparsity: 0.90
    final_sparsity: 0.90
    start_epoch: 85
    end_epoch: 100
    update_frequency: 1
    leave_enabled: True
    params: ['re:.*conv*', 're:.*.fc.weight']
    global_sparsity: True
---
python integrations/pytorch/train.py --arch-key mobilenet --dataset imagenet
"""
DOC_RECIPE_V2 = """\
---
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 100
pruning_modifiers:
  - !LegacyGMPruningModifier
       init_sparsity: 0.9
       final_sparsity: 0.9
       start_epoch: 85
       end_epoch: 100
       update_frequency: 1
       params: ['re:.*conv*', 're:.*fc.weight*']
       global_sparsity: True
  - !ACDCPruningModifier
      compression_sparsity: 0.9
      start_epoch: 5
      end_epoch: 75
      update_frequency: 5
      params: ['re:.*conv*', 're:.*fc.weight*']
      global_sparsity: True
---
"""
GMP_RECIPE = """\
version: 1.1.0
num_epochs: 12
init_sparsity: 0.05
final_sparsity: 0.8
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !SetLearningRateModifier
    start_epoch: 0.0
    learning_rate: 0.008
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: eval(init_sparsity)
    final_sparsity: eval(final_sparsity)
    start_epoch: 1.0
    end_epoch: 9.0
    update_frequency: 2.0
    inter_func: cubic
"""


class SimulatedModifier:
    """A SparseML scheduled update modifier, stepped as its training loop steps it.

    Transliterated from sparseml/pytorch/sparsification/modifier.py (`ScheduledModifier.
    start_pending`, `end_pending`, `scheduled_update`; `ScheduledUpdateModifier.update_ready`,
    `update`) and pruning/modifier_pruning_base.py (`BasePruningModifier.check_mask_update`:
    masks at `get_applied_sparsity_for_epoch`, then `pruning_end(leave_enabled)` when the end
    is pending with the modifier already started)."""

    def __init__(self, start, end, frequency, sparsity_at, leave_enabled=True):
        self.start, self.end, self.frequency = start, end, frequency
        self.sparsity_at, self.leave_enabled = sparsity_at, leave_enabled
        self.started = self.ended = False
        self.last_update = -1.0
        self.mask = None  # sparsity of the masks in force, None before any

    def start_pending(self, epoch):
        return not self.started and not self.ended and epoch >= self.start

    def end_pending(self, epoch):
        return not self.ended and self.started and epoch >= self.end

    def update_ready(self, epoch):
        periodic = (
            self.started
            and epoch > self.start
            and not self.ended
            and (self.frequency == -1 or (self.last_update >= 0
                                          and epoch >= self.last_update + self.frequency))
        )  # fmt: skip
        return self.start_pending(epoch) or self.end_pending(epoch) or periodic

    def step(self, epoch: float) -> float | None:
        """Run the modifier's checks at `epoch`; the sparsity it chose masks at, if it did."""
        if not self.update_ready(epoch):
            return None
        self.last_update = epoch  # ScheduledUpdateModifier.update
        chosen = self.mask = self.sparsity_at(epoch)  # check_mask_update
        if self.end_pending(epoch) and not self.leave_enabled:
            self.mask = None  # pruning_end(leave_enabled=False)
        if self.start_pending(epoch):  # scheduled_update, after update
            self.started = True
        if self.end_pending(epoch):
            self.ended = True
        return chosen


def acdc_modifier(start, end, frequency, sparsity, version="latest", leave_enabled=True):
    """SparseML's ACDCPruningModifier (modifier_pruning_acdc.py). From 0.12 on,
    `get_applied_sparsity_for_epoch` is dense iff phase floor((epoch - start) / frequency)
    is even and `end_epoch - update_frequency > epoch`. In 0.11, `_finish_on_compression`
    first moved the end back to just after the last epoch of [start, end) whose
    floor(epoch / frequency) is even (to start if there is none), and a phase was dense iff
    it was even."""
    if version == "0.11":
        even = [epoch for epoch in range(start, end) if math.floor(epoch / frequency) % 2 == 0]
        end = even[-1] + 1 if even else min(start, end)

    def sparsity_at(epoch):
        even = math.floor((epoch - start) / frequency) % 2 == 0
        dense = even if version == "0.11" else even and end - frequency > epoch
        return 0.0 if dense else sparsity

    return SimulatedModifier(start, end, frequency, sparsity_at, leave_enabled)


def simulate(modifiers, epochs, steps_per_epoch=3, per_step=False):
    """Per epoch (per step with `per_step`): (sparsity in force, whether masks were chosen
    at its start); the epoch of a step is `epoch + batch / steps_per_epoch`."""
    timeline = []
    for epoch in range(epochs):
        chosen = False
        for batch in range(steps_per_epoch):
            now = epoch + batch / steps_per_epoch
            picks = [m.step(now) for m in modifiers]
            updated = any(p is not None for p in picks)
            held = [m.mask for m in modifiers if m.mask]
            if per_step:
                timeline.append((max(held) if held else 0.0, updated and bool(held)))
                continue
            if updated:
                assert batch == 0, "whole-epoch recipes change masks only at epoch starts"
                chosen = bool(held)  # a mask at sparsity 0 is no mask
        held = [m.mask for m in modifiers if m.mask]
        if not per_step:
            timeline.append((max(held) if held else 0.0, chosen))
    return timeline


def converted(text, source="recipe.yaml", **options):
    recipe = convert_text(text, source, **options).recipe
    timeline = lower(recipe.schedule)
    updates = {u for p in timeline.phases for u in p.mask_updates()}
    default = recipe.sparsity.target if recipe.sparsity else 0.0
    rows = [
        (timeline.phase_at(e).sparsity_at(e, default), e in updates) for e in range(timeline.length)
    ]
    return rows, timeline


def acdc_text(start, end, frequency, epochs, sparsity=0.75):
    return (
        "modifiers:\n"
        f"  - !EpochRangeModifier {{start_epoch: 0, end_epoch: {epochs}}}\n"
        "  - !ACDCPruningModifier\n"
        f"    compression_sparsity: {sparsity}\n"
        f"    start_epoch: {start}\n    end_epoch: {end}\n    update_frequency: {frequency}\n"
        "    params: __ALL_PRUNABLE__\n"
    )


CASES = [
    (start, frequency, end)
    for start, frequency in itertools.product(range(0, 7), range(1, 5))
    for end in range(start, start + 4 * frequency + 3, max(1, frequency // 2))
]


@pytest.mark.parametrize("version", ["latest", "0.11"])
@pytest.mark.parametrize("start,frequency,end", CASES)
def test_acdc_modifier_converts_to_sparsemls_timeline_epoch_by_epoch(
    start, frequency, end, version
):
    epochs = end + 2 * frequency + 1
    expected = simulate([acdc_modifier(start, end, frequency, 0.75, version)], epochs)
    rows, _ = converted(acdc_text(start, end, frequency, epochs), sparseml_version=version)
    assert rows == expected


@pytest.mark.parametrize("leave_enabled", [True, False])
@pytest.mark.parametrize("start,frequency,end", [(0, 2, 10), (5, 5, 75), (3, 2, 12), (0, 1, 1)])
def test_leave_enabled_false_drops_the_mask_chosen_at_the_end_and_keeps_every_sparse_phase(
    start, frequency, end, leave_enabled
):
    epochs = end + 2 * frequency + 3
    text = acdc_text(start, end, frequency, epochs) + f"    leave_enabled: {leave_enabled}\n"
    expected = simulate([acdc_modifier(start, end, frequency, 0.75, "latest", leave_enabled)],
                        epochs)  # fmt: skip
    rows, _ = converted(text)
    assert rows == expected
    # From end - frequency the modifier is compressed (SparseML's own lifecycle test asserts
    # it ends on compression); without leave_enabled the masks go at end_epoch.
    assert rows[end - 1][0] == 0.75
    assert rows[end][0] == (0.75 if leave_enabled else 0.0)


def test_sparsemls_documented_acdc_example_ends_compressed_after_all_its_epochs():
    """The ACDCPruningModifier example of SparseML's docs (docs/.../recipes.md): 0 -> 20,
    update_frequency 1, compression 0.8, no EpochRangeModifier, so the run is 20 epochs."""
    text = """\
num_pruning_epochs: 20.0
pruning_modifiers:
  - !ACDCPruningModifier
    start_epoch: 0.0
    params: __ALL_PRUNABLE__
    end_epoch: eval(num_pruning_epochs)
    update_frequency: 1.0
    mask_type: unstructured
    global_sparsity: True
    leave_enabled: True
    compression_sparsity: 0.8
"""
    rows, timeline = converted(text)
    assert rows == simulate([acdc_modifier(0, 20, 1, 0.8)], 20)
    assert timeline.length == 20 and timeline.phases[-1].kind == "sparse"
    assert timeline.compact().startswith("D0-0, S1-1, D2-2") and timeline.compact().endswith(
        "D18-18, S19-19"
    )
    # 0.11 moved end_epoch back to 19, so SparseML 0.11's run was one epoch shorter and its
    # last epoch, 18, dense.
    rows, timeline = converted(text, sparseml_version="0.11")
    assert rows == simulate([acdc_modifier(0, 20, 1, 0.8, "0.11")], 19)
    assert timeline.length == 19 and timeline.phases[-1].kind == "dense"


def test_a_one_epoch_layerwise_acdc_recipe_prunes_from_its_first_epoch():
    """0 -> 1 with update_frequency 1: epoch 0 is within the last update_frequency epochs
    before end_epoch, so it is compressed (the rule from 0.12 on); 0.11 pruned nothing."""
    text = """\
modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 1.0}
  - !ACDCPruningModifier
    compression_sparsity: 0.9
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 1.0
    params: ['re:.*weight']
    global_sparsity: False
"""
    recipe = convert_text(text, "recipe.yaml").recipe
    rows, _ = converted(text)
    assert rows == simulate([acdc_modifier(0, 1, 1, 0.9)], 1) == [(0.9, True)]
    assert (recipe.sparsity.target, recipe.sparsity.scope) == (0.9, "uniform")
    legacy = convert_text(text, "recipe.yaml", sparseml_version="0.11")
    assert legacy.recipe.sparsity is None
    assert "choose no mask within the run" in " ".join(i.text for i in legacy.report.mapped)


@pytest.mark.parametrize("version", ["latest", "0.11"])
def test_the_run_lasts_until_the_last_modifier_ends_as_in_sparseml(version):
    _, timeline = converted(acdc_text(2, 30, 3, 14), sparseml_version=version)  # EpochRange: 14
    # 0.11 moved the ACDC modifier's end, 30, back to 27; later releases keep it.
    assert timeline.length == (27 if version == "0.11" else 30)


def test_epochs_option_cuts_the_run_and_keeps_its_first_epochs():
    expected = simulate([acdc_modifier(2, 30, 3, 0.75)], 14)
    rows, timeline = converted(acdc_text(2, 30, 3, 14), epochs=14)
    assert timeline.length == 14 and rows == expected


def test_sparsemls_ac_dc_recipe_card_keeps_its_timeline_phase_by_phase():
    rows, timeline = converted(DOC_RECIPE, "ac_dc_recipy.md")
    acdc = acdc_modifier(5, 85, 5, 0.9)
    gmp = SimulatedModifier(85, 100, 1, lambda epoch: 0.9)
    assert rows == simulate([acdc, gmp], 100)
    # D0-9, then 5-epoch blocks S10-14 ... S80-84 (80 is within the last 5 epochs before 85,
    # so compressed); at 85 both modifiers choose 0.9 masks, the GMP one again every epoch.
    assert timeline.compact() == (
        "D0-9, " + ", ".join(
            f"S{s}-{s + 4}, D{s + 5}-{s + 9}" for s in range(10, 71, 10)
        ) + ", S80-84, " + ", ".join(f"S{e}-{e}" for e in range(85, 100))
    )  # fmt: skip


@pytest.mark.parametrize("version", ["latest", "0.11"])
def test_the_second_recipe_card_holds_the_mask_where_0_11_had_a_last_dense_phase(version):
    rows, timeline = converted(DOC_RECIPE_V2, "ac_dc_recipy.md", sparseml_version=version)
    acdc = acdc_modifier(5, 75, 5, 0.9, version)
    gmp = SimulatedModifier(85, 100, 1, lambda epoch: 0.9)
    assert rows == simulate([gmp, acdc], 100)
    assert timeline.compact().startswith("D0-9, S10-14, D15-19")
    if version == "0.11":  # at 75 (its end) 0.11 applies phase 14, dense, and holds it
        assert "S60-64, D65-69, S70-74, D75-84, S85-85, S86-86" in timeline.compact()
    else:  # from 70 = 75 - 5 every update is compressed, and the 0.9 mask chosen at 75 held
        assert "S60-64, D65-69, S70-74, S75-84, S85-85, S86-86" in timeline.compact()


def interpolate_cubic(epoch, start, end, initial, final):
    progress = (epoch - start) / (end - start)
    return initial + (1 - (1 - progress) ** 3) * (final - initial)


def test_gmp_ramp_converts_to_one_sparse_phase_per_update_at_sparsemls_sparsity():
    recipe = convert_text(GMP_RECIPE, "gmp.yaml").recipe
    timeline = lower(recipe.schedule)
    updates = [(p.start, p.sparsity_at(p.start, recipe.sparsity.target)) for p in timeline.phases
               if p.kind != "dense"]  # fmt: skip
    expected = [(e, interpolate_cubic(e, 1, 9, 0.05, 0.8)) for e in (1, 3, 5, 7)] + [(9, 0.8)]
    assert [e for e, _ in updates] == [e for e, _ in expected]
    assert [s for _, s in updates] == pytest.approx([s for _, s in expected], abs=1e-12)
    assert timeline.phases[0].kind == "dense" and timeline.phases[0].end == 1
    assert timeline.length == 12 and timeline.phases[-1].end == 12
    assert recipe.sparsity.scope == "uniform"  # GMPruningModifier prunes layer-wise by default
    assert "Linear" in recipe.sparsity.prunable and "MultiheadAttention" not in (
        recipe.sparsity.prunable
    )


def test_steps_per_epoch_leaves_a_whole_epoch_schedule_in_epochs():
    conversion = convert_text(GMP_RECIPE, "gmp.yaml", steps_per_epoch=7)
    assert conversion.recipe == convert_text(GMP_RECIPE, "gmp.yaml").recipe
    assert any(item.where == "--steps-per-epoch" for item in conversion.report.mapped)


def test_masks_updated_inside_epochs_need_the_steps_per_epoch():
    text = GMP_RECIPE.replace("update_frequency: 2.0", "update_frequency: 0.5")
    with pytest.raises(ConversionError, match="give --steps-per-epoch N"):
        convert_text(text, "gmp.yaml")


@pytest.mark.parametrize("frequency, per_epoch", [(0.5, 3), (0.5, 4), (0.375, 8), (-1, 2)])
def test_a_fractional_update_frequency_converts_step_by_step_in_steps(frequency, per_epoch):
    """SparseML updates a GMP modifier at the first step whose epoch (`e + batch / steps`)
    reaches the last update + update_frequency (every step for -1), at the sparsity
    `interpolate` gives for that fractional epoch."""
    text = GMP_RECIPE.replace("update_frequency: 2.0", f"update_frequency: {frequency}")
    conversion = convert_text(text, "gmp.yaml", steps_per_epoch=per_epoch)
    rows, timeline = converted(text, "gmp.yaml", steps_per_epoch=per_epoch)
    gmp = SimulatedModifier(
        1, 9, frequency, lambda epoch: interpolate_cubic(min(epoch, 9), 1, 9, 0.05, 0.8)
    )
    expected = simulate([gmp], 12, steps_per_epoch=per_epoch, per_step=True)
    assert conversion.recipe.schedule.unit == "step" and timeline.length == 12 * per_epoch
    assert [chosen for _, chosen in rows] == [chosen for _, chosen in expected]
    assert [s for s, _ in rows] == pytest.approx([s for s, _ in expected], abs=1e-12)
    assert any("steps per epoch" in item.text for item in conversion.report.mapped)


GMP_CARD = """\
---
# General Epoch/LR variables
num_epochs: &num_epochs 10.0
init_lr: &init_lr 0.0028
lr_step_epochs: &lr_step_epochs [6, 8]

# Pruning variables
pruning_start_epoch: &pruning_start_epoch 0.0
pruning_end_epoch: &pruning_end_epoch 8.0
pruning_update_frequency: &pruning_update_frequency 1.0
init_sparsity: &init_sparsity 0.05
final_sparsity: &final_sparsity 0.8
pruning_mask_type: &pruning_mask_type unstructured

training_modifiers:
  - !EpochRangeModifier
    end_epoch: *num_epochs
    start_epoch: 0.0

  - !LearningRateModifier
    constant_logging: False
    end_epoch: -1.0
    init_lr: *init_lr
    log_types: __ALL__
    lr_class: MultiStepLR
    lr_kwargs: {'milestones': *lr_step_epochs, 'gamma': 0.1}
    start_epoch: 0.0
    update_frequency: -1.0

pruning_modifiers:
  - !GMPruningModifier
    end_epoch: *pruning_end_epoch
    final_sparsity: *final_sparsity
    init_sparsity: *init_sparsity
    inter_func: cubic
    leave_enabled: True
    log_types: __ALL__
    mask_type: *pruning_mask_type
    params: __ALL_PRUNABLE__
    start_epoch: *pruning_start_epoch
    update_frequency: *pruning_update_frequency
---
"""


def test_sparsemls_gmp_recipe_card_converts_update_by_update_and_key_by_key():
    conversion = convert_text(GMP_CARD, "pruning-gmp.md", model="resnet50")
    recipe = conversion.recipe
    gmp = SimulatedModifier(
        0, 8, 1, lambda epoch: interpolate_cubic(min(epoch, 8), 0, 8, 0.05, 0.8)
    )
    rows, timeline = converted(GMP_CARD, "pruning-gmp.md")
    expected = simulate([gmp], 10)
    assert [chosen for _, chosen in rows] == [chosen for _, chosen in expected]
    assert [s for s, _ in rows] == pytest.approx([s for s, _ in expected], abs=1e-12)
    assert [p.start for p in timeline.phases] == list(range(9))  # a mask at 0, 1, ..., 8
    assert timeline.phases[-1].end == 10
    assert (recipe.sparsity.target, recipe.sparsity.scope) == (0.8, "uniform")
    assert recipe.sparsity.pattern == "unstructured"
    assert recipe.optimizer_state.on_decompress == "keep"  # no ACDC modifier resets anything
    lr = recipe.train.lr_schedule
    assert recipe.train.optimizer.lr == 0.0028
    assert (lr.name, lr.milestones, lr.gamma) == ("multistep", (6, 8), 0.1)
    assert conversion.report.no_equivalent == []
