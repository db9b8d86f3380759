"""transformers models built from configs: Conv1D, tied embeddings, tracing, token-id FLOPs."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from acdc_recipe.compiler import CompileError
from acdc_recipe.language.schema import Recipe
from acdc_recipe.runtime import select_masks

from ..conftest import TOKEN_VOCAB, tiny_bert, tiny_gpt2, tiny_vit
from .conftest import compile, make_recipe


def token_recipe(length: int = 8, **sparsity) -> Recipe:
    data = make_recipe(**sparsity).model_dump()
    data["train"] = {"model": {"name": "x", "input_shape": [length], "input_dtype": "int64"}}
    return Recipe.model_validate(data)


def weight_op_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs torch counts for matrix multiplies and convolutions (what the compiler counts)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    ops = {"addmm", "mm", "convolution", "_convolution"}
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if op.__name__ in ops)


def test_gpt2_prunes_every_conv1d_along_its_input_axis_and_not_its_tied_embedding() -> None:
    model = tiny_gpt2()
    compiled = compile(model, token_recipe())
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert [p.layer for p in compiled.params] == conv1d and len(conv1d) == 8
    assert {(p.op, p.input_axis) for p in compiled.params} == {("Conv1D", 0)}
    (tied,) = compiled.tied
    assert tied.names == ("transformer.wte.weight", "lm_head.weight")
    assert tied.decision == "embedding"
    assert compiled.not_pruned["transformer.wpe.weight"] == "embedding"
    # FLOPs of token-id inputs: every Conv1D and the (unpruned) output projection
    x = torch.zeros(1, 8, dtype=torch.long)
    assert compiled.dense_forward_flops == weight_op_flops(model, x)
    assert compiled.weight_flops["transformer.wte.weight"] == 2 * 8 * 32 * TOKEN_VOCAB


def test_a_rule_can_include_the_tied_embedding() -> None:
    model = tiny_gpt2()
    compiled = compile(model, token_recipe(rules=[{"match": "lm_head", "include": True}]))
    assert "transformer.wte.weight" in compiled.plan.names
    (tied,) = compiled.tied
    assert tied.decision == "pruned"


def test_gpt2_two_four_masks_run_along_the_stored_input_axis() -> None:
    model = tiny_gpt2()
    compiled = compile(model, token_recipe(pattern="2:4"))
    update = next(u for phase in compiled.plan.updates for u in phase)
    masks = select_masks(
        compiled.parameters, update.groups, [p.input_axis for p in compiled.params]
    )
    for param, mask in zip(compiled.params, masks, strict=True):
        features_in, features_out = param.shape
        kept = mask.reshape(features_in // 4, 4, features_out).sum(dim=1)
        assert torch.equal(kept, torch.full_like(kept, 2.0)), param.name


def test_bert_prunes_its_linears_but_the_classifier_and_counts_token_flops() -> None:
    model = tiny_bert()
    compiled = compile(model, token_recipe())
    linears = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert compiled.plan.names == linears[:-1] and len(linears) == 14
    assert linears[-1] == "classifier.weight" and compiled.not_pruned[linears[-1]] == "head"
    embeddings = [n for n, r in compiled.not_pruned.items() if r == "embedding"]
    assert embeddings == [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
    ]
    assert compiled.tied == ()
    x = torch.zeros(1, 8, dtype=torch.long)
    assert compiled.dense_forward_flops == weight_op_flops(model, x)


def test_vit_prunes_its_patch_conv_and_linears_and_keeps_its_tokens() -> None:
    model = tiny_vit()
    compiled = compile(model, make_recipe((3, 16, 16)))
    layers = [
        f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    assert compiled.plan.names == layers
    assert compiled.not_pruned["vit.embeddings.cls_token"] == "other"
    assert compiled.dense_forward_flops == weight_op_flops(model, torch.zeros(1, 3, 16, 16))


def test_the_tracer_line_says_which_and_why_and_nothing_else_is_logged(caplog, capsys) -> None:
    import transformers

    with caplog.at_level(logging.DEBUG):
        compiled = compile(tiny_gpt2(), token_recipe())
    assert compiled.tracer == "transformers.utils.fx"
    if compiled.traced:
        assert compiled.trace_error is None
    else:
        assert transformers.__version__ in compiled.trace_error
        (line,) = [w for w in compiled.warnings if "could not trace" in w]
        assert "walking the module tree" in line
    assert capsys.readouterr() == ("", "")
    assert [r for r in caplog.records if r.name.startswith("acdc")] == []


def test_a_rule_matching_nothing_in_a_transformers_model_names_near_misses() -> None:
    with pytest.raises(CompileError, match=r"rule 0 .*matches no layer.*c_attn"):
        compile(tiny_gpt2(), token_recipe(rules=[{"match": "transformer.h.0.attn.c_atn"}]))


def test_float_example_inputs_for_a_token_model_say_what_to_set() -> None:
    with pytest.raises(CompileError, match="example inputs the model takes"):
        compile(tiny_gpt2(), make_recipe((8,)))


def tiny_llama(tied: bool, classify: bool = False) -> nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=TOKEN_VOCAB, max_position_embeddings=32,
        tie_word_embeddings=tied, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    if classify:
        return transformers.LlamaForSequenceClassification(config)
    return transformers.LlamaForCausalLM(config)


def test_an_untied_llama_lm_head_stays_dense_by_default_and_a_rule_prunes_it() -> None:
    model = tiny_llama(tied=False)
    compiled = compile(model, token_recipe())
    assert "lm_head.weight" not in compiled.plan.names and compiled.tied == ()
    assert compiled.not_pruned["lm_head.weight"] == "head"
    assert len(compiled.params) == 14  # 2 layers x (4 attention + 3 MLP projections)
    pruned = compile(model, token_recipe(rules=[{"match": "lm_head", "target": 0.5}]))
    assert pruned.plan.names[-1] == "lm_head.weight"
    assert pruned.params[-1].rule == 0 and pruned.params[-1].rule_target == 0.5
    kept = compile(model, token_recipe(rules=[{"match": "lm_head", "dense": True}]))
    assert [d.name for d in kept.dense] == ["lm_head.weight"]  # an explicit dense rule claims it


def test_a_tied_llama_head_is_the_embedding_as_before() -> None:
    compiled = compile(tiny_llama(tied=True), token_recipe())
    (tied,) = compiled.tied
    assert tied.names == ("model.embed_tokens.weight", "lm_head.weight")
    assert tied.decision == "embedding" and len(compiled.params) == 14


def test_sequence_classification_heads_stay_dense_and_a_rule_prunes_them() -> None:
    score = compile(tiny_llama(tied=False, classify=True), token_recipe())
    assert score.not_pruned["score.weight"] == "head"
    bert = tiny_bert()
    assert "classifier.weight" not in compile(bert, token_recipe()).plan.names
    pruned = compile(bert, token_recipe(rules=[{"match": "classifier"}]))
    assert "classifier.weight" in pruned.plan.names
    assert pruned.params[pruned.plan.names.index("classifier.weight")].scope == "global"


def test_only_transformers_models_have_heads() -> None:
    from acdc_recipe.compiler.heads import output_heads

    plain = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    plain.classifier = nn.Linear(2, 2)
    assert output_heads(plain) == ()
    assert output_heads(tiny_vit()) == ()  # an image classifier: its head is pruned as before
    assert output_heads(tiny_llama(tied=False)) == ("lm_head",)
