"""Every shipped recipe compiles against the model it names (built without weights)."""

import pytest

from acdc_recipe.compiler.emit import plan_json
from acdc_recipe.language.loading import load_recipe, shipped_recipes
from acdc_recipe.models import compile_recipe_model


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipe_compiles(name):
    recipe = load_recipe(name)
    compiled = compile_recipe_model(recipe)
    assert bool(compiled.params) == (recipe.sparsity is not None)
    plan = plan_json(compiled)
    assert plan["recipe"]["hash"] == compiled.recipe_hash
    assert plan["totals"]["prunable_params"] == len(compiled.params)
    dense_rules = {r.match for r in (recipe.sparsity.rules if recipe.sparsity else ()) if r.dense}
    assert not any(p.layer in dense_rules for p in compiled.params)
