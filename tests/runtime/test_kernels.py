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
    KERNELS,
    CsrAttention,
    CsrLayer,
    Dispatch,
    eligible_layers,
    module_calls,
    sparse_inference_model,
    without_fused_paths,
)
from acdc_recipe.runtime.kernels.timing import time_calls

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


def test_every_call_timed_leads_a_round_in_turn():
    calls = []
    times = time_calls([lambda k=k: calls.append(k) for k in "abc"], torch.device("cpu"), rounds=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    blocks = [k for i, k in enumerate(calls) if i == 0 or calls[i - 1] != k]  # repeats merged
    assert blocks == [*"abc", *"abc", *"bca", *"cab"]  # the warm-up, then three rounds


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


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("factory,shape", LAYERS)
def test_csr_inference_layers_compute_the_masked_layer(factory, shape, kernel):
    module, _ = masked(factory, density=0.2)
    twin = CsrLayer.of(module, dispatch=Dispatch.always(kernel))
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), module(x))
        torch.testing.assert_close(twin(x[:1]), module(x[:1]))  # one column: torch.mv
    assert torch.equal(twin.dense_weight(), module.weight.detach())
    assert twin.weight_values.numel() == int((module.weight != 0).sum())
    assert "weight" not in twin.state_dict()  # nothing dense is saved


def test_a_dispatch_takes_the_kernel_measured_nearest_on_a_log_scale():
    dispatch = Dispatch.of([(64, "bag"), (1, "mm"), (8, "dense")])
    assert dispatch.columns == (1, 8, 64)
    picks = {n: dispatch.kernel(n) for n in (1, 2, 3, 8, 22, 23, 64, 5000)}
    assert picks == {1: "mm", 2: "mm", 3: "dense", 8: "dense", 22: "dense", 23: "bag",
                     64: "bag", 5000: "bag"}  # fmt: skip
    assert dispatch.needs_dense and dispatch.sparse
    assert not Dispatch.always("bag").needs_dense
    with pytest.raises(ValueError, match="unknown kernel"):
        CsrLayer.of(nn.Linear(4, 4), dispatch=Dispatch.always("cuda"))


def test_each_call_computes_on_the_kernel_its_batch_size_names(monkeypatch):
    module, _ = masked(lambda: nn.Linear(64, 32), density=0.1)
    twin = CsrLayer.of(module, dispatch=Dispatch.of([(1, "mm"), (4, "dense"), (32, "bag")]))
    used = []
    dense_weight = twin.dense_weight
    monkeypatch.setattr(twin, "dense_weight", lambda: used.append("dense") or dense_weight())
    original, one_sample = twin.multiply, twin._one_sample
    monkeypatch.setattr(twin, "multiply", lambda m, k: used.append(k) or original(m, k))
    monkeypatch.setattr(twin, "_one_sample", lambda x: used.append("mv") or one_sample(x))
    with torch.no_grad():
        for batch in (1, 5, 100):
            x = torch.randn(batch, 64, dtype=torch.float64)
            torch.testing.assert_close(twin(x), module(x))
    assert used == ["mv", "dense", "bag"]  # mm with one column: torch.mv


def test_a_csr_layer_in_training_mode_fine_tunes_its_kept_values():
    module, mask = masked(lambda: nn.Linear(24, 16), density=0.3)
    twin = CsrLayer.of(module, dispatch=Dispatch.always("dense")).train()
    x = torch.randn(6, 24, dtype=torch.float64, requires_grad=True)
    (twin(x) ** 2).sum().backward()
    reference_x = x.detach().clone().requires_grad_()
    (module(reference_x) ** 2).sum().backward()
    kept = module.weight.grad[module.weight.detach() != 0]  # row-major, as the CSR values
    torch.testing.assert_close(twin.weight_values.grad, kept)
    torch.testing.assert_close(twin.bias.grad, module.bias.grad)
    torch.testing.assert_close(x.grad, reference_x.grad)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.5)
    optimizer.step()
    with torch.no_grad():
        module.weight.sub_(0.5 * module.weight.grad * mask)
        module.bias.sub_(0.5 * module.bias.grad)
    twin.eval()
    with torch.no_grad():  # the dense copy follows the trained values
        torch.testing.assert_close(twin(x), module(x))
    assert torch.equal(twin.dense_weight() == 0, module.weight == 0)


