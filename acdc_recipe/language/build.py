"""The Python twin of a recipe file: build the same `Recipe` in a call or two."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from acdc_recipe.language.loading import validate_recipe
from acdc_recipe.language.schema import Recipe


def acdc(
    target: float = 0.9,
    epochs: int = 100,
    *,
    warmup: int = 10,
    sparse: int = 5,
    dense: int = 5,
    last_dense: int = 10,
    final_sparse: int = 15,
    scope: str = "global",
    min_density: float | None = None,
    min_per_channel: int | None = None,
    pattern: str = "unstructured",
    prunable: Sequence[str] | None = None,
    rules: Sequence[Mapping[str, Any]] = (),
    unit: str = "epoch",
    on_decompress: str = "reset",
    name: str | None = None,
    train: Mapping[str, Any] | None = None,
) -> Recipe:
    """An AC/DC recipe; the defaults are the paper's ImageNet schedule (100 epochs, 50 sparse).
    Bad arguments raise `RecipeError` naming the key, as a recipe file's would.

    >>> acdc(0.95).schedule.acdc.final_sparse
    15
    """
    return validate_recipe(
        {
            "name": name or f"acdc{round(target * 100)}",
            "sparsity": {
                "target": target,
                "scope": scope,
                "min_density": min_density,
                "min_per_channel": min_per_channel,
                "pattern": pattern,
                "prunable": None if prunable is None else list(prunable),
                "rules": [dict(rule) for rule in rules],
            },
            "schedule": {
                "unit": unit,
                "acdc": {
                    "epochs": epochs,
                    "warmup": warmup,
                    "sparse": sparse,
                    "dense": dense,
                    "last_dense": last_dense,
                    "final_sparse": final_sparse,
                },
            },
            "optimizer_state": {"on_decompress": on_decompress},
            **({"train": dict(train)} if train is not None else {}),
        },
        "acdc(...)",
    )
