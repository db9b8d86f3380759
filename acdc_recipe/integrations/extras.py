"""Importing an optional dependency, with an error that names the pip command when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from acdc_recipe.errors import UserError


class MissingExtraError(UserError, ImportError):
    """An integration's optional dependency is not installed."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`import module`, or raise `MissingExtraError` saying how to install `extra`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.partition(".")[0]
        raise MissingExtraError(
            f"{feature} needs the {top} package, which cannot be imported ({error}); install it "
            f"with: pip install 'acdc-recipe[{extra}]'"
        ) from None
