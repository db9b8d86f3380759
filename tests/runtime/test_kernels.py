"""The sparse kernels on their own: CSR operands, forward and backward against dense autograd,
timing, and the inference layers."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from acdc_recipe.runtime.kernels import (
    KernelLayer,
    SparseLayerFunction,
    build_operands,
    form_of,
    time_paths,
)
from acdc_recipe.runtime.kernels.inference import (
    CsrLayer,
    eligible_layers,
    module_calls,
    sparse_inference_model,
)

LAYERS = [
    (lambda: nn.Linear(12, 7), (5, 12)),
    (lambda: nn.Linear(12, 7, bias=False), (2, 3, 12)),
    (lambda: nn.Conv2d(3, 6, 3, padding=1), (2, 3, 9, 9)),
    (lambda: nn.Conv2d(4, 5, (3, 2), stride=2, padding=(1, 0), dilation=(2, 1)), (3, 4, 11, 8)),
    (lambda: nn.Conv2d(6, 4, 1, bias=False), (2, 6, 5, 5)),
]


def masked(factory, seed: int = 0, density: float = 0.3):
    torch.manual_seed(seed)
    module = factory().double()
    mask = torch.rand(module.weight.shape) < density
    with torch.no_grad():
        module.weight.mul_(mask)
    return module, mask


@pytest.mark.parametrize("factory,shape", LAYERS)
def test_sparse_forward_and_backward_match_dense_autograd(factory, shape):
    module, mask = masked(factory)
    form = form_of(module)
    operands = build_operands(mask.reshape(mask.shape[0], -1), module.weight.dtype)
    operands.refresh_(module.weight)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    dense = module(x)
    grad = torch.randn_like(dense)
    expected = torch.autograd.grad(dense, [x, *module.parameters()], grad)
    sparse = SparseLayerFunction.apply(x, module.weight, module.bias, form, operands)
    got = torch.autograd.grad(sparse, [x, *module.parameters()], grad)
    torch.testing.assert_close(sparse, dense)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
    torch.testing.assert_close(got[0], expected[0])
    assert torch.equal(got[1][~mask], torch.zeros_like(got[1][~mask]))  # exactly, not close
    torch.testing.assert_close(got[1][mask], expected[1][mask])
    if module.bias is not None:
        torch.testing.assert_close(got[2], expected[2])


def test_operands_follow_the_weight_only_when_it_changed():
    module, mask = masked(lambda: nn.Linear(8, 6))
    operands = build_operands(mask, torch.float64)
    operands.refresh_(module.weight)
    assert torch.equal(operands.weight.to_dense(), module.weight.detach())
    assert torch.equal(operands.transposed.to_dense(), module.weight.detach().t())
    synced = operands.synced
    operands.refresh_(module.weight)
    assert operands.synced == synced
    with torch.no_grad():
        module.weight.mul_(2)  # an optimizer step moves the version counter the same way
    operands.refresh_(module.weight)
    assert torch.equal(operands.weight.to_dense(), module.weight.detach())
    assert torch.equal(operands.transposed.to_dense(), module.weight.detach().t())


def test_a_kept_weight_that_is_zero_keeps_its_place_in_the_structure():
    mask = torch.ones(3, 4, dtype=torch.bool)
    operands = build_operands(mask, torch.float32)
    operands.refresh_(torch.zeros(3, 4))
    assert operands.nnz == 12 and operands.density == 1.0


def test_only_plain_linear_and_conv2d_layers_have_a_form():
    class OwnForward(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert form_of(nn.Linear(3, 4)) is not None
    assert form_of(nn.Conv2d(3, 4, 3, groups=1)) is not None
    for other in (
        OwnForward(3, 4),
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Conv2d(3, 4, 3, padding="same"),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv1d(3, 4, 3),
        nn.Embedding(5, 3),
    ):
        assert form_of(other) is None


def test_timing_runs_both_calls_interleaved_and_reports_milliseconds():
    calls = []
    timing = time_paths(lambda: calls.append("d"), lambda: calls.append("s"), torch.device("cpu"))
    assert set(calls) == {"d", "s"} and calls[:2] == ["d", "s"]
    assert timing.dense_ms > 0 and timing.sparse_ms > 0
    assert timing.speedup == pytest.approx(timing.dense_ms / timing.sparse_ms)


def test_a_layer_chooses_by_timing_on_its_first_training_call():
    module, mask = masked(lambda: nn.Linear(256, 256), density=0.02)
    module.float()
    layer = KernelLayer("weight", form_of(module), "auto")
    layer.use_mask(mask, module.weight)
    x = torch.randn(128, 256)
    with torch.no_grad():
        assert layer.path(x, module.weight, module.bias, training=False) == "dense"
    assert layer.kernel is None  # evaluation does not choose
    layer.path(x, module.weight, module.bias, training=True)
    assert layer.kernel in ("sparse", "dense") and layer.timing is not None
    assert (layer.kernel == "sparse") == layer.timing.sparse_wins
    layer.drop()
    assert layer.operands is None and layer.kernel is None


def test_a_copied_layer_has_its_own_slot_and_operands():
    module, mask = masked(lambda: nn.Linear(8, 6))
    layer = KernelLayer("weight", form_of(module), "on")
    layer.use_mask(mask, module.weight)
    x = torch.randn(3, 8, dtype=torch.float64)
    layer.path(x, module.weight, module.bias, training=True)  # `on` chooses here
    twin = copy.deepcopy(layer)
    assert twin.slot != layer.slot and twin.kernel == "sparse"
    assert twin.operands is not layer.operands
    assert torch.equal(twin.operands.flat_index, layer.operands.flat_index)


@pytest.mark.parametrize("factory,shape", LAYERS)
def test_csr_inference_layers_compute_the_masked_layer(factory, shape):
    module, _ = masked(factory, density=0.2)
    twin = CsrLayer.of(module)
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), module(x))
    assert torch.equal(twin.dense_weight(), module.weight.detach())
    assert twin.weight_values.numel() == int((module.weight != 0).sum())
    assert "weight" not in dict(twin.named_buffers())  # nothing dense is kept


def test_an_encoder_layer_calls_its_csr_linear_in_inference():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = layer(x)
        layer.linear1 = CsrLayer.of(layer.linear1)
        calls = []
        layer.linear1.register_forward_hook(lambda *a: calls.append(1))
        torch.testing.assert_close(layer(x), expected)
    assert calls  # the fast path, which would skip it, was not taken


def test_inference_choice_times_every_eligible_layer_on_its_real_input():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    ).eval()
    layers = eligible_layers(model)
    assert list(layers) == ["0", "3"]
    x = torch.randn(4, 3, 6, 6)
    calls = module_calls(model, lambda: model(x))
    assert calls["0"][0][0].shape == (4, 3, 6, 6) and calls["3"][0][0].shape == (4, 288)
    sparse, choices = sparse_inference_model(model, layers, lambda m: m(x))
    assert [c.name for c in choices] == ["0", "3"]
    assert all(c.timing is not None for c in choices)
    for choice in choices:
        wins = choice.timing.sparse_wins and choice.reverted_by is None
        assert (choice.kernel == "csr") == wins
        assert isinstance(sparse.get_submodule(choice.name), CsrLayer) == wins
    assert not any(isinstance(m, CsrLayer) for m in model.modules())  # the original is kept


class Picky(nn.Module):
    """Computes slower as a whole when its layer is a CSR one (as an encoder's fused path)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, 1024)

    def forward(self, x):
        if isinstance(self.fc, CsrLayer):
            time.sleep(0.02)
        return self.fc(x)


def test_a_module_slower_as_a_whole_with_csr_layers_keeps_them_dense():
    torch.manual_seed(0)
    model = nn.Sequential(Picky()).eval()
    with torch.no_grad():
        model[0].fc.weight.mul_(torch.rand(1024, 1024) < 0.01)
    x = torch.randn(64, 1024)
    sparse, (choice,) = sparse_inference_model(model, eligible_layers(model), lambda m: m(x))
    assert choice.timing.sparse_wins  # the layer alone is faster on CSR (1% dense, batch 64)
    assert choice.kernel == "dense" and choice.reverted_by == "0"
    assert not isinstance(sparse[0].fc, CsrLayer)


def test_attention_projections_are_not_eligible():
    model = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    assert set(eligible_layers(model)) == {"linear1", "linear2"}
