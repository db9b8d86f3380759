"""The Python twin of a recipe equals the YAML one."""

import pytest

from acdc_recipe import RecipeError, acdc, dump_recipe, load_recipe, load_recipe_text
from acdc_recipe.language.timeline import lower


def test_acdc_defaults_are_the_paper_schedule_and_match_the_shipped_recipe():
    built = acdc(0.9, epochs=100, prunable=["Conv2d", "Linear"])
    shipped = load_recipe("resnet50_imagenet_acdc90")
    assert lower(built.schedule) == lower(shipped.schedule)
    assert built.sparsity.model_dump() == shipped.sparsity.model_dump()


def test_built_recipe_dumps_and_reloads_equal():
    recipe = acdc(0.95, epochs=20, warmup=4, sparse=2, dense=2, last_dense=2, final_sparse=4,
                  rules=[{"match": "fc", "dense": True}], train={"model": {"name": "mlp"}})  # fmt: skip
    assert load_recipe_text(dump_recipe(recipe)) == recipe


def test_bad_arguments_are_a_recipe_error_naming_the_key():
    with pytest.raises(RecipeError) as error:
        acdc(0.9, rules=[{"match": "re:("}], scope="globl")
    rendered = str(error.value)
    assert "acdc(...) at `sparsity.rules[0].match`: invalid regular expression" in rendered
    assert "acdc(...) at `sparsity.scope`" in rendered
    with pytest.raises(
        RecipeError, match="at `schedule.acdc.epochs`: the acdc macro cannot fill 7"
    ):
        acdc(0.9, epochs=7)


def test_the_guards_are_keywords_and_refused_where_they_cannot_apply():
    guarded = acdc(0.95, scope="lamp", min_per_channel=1, min_density=0.01)
    assert (guarded.sparsity.min_per_channel, guarded.sparsity.min_density) == (1, 0.01)
    assert load_recipe_text(dump_recipe(guarded)) == guarded
    with pytest.raises(RecipeError, match="at `sparsity`: .*min_per_channel floors layers"):
        acdc(0.9, scope="uniform", min_per_channel=1)
