"""Sparse phases on sparse kernels: the runtime's exactness properties still hold, dense phases
are unchanged, the choice is an event and part of the state, torch.compile never recompiles."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from acdc_recipe.compiler import compile
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import attach
from acdc_recipe.runtime.events import KernelsChosen, kernels_note
from acdc_recipe.runtime.kernels import KernelSetupError
from acdc_recipe.runtime.state import RuntimeStateError

PHASES = [{"dense": 2}, {"sparse": 3}, {"dense": 2}, {"sparse": 3}]


def make_recipe(phases=PHASES, target=0.8) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "kernels",
            "sparsity": {"target": target},
            "schedule": {"unit": "step", "phases": phases},
        }
    )


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)
    )


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 5),
    )  # fmt: skip


INPUTS = {mlp: (16, 20), cnn: (4, 3, 6, 6)}


def setup(mode, factory=mlp, phases=PHASES, optimizer="sgd"):
    model = factory()
    compiled = compile(model, make_recipe(phases))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    return model, compiled, opt, attach(compiled, opt, sparse_kernels=mode)


def batches(factory, count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    shape = INPUTS[factory]
    return [
        (
            torch.randn(shape, generator=generator),
            torch.randint(0, 5, (shape[0],), generator=generator),
        )
        for _ in range(count)
    ]


def train(model, opt, runtime, data, network=None, check=None):
    for x, y in data:
        runtime.begin_step()
        opt.zero_grad()
        nn.functional.cross_entropy((network or model)(x), y).backward()
        if check is not None:
            check()
        opt.step()


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("factory", [mlp, cnn])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_pruned_gradients_and_weights_are_exactly_zero_on_sparse_kernels(factory, optimizer):
    model, compiled, opt, runtime = setup("on", factory, optimizer=optimizer)
    seen = []

    def check():  # after backward, before the runtime masks anything
        if runtime.masks is None:
            return
        for param, mask in zip(compiled.parameters, runtime.masks, strict=True):
            assert torch.equal(param.grad[mask == 0], torch.zeros_like(param.grad[mask == 0]))
        seen.append(dict(runtime.kernels))

    train(model, opt, runtime, batches(factory, 10), check=check)
    assert seen and all(set(k.values()) == {"sparse"} for k in seen)
    masks = runtime.masks
    prune = sum(g.prune for g in compiled.plan.updates[3][0].groups)
    assert sum(int((m == 0).sum()) for m in masks) == prune
    for param, mask in zip(compiled.parameters, masks, strict=True):
        assert torch.equal(param[mask == 0], torch.zeros_like(param[mask == 0]))


def test_sparse_kernels_agree_with_dense_kernels_within_fp32_tolerance():
    data = batches(mlp, 10)
    results = {}
    for mode in ("off", "on"):
        model, _, opt, runtime = setup(mode)
        snapshots = []
        for x, y in data:
            train(model, opt, runtime, [(x, y)])
            snapshots.append(weights(model))
        results[mode] = snapshots
    for step in (0, 1):  # the dense warm-up: the very same computation
        assert all(map(torch.equal, results["off"][step], results["on"][step]))
    drift = max(
        float((a - b).abs().max())
        for step in range(10)
        for a, b in zip(results["off"][step], results["on"][step], strict=True)
    )
    assert 0 < drift < 1e-5


def test_choices_are_announced_once_per_mask_and_read_in_a_sentence():
    model, compiled, opt, runtime = setup("auto")
    train(model, opt, runtime, batches(mlp, 10))
    chosen = [e for e in runtime.history if isinstance(e, KernelsChosen)]
    assert [e.step for e in chosen] == [2, 7]  # the first step of each sparse phase
    for event in chosen:
        assert set(event.kernels) == set(compiled.plan.names)
        assert set(event.kernels.values()) <= {"sparse", "dense"}
        assert set(event.timings) == set(compiled.plan.names)
        sparse = list(event.kernels.values()).count("sparse")
        assert kernels_note(event).startswith(f"{sparse} of 3 layers sparse, measured ")
    assert runtime.kernels == chosen[-1].kernels  # the last phase's masks are in force


def test_attention_weights_are_reported_without_a_kernel():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    compiled = compile(layer, make_recipe([{"sparse": 2}], target=0.5))
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    runtime = attach(compiled, opt, sparse_kernels="on")
    runtime.begin_step()
    layer(torch.randn(2, 4, 16)).sum().backward()
    opt.step()
    (event,) = [e for e in runtime.history if isinstance(e, KernelsChosen)]
    assert event.kernels["self_attn.in_proj_weight"] == "none"
    assert event.kernels["linear1.weight"] == "sparse"
    assert "without a sparse kernel" in kernels_note(event)


def test_compiled_model_runs_sparse_kernels_without_recompiling(monkeypatch):
    sampled = []
    original = torch.sparse.sampled_addmm
    monkeypatch.setattr(
        torch.sparse, "sampled_addmm", lambda *a, **k: sampled.append(1) or original(*a, **k)
    )
    compilations = []

    def counting_backend(gm, example_inputs):
        compilations.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model, compiled, opt, runtime = setup("on")
    fast = torch.compile(model, backend=counting_backend)
    per_step = []
    for x, y in batches(mlp, 10):
        train(model, opt, runtime, [(x, y)], network=fast)
        per_step.append(len(sampled))
    assert len(compilations) == 1
    # grad-weight runs on sampled_addmm in sparse steps (3 layers), never in dense ones
    assert [b - a for a, b in zip([0, *per_step], per_step)] == [0, 0, 3, 3, 3, 0, 0, 3, 3, 3]
    for param, mask in zip(compiled.parameters, runtime.masks, strict=True):
        assert torch.equal(param[mask == 0], torch.zeros_like(param[mask == 0]))


def test_the_choice_is_saved_and_a_restored_run_continues_bitwise_equal():
    data = batches(mlp, 7)  # to the end of the second dense phase: no second choice
    model, _, opt, runtime = setup("auto")
    train(model, opt, runtime, data[:4])  # mid sparse phase, kernels chosen at step 2
    state = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "runtime": runtime.state_dict()}
    )
    train(model, opt, runtime, data[4:])
    twin, _, twin_opt, twin_runtime = setup("auto")
    twin.load_state_dict(state["model"])
    twin_opt.load_state_dict(state["opt"])
    twin_runtime.load_state_dict(state["runtime"])
    assert twin_runtime.kernels == {
        name: layer["kernel"] for name, layer in state["runtime"]["kernels"]["layers"].items()
    }
    train(twin, twin_opt, twin_runtime, data[4:])
    assert all(map(torch.equal, weights(model), weights(twin)))
    assert twin_runtime.history == runtime.history  # no second timing of the restored phase


def test_close_gives_the_layers_their_own_forward_back():
    model, compiled, opt, runtime = setup("on")
    assert all("forward" in vars(model[i]) for i in (0, 2, 4))
    with pytest.raises(KernelSetupError, match="already has a forward"):
        attach(compiled, torch.optim.SGD(model.parameters(), lr=0.1), sparse_kernels="auto")
    runtime.close()
    assert not any("forward" in vars(m) or hasattr(m, "acdc_kernel") for m in model)
    attach(compiled, opt, sparse_kernels="auto").close()
    model[4].forward = model[4].forward  # a forward of the user's own: refused, nothing installed
    with pytest.raises(KernelSetupError, match="4.weight"):
        attach(compiled, opt, sparse_kernels="auto")
    assert not any(hasattr(m, "acdc_kernel") for m in model)


def test_an_unknown_mode_is_refused_with_the_choices():
    model = mlp()
    compiled = compile(model, make_recipe())
    with pytest.raises(RuntimeStateError, match="'off', 'auto', 'on'"):
        attach(compiled, torch.optim.SGD(model.parameters(), lr=0.1), sparse_kernels="fast")


def test_a_copied_model_computes_with_its_own_weights():
    model, _, opt, runtime = setup("on")
    train(model, opt, runtime, batches(mlp, 3))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(2)
    x = torch.randn(4, 20)
    plain = nn.Sequential(*[copy.deepcopy(m) for m in twin])
    for m in plain:
        vars(m).pop("forward", None)
        vars(m).pop("acdc_kernel", None)
    torch.testing.assert_close(twin(x), plain(x))


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_autocast_falls_back_to_dense_and_says_so(mode):
    model, compiled, opt, runtime = setup(mode, phases=[{"sparse": 2}])
    for x, y in batches(mlp, 2):
        runtime.begin_step()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(runtime.kernels.values()) == {"undecided"}
    (event,) = [e for e in runtime.history if isinstance(e, KernelsChosen)]
    assert "3 not run yet" in kernels_note(event)


def test_closing_the_runtime_lets_other_weights_compute_densely():
    model, compiled, opt, runtime = setup("on", phases=[{"dense": 2}, {"sparse": 3}])
    data = batches(mlp, 5)
    train(model, opt, runtime, data[:2])
    dense_twin = copy.deepcopy(model.state_dict())  # the end of the dense phase
    train(model, opt, runtime, data[2:])
    model.load_state_dict(dense_twin)
    x = data[0][0]
    plain = mlp()
    plain.load_state_dict(dense_twin)
    with torch.no_grad():
        assert not torch.allclose(model(x), plain(x))  # the CSR layers compute it masked
        runtime.close()  # what `acdc run` does before evaluating the dense twin
        assert torch.equal(model(x), plain(x))
    assert runtime.kernels == {} and not any(hasattr(m, "acdc_kernel") for m in model)


@pytest.mark.slow
def test_inductor_compiles_the_sparse_backward_of_a_transposed_input():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    compiled = compile(model, make_recipe([{"sparse": 3}], target=0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = attach(compiled, opt, sparse_kernels="on")
    fast = torch.compile(lambda h: model(h.transpose(1, 2)))  # a token-mixing style input
    for _ in range(3):
        runtime.begin_step()
        opt.zero_grad()
        h = torch.randn(2, 8, 5, requires_grad=True)  # its gradient passes the first layer
        fast(h).sum().backward()
        opt.step()
    assert set(runtime.kernels.values()) == {"sparse"}
    for param, mask in zip(compiled.parameters, runtime.masks, strict=True):
        assert torch.equal(param[mask == 0], torch.zeros_like(param[mask == 0]))


def test_a_compiled_conv_takes_an_unbatched_input():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    compiled = compile(model, make_recipe([{"sparse": 2}], target=0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = attach(compiled, opt, sparse_kernels="on")
    fast = torch.compile(model, backend="aot_eager")
    x = torch.randn(3, 6, 6)  # (C, H, W), as nn.Conv2d accepts
    runtime.begin_step()
    out = fast(x)
    assert out.shape == (2, 6, 6)
    torch.testing.assert_close(out, model(x))
