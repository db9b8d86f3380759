"""Tracing: leaves, train/eval graphs, identical forwards, the fallback, wrapper unwrapping."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from acdc_recipe.compiler.tracing import DualGraphModule, LeafTracer, trace, unwrap

from .conftest import AttentionNet, BranchyNet, SmallCNN, vision_model

VISION = {
    "resnet18": (64, False),
    "resnet50": (64, False),
    "mobilenet_v2": (64, False),
    "efficientnet_b0": (64, True),  # stochastic depth branches on self.training
    "vit_b_16": (224, False),
    "convnext_tiny": (64, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VISION))
def test_torchvision_forward_is_identical(name: str) -> None:
    torch.manual_seed(0)
    size, dual = VISION[name]
    model = vision_model(name).eval()
    result = trace(model)
    assert result.traced and result.error is None
    assert result.dual is dual
    module = result.graph_module
    assert not module.training  # follows the original's mode
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(module(x), model(x))
    # Shares the original parameters: no copies.
    originals = {id(p) for p in model.parameters()}
    assert {id(p) for p in module.parameters()} <= originals


def test_dual_graph_switches_with_mode() -> None:
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(weights=None)
    module = trace(model).graph_module
    assert isinstance(module, DualGraphModule)
    assert module.training and module.graph is module.train_graph
    module.eval()
    assert module.graph is module.eval_graph
    assert "stochastic_depth" in module.train_graph.python_code("self").src
    module.train()
    assert module.graph is module.train_graph


def test_standard_layers_are_leaves() -> None:
    graph = LeafTracer().trace(AttentionNet())
    called = [n.target for n in graph.nodes if n.op == "call_module"]
    assert called == ["attn", "norm", "head"]
    encoder = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert [n.target for n in LeafTracer().trace(encoder).nodes if n.op == "call_module"] == [
        "0",
        "1",
    ]


def test_data_dependent_model_falls_back() -> None:
    model = BranchyNet()
    result = trace(model)
    assert not result.traced
    assert result.graph_module is None
    assert "TraceError" in result.error and "control flow" in result.error
    assert result.root is model


def test_training_flags_are_restored() -> None:
    model = SmallCNN()
    model.bn1.eval()
    trace(model)
    assert model.training and not model.bn1.training


class Wrapper(nn.Module):
    """Same attribute structure as DistributedDataParallel: the model under `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_unwrap_ddp_like_and_compile_wrappers() -> None:
    model = SmallCNN()
    assert unwrap(Wrapper(model)) == (model, ("Wrapper.module",))
    compiled = torch.compile(model)
    assert unwrap(compiled) == (model, ("OptimizedModule._orig_mod",))
    root, removed = unwrap(Wrapper(torch.compile(model)))
    assert root is model and len(removed) == 2


def test_module_with_its_own_state_is_not_a_wrapper() -> None:
    holder = Wrapper(SmallCNN())
    holder.scale = nn.Parameter(torch.ones(1))
    assert unwrap(holder) == (holder, ())


def test_unwrap_real_ddp(tmp_path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = SmallCNN()
        ddp = nn.parallel.DistributedDataParallel(model)
        result = trace(ddp)
        assert result.root is model
        assert result.unwrapped == ("DistributedDataParallel.module",)
        assert result.traced
    finally:
        dist.destroy_process_group()
