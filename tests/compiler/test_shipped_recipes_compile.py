"""Every shipped recipe compiles against the model it names (built without weights)."""

import pytest

from acdc_recipe.compiler import compile_plan
from acdc_recipe.loading import load_recipe, shipped_recipes


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipe_compiles(name):
    recipe = load_recipe(name)
    compiled = compile_plan(recipe)
    assert bool(compiled.params) == (recipe.sparsity is not None)
    plan = compiled.plan()
    assert plan["recipe"]["hash"] == compiled.recipe_hash
    assert plan["totals"]["prunable_params"] == len(compiled.params)
    dense_rules = {r.match for r in (recipe.sparsity.rules if recipe.sparsity else ()) if r.dense}
    assert not any(p.layer in dense_rules for p in compiled.params)
