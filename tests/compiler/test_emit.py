"""The build folder: resolved recipe, plan.json, readable module code; atomic writes."""

from __future__ import annotations

from acdc_recipe.compiler.emit import module_code
from acdc_recipe.files import write_text_atomic

from .conftest import BranchyNet, compile, make_recipe, vision_model


def test_module_code_for_dual_and_fallback() -> None:
    dual = compile(vision_model("efficientnet_b0"), make_recipe((3, 32, 32)))
    code = module_code(dual)
    assert "# train mode" in code and "# eval mode" in code and "stochastic_depth" in code
    fallback = module_code(compile(BranchyNet(), make_recipe((3, 8, 8))))
    assert fallback.startswith("# not traced by torch.fx: TraceError")


def test_write_atomic_replaces(tmp_path) -> None:
    target = tmp_path / "file.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]
