"""Export: the compressed format decodes with compressed-tensors' own code and round-trips bit
for bit; the torch-sparse model computes the masked model; bad input changes nothing."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from compressed_tensors.config import SparsityCompressionConfig
from compressed_tensors.utils import unpack_bitmasks
from compressed_tensors.utils.safetensors_load import get_nested_weight_mappings
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import acdc_recipe
from acdc_recipe.compiler import compile
from acdc_recipe.exporter import FORMATS, ExportError, TorchSparse, compressed, export, load_sparse
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import attach
from acdc_recipe.runtime.kernels.dense_routes import dense_route
from acdc_recipe.runtime.kernels.inference import KERNELS, CsrAttention, CsrLayer
from acdc_recipe.runtime.kernels.semi_structured_layer import SemiStructuredLinear

PARTS = ["shape", "compressed", "bitmask", "row_offsets"]


def recipe(target=0.9, phases=({"sparse": 4},), pattern="unstructured") -> Recipe:
    return Recipe.model_validate(
        {
            "name": "export",
            "sparsity": {"target": target, "pattern": pattern, "scope": "uniform"},
            "schedule": {"unit": "step", "phases": list(phases)},
        }
    )


def masked(model: nn.Module, target=0.9, pattern="unstructured", kernels="off"):
    """`model` with its first sparse phase's masks applied, and the runtime that did it."""
    compiled = compile(model, recipe(target, pattern=pattern))
    runtime = attach(compiled, torch.optim.SGD(model.parameters(), lr=0.1), sparse_kernels=kernels)
    runtime.begin_step()
    return model, runtime


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )  # fmt: skip


def decode_with_compressed_tensors(folder) -> dict[str, torch.Tensor]:
    """Every compressed weight as compressed-tensors' own helpers read the format (its
    `ModelCompressor` reads it in `test_compressed_readers`)."""
    decoded = {}
    mappings = get_nested_weight_mappings(str(folder), PARTS)
    for layer, files in mappings.items():
        parts = {}
        for part in PARTS:
            with safe_open(files[part], framework="pt") as handle:
                parts[part] = handle.get_tensor(f"{layer}.{part}")
        assert parts["shape"].dtype == torch.int64
        shape = parts["shape"].tolist()
        mask = unpack_bitmasks(parts["bitmask"], shape)
        dense = torch.zeros(shape, dtype=parts["compressed"].dtype)
        dense[mask] = parts["compressed"]
        counts = mask.sum(-1)
        assert torch.equal(parts["row_offsets"], torch.cumsum(counts, 0) - counts)
        decoded[f"{layer}.weight"] = dense
    return decoded


@pytest.mark.parametrize("factory", [mlp, cnn])
def test_compressed_decodes_with_compressed_tensors_and_round_trips_bitwise(factory, tmp_path):
    model, runtime = masked(factory())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    exported = export(model, tmp_path / "out", runtime=runtime)
    folder = exported.path
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and "format" not in config
    sparsity = SparsityCompressionConfig.load_from_registry(
        "sparse-bitmask", **{k: v for k, v in config["sparsity_config"].items() if k != "format"}
    )
    assert sparsity.format == "sparse-bitmask" and sparsity.global_sparsity == pytest.approx(
        0.9, abs=1e-3
    )
    assert sparsity.targets == sorted(n.removesuffix(".weight") for n in runtime.plan.names)
    decoded = decode_with_compressed_tensors(folder)
    assert set(decoded) == set(runtime.plan.names)
    for name, weight in decoded.items():
        assert weight.dtype == state[name].dtype and weight.shape == state[name].shape
        assert torch.equal(weight, state[name])
    twin = factory()
    load_sparse(folder, twin)
    loaded = twin.state_dict()
    assert loaded.keys() == state.keys()
    assert all(
        torch.equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype for k in state
    )
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        dense_kept = {k for k in handle.keys() if not k.endswith(tuple(PARTS))}
    assert dense_kept == set(state) - set(runtime.plan.names)  # biases, norms stay dense
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        p.name: 0o666 & ~current_umask() for p in folder.iterdir()
    }  # as any file written with open(), not safetensors' 0600


