"""`CompileError`: a recipe that cannot be applied to this model (a rule, a pattern, a shape)."""

from __future__ import annotations

from collections.abc import Sequence

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

    @classmethod
    def of_all(cls, problems: Sequence[tuple[str, KeyPath]]) -> CompileError:
        """One error for every (message, recipe key) problem found: a single one as it is,
        several as a list (like a recipe's problems); `path` is the first one's key."""
        if len(problems) == 1:
            return cls(*problems[0])
        lines = [f"the recipe has {len(problems)} problems with this model:"]
        lines += [f"  - recipe key `{format_path(path)}`: {message}" for message, path in problems]
        error = cls("\n".join(lines))
        error.path = problems[0][1]
        return error


class ExampleInputError(CompileError):
    """The model did not run on the example inputs it was compiled with."""
