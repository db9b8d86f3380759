"""`acdc --help`, `validate` and `schedule` as a user runs them: fast, no torch, exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest

from acdc_recipe.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, "-m", "acdc_recipe.cli.main", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_schedule_prints_the_reference_imagenet_timeline():
    result = run("schedule", str(ROOT / "recipes/resnet50_imagenet_acdc90.yaml"))
    assert result.returncode == 0, result.stderr
    assert ("D0-9, S10-14, D15-19, S20-24, D25-29, S30-34, D35-39, S40-44, D45-49, S50-54, "
            "D55-59, S60-64, D65-69, S70-74, D75-84, S85-99") in result.stdout  # fmt: skip
    assert "50 of 100 epochs sparse" in result.stdout


def test_validate_reports_problems_as_a_paragraph_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nsparsity: {target: 0.9, scpoe: global}\nschedule: {acdc: {epochs: 100}}\n"
    )
    result = run("validate", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}:2:" in result.stderr and "did you mean 'scope'" in result.stderr


def test_set_overrides_reach_the_recipe(capsys):
    assert main(["validate", "quickstart", "--set", "sparsity=0.8"]) == 0
    assert "sparsity 0.8 global" in capsys.readouterr().out
    assert main(["validate", "quickstart", "--set", "garbage"]) == 2
    assert main(["validate", "quickstart", "--resolved"]) == 0
    assert "target: 0.9" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args", [["--help"], ["validate", "quickstart"], ["schedule", "quickstart"]]
)
def test_light_verbs_do_not_import_torch(args):
    code = (
        "import sys\nfrom acdc_recipe.cli.main import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_validate_warns_about_a_layer_kind_that_is_not_built_in(tmp_path):
    recipe = tmp_path / "kinds.yaml"
    recipe.write_text(
        "name: x\nsparsity: {target: 0.9, prunable: [Lineer, Conv1D]}\n"
        "schedule: {unit: step, phases: [{dense: 2}, {sparse: 2}]}\n"
    )
    result = run("validate", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "'Lineer', which is no built-in layer kind (did you mean 'Linear'?)" in result.stdout
    assert "Conv1D" not in result.stdout  # transformers' kind is built in


def test_version_names_the_package_and_torch_without_importing_torch():
    from importlib.metadata import version

    import acdc_recipe

    code = (
        "import sys\nfrom acdc_recipe.cli.main import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as stop:\n    assert stop.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    expected = f"acdc-recipe {acdc_recipe.__version__} (torch {version('torch')})"
    assert result.stdout.strip() == expected