def current_umask() -> int:
    import os

    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_bit_packing_matches_numpy_little_endian():
    mask = torch.rand(5, 19) < 0.3
    packed = compressed.pack_bits(mask)
    import numpy

    assert torch.equal(
        packed, torch.from_numpy(numpy.packbits(mask.numpy(), axis=-1, bitorder="little"))
    )
    assert torch.equal(compressed.unpack_bits(packed, 19), mask)


def test_compressed_pruned_weights_take_under_015x_of_their_dense_bytes_at_90(tmp_path):
    torch.manual_seed(0)
    model, runtime = masked(nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)))
    sizes = export(model, tmp_path / "out", runtime=runtime).manifest["pruned_bytes"]
    assert sizes["compressed"] <= 0.15 * sizes["dense"]


def big_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 4)
    )


def test_torch_sparse_runs_the_measured_layers_on_csr_and_computes_the_masked_model(tmp_path):
    model, runtime = masked(big_mlp(), target=0.98)
    exported = export(
        model,
        tmp_path / "out",
        runtime=runtime,
        format=TorchSparse(batch_sizes=(64, 1), threads=1),
        input_shape=(512,),
    )
    manifest = exported.manifest
    assert manifest["batch_sizes"] == [1, 64] and manifest["threads"] == 1
    layers = manifest["layers"]
    assert set(layers) == {"0", "2", "4"}
    for layer in layers.values():
        assert [entry["batch"] for entry in layer["dispatch"]] == [1, 64]
        for entry in layer["dispatch"]:
            assert {f"{kernel}_ms" for kernel in KERNELS} <= set(entry)
            assert entry["kernel"] in KERNELS
    big = {entry["batch"]: entry for entry in layers["2"]["dispatch"]}
    assert big[64]["kernel"] in ("bag", "mm")  # 1024x1024 at 2% density, batch 64: CSR by far
    assert layers["2"]["kernel"] == "csr"
    memory = manifest["memory"]
    assert memory["sparse_model_weights"] < memory["dense_weights"]
    loaded = load_sparse(exported.path, big_mlp())
    for name, layer in layers.items():
        module = loaded.get_submodule(name)
        assert isinstance(module, CsrLayer) == (layer["kernel"] == "csr")
        if layer["kernel"] == "csr":
            kernels = [entry["kernel"] for entry in layer["dispatch"]]
            assert list(module.dispatch.kernels) == kernels
            dense_bytes = 4 * layer["weight_shape"][0] * layer["weight_shape"][1]
            assert module.dense_copy_bytes() == (dense_bytes if "dense" in kernels else 0)
    for batch in (1, 3, 64, 200):
        x = torch.randn(batch, 512)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    assert not any(
        isinstance(b, torch.Tensor) and b.layout != torch.strided
        for b in loaded.state_dict().values()
    )
    assert "2.weight" not in loaded.state_dict()  # the CSR layer keeps no dense weight
    assert 2 * (tmp_path / "out" / "model.safetensors").stat().st_size < sum(
        p.numel() * 4 for p in model.parameters()
    )


def vision(name: str) -> tuple[nn.Module, int]:
    import torchvision

    torch.manual_seed(0)
    options = {"image_size": 32} if name == "vit_b_16" else {}
    return getattr(torchvision.models, name)(weights=None, **options), 32


def builtin(name: str) -> tuple[nn.Module, int]:
    from acdc_recipe.models import BUILTIN_MODELS

    torch.manual_seed(0)
    if name == "mlp":
        return BUILTIN_MODELS[name](in_features=3 * 32 * 32), 32
    return BUILTIN_MODELS[name](**({"in_channels": 3} if name == "cnn" else {})), 32


