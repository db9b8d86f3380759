"""2:4 semi-structured kernels: the checks, the training backward, and the CUDA paths.

The tests marked `cuda` need a GPU of compute capability 8.0 or newer and are skipped
without one; every other test runs on the CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acdc_recipe.compiler import compile
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import attach
from acdc_recipe.runtime.kernels.semi_structured import (
    SemiStructuredLinearFunction,
    semi_structured_problem,
    two_four,
)
from acdc_recipe.runtime.kernels.semi_structured_layer import SemiStructuredLinear
from acdc_recipe.runtime.masks import prune_mask_n_m

GPU_WITH_2_4 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
cuda = pytest.mark.skipif(not GPU_WITH_2_4, reason="needs a CUDA GPU of capability 8.0+")


def two_four_mask(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    weight = torch.randn(rows, columns)
    (mask,) = prune_mask_n_m([weight], 2, 4, rows * columns // 2)
    return mask


def test_the_runtimes_2_4_masks_are_what_the_kernels_compress():
    mask = two_four_mask(64, 128)
    assert two_four(mask)
    denser = mask.clone()
    denser[3, :4] = True  # one group of four keeps all four
    assert not two_four(denser)
    assert not two_four(torch.zeros(4, 6, dtype=torch.bool))  # columns not in fours
    assert two_four(torch.zeros(4, 8, dtype=torch.bool))  # fewer than 2 kept is still 2:4


@pytest.mark.parametrize(
    ("mask", "dtype", "capability", "says"),
    [
        (two_four_mask(64, 128), torch.bfloat16, None, "CUDA devices only"),
        (two_four_mask(64, 128), torch.bfloat16, (7, 5), "has 7.5"),
        (two_four_mask(64, 128), torch.float32, (9, 0), "float16 or bfloat16"),
        (two_four_mask(48, 128), torch.float16, (8, 0), "not a multiple of the 32x64"),
        (torch.ones(64, 128, dtype=torch.bool), torch.float16, (8, 0), "not 2:4"),
    ],
)
def test_each_reason_a_layer_cannot_take_2_4_kernels_is_named(mask, dtype, capability, says):
    assert says in semi_structured_problem(mask, dtype, capability)


def test_without_cusparselt_only_compute_capability_8_runs_2_4(monkeypatch):
    """torch builds its CUTLASS 2:4 kernels for compute capability 8.x only."""
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: False)
    mask = two_four_mask(64, 128)
    assert "capability 8.x only" in semi_structured_problem(mask, torch.bfloat16, (9, 0))
    assert semi_structured_problem(mask, torch.bfloat16, (8, 6)) is None


def test_a_2_4_layer_of_a_capable_gpu_has_no_problem(monkeypatch):
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    mask = two_four_mask(64, 128)
    assert semi_structured_problem(mask, torch.bfloat16, (9, 0)) is None
    assert semi_structured_problem(mask, None, (8, 0)) is None  # dtype not known yet


def test_the_2_4_training_backward_is_dense_linears_with_the_weight_grad_on_the_mask():
    """The backward never reads the compressed weight, so a dense stand-in for it on the CPU
    checks every gradient against autograd of F.linear."""
    mask = two_four_mask(32, 64).double()
    weight = (torch.randn(32, 64, dtype=torch.float64) * mask).requires_grad_()
    bias = torch.randn(32, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 7, 64, dtype=torch.float64, requires_grad=True)
    y = SemiStructuredLinearFunction.apply(x, weight, bias, weight.detach(), mask)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, weight, bias), grad)
    reference = F.linear(x, weight, bias)
    expected = torch.autograd.grad(reference, (x, weight, bias), grad)
    torch.testing.assert_close(y, reference, rtol=0, atol=0)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1] * mask)
    torch.testing.assert_close(got[2], expected[2])
    assert (got[1][mask == 0] == 0).all()


def test_a_2_4_inference_layer_off_a_gpu_computes_dense_and_says_why():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    with torch.no_grad():
        linear.weight.mul_(two_four_mask(64, 128))
    twin = SemiStructuredLinear.of(linear)
    x = torch.randn(3, 128)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), linear(x), rtol=0, atol=0)
    assert "CUDA devices only" in twin.problem
    assert set(twin.state_dict()) == set(linear.state_dict())


def test_a_2_4_inference_layer_made_in_inference_mode_runs():
    """Inference tensors have no version counter; the layer keys its compressed weight
    without one."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    x = torch.randn(2, 5, 128)
    with torch.inference_mode():
        twin = SemiStructuredLinear.of(linear).to(torch.float64)
        torch.testing.assert_close(twin(x.double()), linear.double()(x.double()))


def two_four_recipe() -> Recipe:
    return Recipe.model_validate(
        {
            "name": "two-four",
            "sparsity": {"target": 0.5, "pattern": "2:4"},
            "schedule": {"unit": "step", "phases": [{"sparse": 4}]},
        }
    )


def test_on_the_cpu_a_2_4_recipe_trains_on_csr_kernels_as_any_other():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = attach(compile(model, two_four_recipe()), optimizer, sparse_kernels="on")
    runtime.begin_step()
    model(torch.randn(16, 128)).sum().backward()
    assert runtime.kernels == {"0.weight": "sparse", "2.weight": "sparse"}


@cuda
@pytest.mark.parametrize("mode", ["on", "auto"])
def test_cuda_2_4_layers_train_with_bf16_autocast_and_keep_pruned_weights_zero(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64)).cuda()
    twin = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64)).cuda()
    twin.load_state_dict(model.state_dict())
    runs = []
    for network, kernels in ((model, mode), (twin, "off")):
        optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
        runtime = attach(compile(network, two_four_recipe()), optimizer, sparse_kernels=kernels)
        runs.append((network, optimizer, runtime))
    x = torch.randn(128, 256, device="cuda")
    for _ in range(4):
        for network, optimizer, runtime in runs:
            runtime.begin_step()
            optimizer.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = network(x).float().square().mean()
            loss.backward()
            optimizer.step()
    kernels = runs[0][2].kernels()
    assert set(kernels.values()) <= {"sparse", "dense"}
    if mode == "on":
        assert kernels == {"0.weight": "sparse", "2.weight": "sparse"}
    for name, parameter in model.named_parameters():
        if name.endswith("weight"):
            assert two_four(parameter.detach() != 0)
        torch.testing.assert_close(
            parameter, twin.get_parameter(name), rtol=2e-2, atol=2e-3
        )  # bf16 forwards on two kernels, four steps


@cuda
def test_cuda_2_4_inference_layer_compresses_and_agrees_with_dense():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128).cuda().half()
    with torch.no_grad():
        linear.weight.mul_(two_four_mask(128, 256).cuda())
    twin = SemiStructuredLinear.of(linear)
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), linear(x), rtol=1e-3, atol=1e-3)
    assert twin.problem is None and twin._compressed is not None
