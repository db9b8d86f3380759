"""`acdc convert` as a user runs it: the recipe on stdout or in -o, the report beside it, files
never overwritten unasked, bad input as one paragraph with exit 2, and no torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from acdc_recipe.cli.main import main
from acdc_recipe.language.loading import load_recipe, load_recipe_text

ROOT = Path(__file__).resolve().parents[2]
WRN = ROOT / "tests/convert/data/wrn28_10_cifar100_s90.yaml"
SPARSEML = """\
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 20}
  - !ACDCPruningModifier {compression_sparsity: 0.9, start_epoch: 0, end_epoch: 16,
                          update_frequency: 2, params: __ALL_PRUNABLE__}
"""


def run(*args):
    return subprocess.run([sys.executable, "-m", "acdc_recipe.cli.main", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_convert_then_schedule_shows_the_reference_timeline(tmp_path):
    out = tmp_path / "wrn.yaml"
    result = run("convert", str(WRN), "--epochs", "200", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "prunes at [10, 50, 90, 130, 170]" in result.stdout
    assert "restores dense training at [30, 70, 110, 150]" in result.stdout
    shown = run("schedule", str(out))
    assert shown.returncode == 0, shown.stderr
    assert ("D0-9, S10-29, D30-49, S50-69, D70-89, S90-109, D110-129, S130-149, D150-169, "
            "S170-199") in shown.stdout  # fmt: skip


def test_without_o_the_recipe_goes_to_stdout_and_the_report_to_stderr(tmp_path):
    source = tmp_path / "acdc.yaml"
    source.write_text(SPARSEML)
    result = run("convert", str(source), "--from", "sparseml")
    assert result.returncode == 0, result.stderr
    assert "Converted from" in result.stderr and "mapped:" in result.stderr
    recipe = load_recipe_text(result.stdout)
    assert recipe.schedule.transitions.sparse_at == (2, 6, 10, 14, 16)


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    source, out = tmp_path / "acdc.yaml", tmp_path / "out.yaml"
    source.write_text(SPARSEML)
    out.write_text("keep me\n")
    assert main(["convert", str(source), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    assert main(["convert", str(source), "-o", str(out), "--overwrite"]) == 0
    assert load_recipe(out).name == "acdc"
    assert {p.name for p in tmp_path.iterdir()} == {"acdc.yaml", "out.yaml"}  # no temporary


def test_the_source_is_never_the_output(tmp_path, capsys):
    source = tmp_path / "acdc.yaml"
    source.write_text(SPARSEML)
    assert main(["convert", str(source), "-o", str(source), "--overwrite"]) == 2
    assert "is the file being converted" in capsys.readouterr().err
    assert source.read_text() == SPARSEML


@pytest.mark.parametrize(
    "content, args, message",
    [
        ("a: 1\nb: 2\n", [], "neither a SparseML recipe"),
        (None, [], "cannot read"),
        ("pruners: {}\n", [], "give it with --epochs N"),
        (SPARSEML, ["--epochs", "0"], "--epochs must be at least 1"),
        (SPARSEML, ["--from", "reference", "--epochs", "3"], "is not a reference config"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, content, args, message):
    source = tmp_path / "input.yaml"
    if content is not None:
        source.write_text(content)
    result = run("convert", str(source), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_convert_does_not_import_torch(tmp_path):
    source = tmp_path / "acdc.yaml"
    source.write_text(SPARSEML)
    code = (
        "import sys\nfrom acdc_recipe.cli.main import main\n"
        f"assert main(['convert', {str(source)!r}, '-o', {str(tmp_path / 'o.yaml')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
