"""`acdc run` on a language model: a tiny GPT-2 from its config learning next bytes of the
Python standard library (the shipped recipe, shortened)."""

from __future__ import annotations

import json

import pytest

from acdc_recipe.compiler import CompileError
from acdc_recipe.formats.checkpoint import load_safetensors
from acdc_recipe.language.train_config import ModelSpec
from acdc_recipe.models import build_model

from .shell import acdc

RECIPE = "tiny_gpt2_python_source"
SHORT = ["--set", "train.data.max_tokens=12000", "--set", "train.data.sequence_length=32",
         "--set", "train.model.input_shape=[32]", "--set", "train.batch_size=16"]  # fmt: skip


def test_acdc_run_trains_a_language_model_on_token_ids(tmp_path) -> None:
    result = acdc("run", RECIPE, *SHORT, "--out", tmp_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["achieved_sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert set(summary["per_layer_sparsity"]) == {
        f"transformer.h.{i}.{layer}.weight"
        for i in range(2)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert summary["sparse_top1"] > 1 / 256  # next-byte accuracy above chance
    assert 0.3 < summary["inference_flops_multiplier"] < 1.0  # token-id FLOPs were counted
    sparse = load_safetensors(tmp_path / "sparse.safetensors")
    assert int((sparse["transformer.wte.weight"] == 0).sum()) == 0  # tied embedding kept dense
    zeros = sum(int((sparse[name] == 0).sum()) for name in summary["per_layer_sparsity"])
    total = sum(sparse[name].numel() for name in summary["per_layer_sparsity"])
    assert zeros == round(0.75 * total)
    exported = acdc("export", tmp_path, "--format", "torch-sparse", "--batch-size", "4")
    assert exported.returncode == 0, exported.stderr  # token ids, from the recipe's input_dtype
    assert "8 pruned layers have no CSR kernel (Conv1D) and stay dense" in exported.stdout


def test_a_vocabulary_the_model_cannot_score_is_a_setup_error(tmp_path) -> None:
    result = acdc(
        "run", RECIPE, *SHORT, "--set", "train.model.kwargs.vocab_size=100", "--out", tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "token ids go up to 255" in result.stderr
    assert "train.model.kwargs.vocab_size: 256" in result.stderr


def test_transformers_models_are_built_by_name_and_checked() -> None:
    model = build_model(
        ModelSpec(name="transformers:gpt2", kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2})
    )
    assert type(model).__name__ == "GPT2LMHeadModel" and len(model.transformer.h) == 1
    with pytest.raises(
        CompileError, match="no causal language model of type 'gtp2'.*'transformers:gpt2'"
    ):
        build_model(ModelSpec(name="transformers:gtp2"))
    with pytest.raises(
        CompileError, match="gpt2 configs have no field 'n_layers'; did you mean 'n_layer'"
    ):
        build_model(ModelSpec(name="transformers:gpt2", kwargs={"n_layers": 1}))
