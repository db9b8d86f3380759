"""The Python twin of a recipe equals the YAML one."""

from acdc_recipe import acdc, dump_recipe, load_recipe, load_recipe_text
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
