"""What a trainer callback records beside a model it saves (`run_dir.ModelFolder`).

config.json (transformers' own for a transformers model, else one of its own) gets one more
key, `acdc_recipe`: the resolved recipe, its hash, which model of the pair the folder holds and,
for the sparse one, the achieved sparsity. masks.safetensors (`mask_file`) beside the sparse
model names its pruned weights, so an exporter reads the folder without the recipe's model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acdc_recipe.files import write_text_atomic
from acdc_recipe.formats.run_dir import ModelFolder

RECORD_KEY = "acdc_recipe"


@dataclass(frozen=True)
class ModelRecord:
    """The recipe a saved model was trained with, and how sparse it is."""

    recipe: str  # resolved recipe text
    recipe_hash: str
    which: str  # "dense" or "sparse"
    sparsity: float | None = None  # the sparse model's pruned fraction of its masked weights


def write_record(folder: ModelFolder, record: ModelRecord) -> None:
    """Add `record` to the folder's config.json (made when the model has none)."""
    config = read_json(folder.config) if folder.config.is_file() else {}
    config[RECORD_KEY] = asdict(record)
    write_text_atomic(folder.config, json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(folder: ModelFolder) -> tuple[dict[str, Any], ModelRecord | None]:
    """(the model's own config fields, the acdc record) of a folder's config.json; empty and
    None where it has none. `ValueError` when the file is not a JSON object or the record is
    malformed."""
    if not folder.config.is_file():
        return {}, None
    config = read_json(folder.config)
    record = config.pop(RECORD_KEY, None)
    if record is None:
        return config, None
    try:
        return config, ModelRecord(**record)
    except TypeError:
        raise ValueError(f"{folder.config} holds a malformed {RECORD_KEY} record") from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; `ValueError` for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read as JSON ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data
