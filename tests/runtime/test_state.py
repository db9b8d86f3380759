"""SparsityRuntime: phase actions at the right steps, masking, events, errors, compile/autocast."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from acdc_recipe.compiler import compile
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import attach
from acdc_recipe.runtime.events import (
    DenseSnapshot,
    MasksComputed,
    PhaseStarted,
    ScheduleEndedWarning,
)
from acdc_recipe.runtime.state import RuntimeStateError, SparsityRuntime


def make_recipe(phases, target=0.75, unit="step", policy="reset") -> Recipe:
    return Recipe.model_validate(
        {
            "name": "test",
            "sparsity": {"target": target},
            "schedule": {"unit": unit, "phases": phases},
            "optimizer_state": {"on_decompress": policy},
        }
    )


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
    )


def train_step(model, optimizer, generator, runtime=None, clip=None):
    x = torch.randn(8, 6, generator=generator)
    y = torch.randint(0, 3, (8,), generator=generator)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    if clip is not None:
        runtime.mask_gradients()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


PHASES = [{"dense": 3}, {"sparse": 4}, {"dense": 3}, {"sparse": 5}]


def setup(phases=PHASES, policy="reset", target=0.75, optimizer="sgd"):
    model = mlp()
    compiled = compile(model, make_recipe(phases, target=target, policy=policy))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    return model, compiled, opt, attach(compiled, opt)


def pruned_counts(compiled, runtime):
    """(exact zeros under the mask, mask zeros, the group's prune count)."""
    masks = runtime.masks
    under = sum(int((w[m == 0] == 0).sum()) for w, m in zip(compiled.parameters, masks))
    mask_zeros = sum(int((m == 0).sum()) for m in masks)
    total = sum(p.numel for p in compiled.params)
    prune = round(runtime.sparsity_target * total)  # one global selection
    return under, mask_zeros, prune


def test_phase_actions_and_events_follow_the_timeline():
    model, compiled, opt, runtime = setup()
    events, snapshot, masks = [], {}, []

    def listen(event):
        events.append(event)
        if isinstance(event, MasksComputed):
            masks.append([m.clone() for m in runtime.masks])
        if isinstance(event, DenseSnapshot):
            snapshot.update({k: v.clone() for k, v in model.state_dict().items()})

    runtime.add_listener(listen)
    gen = torch.Generator().manual_seed(0)
    before_snapshot = None
    for step in range(15):
        assert runtime.step == step
        if step == 10:
            before_snapshot = {k: v.clone() for k, v in model.state_dict().items()}
        train_step(model, opt, gen)
        sparse = 3 <= step < 7 or step >= 10
        assert (runtime.masks is not None) == sparse
        assert runtime.sparsity_target == (0.75 if sparse else 0.0)
        if sparse:
            under, mask_zeros, prune = pruned_counts(compiled, runtime)
            assert under == mask_zeros == prune
        elif step >= 7:  # dense, re-pruned later: only the last mask's bits are held, 1 B/weight
            assert [m.dtype for m in runtime._state.previous] == [torch.bool] * len(compiled.params)
    kinds = [(type(e).__name__, e.step) for e in events]
    assert kinds == [
        ("PhaseStarted", 0),
        ("PhaseStarted", 3),
        ("MasksComputed", 3),
        ("PhaseStarted", 7),
        ("DenseSnapshot", 10),
        ("PhaseStarted", 10),
        ("MasksComputed", 10),
    ]
    assert list(runtime.history) == events
    assert events[1] == PhaseStarted(3, 1, "sparse", 0.75)
    assert events[4] == DenseSnapshot(10, 2)
    # The snapshot holds the weights after step 9, before any mask: the dense half.
    assert all(torch.equal(snapshot[k], before_snapshot[k]) for k in snapshot)
    first, second = events[2], events[6]
    assert first.changed_fraction is None and first.per_layer_changed is None
    flips = [int((a != b).sum()) for a, b in zip(*masks)]
    total = sum(m.numel() for m in masks[0])
    assert second.changed_fraction == pytest.approx(sum(flips) / total)
    expected = {p.name: f / m.numel() for p, f, m in zip(compiled.params, flips, masks[0])}
    assert second.per_layer_changed == pytest.approx(expected)
    assert set(second.per_layer_changed) == {p.name for p in compiled.params}
    assert first.achieved_sparsity == 0.75 and second.seconds >= 0.0
    assert set(first.per_layer_sparsity) == {p.name for p in compiled.params}


def test_threshold_separates_kept_from_pruned():
    model, compiled, opt, runtime = setup([{"sparse": 2}])
    dense_weights = [p.detach().clone() for p in compiled.parameters]
    train_step(model, opt, torch.Generator().manual_seed(1))
    event = next(e for e in runtime.history if isinstance(e, MasksComputed))
    kept = torch.cat([w[m != 0].abs() for w, m in zip(dense_weights, runtime.masks)])
    pruned = torch.cat([w[m == 0].abs() for w, m in zip(dense_weights, runtime.masks)])
    assert event.threshold == float(pruned.max())
    assert float(kept.min()) >= event.threshold


def test_pruned_entries_move_again_in_the_dense_phase():
    model, compiled, opt, runtime = setup([{"sparse": 3}, {"dense": 3}])
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        train_step(model, opt, gen)
    pruned = [m == 0 for m in runtime.masks]
    train_step(model, opt, gen)
    assert runtime.masks is None
    # Reset momentum + zero weights: each pruned entry takes exactly one plain SGD step.
    for w, p in zip(compiled.parameters, pruned):
        assert torch.allclose(w[p], -0.1 * w.grad[p])
    moved = sum(int((w[p] != 0).sum()) for w, p in zip(compiled.parameters, pruned))
    assert moved > 0.4 * sum(int(p.sum()) for p in pruned)


def test_mask_gradients_before_clipping_sees_masked_gradients():
    model, compiled, opt, runtime = setup([{"sparse": 4}])
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    nn.functional.cross_entropy(model(x), y).backward()
    # Step 0 enters the sparse phase: mask_gradients runs that action first.
    runtime.mask_gradients()
    assert runtime.masks is not None
    for p, m in zip(compiled.parameters, runtime.masks):
        assert torch.equal(p.grad[m == 0], torch.zeros_like(p.grad[m == 0]))
    for _ in range(3):
        train_step(model, opt, gen, runtime=runtime, clip=0.5)
        under, mask_zeros, prune = pruned_counts(compiled, runtime)
        assert under == mask_zeros == prune


def test_parameters_without_gradients_are_skipped():
    model, compiled, opt, runtime = setup([{"sparse": 3}])
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        opt.zero_grad()
        hidden = model[1](model[0](torch.randn(8, 6, generator=gen)))
        hidden.sum().backward()  # only the first layer gets a gradient
        assert model[2].weight.grad is None
        opt.step()
        under, mask_zeros, prune = pruned_counts(compiled, runtime)
        assert under == mask_zeros == prune


def test_gradual_phase_recomputes_masks_on_the_curve():
    phases = [{"dense": 2}, {"gradual": 6, "initial": 0.2, "update": 2}, {"sparse": 2}]
    model, compiled, opt, runtime = setup(phases, target=0.8)
    gen = torch.Generator().manual_seed(5)
    for _ in range(10):
        train_step(model, opt, gen)
        if runtime.masks is not None:
            under, mask_zeros, prune = pruned_counts(compiled, runtime)
            assert under == mask_zeros == prune
    computed = [(e.step, e.target) for e in runtime.history if isinstance(e, MasksComputed)]
    phase = compiled.timeline.phases[1]
    assert [s for s, _ in computed] == [2, 4, 6, 8]
    assert [t for _, t in computed[:3]] == [phase.sparsity_at(s, 0.8) for s in (2, 4, 6)]
    assert computed[0][1] == pytest.approx(0.2) and computed[-1][1] == 0.8
    assert computed[0][1] < computed[1][1] < computed[2][1] <= 0.8


def test_epoch_schedule_needs_steps_per_epoch():
    model = mlp()
    compiled = compile(model, make_recipe([{"dense": 1}, {"sparse": 2}], unit="epoch"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for wrong in (None, 0, 2.5, True, "4"):
        with pytest.raises(RuntimeStateError, match="steps_per_epoch"):
            attach(compiled, opt, steps_per_epoch=wrong)
    runtime = attach(compiled, opt, steps_per_epoch=4)
    assert [(p.start, p.end) for p in runtime.timeline.phases] == [(0, 4), (4, 12)]
    gen = torch.Generator().manual_seed(6)
    for _ in range(5):
        train_step(model, opt, gen)
    assert runtime.phase.kind == "sparse" and runtime.phase_index == 1


def test_non_finite_weights_name_the_layer():
    model, compiled, opt, runtime = setup([{"dense": 1}, {"sparse": 2}])
    gen = torch.Generator().manual_seed(7)
    train_step(model, opt, gen)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"2\.weight"):
        train_step(model, opt, gen)


def test_non_finite_bias_of_a_pruned_layer_names_it():
    model, compiled, opt, runtime = setup([{"dense": 1}, {"sparse": 2}])
    gen = torch.Generator().manual_seed(7)
    train_step(model, opt, gen)
    model.double().float()  # new storage after attach: the check must follow the parameters
    with torch.no_grad():
        model[2].bias[0] = float("inf")
    with pytest.raises(ValueError, match=r"parameter '2\.bias' contains NaN or infinite"):
        train_step(model, opt, gen)
    assert runtime.masks is None  # nothing was masked from a diverged model


def test_the_bias_beside_a_tied_weight_is_checked_too():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(6, 6), nn.Linear(6, 6)
            self.head.weight = self.body.weight  # pruned once, filed under `body`

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    model = Tied()
    compiled = compile(model, make_recipe([{"sparse": 2}], target=0.5))
    runtime = attach(compiled, torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"'head\.bias'"):
        runtime.begin_step()


def test_one_runtime_per_optimizer_until_closed():
    _, compiled, opt, runtime = setup([{"sparse": 3}])
    with pytest.raises(RuntimeStateError, match="already has a sparsity runtime"):
        attach(compiled, opt)
    runtime.close()
    assert attach(compiled, opt).step == 0


def test_close_removes_the_hooks():
    model, compiled, opt, runtime = setup([{"sparse": 3}])
    runtime.close()
    train_step(model, opt, torch.Generator().manual_seed(8))
    assert runtime.step == 0 and runtime.masks is None
    assert all(int((p == 0).sum()) == 0 for p in compiled.parameters)


def test_state_dict_rejects_another_recipe():
    _, _, _, runtime = setup()
    state = runtime.state_dict()
    _, _, _, other = setup(target=0.5)
    with pytest.raises(RuntimeStateError, match="different recipe"):
        other.load_state_dict(state)
    with pytest.raises(RuntimeStateError, match="format_version"):
        runtime.load_state_dict({**state, "format_version": 99})


def test_state_dict_rejects_masks_of_another_shape():
    model, compiled, opt, runtime = setup([{"sparse": 3}])
    train_step(model, opt, torch.Generator().manual_seed(9))
    state = runtime.state_dict()
    state["masks"][1] = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(RuntimeStateError, match=r"2\.weight"):
        runtime.load_state_dict(state)


def test_compiled_model_does_not_recompile_at_phase_switches():
    compilations = []

    def counting_backend(gm, example_inputs):
        compilations.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model, compiled, opt, runtime = setup(
        [{"dense": 2}, {"sparse": 2}, {"dense": 2}, {"sparse": 2}]
    )
    fast = torch.compile(model, backend=counting_backend)
    gen = torch.Generator().manual_seed(10)
    for _ in range(8):
        train_step(fast, opt, gen)
    assert len(compilations) == 1
    assert sum(isinstance(e, MasksComputed) for e in runtime.history) == 2
    under, mask_zeros, prune = pruned_counts(compiled, runtime)
    assert under == mask_zeros == prune


def test_autocast_bf16_keeps_pruned_weights_zero():
    model, compiled, opt, runtime = setup([{"sparse": 4}], optimizer="adamw")
    gen = torch.Generator().manual_seed(11)
    for _ in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = torch.randn(8, 6, generator=gen)
            loss = model(x).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        under, mask_zeros, prune = pruned_counts(compiled, runtime)
        assert under == mask_zeros == prune


def test_runtime_is_the_attach_result():
    _, _, _, runtime = setup()
    assert isinstance(runtime, SparsityRuntime)


def test_gradients_after_a_skipped_step_are_masked_again():
    """A GradScaler skip: mask_gradients ran, optimizer.step did not; the next grads are new."""
    model, compiled, opt, runtime = setup([{"sparse": 4}], optimizer="adamw")
    gen = torch.Generator().manual_seed(12)
    for zero_to_none in (True, False):
        for _ in range(2):  # the first iteration's step is "skipped"
            opt.zero_grad(set_to_none=zero_to_none)
            model(torch.randn(8, 6, generator=gen)).pow(2).mean().backward()
            runtime.mask_gradients()
            for p, m in zip(compiled.parameters, runtime.masks):
                assert torch.equal(p.grad[m == 0], torch.zeros_like(p.grad[m == 0]))
        opt.step()
        for w, m in zip(compiled.parameters, runtime.masks):
            assert torch.equal(opt.state[w]["exp_avg"][m == 0], torch.zeros_like(w[m == 0]))
    assert runtime.step == 2


def test_begin_step_prunes_before_the_forward_pass():
    model, compiled, opt, runtime = setup([{"dense": 2}, {"sparse": 3}])
    gen = torch.Generator().manual_seed(11)
    snapshots = []
    runtime.add_listener(
        lambda e: (
            snapshots.append([w.clone() for w in compiled.parameters])
            if isinstance(e, DenseSnapshot)
            else None
        )
    )
    for _ in range(2):
        runtime.begin_step()
        train_step(model, opt, gen)
    dense_end = [w.clone() for w in compiled.parameters]
    runtime.begin_step()  # step 2 starts the sparse phase: masks now, before any forward
    assert runtime.masks is not None and runtime.phase.kind == "sparse"
    under, mask_zeros, prune = pruned_counts(compiled, runtime)
    assert under == mask_zeros == prune  # the forward below sees the sparse model
    assert len(snapshots) == 1 and all(map(torch.equal, snapshots[0], dense_end))
    train_step(model, opt, gen)  # the hooks do not run the actions again
    assert runtime.step == 3
    assert sum(isinstance(e, MasksComputed) for e in runtime.history) == 1
    assert pruned_counts(compiled, runtime)[0] == prune


def test_a_numpy_steps_per_epoch_is_saved_as_a_plain_int(tmp_path):
    """Checkpoints are read with weights_only=True, which refuses numpy scalars."""
    import numpy as np

    model = mlp()
    compiled = compile(model, make_recipe([{"dense": 1}, {"sparse": 2}], unit="epoch"))
    runtime = attach(compiled, torch.optim.SGD(model.parameters(), lr=0.1), np.int64(4))
    torch.save(runtime.state_dict(), tmp_path / "runtime.pt")
    state = torch.load(tmp_path / "runtime.pt", weights_only=True)
    assert type(state["steps_per_epoch"]) is int and state["steps_per_epoch"] == 4


def test_the_python_api_warns_when_a_mask_empties_a_layer():
    import warnings

    import acdc_recipe
    from acdc_recipe.runtime import EmptiedLayerWarning, LayersEmptied

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-4)  # far below the first layer: global pruning takes it all
    recipe = acdc_recipe.load_recipe_text(
        "name: t\nsparsity: {target: 0.9}\nschedule: {unit: step, phases: [{sparse: 2}]}\n"
    )
    compiled = acdc_recipe.compile(model, recipe)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = acdc_recipe.attach(compiled, optimizer)
    events = []
    runtime.add_listener(events.append)
    with pytest.warns(EmptiedLayerWarning, match="every weight of 2.weight is pruned") as seen:
        runtime.begin_step()
    assert "scope: lamp" in str(seen[0].message) and "min_density" in str(seen[0].message)
    assert "min_per_channel" in str(seen[0].message)
    assert [e for e in events if isinstance(e, LayersEmptied)] == [
        LayersEmptied(0, 0, ("2.weight",))
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.begin_step()  # no second warning for the same mask
    runtime.close()
    guarded = recipe.model_copy(
        update={"sparsity": recipe.sparsity.model_copy(update={"scope": "lamp"})}
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = acdc_recipe.attach(acdc_recipe.compile(model, guarded), optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.begin_step()  # scope: lamp leaves every layer some weights
    assert all(mask.count_nonzero() > 0 for mask in runtime.masks)


@pytest.mark.parametrize("per_channel", [None, 1])
def test_mask_computations_count_the_output_channels_they_empty(per_channel):
    import acdc_recipe
    from acdc_recipe.runtime import MasksComputed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[:5].mul_(1e-3)  # five rows far below the rest
    floor = "" if per_channel is None else f", min_per_channel: {per_channel}"
    recipe = acdc_recipe.load_recipe_text(
        f"name: t\nsparsity: {{target: 0.7{floor}}}\n"
        "schedule: {unit: step, phases: [{sparse: 2}]}\n"
    )
    compiled = acdc_recipe.compile(model, recipe)
    runtime = acdc_recipe.attach(compiled, torch.optim.SGD(model.parameters(), lr=0.1))
    events = []
    runtime.add_listener(events.append)
    runtime.begin_step()
    (computed,) = [e for e in events if isinstance(e, MasksComputed)]
    masks = runtime.masks
    empty_rows = {name: int((m.sum(1) == 0).sum()) for name, m in zip(compiled.plan.names, masks)}
    assert computed.emptied_channels == {k: v for k, v in empty_rows.items() if v}
    if per_channel is None:
        assert computed.emptied_channels["0.weight"] == 5
    else:
        assert computed.emptied_channels == {}


def test_a_loop_that_runs_past_the_schedule_is_warned_once():
    """`finished` ends a loop at the schedule's length; a step after it warns, once, and the
    last phase holds (its masks stay applied)."""
    model, compiled, opt, runtime = setup()
    generator = torch.Generator().manual_seed(0)
    steps = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleEndedWarning)
        while not runtime.finished:
            runtime.begin_step()
            train_step(model, opt, generator)
            steps += 1
    assert steps == runtime.timeline.length == 15
    with pytest.warns(
        ScheduleEndedWarning,
        match=r"has 15 optimizer steps \(D0-2, S3-6, D7-9, S10-14 steps\), and step 15",
    ):
        runtime.begin_step()
        train_step(model, opt, generator)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleEndedWarning)
        train_step(model, opt, generator)
    under, mask_zeros, prune = pruned_counts(compiled, runtime)
    assert under == mask_zeros == prune