MODELS = [
    *[(builtin, n) for n in ("mlp", "cnn", "resnet20", "mobilenet_v1", "wide_resnet28_10")],
    *[(vision, n) for n in ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0",
                            "vit_b_16", "convnext_tiny")],
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("build,name", MODELS, ids=[name for _, name in MODELS])
def test_every_model_exports_to_a_torch_sparse_model_with_the_same_outputs(
    build, name, tmp_path, monkeypatch
):
    from acdc_recipe.runtime.kernels import blocks, timing

    monkeypatch.setattr(timing, "ROUNDS", 1)  # what this checks is the outputs, not the choice
    monkeypatch.setattr(blocks, "HOLDER_ROUNDS", 1)
    model, size = build(name)
    model, runtime = masked(model)
    model.eval()
    exported = export(
        model,
        tmp_path / "out",
        runtime=runtime,
        format=TorchSparse((1, 2), threads=1),
        input_shape=(3, size, size),
    )
    fresh, _ = build(name)
    loaded = load_sparse(exported.path, fresh)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert exported.manifest["max_abs_diff"] < 1e-4
    layers = exported.manifest["layers"]
    csr = [n for n, layer in layers.items() if layer["kernel"] == "csr"]
    for name in csr:
        twin = CsrAttention if layers[name]["kind"] == "MultiheadAttention" else CsrLayer
        assert isinstance(loaded.get_submodule(name), twin)
    replaced = [m for m in loaded.modules() if isinstance(m, CsrLayer)]
    assert len(replaced) == sum(
        2 if isinstance(loaded.get_submodule(n), CsrAttention) else 1 for n in csr
    )


def test_a_model_whose_masks_were_not_applied_is_refused_and_nothing_is_written(tmp_path):
    model, runtime = masked(mlp())
    with torch.no_grad():
        model[1].weight.add_(1.0)  # pruned positions are non-zero now
    with pytest.raises(ExportError, match=r"masks were not applied: 1\.weight"):
        export(model, tmp_path / "out", runtime=runtime)
    assert list(tmp_path.iterdir()) == []


def test_a_model_in_a_dense_phase_has_no_sparse_model(tmp_path):
    model = mlp()
    compiled = compile(model, recipe(phases=[{"dense": 2}, {"sparse": 2}]))
    runtime = attach(compiled, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ExportError, match="dense phase"):
        export(model, tmp_path / "out", runtime=runtime)
    with pytest.raises(ExportError, match="needs the runtime"):
        export(model, tmp_path / "out")


def test_unknown_formats_and_existing_folders_are_refused_untouched(tmp_path):
    model, runtime = masked(mlp())
    with pytest.raises(ExportError, match="compressed, torch-sparse"):
        export(model, tmp_path / "out", runtime=runtime, format="onnx")
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export(model, existing, runtime=runtime)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_a_failure_while_writing_leaves_no_folder(tmp_path, monkeypatch):
    model, runtime = masked(mlp())

    def fail(source, folder):
        folder.weights.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compressed, "write", fail)
    with pytest.raises(OSError):
        export(model, tmp_path / "out", runtime=runtime)
    assert list(tmp_path.iterdir()) == []


def test_an_export_needs_an_input_shape_to_time_torch_sparse(tmp_path):
    model, runtime = masked(mlp())
    with pytest.raises(ExportError, match="--input-shape"):
        export(model, tmp_path / "out", runtime=runtime, format="torch-sparse")


def test_a_model_with_sparse_kernels_attached_exports_its_plain_layers(tmp_path):
    model, runtime = masked(mlp(), kernels="on")
    exported = export(
        model, tmp_path / "out", runtime=runtime, format=TorchSparse((1, 4)), input_shape=(48,)
    )
    loaded = load_sparse(exported.path, mlp())
    assert not any("forward" in vars(m) for m in loaded.modules())
    x = torch.randn(3, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_loading_into_another_architecture_says_so(tmp_path):
    model, runtime = masked(mlp())
    exported = export(model, tmp_path / "out", runtime=runtime)
    with pytest.raises(ExportError, match="does not fit the model"):
        load_sparse(exported.path, cnn())
    with pytest.raises(ExportError, match="not an export folder"):
        load_sparse(tmp_path, mlp())


def test_the_public_api_and_the_cli_name_the_same_formats():
    from acdc_recipe.cli.export import FORMAT_CHOICES

    assert tuple(FORMATS) == FORMAT_CHOICES
    assert acdc_recipe.export is not None and acdc_recipe.load_sparse is not None


def test_a_token_model_exports_both_formats_and_loads_back(tmp_path):
    from ..conftest import tiny_gpt2

    model, runtime = masked(tiny_gpt2())
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pruned = set(runtime.plan.names)
    assert pruned and all(".attn." in n or ".mlp." in n for n in pruned)  # Conv1D, not wte

    compressed_out = export(model, tmp_path / "compressed", runtime=runtime)
    assert set(decode_with_compressed_tensors(compressed_out.path)) == pruned
    twin = load_sparse(compressed_out.path, tiny_gpt2(seed=1))
    assert all(torch.equal(twin.state_dict()[k], state[k]) for k in state)

    exported = export(
        model,
        tmp_path / "torch-sparse",
        runtime=runtime,
        format=TorchSparse(batch_sizes=(4,)),
        input_shape=(16,),
        input_dtype="int64",
    )
    assert set(exported.manifest["no_kernel"].values()) == {"Conv1D"}
    loaded = load_sparse(exported.path, tiny_gpt2(seed=1))
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_a_timing_batch_the_model_cannot_take_is_one_paragraph(tmp_path):
    from ..conftest import tiny_gpt2

    model, runtime = masked(tiny_gpt2())
    with pytest.raises(ExportError, match="does not run on a timing batch of shape") as caught:
        export(model, tmp_path / "out", runtime=runtime, format="torch-sparse", input_shape=(16,))
    assert "--input-dtype" in str(caught.value) and not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="unknown input_dtype"):
        export(model, tmp_path / "out", runtime=runtime, input_dtype="int8")


