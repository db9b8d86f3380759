"""The build folder: resolved recipe, plan.json, readable module code; atomic writes."""

from __future__ import annotations

import json

from acdc_recipe.compiler import compile
from acdc_recipe.compiler.emit import plan_json
from acdc_recipe.formats.build import write_build
from acdc_recipe.formats.run_dir import BuildDir

from ..compiler.conftest import SmallCNN, make_recipe


def test_write_build(tmp_path) -> None:
    compiled = compile(SmallCNN(), make_recipe())
    written = write_build(compiled, BuildDir(tmp_path / "out"), "name: test\n")
    assert sorted(p.name for p in written) == ["module.py", "plan.json", "recipe.yaml"]
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan == json.loads(json.dumps(plan_json(compiled)))
    assert "def forward(self" in (tmp_path / "out" / "module.py").read_text()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
