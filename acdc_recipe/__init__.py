"""acdc-recipe: declarative AC/DC sparsity recipes for PyTorch.

    recipe = acdc_recipe.load_recipe("recipes/quickstart.yaml", sparsity=0.95)
    compiled = acdc_recipe.compile(model, recipe)
    runtime = acdc_recipe.attach(compiled, optimizer, steps_per_epoch=len(loader))
    # ... your own loop: runtime.begin_step(); loss.backward(); optimizer.step()

    conversion = acdc_recipe.convert_recipe("sparseml_recipe.md")  # or a reference config
    conversion.recipe, conversion.text, conversion.report.lines()

    acdc_recipe.export("runs/quickstart", format="torch-sparse")  # smaller, faster files
    model = acdc_recipe.load_sparse("runs/quickstart/export-torch-sparse", model)

Importing this package does not import torch: `compile`, `attach`, `export` and `load_sparse`
import the compiler, the engine and the exporter on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from acdc_recipe.build import acdc
from acdc_recipe.convert import Conversion, ConversionError, convert_recipe
from acdc_recipe.errors import RecipeError, UserError
from acdc_recipe.loading import dump_recipe, load_recipe, load_recipe_text
from acdc_recipe.schema import Recipe
from acdc_recipe.timeline import Timeline, lower

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import torch

    from acdc_recipe.compiler import CompiledRecipe
    from acdc_recipe.runtime import SparsityRuntime
    from acdc_recipe.runtime.export import Exported

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


def export(
    source: str | Path | torch.nn.Module,
    out: str | Path | None = None,
    *,
    format: str = "compressed",  # noqa: A002
    runtime: SparsityRuntime | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> Exported:
    """Export a run's (or a masked model's) sparse model (see `acdc_recipe.runtime.export`)."""
    from acdc_recipe.runtime.export import export as export_model

    return export_model(
        source,
        out,
        format=format,
        runtime=runtime,
        batch_size=batch_size,
        threads=threads,
        input_shape=input_shape,
        input_dtype=input_dtype,
        device=device,
        precision=precision,
    )


def load_sparse(path: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load an export into `model` (see `acdc_recipe.runtime.export.load_sparse`)."""
    from acdc_recipe.runtime.export import load_sparse as load

    return load(path, model)


__all__ = [
    "Conversion",
    "ConversionError",
    "Recipe",
    "RecipeError",
    "Timeline",
    "UserError",
    "acdc",
    "attach",
    "compile",
    "convert_recipe",
    "dump_recipe",
    "export",
    "load_recipe",
    "load_recipe_text",
    "load_sparse",
    "lower",
]