@pytest.fixture(scope="module")
def csr_export(tmp_path_factory):
    """A torch-sparse export whose 1024x1024 layer runs on CSR."""
    model, runtime = masked(big_mlp(), target=0.98)
    out = tmp_path_factory.mktemp("csr") / "out"
    exported = export(
        model,
        out,
        runtime=runtime,
        format=TorchSparse(batch_sizes=(64,), threads=1),
        input_shape=(512,),
    )
    assert exported.manifest["layers"]["2"]["kernel"] == "csr"
    assert exported.manifest["layers"]["2"]["weight_shape"] == [1024, 1024]
    return out


def test_a_csr_layer_loaded_into_another_kind_or_width_is_named(csr_export):
    other = big_mlp()
    other[2] = nn.Embedding(1024, 1024)
    with pytest.raises(ExportError, match="no Linear '2' with a weight of shape"):
        load_sparse(csr_export, other)
    narrower = big_mlp()
    narrower[2] = nn.Linear(1000, 1024)
    with pytest.raises(ExportError, match=r"\(1024, 1024\)"):
        load_sparse(csr_export, narrower)


def rehash(folder) -> None:
    """Record the folder's files' sha256 in its manifest again (as an export would)."""
    from acdc_recipe.files import sha256_of

    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sha256"] = {name: sha256_of(folder / name) for name in manifest["sha256"]}
    path.write_text(json.dumps(manifest))


def test_edited_or_damaged_export_files_are_refused_in_one_sentence(csr_export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(csr_export, broken)
    state = load_file(str(broken / "model.safetensors"))
    state["2.weight_col_indices"][0] = 5000  # beyond the 1024 columns
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ExportError, match="model.safetensors was changed after the export"):
        load_sparse(broken, big_mlp())
    rehash(broken)  # an export written damaged: the CSR structure is checked too
    with pytest.raises(ExportError, match="damaged: the CSR structure of 2 is invalid"):
        load_sparse(broken, big_mlp())
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    rehash(broken)
    with pytest.raises(ExportError, match="damaged or incomplete"):
        load_sparse(broken, big_mlp())
    (broken / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="model.safetensors is missing"):
        load_sparse(broken, big_mlp())


def test_a_compressed_export_whose_tensors_disagree_is_refused(tmp_path):
    model, runtime = masked(mlp())
    folder = export(model, tmp_path / "out", runtime=runtime).path
    state = load_file(str(folder / "model.safetensors"))
    state["1.compressed"] = state["1.compressed"][:-1]  # one value fewer than the bitmask marks
    save_file(state, str(folder / "model.safetensors"))
    rehash(folder)
    with pytest.raises(ExportError, match="1.bitmask marks .* 1.compressed holds"):
        load_sparse(folder, mlp())
    del state["1.compressed"]
    save_file(state, str(folder / "model.safetensors"))
    rehash(folder)
    with pytest.raises(ExportError, match="damaged or incomplete"):
        load_sparse(folder, mlp())


def test_an_input_shape_of_zero_sizes_is_refused(tmp_path):
    model, runtime = masked(mlp())
    with pytest.raises(ExportError, match="at least 1; got \\[0, 48\\]"):
        export(model, tmp_path / "out", runtime=runtime, format="torch-sparse", input_shape=(0, 48))


