"""acdc-recipe: declarative AC/DC sparsity recipes for PyTorch.

    torch.set_num_threads(acdc_recipe.default_threads())  # all cores but one, as `acdc run`
    recipe = acdc_recipe.load_recipe("recipes/quickstart.yaml", sparsity=0.95)
    compiled = acdc_recipe.compile(model, recipe)
    runtime = acdc_recipe.attach(compiled, optimizer, steps_per_epoch=len(loader))
    # ... your own loop, while not runtime.finished:
    #     runtime.begin_step(); loss.backward(); optimizer.step()

    conversion = acdc_recipe.convert_recipe("sparseml_recipe.md")  # or a reference config
    conversion.recipe, conversion.text, conversion.report.lines()

    acdc_recipe.export("runs/quickstart", format="torch-sparse")  # faster files (or smaller)
    model = acdc_recipe.load_model("runs/quickstart/export-torch-sparse")  # or a run, "dense"
    model = acdc_recipe.load_sparse("runs/quickstart/export-torch-sparse", model)

Importing this package imports nothing else: every name loads its module on first use, so
the recipe language answers without torch and `compile`, `attach`, `export`, `load_model` and
`load_sparse` import the compiler, the engine and the exporter only when called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import torch

    from acdc_recipe.compiler import CompiledRecipe
    from acdc_recipe.convert import Conversion, ConversionError, convert_recipe
    from acdc_recipe.errors import RecipeError, UserError
    from acdc_recipe.exporter import Compressed, ExportConfig, Exported, TorchSparse
    from acdc_recipe.language.build import acdc
    from acdc_recipe.language.loading import dump_recipe, load_recipe, load_recipe_text
    from acdc_recipe.language.schema import Recipe
    from acdc_recipe.language.timeline import Timeline, lower
    from acdc_recipe.runtime import SparsityRuntime
    from acdc_recipe.trainer.session import default_threads

# Names this module hands out on first use, and the module that defines each.
_LAZY = {
    "Compressed": "acdc_recipe.exporter",
    "TorchSparse": "acdc_recipe.exporter",
    "Conversion": "acdc_recipe.convert",
    "ConversionError": "acdc_recipe.convert",
    "convert_recipe": "acdc_recipe.convert",
    "RecipeError": "acdc_recipe.errors",
    "UserError": "acdc_recipe.errors",
    "acdc": "acdc_recipe.language.build",
    "dump_recipe": "acdc_recipe.language.loading",
    "load_recipe": "acdc_recipe.language.loading",
    "load_recipe_text": "acdc_recipe.language.loading",
    "Recipe": "acdc_recipe.language.schema",
    "Timeline": "acdc_recipe.language.timeline",
    "lower": "acdc_recipe.language.timeline",
    "default_threads": "acdc_recipe.trainer.session",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'acdc_recipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"


def compile(model: Any, recipe: Recipe, example_inputs: Any = None) -> CompiledRecipe:  # noqa: A001
    """Compile `recipe` against `model` (see `acdc_recipe.compiler.compile`); without
    `example_inputs`, FLOPs are counted on one zero sample of `train.model.input_shape` when
    the recipe gives one."""
    from acdc_recipe.models import compile_model

    return compile_model(model, recipe, example_inputs)


def attach(
    compiled: CompiledRecipe,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int | None = None,
    sparse_kernels: str = "off",
) -> SparsityRuntime:
    """Execute `compiled`'s plan through `optimizer` (see `acdc_recipe.runtime.attach`);
    `sparse_kernels` "auto" or "on" runs sparse phases on sparse kernels."""
    from acdc_recipe.runtime import attach as attach_runtime

    return attach_runtime(
        compiled, optimizer, steps_per_epoch=steps_per_epoch, sparse_kernels=sparse_kernels
    )


def export(
    source: str | Path | torch.nn.Module,
    out: str | Path | None = None,
    format: str | ExportConfig = "compressed",  # noqa: A002
    *,
    runtime: SparsityRuntime | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
) -> Exported:
    """Export a run's (or a masked model's) sparse model; `format` is "compressed",
    "torch-sparse" or a format's config (`TorchSparse(batch_sizes=(1, 64), threads=1)`); see
    `acdc_recipe.exporter`."""
    from acdc_recipe.exporter import export as export_model

    return export_model(
        source,
        out,
        format,
        runtime=runtime,
        input_shape=input_shape,
        input_dtype=input_dtype,
    )


def load_model(path: str | Path, which: str = "sparse") -> torch.nn.Module:
    """The model of a run directory (`which`: "sparse" or "dense"), of an export, or of a
    trainer's output folder, rebuilt and loaded (see `acdc_recipe.exporter.load_model`)."""
    from acdc_recipe.exporter import load_model as load

    return load(path, which)  # type: ignore[arg-type]


def load_sparse(path: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load an export into `model` (see `acdc_recipe.exporter.load_sparse`)."""
    from acdc_recipe.exporter import load_sparse as load

    return load(path, model)


__all__ = [
    "Compressed",
    "Conversion",
    "ConversionError",
    "Recipe",
    "RecipeError",
    "Timeline",
    "TorchSparse",
    "UserError",
    "acdc",
    "attach",
    "compile",
    "convert_recipe",
    "default_threads",
    "dump_recipe",
    "export",
    "load_recipe",
    "load_model",
    "load_recipe_text",
    "load_sparse",
    "lower",
]
