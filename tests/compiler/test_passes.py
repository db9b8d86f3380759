"""compile(model, recipe) end to end: the instrumented module, params, errors, wrappers."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from acdc_recipe.compiler import CompileError
from acdc_recipe.compiler.emit import plan_json
from acdc_recipe.language.timeline import lower

from .conftest import AttentionNet, BranchyNet, SmallCNN, compile, make_recipe, vision_model


def test_attention_model_compiles_and_matches() -> None:
    torch.manual_seed(0)
    model = AttentionNet().eval()
    compiled = compile(model, make_recipe((6, 16)))
    assert compiled.traced and compiled.trace_error is None
    # named_parameters order: the root's own parameters come before its children's.
    assert [p.name for p in compiled.params] == [
        "proj_weight",
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "head.weight",
    ]
    expected = (
        model.proj_weight,
        model.attn.in_proj_weight,
        model.attn.out_proj.weight,
        model.head.weight,
    )
    assert all(a is b for a, b in zip(compiled.parameters, expected, strict=True))
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        assert torch.equal(compiled.module(x), model(x))
    assert compiled.module.acdc_compiled is compiled
    assert not any(
        isinstance(b, torch.Tensor) and b.dtype == torch.bool for b in compiled.module.buffers()
    )
    annotated = {n.name: n.meta["acdc"] for n in compiled.module.graph.nodes if "acdc" in n.meta}
    assert set(annotated) == {"attn", "linear", "head"}
    (site,) = annotated["attn"]
    assert [w["name"] for w in site["weights"]] == ["attn.in_proj_weight", "attn.out_proj.weight"]
    assert site["weights"][0]["flops"] == 2 * 6 * 16 * 48 and site["weights"][0]["target"] > 0


def test_fallback_still_compiles() -> None:
    model = BranchyNet()
    compiled = compile(model, make_recipe((3, 8, 8)))
    assert not compiled.traced and compiled.module is model
    assert "control flow" in compiled.trace_error
    assert any("could not trace" in w for w in compiled.warnings)
    assert [p.name for p in compiled.params] == ["conv.weight", "fc.weight"]
    assert model.acdc_compiled is compiled
    assert plan_json(compiled)["tracer"]["traced"] is False


class DDPLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@pytest.mark.slow
@pytest.mark.parametrize("wrap", [DDPLike, torch.compile, lambda m: DDPLike(torch.compile(m))])
def test_rules_match_through_wrappers(wrap) -> None:
    model = SmallCNN()
    recipe = make_recipe(
        (3, 8, 8), rules=[{"match": "conv1", "dense": True}, {"match": "fc.weight", "target": 0.5}]
    )
    plain = compile(model, recipe)
    wrapped = compile(wrap(model), recipe)
    assert (
        [p.name for p in wrapped.params]
        == [p.name for p in plain.params]
        == ["conv2.weight", "fc.weight"]
    )
    assert [p.name for p in wrapped.dense] == ["conv1.weight"]
    assert wrapped.unwrapped and wrapped.params[1].rule == 1


def test_global_target_is_exact_and_rules_are_recorded() -> None:
    model = vision_model("resnet18")
    recipe = make_recipe(
        (3, 32, 32),
        rules=[{"match": "conv1", "dense": True}, {"match": "re:layer4\\..*conv2", "target": 0.95}],
    )
    compiled = compile(model, recipe)
    assert len(compiled.params) == 20 and compiled.dense[0].name == "conv1.weight"
    pool = [p for p in compiled.params if p.scope == "global"]
    groups = compiled.plan.updates[1][0].groups  # the first sparse phase
    assert groups[0].indices == tuple(
        i for i, p in enumerate(compiled.params) if p.scope == "global"
    )
    assert groups[0].prune == round(0.9 * sum(p.numel for p in pool))
    ruled = [p for p in compiled.params if p.rule == 1]
    assert [p.name for p in ruled] == ["layer4.0.conv2.weight", "layer4.1.conv2.weight"]
    assert all(abs(p.target - 0.95) < 1e-6 and p.scope == "layer" for p in ruled)
    assert compiled.timeline == lower(recipe.schedule)


def test_rule_that_matches_nothing_is_a_compile_error() -> None:
    recipe = make_recipe((3, 8, 8), rules=[{"match": "conv3", "dense": True}])
    with pytest.raises(CompileError, match=r"rule 0 \(match 'conv3'\) matches no layer.*'conv1'"):
        compile(SmallCNN(), recipe)


def test_nm_pattern_rejects_the_rgb_stem_and_suggests_dense() -> None:
    model = vision_model("resnet18")
    with pytest.raises(CompileError, match="layer 'conv1'.*3 input channels.*dense: true"):
        compile(model, make_recipe((3, 32, 32), pattern="2:4", target=0.5))
    compiled = compile(
        model,
        make_recipe(
            (3, 32, 32), pattern="2:4", target=0.5, rules=[{"match": "conv1", "dense": True}]
        ),
    )
    assert all(
        g.prune == compiled.params[g.indices[0]].numel // 2
        for g in compiled.plan.updates[1][0].groups
    )


def test_recipe_hash_is_sha256_of_canonical_json_without_the_resumable_keys() -> None:
    recipe = make_recipe((3, 8, 8))
    compiled = compile(SmallCNN(), recipe)
    data = recipe.model_dump(mode="json")
    train = data["train"]
    del train["optimizer"]["lr"], train["lr_schedule"], train["grad_clip"]
    del train["checkpoint_every_steps"], train["eval_batch_size"], train["data"]["num_workers"]
    del train["sparse_kernels"]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert compiled.recipe_hash == hashlib.sha256(text.encode()).hexdigest()
    assert (
        compile(SmallCNN(), make_recipe((3, 8, 8), target=0.8)).recipe_hash != compiled.recipe_hash
    )
    lower_lr = recipe.model_copy(
        update={
            "train": recipe.train.model_copy(
                update={"optimizer": recipe.train.optimizer.model_copy(update={"lr": 0.01})}
            )
        }
    )
    assert compile(SmallCNN(), lower_lr).recipe_hash == compiled.recipe_hash


def test_no_example_input_warns_and_skips_flops(small_cnn) -> None:
    compiled = compile(small_cnn, make_recipe())
    assert compiled.dense_forward_flops == 0
    assert any("FLOPs not computed" in w for w in compiled.warnings)


def test_bad_example_input_is_a_compile_error(small_cnn) -> None:
    with pytest.raises(CompileError, match="example input of shape"):
        compile(small_cnn, make_recipe((5, 8, 8)))


def test_plan_is_json_and_complete(small_cnn) -> None:
    plan = plan_json(compile(small_cnn, make_recipe((3, 8, 8))))
    text = json.dumps(plan)
    assert json.loads(text) == plan
    entry = plan["params"][0]
    assert set(entry) >= {"name", "shape", "rule", "target", "pattern", "dense_flops", "scope"}
    assert plan["totals"]["prunable_params"] == 3 and plan["timeline"]["length"] == 18
    assert plan["flops"]["assumption"] is not None  # global scope states its assumption


def test_compile_leaves_the_model_unchanged(small_cnn) -> None:
    before = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    compile(small_cnn, make_recipe((3, 8, 8)))
    after = small_cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert small_cnn.training
