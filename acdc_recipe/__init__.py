"""acdc-recipe: declarative AC/DC sparsity recipes for PyTorch.

    recipe = acdc_recipe.load_recipe("recipes/quickstart.yaml", sparsity=0.95)
    compiled = acdc_recipe.compile(model, recipe)
    runtime = acdc_recipe.attach(compiled, optimizer, steps_per_epoch=len(loader))
    # ... your own loop: runtime.begin_step(); loss.backward(); optimizer.step()

Importing this package does not import torch: `compile` and `attach` import the compiler and
the engine on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from acdc_recipe.build import acdc
from acdc_recipe.errors import RecipeError, UserError
from acdc_recipe.loading import dump_recipe, load_recipe, load_recipe_text
from acdc_recipe.schema import Recipe
from acdc_recipe.timeline import Timeline, lower

if TYPE_CHECKING:
    import torch

    from acdc_recipe.compiler import CompiledRecipe
    from acdc_recipe.runtime import SparsityRuntime

__version__ = "0.1.0"


def compile(model: Any, recipe: Recipe, example_inputs: Any = None) -> CompiledRecipe:  # noqa: A001
    """Compile `recipe` against `model` (see `acdc_recipe.compiler.compile`)."""
    from acdc_recipe.compiler import compile as compile_recipe

    return compile_recipe(model, recipe, example_inputs)


def attach(
    compiled: CompiledRecipe,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int | None = None,
    sparse_kernels: str = "off",
) -> SparsityRuntime:
    """Execute `compiled`'s plan through `optimizer` (see `acdc_recipe.runtime.attach`);
    `sparse_kernels` "auto" or "on" runs sparse phases on CSR kernels."""
    from acdc_recipe.runtime import attach as attach_runtime

    return attach_runtime(
        compiled, optimizer, steps_per_epoch=steps_per_epoch, sparse_kernels=sparse_kernels
    )


__all__ = [
    "Recipe",
    "RecipeError",
    "Timeline",
    "UserError",
    "acdc",
    "attach",
    "compile",
    "dump_recipe",
    "load_recipe",
    "load_recipe_text",
    "lower",
]
