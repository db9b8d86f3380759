"""`acdc compile`: outputs, --json, errors as one paragraph with exit 2, no torch for other verbs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from acdc_recipe.cli.main import main
from acdc_recipe.language.loading import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RESNET50 = ROOT / "recipes" / "resnet50_imagenet_acdc90.yaml"

SMALL = """
name: small-mlp
sparsity:
  target: 0.8
  rules: [{match: "{{ rule }}", dense: true}]
variables: {rule: "1"}
schedule:
  acdc: {epochs: 18, warmup: 2, sparse: 2, dense: 2, last_dense: 2, final_sparse: 4}
train:
  model: {name: mlp, kwargs: {in_features: 8, hidden: [16]}, input_shape: [8]}
"""


def test_compile_resnet50_recipe(tmp_path, capsys) -> None:
    assert main(["compile", str(RESNET50), "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "layer4.2.conv3.weight" in out and "training x0.55" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["totals"]["prunable_params"] == 54
    assert plan["totals"]["pruned_at_target"] == round(0.9 * plan["totals"]["prunable_weights"])
    resolved = load_recipe(tmp_path / "recipe.yaml")
    assert resolved == load_recipe(RESNET50)
    assert "def forward(self, x" in (tmp_path / "module.py").read_text()


def test_json_and_set(tmp_path, capsys, monkeypatch) -> None:
    recipe = tmp_path / "small.yaml"
    recipe.write_text(SMALL)
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(recipe), "--set", "sparsity.target=0.5", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["sparsity"]["target"] == 0.5
    assert [p["name"] for p in plan["dense"]] == ["1.weight"]
    assert [p["name"] for p in plan["params"]] == ["3.weight"]
    assert (tmp_path / "builds" / "small-mlp" / "plan.json").exists()


def test_rule_error_exits_2(tmp_path, capsys) -> None:
    recipe = tmp_path / "small.yaml"
    recipe.write_text(SMALL)
    code = main(["compile", str(recipe), "--set", "rule=fc9", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "rule 0 (match 'fc9')" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


BRANCHY = """
from torch import nn


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)
"""


def test_untraceable_import_path_model(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "branchy_model.py").write_text(BRANCHY)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "branchy.yaml"
    recipe.write_text(
        "name: branchy\nsparsity: {target: 0.5}\nschedule: {phases: [{dense: 1}, {sparse: 1}]}\n"
        "train: {model: {name: 'branchy_model:Branchy', input_shape: [4]}}\n"
    )
    assert main(["compile", str(recipe), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "not traced" in out and "could not trace" in out and "16 FLOPs/sample" in out
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["tracer"]["traced"] is False and plan["params"][0]["dense_flops"] == 16


def test_other_verbs_do_not_import_torch() -> None:
    code = (
        "import sys; from acdc_recipe.cli.main import build_parser; "
        "build_parser().parse_args(['compile', 'x.yaml']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_compile_a_gpt2_recipe_shows_conv1d_the_tied_embedding_and_every_parameter(
    tmp_path, capsys
) -> None:
    assert main(["compile", "tiny_gpt2_python_source", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if "transformer.h.1.mlp.c_proj.weight" in line]
    assert "Conv1D" in row and "256x64 (in x out)" in row
    assert "tied: transformer.wte.weight = lm_head.weight: not pruned, an embedding" in out
    assert "parameters: 8 pruned; not pruned: biases (8), embeddings" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert {p["op"] for p in plan["params"]} == {"Conv1D"}
    assert {p["input_axis"] for p in plan["params"]} == {0}
    assert plan["tied"] == [
        {"names": ["transformer.wte.weight", "lm_head.weight"], "decision": "embedding"}
    ]
    counted = plan["parameters"]["pruned"] + sum(plan["parameters"]["not_pruned"].values())
    assert counted == len(plan["parameters"]["not_pruned_params"]) + 8
    assert plan["totals"]["dense_forward_flops"] > 0  # int64 token ids ran through the model