def test_an_encoder_layer_calls_its_csr_linear_in_inference():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = layer(x)
        layer.linear1 = CsrLayer.of(layer.linear1)
        without_fused_paths(layer)
        calls = []
        layer.linear1.register_forward_hook(lambda *a: calls.append(1))
        torch.testing.assert_close(layer(x), expected)
    assert calls  # the fast path, which would skip it, was not taken


def test_inference_choice_times_every_eligible_layer_on_its_real_input_at_each_batch():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    ).eval()
    layers = eligible_layers(model)
    assert list(layers) == ["0", "3"]
    inputs = {1: torch.randn(1, 3, 6, 6), 4: torch.randn(4, 3, 6, 6)}
    calls = module_calls(model, lambda: model(inputs[4]))
    assert calls["0"][0][0].shape == (4, 3, 6, 6) and calls["3"][0][0].shape == (4, 288)
    runs = {b: (lambda m, x=x: m(x)) for b, x in inputs.items()}
    result = sparse_inference_model(model, layers, runs)
    sparse, choices = result.model, result.choices
    assert [c.name for c in choices] == ["0", "3"]
    for choice in choices:
        assert [b.batch for b in choice.batches] == [1, 4]
        assert [b.columns for b in choice.batches] == (
            [36, 144] if choice.name == "0" else [1, 4]
        )  # a convolution's output positions, a Linear's samples
        for batch in choice.batches:
            assert set(batch.ms) == set(KERNELS)
            fastest = min(("bag", "mm"), key=batch.ms.__getitem__)
            wins = batch.ms[fastest] <= 0.95 * batch.ms["dense"] and batch.reverted_by is None
            assert batch.kernel == (fastest if wins else "dense")
        twin = sparse.get_submodule(choice.name)
        assert isinstance(twin, CsrLayer) == (choice.kernel == "csr")
        if choice.kernel == "csr":
            assert twin.dispatch == choice.dispatch
    assert not any(isinstance(m, CsrLayer) for m in model.modules())  # the original is kept


@pytest.fixture
def one_thread():
    """Timing-based choices on one thread: two threads on a busy two-core machine wait on each
    other, and every kernel's time is then mostly that wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_sparse_layer_chooses_per_batch_and_the_model_computes_the_same_at_any_batch(
    one_thread,
):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(1024, 1024) < 0.02)
    runs = {b: (lambda m, b=b: m(torch.randn(b, 1024))) for b in (1, 64)}
    result = sparse_inference_model(model, eligible_layers(model), runs)
    sparse, choices = result.model, result.choices
    big = next(c for c in choices if c.name == "0")
    assert big.kernel == "csr", big.batches  # 2% dense at 64 columns: CSR wins by far
    assert big.dispatch.kernel(64) in ("bag", "mm")
    with torch.no_grad():
        for batch in (1, 2, 7, 64, 300):
            x = torch.randn(batch, 1024)
            torch.testing.assert_close(sparse(x), model(x), rtol=1e-4, atol=1e-5)


class Flattens(nn.Module):
    """Views a Linear's output in a way only a contiguous tensor allows."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, 1024)

    def forward(self, x):
        y = self.fc(x)
        return y.view(y.shape[0], -1)


def test_a_model_that_views_a_linear_output_gets_it_contiguous(one_thread):
    torch.manual_seed(0)
    model = Flattens().eval()
    with torch.no_grad():
        model.fc.weight.mul_(torch.rand(1024, 1024) < 0.01)
        x = torch.randn(16, 8, 1024)
        transposed = CsrLayer.of(model.fc)(x)
        with pytest.raises(RuntimeError):
            transposed.view(16, -1)
        runs = {16: lambda m: m(x)}
        result = sparse_inference_model(model, eligible_layers(model), runs)
        sparse, (choice,) = result.model, result.choices
        assert choice.kernel == "csr" and choice.contiguous  # 1% dense, 128 columns: CSR wins
        torch.testing.assert_close(sparse(x), model(x))


