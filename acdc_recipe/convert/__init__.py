"""Recipes from elsewhere as acdc recipes: SparseML recipes and the paper's reference-code
configs, converted to the exact same timeline, with a report of what was mapped, what was
approximated and what has no equivalent.

    conversion = convert_recipe("ac_dc_recipe.md")   # SparseML, detected from the content
    conversion.recipe        # the validated Recipe
    conversion.text          # the YAML to write (the report is its header comment)
    conversion.report.lines()
    convert_recipe("config.yaml", epochs=100, model="resnet50")   # any `ConvertOptions` field
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from acdc_recipe.convert.options import ConvertOptions
from acdc_recipe.convert.output import Conversion
from acdc_recipe.convert.reference import convert_reference, is_reference
from acdc_recipe.convert.report import (
    SOURCE_FORMATS,
    ConversionError,
    ConversionReport,
    ReportItem,
)
from acdc_recipe.convert.sparseml import convert_sparseml, is_sparseml
from acdc_recipe.convert.sparseml_yaml import parse_yaml

CONVERTERS = {"sparseml": convert_sparseml, "reference": convert_reference}
RECOGNISERS = {"sparseml": is_sparseml, "reference": is_reference}


def convert_recipe(
    source: str | Path,
    source_format: str | None = None,
    options: ConvertOptions | None = None,
    **fields: Any,
) -> Conversion:
    """Convert the file `source` ("sparseml" or "reference"; detected when not given).

    `options` (or its fields given as keywords: `epochs`, the run's length, required for
    reference configs; `model`, the model of a `train` section; see `ConvertOptions`) say
    what the conversion may do. Raises `ConversionError` (a `UserError`) with one paragraph
    when the file cannot be converted.
    """
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConversionError(f"cannot read {source}: {reason}") from None
    return convert_text(text, str(source), source_format, options, **fields)


def convert_text(
    text: str,
    source: str,
    source_format: str | None = None,
    options: ConvertOptions | None = None,
    **fields: Any,
) -> Conversion:
    """`convert_recipe` for text already in memory; `source` names it (a `.md` name means a
    markdown recipe card, whose YAML front matter is the recipe)."""
    if source_format is not None and source_format not in SOURCE_FORMATS:
        raise ConversionError(
            f"unknown source format {source_format!r}; choose {' or '.join(SOURCE_FORMATS)}"
        )
    options = replace(options or ConvertOptions(), **fields).check()
    data = parse_yaml(text, source)
    if source_format is None:
        source_format = detect_format(data)
        if source_format is None:
            raise ConversionError(f"{source} is {_describe(data)}")
    elif not RECOGNISERS[source_format](data):
        expected = "a SparseML recipe" if source_format == "sparseml" else "a reference config"
        raise ConversionError(f"{source} is not {expected}: it is {_describe(data)}")
    return CONVERTERS[source_format](data, source, options)


def detect_format(data: Any) -> str | None:
    """The format of parsed YAML: "sparseml", "reference", or None for neither."""
    if is_sparseml(data):
        return "sparseml"
    if is_reference(data):
        return "reference"
    return None


def _describe(data: Any) -> str:
    """What a file that is not a convertible recipe holds, for the error message."""
    neither = (
        "neither a SparseML recipe (a `modifiers` list of !Modifier entries) nor a reference "
        "config (`pruners`, `recyclers`, `trainers`)"
    )
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a YAML {type(data).__name__}"
        return f"{neither}: the file is {kind}, not a mapping of keys"
    if "schedule" in data and ("version" in data or "name" in data):
        return f"{neither}: it is already an acdc recipe (it has `schedule`), use it as it is"
    keys = ", ".join(str(k) for k in list(data)[:8]) + (", ..." if len(data) > 8 else "")
    return f"{neither}: its top-level keys are {keys}"


__all__ = [
    "Conversion",
    "ConvertOptions",
    "ConversionError",
    "ConversionReport",
    "ReportItem",
    "convert_recipe",
    "convert_text",
    "detect_format",
]
