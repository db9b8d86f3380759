"""`CompileError`: a recipe that cannot be applied to this model (a rule, a pattern, a shape)."""

from __future__ import annotations

from acdc_recipe.errors import KeyPath, UserError, format_path


class CompileError(UserError, ValueError):
    """A problem found while compiling a recipe against a model; str() is one paragraph.

    `path` is the recipe key at fault (e.g. ``("sparsity", "rules", 2, "match")``) and
    `layer` the model layer, when there is one.
    """

    def __init__(self, message: str, path: KeyPath = (), layer: str | None = None) -> None:
        self.path = path
        self.layer = layer
        where = f"recipe key `{format_path(path)}`: " if path else ""
        super().__init__(where + message)


class ExampleInputError(CompileError):
    """The model did not run on the example inputs it was compiled with."""