class Picky(nn.Module):
    """Computes slower as a whole when its layer computes on a sparse kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, 1024)

    def forward(self, x):
        if isinstance(self.fc, CsrLayer) and self.fc.dispatch.kernel(x.shape[0]) != "dense":
            time.sleep(0.02)
        return self.fc(x)


class SlowOnTransposed(nn.Module):
    """Computes slower when its layer's output is the transposed view (as a residual add
    with a tensor of F.linear's layout does)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, 1024)

    def forward(self, x):
        y = self.fc(x)
        if not y.is_contiguous():
            time.sleep(0.01)
        return y


def choose_in(block: nn.Module):
    """`sparse_inference_model` on `nn.Sequential(block)`, the block's `fc` 1% dense, batch 64
    (where CSR wins by far): (the sparse model, the choice)."""
    torch.manual_seed(0)
    model = nn.Sequential(block).eval()
    with torch.no_grad():
        model[0].fc.weight.mul_(torch.rand(1024, 1024) < 0.01)
    x = torch.randn(64, 1024)
    runs = {64: lambda m: m(x)}
    result = sparse_inference_model(model, eligible_layers(model), runs)
    return result.model, result.choices[0], result.routes


@pytest.mark.slow
def test_a_csr_linear_output_is_contiguous_where_its_block_is_faster_so(one_thread):
    sparse, choice, _ = choose_in(SlowOnTransposed())
    assert choice.kernel == "csr" and choice.contiguous
    assert sparse[0].fc.contiguous


@pytest.mark.slow
def test_a_module_slower_as_a_whole_with_csr_layers_keeps_them_dense(one_thread):
    sparse, choice, routes = choose_in(Picky())
    (batch,) = choice.batches
    assert min(batch.ms["bag"], batch.ms["mm"]) < 0.95 * batch.ms["dense"]  # alone: CSR wins
    assert batch.kernel == "dense" and batch.reverted_by == "0"
    assert choice.kernel == "dense" and not isinstance(sparse[0].fc, CsrLayer)
    assert routes == []  # with its layer dense, the block is as fast as dense


