"""`acdc export` as a user runs it on `acdc run`'s folders: both formats, checkpoints, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from acdc_recipe.cli.main import main
from acdc_recipe.exporter import ExportError, load_model, load_sparse
from acdc_recipe.formats.checkpoint import load_safetensors
from acdc_recipe.formats.mask_file import load_masks
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.language.loading import load_recipe
from acdc_recipe.models import build_model

from .shell import TINY, acdc

PER_EPOCH = ["--set", "train.checkpoint_every_steps=null"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = acdc("run", TINY, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """A run whose schedule ends dense: no sparse model, and a dense-phase last checkpoint."""
    folder = tmp_path_factory.mktemp("dense-run")
    recipe = folder / "ends-dense.yaml"
    text = TINY.read_text().replace(
        "{sparse: 1}, {dense: 1}, {sparse: 2}", "{sparse: 1}, {dense: 1}"
    )
    recipe.write_text(text.replace("name: tiny", "name: ends-dense"))
    result = acdc("run", recipe, "--out", folder / "out", "--device", "cpu", *PER_EPOCH)
    assert result.returncode == 0, result.stderr
    return folder / "out"


def tiny_model():
    return build_model(load_recipe(TINY).train.model)


def test_export_compressed_round_trips_the_sparse_model_bitwise(run, capsys):
    assert main(["export", str(run)]) == 0
    out = capsys.readouterr().out
    assert "export-compressed" in out and "pruned weights:" in out
    folder = run / "export-compressed"
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors",
        "config.json",
        "manifest.json",
        "recipe.yaml",
    }
    sparse = load_safetensors(run / "sparse.safetensors")
    loaded = load_sparse(folder, tiny_model()).state_dict()
    assert loaded.keys() == sparse.keys()
    assert all(torch.equal(loaded[k], sparse[k]) for k in sparse)


def test_export_torch_sparse_with_batch_and_threads(run, tmp_path, capsys):
    target = tmp_path / "fast"
    args = ["export", str(run), "-o", str(target), "--format", "torch-sparse",
            "--batch-sizes", "8,1", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pruned layers on CSR kernels (batches 1,8, 1 thread, cpu)" in out
    assert "pruned weight tensors)" in out
    assert "dense copies for the batch sizes where dense is faster" in out
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["source"] == f"run {run}" and manifest["recipe"] == "tiny"
    model = tiny_model()
    model.load_state_dict(load_safetensors(run / "sparse.safetensors"))
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_sparse(target, tiny_model())(x), model.eval()(x))
        torch.testing.assert_close(load_model(target)(x), model(x))  # the recipe's model


def test_load_model_rebuilds_a_runs_dense_and_sparse_models(run):
    for which in ("dense", "sparse"):
        loaded = load_model(run, which).state_dict()
        saved = load_safetensors(run / f"{which}.safetensors")
        assert loaded.keys() == saved.keys()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    with pytest.raises(ExportError, match="holds the sparse model only"):
        load_model(run / "export-compressed", "dense")


def test_export_a_checkpoint_of_a_sparse_phase(run, tmp_path):
    newest = RunDir(run).checkpoint_files()[0]
    assert main(["export", str(newest), "-o", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"].startswith(f"checkpoint {newest}")
    assert manifest["sparsity"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{dense}"], "has no sparse model (sparse.safetensors)"),
        (["{dense_checkpoint}"], "is in a dense phase"),
        (["{missing}"], "does not exist"),
        (["{recipe_only}"], "is not a run directory"),
    ],
)
def test_bad_input_is_one_paragraph_exit_2_and_writes_nothing(
    dense_run, tmp_path, capsys, args, message
):
    (tmp_path / "recipe_only").mkdir()
    places = {
        "dense": dense_run,
        "dense_checkpoint": RunDir(dense_run).checkpoint_files()[0],
        "missing": tmp_path / "nowhere",
        "recipe_only": tmp_path / "recipe_only",
    }
    before = sorted(p.name for p in dense_run.iterdir())
    target = tmp_path / "out"
    assert main(["export", *(a.format(**places) for a in args), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not target.exists() and sorted(p.name for p in dense_run.iterdir()) == before


def test_masks_not_applied_an_export_as_source_and_a_trainer_folder_without_state(
    run, tmp_path, capsys
):
    """Each is one paragraph, exit 2, and nothing is written."""
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in ("recipe.yaml", "masks.safetensors"):
        (edited / name).write_bytes((run / name).read_bytes())
    state = load_safetensors(run / "sparse.safetensors")
    pruned = next(iter(load_masks(run / "masks.safetensors").masks))
    state[pruned] = state[pruned] + 1.0  # non-zero where the mask prunes
    save_file(state, str(edited / "sparse.safetensors"))
    trainer_folder = tmp_path / "checkpoint-4"
    trainer_folder.mkdir()
    save_file(state, str(trainer_folder / "model.safetensors"))
    export_folder = tmp_path / "an-export"
    assert main(["export", str(run), "-o", str(export_folder)]) == 0
    capsys.readouterr()
    for source, message in [
        (edited, f"the masks were not applied: {pruned}"),
        (export_folder, "is an export, not a model to export"),
        (trainer_folder, "not written with the acdc callback"),
    ]:
        target = tmp_path / "out"
        assert main(["export", str(source), "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not target.exists()


def test_unknown_format_and_bad_numbers_from_the_shell_have_no_traceback(run):
    for extra in (["--format", "onnx"], ["--batch-sizes", "0"], ["--input-shape", "1,x"]):
        result = acdc("export", run, *extra)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "error:" in result.stderr
    assert not (run / "export-onnx").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--precision", "bf16"], "precision bf16 is for device cuda"),
        (["--format", "compressed", "--device", "cuda"], "steer the torch-sparse format"),
        pytest.param(
            ["--device", "cuda"], "torch sees none",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)  # fmt: skip
def test_a_device_or_precision_the_export_cannot_time_on_is_one_paragraph(
    run, tmp_path, capsys, extra, message
):
    target = tmp_path / "out"
    args = ["export", str(run), "-o", str(target), "--format", "torch-sparse", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not target.exists()