def test_an_export_of_an_earlier_format_version_is_refused_with_the_way_out(csr_export, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(csr_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="format_version 1.*export the run again"):
        load_sparse(folder, big_mlp())


def encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(256, 4, 512, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False))


@pytest.mark.slow
def test_self_attention_exports_whole_on_csr_projections(tmp_path):
    model, runtime = masked(encoder(), target=0.98)
    exported = export(
        model,
        tmp_path / "out",
        runtime=runtime,
        format=TorchSparse(batch_sizes=(16,), threads=1),
        input_shape=(32, 256),
    )
    manifest = exported.manifest
    attention = manifest["layers"]["0.layers.0.self_attn"]
    assert attention["kind"] == "MultiheadAttention" and attention["weight_shape"] == [768, 256]
    assert attention["kernel"] == "csr"  # 2% dense projections on 512 tokens: CSR wins by far
    assert attention["dispatch"][0]["columns"] == 16 * 32  # tokens
    assert manifest["no_kernel"] == {}  # the output projection is the attention's
    loaded = load_sparse(exported.path, encoder())
    twin = loaded.get_submodule("0.layers.0.self_attn")
    assert isinstance(twin, CsrAttention)
    assert list(twin.dispatch.kernels) == [attention["dispatch"][0]["kernel"]]
    x = torch.randn(4, 32, 256)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    assert not twin._dense  # it computed on its CSR projections


