"""The build folder `acdc compile -o` writes: the resolved recipe, plan.json (everything the
compiler decided) and module.py (the instrumented module's generated code); atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

from acdc_recipe.compiler import CompiledRecipe
from acdc_recipe.compiler.emit import module_code, plan_json
from acdc_recipe.files import write_text_atomic
from acdc_recipe.formats.run_dir import BuildDir


def write_build(compiled: CompiledRecipe, build: BuildDir, recipe_text: str) -> list[Path]:
    """Write the resolved recipe, the plan and the module code; return their paths."""
    build.path.mkdir(parents=True, exist_ok=True)
    files = {
        build.recipe: recipe_text,
        build.plan: json.dumps(plan_json(compiled), indent=2) + "\n",
        build.module: module_code(compiled),
    }
    for path, text in files.items():
        write_text_atomic(path, text)
    return list(files)
