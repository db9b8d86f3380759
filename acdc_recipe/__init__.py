"""acdc-recipe: declarative AC/DC sparsity recipes for PyTorch.

    recipe = acdc_recipe.load_recipe("recipes/quickstart.yaml", sparsity=0.95)
    compiled = acdc_recipe.compile(model, recipe)
    runtime = compiled.attach(optimizer, steps_per_epoch=len(loader))
    # ... your own loop: loss.backward(); optimizer.step()

Importing this package does not import torch; `compile` does, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from acdc_recipe.build import acdc
from acdc_recipe.errors import RecipeError, UserError
from acdc_recipe.loading import dump_recipe, load_recipe, load_recipe_text
from acdc_recipe.schema import Recipe
from acdc_recipe.timeline import Timeline, lower

if TYPE_CHECKING:
    from acdc_recipe.compiler import CompiledRecipe

__version__ = "0.1.0"


def compile(model: Any, recipe: Recipe, example_inputs: Any = None) -> CompiledRecipe:  # noqa: A001
    """Compile `recipe` against `model` (see `acdc_recipe.compiler.compile`)."""
    from acdc_recipe.compiler import compile as compile_recipe

    return compile_recipe(model, recipe, example_inputs)


__all__ = [
    "Recipe",
    "RecipeError",
    "Timeline",
    "UserError",
    "acdc",
    "compile",
    "dump_recipe",
    "load_recipe",
    "load_recipe_text",
    "lower",
]