class Fused(nn.Module):
    """Has a fast path its sparse layer turns off (as `TransformerEncoderLayer`): slower with a
    CSR layer in it, whatever kernel that layer computes on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, 1024)

    def forward(self, x):
        if isinstance(self.fc, CsrLayer):
            time.sleep(0.02)
        return self.fc(x)


@pytest.mark.slow
def test_a_block_slower_even_with_its_layers_dense_computes_on_a_dense_copy_there(one_thread):
    torch.manual_seed(0)
    model = nn.Sequential(Fused(), nn.ReLU(), nn.Linear(1024, 1024)).eval()
    with torch.no_grad():
        model[0].fc.weight.mul_(torch.rand(1024, 1024) < 0.01)
        model[2].weight.mul_(torch.rand(1024, 1024) < 0.01)  # CSR by far: the model is sparse
    inputs = {64: torch.randn(64, 1024)}
    result = sparse_inference_model(model, eligible_layers(model), {64: lambda m: m(inputs[64])})
    (route,) = result.routes
    assert route.name == "0" and route.batches == ((64, 64 * 1024, "dense"),)
    fc, outer = result.choices
    assert fc.name == "0.fc" and fc.kernel == "csr"  # the twin stays, for other batches
    assert outer.name == "2" and outer.kernel == "csr", outer.batches
    with torch.no_grad():
        x = torch.randn(64, 1024)
        torch.testing.assert_close(result.model(x), model(x))
    assert "0.fc.weight" not in result.model.state_dict()  # the dense copy is not saved
    copied = copy.deepcopy(result.model)
    with torch.no_grad():
        torch.testing.assert_close(copied(x), model(x))


def test_attention_is_eligible_whole_not_by_its_projections():
    model = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    assert set(eligible_layers(model)) == {"self_attn", "linear1", "linear2"}
    other = nn.Sequential(
        nn.MultiheadAttention(8, 2, kdim=4, vdim=6), nn.MultiheadAttention(8, 2, add_bias_kv=True)
    )
    assert eligible_layers(other) == {}


def masked_attention(batch_first: bool, bias: bool = True) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).eval()
    with torch.no_grad():
        attention.in_proj_weight.mul_(torch.rand(48, 16) < 0.3)
        attention.out_proj.weight.mul_(torch.rand(16, 16) < 0.3)
    return attention


PADDING = torch.tensor([[False] * 5, [False, False, False, True, True]])
CAUSAL = torch.triu(torch.full((5, 5), float("-inf")), 1)
ATTENTION_CALLS = {
    "self": ("self", {"need_weights": False}),
    "padding, bool": ("self", {"need_weights": False, "key_padding_mask": PADDING}),
    "padding, float": (
        "self",
        {"need_weights": False, "key_padding_mask": PADDING.float() * -1e9},
    ),
    "with weights": ("self", {"key_padding_mask": PADDING}),
    "cross": ("cross", {"need_weights": False}),
    "causal": ("self", {"need_weights": False, "attn_mask": CAUSAL, "is_causal": True}),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("call", list(ATTENTION_CALLS))
def test_csr_attention_computes_what_the_attention_computes(call, batch_first, bias):
    attention = masked_attention(batch_first, bias)
    twin = CsrAttention.of(attention)
    kind, kwargs = ATTENTION_CALLS[call]
    x = torch.randn((2, 5, 16) if batch_first else (5, 2, 16))
    other = torch.randn_like(x)
    args = (x, x, x) if kind == "self" else (x, other, other)
    with torch.no_grad():
        expected, got = attention(*args, **kwargs), twin(*args, **kwargs)
    torch.testing.assert_close(got[0], expected[0])
    if expected[1] is None:
        assert got[1] is None
    else:
        torch.testing.assert_close(got[1], expected[1])
    assert "in_proj_weight" not in twin.state_dict()  # nothing dense is kept
    sparse_call = kind == "self" and "attn_mask" not in kwargs and "need_weights" in kwargs
    assert bool(twin._dense) == (not sparse_call)  # only other calls rebuild the dense module


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_contiguous_csr_attention_lays_its_output_out_as_the_attention_does(batch_first):
    attention = masked_attention(batch_first)
    twin = CsrAttention.of(attention)
    twin.contiguous = True
    x = torch.randn((2, 5, 16) if batch_first else (5, 2, 16))
    with torch.no_grad():
        got, expected = twin(x, x, x, need_weights=False)[0], attention(x, x, x)[0]
    assert got.is_contiguous() and got.shape == expected.shape
    torch.testing.assert_close(got, expected)


def test_an_encoder_layer_runs_on_its_csr_attention():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    with torch.no_grad():
        layer.self_attn.in_proj_weight.mul_(torch.rand(48, 16) < 0.2)
        x = torch.randn(2, 5, 16)
        expected = layer(x, src_key_padding_mask=PADDING)
        layer.self_attn = CsrAttention.of(layer.self_attn)
        without_fused_paths(layer)
        torch.testing.assert_close(layer(x, src_key_padding_mask=PADDING), expected)
    assert not layer.self_attn._dense


def test_a_csr_attention_in_training_mode_fine_tunes_its_projections():
    attention = masked_attention(True, True).train()
    twin = CsrAttention.of(attention).train()
    x = torch.randn(2, 5, 16, requires_grad=True)
    twin(x, x, x, need_weights=False)[0].square().sum().backward()
    reference = x.detach().clone().requires_grad_()
    attention(reference, reference, reference, need_weights=False)[0].square().sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    kept = attention.out_proj.weight.grad[attention.out_proj.weight.detach() != 0]
    torch.testing.assert_close(twin.out_proj.weight_values.grad, kept)
    assert twin.in_proj.weight_values.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="fine-tunes self-attention calls only"):
        twin(x, x, x)  # need_weights=True: the dense module, which would not learn


def test_an_encoder_layer_whose_twins_compute_dense_at_a_batch_takes_its_fused_path_there(
    monkeypatch,
):
    """Its layers computing dense cannot beat the fused path the twins turned off: at such a
    batch the block computes on its dense copy, without a timing to decide it."""
    from acdc_recipe.runtime.kernels import blocks, inference
    from acdc_recipe.runtime.kernels.choices import BatchChoice
    from acdc_recipe.runtime.kernels.timing import KernelTiming

    def chosen(module, twin, batch, call):  # CSR at batch 16 only
        x = call[0][0]
        kernel = "bag" if batch == 16 else "dense"
        return BatchChoice(batch, inference._columns(module, x), kernel, {"dense": 1.0})

    def timed(dense, sparse, device, rounds=None):  # the block is faster sparse at batch 16
        if isinstance(dense.func, nn.Sequential):  # the model, its block routed: as fast
            return KernelTiming(1.0, 0.99)
        return KernelTiming(1.0, 0.5 if sparse.args[0].shape[0] == 16 else 1.01)

    monkeypatch.setattr(inference, "_choose_batch", chosen)
    monkeypatch.setattr(blocks, "time_paths", timed)
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True))
    model.eval()
    inputs = {b: torch.randn(b, 5, 16) for b in (1, 16)}
    runs = {b: (lambda m, x=x: m(x)) for b, x in inputs.items()}
    monkeypatch.setattr(inference, "_choose_layouts", lambda *a: None)
    result = sparse_inference_model(model, eligible_layers(model), runs)
    # at batch 1 nothing is sparse any more: the model computes on its dense copy there (the
    # layer's own route is then moot and removed)
    assert result.routes == [inference.BlockRoute("", ((1, 80, "dense"), (16, 1280, "sparse")))]
    assert {c.kernel for c in result.choices} == {"csr"}
    with torch.no_grad():
        for x in inputs.values():
            torch.testing.assert_close(result.model(x), model(x))


def test_an_encoder_layer_made_dense_by_the_model_around_it_takes_its_fused_path(monkeypatch):
    """The model as a whole is slower sparse, so every layer in it computes dense at that
    batch: the encoder layer in it then computes on its dense copy (its fused path), not on
    twins computing dense without it."""
    from acdc_recipe.runtime.kernels import blocks, inference
    from acdc_recipe.runtime.kernels.choices import BatchChoice
    from acdc_recipe.runtime.kernels.timing import KernelTiming

    def chosen(module, twin, batch, call):
        return BatchChoice(batch, inference._columns(module, call[0][0]), "bag", {"dense": 1.0})

    def timed(dense, sparse, device, rounds=None):  # the block alone wins, the model does not
        whole = isinstance(dense.func, nn.Sequential)
        return KernelTiming(1.0, 1.01 if whole else 0.5)

    monkeypatch.setattr(inference, "_choose_batch", chosen)
    monkeypatch.setattr(inference, "_choose_layouts", lambda *a: None)
    monkeypatch.setattr(blocks, "time_paths", timed)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True),
        nn.Flatten(),
        nn.Linear(80, 4),
    ).eval()
    x = torch.randn(2, 5, 16)
    result = sparse_inference_model(model, eligible_layers(model), {2: lambda m: m(x)})
    # nothing is sparse at that batch: the model computes on its dense copy (one hop)
    assert [(route.name, route.batches) for route in result.routes] == [("", ((2, 160, "dense"),))]
    kernels = {c.name: c.kernel for c in result.choices}
    assert kernels["2"] == "dense" and kernels["0.linear1"] == "csr"  # moot: the copy computes
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x))
