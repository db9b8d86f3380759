"""Exporting from where users train: their own loop (the compiled recipe's input shape), a
transformers Trainer's checkpoint and sparse folders, a Lightning checkpoint; and loading any
of them back with `load_model`."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from torch import nn

import acdc_recipe
from acdc_recipe.exporter import ExportError, TorchSparse, export, load_model, load_sparse
from acdc_recipe.exporter.torch_sparse import MachineWarning
from acdc_recipe.runtime.kernels.inference import CsrLayer

from ..conftest import TOKEN_VOCAB, tiny_gpt2
from ..integrations.test_huggingface import Samples, recipe, train
from ..integrations.test_lightning import PHASES, fit
from .test_export import masked, mlp


def test_an_export_from_a_loop_times_on_the_input_the_recipe_was_compiled_with(tmp_path):
    model = mlp()
    compiled = acdc_recipe.compile(model, masked_recipe(), example_inputs=torch.zeros(2, 48))
    runtime = acdc_recipe.attach(compiled, torch.optim.SGD(model.parameters(), lr=0.1))
    runtime.begin_step()
    exported = export(model, tmp_path / "out", format=TorchSparse((1, 4)), runtime=runtime)
    assert exported.manifest["sample_shape"] == [48] and exported.manifest["input_dtype"] == "float"
    ids = tiny_gpt2()
    compiled = acdc_recipe.compile(ids, masked_recipe(), torch.zeros(1, 16, dtype=torch.long))
    runtime = acdc_recipe.attach(compiled, torch.optim.SGD(ids.parameters(), lr=0.1))
    runtime.begin_step()
    exported = export(ids.eval(), tmp_path / "ids", format=TorchSparse((2,)), runtime=runtime)
    assert exported.manifest["sample_shape"] == [16] and exported.manifest["input_dtype"] == "int64"


def masked_recipe():
    from .test_export import recipe as export_recipe

    return export_recipe()


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    """A tiny GPT-2 trained by a transformers Trainer with the acdc callback, checkpointing every
    two steps (at step 4 a sparse phase is in force, at step 8 a dense one); the schedule ends
    sparse."""
    folder = tmp_path_factory.mktemp("trainer")
    trainer, acdc, _ = train(
        folder, tiny_gpt2(), Samples("lm"), recipe(), save_strategy="steps", save_steps=2
    )
    return folder, trainer.model, acdc


def test_the_trainer_sparse_folder_records_the_recipe_and_the_achieved_sparsity(trainer_run):
    folder, model, acdc = trainer_run
    record = json.loads((folder / "sparse" / "config.json").read_text())["acdc_recipe"]
    assert record["recipe_hash"] == acdc.compiled.recipe_hash and record["which"] == "sparse"
    assert acdc_recipe.load_recipe_text(record["recipe"]) == acdc.compiled.recipe
    pruned = sum(p.numel for p in acdc.compiled.params)
    expected = sum(g.prune for g in acdc.compiled.plan.updates[-1][0].groups) / pruned
    assert record["sparsity"] == pytest.approx(expected, abs=1e-12)  # the target, exactly
    assert (folder / "sparse" / "masks.safetensors").is_file()
    assert "acdc_recipe" in json.loads((folder / "dense" / "config.json").read_text())
    exported = export(folder / "sparse")  # by default beside it, not inside the model folder
    assert exported.path == folder / "export-compressed"
    shutil.rmtree(exported.path)


@pytest.mark.parametrize("source", ["sparse", "checkpoint-4"])
def test_a_trainer_folder_exports_in_both_formats_and_loads_back(trainer_run, tmp_path, source):
    folder, model, acdc = trainer_run
    compressed = export(folder / source, tmp_path / "compressed")
    saved = load_file(str(folder / source / "model.safetensors"))
    assert set(compressed.manifest["pruned"]) == set(acdc.compiled.plan.names)
    config = json.loads((compressed.path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "acdc_recipe" not in config
    assert config["quantization_config"]["sparsity_config"]["format"] == "sparse-bitmask"
    rebuilt = load_model(compressed.path)  # from its transformers config
    state = rebuilt.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    fast = export(folder / source, tmp_path / "fast", format=TorchSparse((1, 4), threads=1))
    assert fast.manifest["source"].startswith(
        "saved model" if source == "sparse" else "Trainer checkpoint"
    )
    ids = torch.randint(0, TOKEN_VOCAB, (2, 16))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", MachineWarning)
        torch.testing.assert_close(load_model(fast.path)(ids).logits, rebuilt(ids).logits)


def test_load_model_reads_a_trainer_output_folder(trainer_run):
    folder, model, _ = trainer_run
    for which in ("dense", "sparse"):
        loaded = load_model(folder, which)
        saved = load_file(str(folder / which / "model.safetensors"))
        assert all(torch.equal(loaded.state_dict()[name], t) for name, t in saved.items())
    assert not load_model(folder).training


def test_a_trainer_folder_without_the_callbacks_state_or_in_a_dense_phase_is_refused(
    trainer_run, tmp_path
):
    folder, _, _ = trainer_run
    with pytest.raises(ExportError, match="is in a dense phase"):
        export(folder / "checkpoint-8", tmp_path / "dense")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(
        (folder / "sparse" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ExportError, match="not written with the acdc callback"):
        export(plain, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "dense").exists()


@pytest.fixture(scope="module")
def lightning_checkpoint(tmp_path_factory):
    """A Lightning checkpoint of a tiny GPT-2 written with the acdc callback (module="model")
    at the end of its last (sparse) epoch."""
    folder = tmp_path_factory.mktemp("lightning")
    saver = ModelCheckpoint(dirpath=folder / "ckpt", every_n_epochs=1, save_top_k=-1)
    trainer, acdc, _ = fit(
        folder, tiny_gpt2(), Samples("lm", size=16), recipe(PHASES), callbacks=[saver]
    )
    (checkpoint,) = (folder / "ckpt").glob("epoch=3-*.ckpt")
    return checkpoint, trainer.lightning_module.model, acdc


def test_a_lightning_checkpoint_exports_its_module(lightning_checkpoint, tmp_path):
    checkpoint, model, acdc = lightning_checkpoint
    exported = export(checkpoint, tmp_path / "out")
    assert exported.manifest["source"].startswith(f"Lightning checkpoint {checkpoint} (step 16)")
    assert set(exported.manifest["pruned"]) == set(acdc.compiled.plan.names)
    twin = load_sparse(exported.path, tiny_gpt2(seed=3))
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in twin.state_dict().items())


def test_a_lightning_checkpoint_without_the_callback_is_refused(lightning_checkpoint, tmp_path):
    checkpoint, _, _ = lightning_checkpoint
    state = torch.load(checkpoint, weights_only=True)
    state["callbacks"] = {}
    plain = tmp_path / "plain.ckpt"
    torch.save(state, plain)
    with pytest.raises(ExportError, match="holds no acdc callback state"):
        export(plain, tmp_path / "out")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot be read as a Lightning checkpoint"):
        export(tmp_path / "junk.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_torch_sparse_export_loaded_with_other_threads_warns_and_fine_tunes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 4))
    model, runtime = masked(model, target=0.98)
    exported = export(
        model, tmp_path / "out", runtime=runtime, format=TorchSparse((64,), threads=1),
        input_shape=(512,),
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the export chose on 1
    try:
        with pytest.warns(MachineWarning, match="torch threads 1 there, 2 here"):
            loaded = load_model_from(exported.path)
    finally:
        torch.set_num_threads(threads)
    csr = [m for m in loaded.modules() if isinstance(m, CsrLayer)]
    assert csr, exported.manifest["layers"]
    loaded.train()
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.1)
    before = [layer.weight_values.detach().clone() for layer in csr]
    loss = loaded(torch.randn(8, 512)).square().mean()
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(b, layer.weight_values) for b, layer in zip(before, csr))


def load_model_from(path):
    return load_sparse(path, nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 4)))