@pytest.mark.slow
def test_an_encoder_with_csr_layers_takes_padding_masks_without_nested_tensors(tmp_path):
    """A `TransformerEncoder`'s nested-tensor path (the default, with a padding mask) would read
    dense weights the CSR twins do not have."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(256, 4, 512, dropout=0.0, batch_first=True)
        return nn.TransformerEncoder(layer, 1)  # enable_nested_tensor: the default

    model, runtime = masked(build(), target=0.98)
    exported = export(
        model,
        tmp_path / "out",
        runtime=runtime,
        format=TorchSparse(batch_sizes=(16,), threads=1),
        input_shape=(32, 256),
    )
    assert any(layer["kernel"] == "csr" for layer in exported.manifest["layers"].values())
    loaded = load_sparse(exported.path, build())
    x = torch.randn(2, 32, 256)
    padding = torch.zeros(2, 32, dtype=torch.bool)
    padding[1, 20:] = True
    reference = build()
    reference.load_state_dict(model.state_dict())
    reference.use_nested_tensor = False
    with torch.no_grad():
        got = loaded(x, src_key_padding_mask=padding)
        torch.testing.assert_close(
            got, reference.eval()(x, src_key_padding_mask=padding), rtol=1e-4, atol=1e-5
        )
        nested = model.eval()(x, src_key_padding_mask=padding)  # zeros where padded
    torch.testing.assert_close(got[~padding], nested[~padding], rtol=1e-4, atol=1e-5)


def two_four_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64))


def test_on_the_cpu_a_2_4_export_says_why_no_2_4_kernel_ran(tmp_path):
    model, runtime = masked(two_four_mlp(), target=0.5, pattern="2:4")
    exported = export(
        model, tmp_path / "out", runtime=runtime, format=TorchSparse((8,)), input_shape=(256,)
    )
    assert "run on CUDA GPUs" in exported.manifest["semi_structured"]
    assert exported.manifest["device"] == "cpu" and exported.manifest["precision"] == "fp32"
    assert {layer["kernel"] for layer in exported.manifest["layers"].values()} <= {"csr", "dense"}


def test_a_2_4_layer_of_a_gpu_export_loads_on_the_cpu_and_computes_dense(tmp_path):
    """A GPU export marks its 2:4 layers `semi_structured` and stores them as Linears: loaded
    where no 2:4 kernel runs, they compute the masked model densely."""
    model, runtime = masked(two_four_mlp(), target=0.5, pattern="2:4")
    folder = tmp_path / "out"
    export(model, folder, runtime=runtime, format=TorchSparse((8,)), input_shape=(256,))
    manifest = json.loads((folder / "manifest.json").read_text())
    state = load_file(folder / "model.safetensors")
    for name in manifest["layers"]:
        for key in [k for k in state if k.startswith(f"{name}.")]:
            del state[key]
        layer = model.get_submodule(name)
        state[f"{name}.weight"], state[f"{name}.bias"] = layer.weight.detach(), layer.bias.detach()
        manifest["layers"][name] = {
            "kind": "Linear", "kernel": "semi_structured",
            "weight_shape": list(layer.weight.shape), "density": 0.5,
        }  # fmt: skip
    save_file(state, folder / "model.safetensors")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rehash(folder)
    loaded = load_sparse(folder, two_four_mlp())
    assert all(isinstance(loaded.get_submodule(n), SemiStructuredLinear) for n in ("0", "2"))
    x = torch.randn(8, 256)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    assert "CUDA devices only" in loaded.get_submodule("0").problem


def test_half_precision_and_cuda_are_refused_where_they_cannot_apply(tmp_path):
    model, runtime = masked(mlp())
    options = {"runtime": runtime, "input_shape": (3, 4, 4)}
    with pytest.raises(ExportError, match="precision bf16 is for device cuda"):
        export(model, tmp_path / "a", format=TorchSparse(precision="bf16"), **options)
    with pytest.raises(ExportError, match="unknown precision"):
        export(model, tmp_path / "b", format=TorchSparse(precision="fp8"), **options)
    if not torch.cuda.is_available():
        with pytest.raises(ExportError, match="needs a CUDA GPU"):
            export(model, tmp_path / "c", format=TorchSparse(device="cuda"), **options)
    with pytest.raises(ExportError, match="format must be a format name"):
        export(model, tmp_path / "d", format={"batch_size": 4}, **options)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)),
    reason="needs a CUDA GPU of capability 8.0+",
)
def test_a_2_4_model_exports_on_cuda_in_bf16_and_loads_back_on_its_kernels(tmp_path):
    model, runtime = masked(two_four_mlp(), target=0.5, pattern="2:4")
    exported = export(
        model,
        tmp_path / "out",
        runtime=runtime,
        format=TorchSparse(batch_sizes=(256,), device="cuda", precision="bf16"),
        input_shape=(256,),
    )
    layers = exported.manifest["layers"]
    assert {layer["kernel"] for layer in layers.values()} <= {"semi_structured", "dense"}
    assert set(exported.manifest["semi_structured"]) <= set(layers)
    loaded = load_sparse(exported.path, two_four_mlp()).cuda()
    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model.to("cuda", torch.bfloat16).eval()(x)
        torch.testing.assert_close(loaded(x), expected, rtol=1.6e-2, atol=1e-2)
    for name, layer in layers.items():
        module = loaded.get_submodule(name)
        assert isinstance(module, SemiStructuredLinear) == (layer["kernel"] == "semi_structured")
        if layer["kernel"] == "semi_structured":
            assert module.problem is None


class Fused(nn.Module):
    """A block with a fast path its sparse layer turns off (as `TransformerEncoderLayer`):
    slower with a CSR layer in it, whatever kernel that layer computes on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, 1024)
        self.norm = nn.LayerNorm(1024)

    def forward(self, x):
        if isinstance(self.fc, CsrLayer):
            time.sleep(0.01)
        return self.norm(self.fc(x))


def test_a_block_routed_dense_at_some_batches_is_rebuilt_dense_on_load(tmp_path):
    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(Fused(), nn.ReLU(), nn.Linear(1024, 1024))  # CSR by far at 99%

    model, runtime = masked(build(), target=0.99)
    exported = export(
        model, tmp_path / "out", runtime=runtime, format=TorchSparse((4,), threads=1),
        input_shape=(1024,),
    )  # fmt: skip
    manifest = exported.manifest
    assert manifest["dense_blocks"]["0"] == [{"batch": 4, "elements": 4096, "route": "dense"}]
    assert manifest["memory"]["dense_blocks"] >= 4 * 1024 * 1024  # the block's dense copy
    loaded = load_sparse(exported.path, build())
    block = loaded.get_submodule("0")
    assert isinstance(block.fc, CsrLayer) and dense_route(block) is not None
    assert "0.fc.weight" not in loaded.state_dict()  # the dense copy is not in the state
    x = torch.randn(4, 1024)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-4, atol=1e-5)
