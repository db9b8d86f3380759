"""Bad input a user gives the `acdc` verbs and the Python API: one paragraph, exit 2, no
traceback, and no file of theirs damaged."""

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import acdc_recipe
from acdc_recipe.cli.main import main
from acdc_recipe.language.loading import dump_recipe, load_recipe

from .shell import one_line

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def run_cli(capfd, *args: str) -> tuple[int, str]:
    code = main([*args])
    err = capfd.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_a_wrong_version_names_the_accepted_one(tmp_path, capfd):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 2\nname: x\nschedule: {acdc: {epochs: 100}}\n")
    code, err = run_cli(capfd, "validate", str(recipe))
    assert code == 2
    assert "at `version`: expected one of 1; found 2" in err


def test_a_variable_using_a_later_one_says_why_it_is_undefined(tmp_path, capfd):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        'name: x\nvariables: {a: "{{ b }}", b: 1}\nschedule: {acdc: {epochs: "{{ a }}"}}\n'
    )
    code, err = run_cli(capfd, "validate", str(recipe))
    assert code == 2
    assert "'b' is undefined" in err and "declared before it" in err
    assert "none are defined" not in err


def test_setting_a_variable_no_template_uses_is_refused(tmp_path, capfd):
    resolved = tmp_path / "recipe.yaml"  # like a build folder's: templates already evaluated
    resolved.write_text(dump_recipe(load_recipe("quickstart")))
    code, err = run_cli(capfd, "validate", str(resolved), "--set", "sparsity=0.5")
    assert code == 2
    assert "variables.sparsity" in err and "no template uses" in err
    with pytest.raises(acdc_recipe.RecipeError, match="no template uses"):
        load_recipe(resolved, epochs=12)
    assert main(["validate", str(resolved), "--set", "sparsity.target=0.5"]) == 0
    assert "sparsity 0.5" in capfd.readouterr().out


def test_compile_into_a_file_or_an_impossible_folder_is_a_user_error(tmp_path, capfd):
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    code, err = run_cli(capfd, "compile", "quickstart", "-o", str(a_file))
    assert code == 2 and f"cannot write the build folder {a_file}" in err
    assert a_file.read_text() == "mine"
    code, err = run_cli(capfd, "compile", "quickstart", "-o", str(a_file / "sub"))
    assert code == 2 and "cannot write the build folder" in err


def test_compile_with_a_wrong_input_shape_prints_only_the_paragraph(capfd):
    code, err = run_cli(
        capfd, "compile", "quickstart", "--set", "train.model.input_shape=[3, 3]", "--json"
    )
    assert code == 2
    assert "train.model.input_shape" in err
    assert "failed while attempting to run meta" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("verb, flag", [("compile", "-o"), ("run", "--out")])
def test_the_source_recipe_is_never_replaced_by_its_resolved_form(tmp_path, capfd, verb, flag):
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(QUICKSTART, recipe)
    original = recipe.read_text()
    code, err = run_cli(capfd, verb, str(recipe), flag, str(tmp_path))
    assert code == 2
    assert "would replace the recipe being read" in err
    assert recipe.read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_a_build_folder_may_be_rebuilt_in_place(tmp_path, capfd):
    build = tmp_path / "build"
    assert main(["compile", "quickstart", "-o", str(build), "--json"]) == 0
    assert main(["compile", str(build / "recipe.yaml"), "-o", str(build), "--json"]) == 0
    capfd.readouterr()


def test_run_into_a_file_is_a_user_error_not_a_training_failure(tmp_path, capfd):
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    code, err = run_cli(
        capfd, "run", "quickstart", "--set", "epochs=12", "--out", str(a_file), "--device", "cpu"
    )
    assert code == 2
    assert f"cannot create the run directory {a_file}" in err
    assert "training failed" not in err
    assert a_file.read_text() == "mine"


def test_a_training_failure_suggests_a_resume_command_that_keeps_the_set_values(
    tmp_path, capfd, monkeypatch
):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "run"
    sets = ["--set", "epochs=12", "--set", "train.data.source=callable",
            "--set", "train.data.callable=failing_data:failing_digits"]  # fmt: skip
    code = main(["run", "quickstart", *sets, "--out", str(out), "--device", "cpu"])
    err = " ".join(capfd.readouterr().err.split())  # undo the console's line wrapping
    assert code == 1 and "training failed: OSError: read error on the data volume" in err
    command = f"acdc run quickstart {' '.join(sets)} --out {out} --device cpu --resume"
    assert command in err
    code = main(command.split()[1:])  # the suggested command reaches the checkpoint
    err = capfd.readouterr().err
    assert "different recipe" not in err and "training failed" in err


def _run_dir(tmp_path: Path, summary_text: str | None) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    if summary_text is not None:
        (run_dir / "summary.json").write_text(summary_text)
    return run_dir


@pytest.mark.parametrize(
    "summary", ['{"recipe": "q", "dense_top1": 0.9', '{"recipe": "q"}', "[1, 2]", "garbage"]
)
def test_report_names_a_damaged_summary(tmp_path, capfd, summary):
    run_dir = _run_dir(tmp_path, summary)
    code, err = run_cli(capfd, "report", str(run_dir))
    assert code == 2
    assert f"{run_dir}/summary.json is not a summary written by `acdc run`" in err
    assert not (run_dir / "report.html").exists()


def test_report_into_a_folder_or_a_missing_folder_is_a_user_error(tmp_path, capfd):
    run_dir = _run_dir(tmp_path, None)  # an unfinished run: metrics only
    code, err = run_cli(capfd, "report", str(run_dir), "-o", str(tmp_path))
    assert code == 2 and "cannot write the report" in err
    (tmp_path / "afile").write_text("mine")
    code, err = run_cli(capfd, "report", str(run_dir), "-o", str(tmp_path / "afile" / "r.html"))
    assert code == 2 and "cannot write the report" in err
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()


def test_compile_names_arguments_of_the_wrong_kind():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(TypeError, match="load_recipe"):
        acdc_recipe.compile(model, str(QUICKSTART))
    with pytest.raises(TypeError, match="nn.Module"):
        acdc_recipe.compile("resnet18", load_recipe(QUICKSTART))
    compiled = acdc_recipe.compile(model, load_recipe(QUICKSTART), torch.zeros(1, 8, 8))
    assert [p.name for p in compiled.params] == ["1.weight"]


@pytest.mark.parametrize("source", ["mnist", "cifar10"])
def test_a_data_root_that_is_a_file_or_unset_is_described_as_such(tmp_path, source):
    from acdc_recipe.language.train_config import DataSpec
    from acdc_recipe.trainer.data import DataError, load_data

    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    with pytest.raises(DataError, match=f"{a_file} is not a folder"):
        load_data(DataSpec(source=source, root=str(a_file)))
    if source == "mnist":  # no default folder
        with pytest.raises(DataError, match=r"and train.data.root is not set;"):
            load_data(DataSpec(source=source))


def test_a_refused_checkpoint_is_shown_when_the_run_resumes():
    import io

    from rich.console import Console

    from acdc_recipe.formats.records import Note, RunStarted
    from acdc_recipe.trainer.sinks import TerminalSink

    output = io.StringIO()
    sink = TerminalSink(Console(file=output, width=200))
    reason = "checkpoint-000000460.pt is damaged: its content does not match its sha256 digest"
    sink.write(RunStarted(3, "q", 2, 3, 6, "cpu", 1, 1, 3, [], []))
    sink.write(Note(3, reason))
    sink.close()
    assert f"note: {reason}" in output.getvalue()


def test_the_resume_hint_of_a_data_parallel_worker_keeps_the_process_count(monkeypatch):
    from acdc_recipe.cli.main import build_parser
    from acdc_recipe.cli.run import _resume_command

    args = build_parser().parse_args(["run", "quickstart", "--set", "epochs=3", "--device", "cpu"])
    assert _resume_command(args, "runs/q") == (
        "acdc run quickstart --set epochs=3 --out runs/q --device cpu --resume"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a worker started by --nproc-per-node 2
    assert _resume_command(args, "runs/q").endswith("--nproc-per-node 2 --resume")


def test_a_foreign_recipe_yaml_in_the_run_folder_is_never_replaced(tmp_path, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "recipe.yaml").write_text("# my notes, not a run\n")
    code = main(["run", "quickstart", "--out", str(out), "--device", "cpu"])
    err = " ".join(capfd.readouterr().err.split())
    assert code == 2 and "is not this run's resolved recipe" in err and "--overwrite" in err
    assert (out / "recipe.yaml").read_text() == "# my notes, not a run\n"
    assert main(["run", "quickstart", "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
    assert (out / "summary.json").exists()


def test_api_errors_speak_of_the_api():
    from acdc_recipe.errors import RecipeError

    with pytest.raises(RecipeError) as error:
        load_recipe("quickstart", sparsty=0.95)
    message = str(error.value)
    assert "load_recipe(..., sparsty=...): no such variable" in message
    assert "--set" not in message and "'sparsity'" in message


@pytest.mark.parametrize(
    "verb, sets, message",
    [
        ("compile", ["train.model.name=resnet20", "train.model.kwargs={shortcut: C}"],
         "recipe key `train.model.kwargs`: model 'resnet20' rejected its kwargs"),
        ("run", ["train.model.name=resnet20", "train.model.kwargs={shortcut: C}"],
         "rejected its kwargs"),
        ("run", ["train.optimizer.name=adam", "train.optimizer.betas=[1.5, 0.9]"],
         "at `train.optimizer.betas`: Adam betas must each lie in [0, 1)"),
        ("run", ["train.optimizer.momentum=0", "train.optimizer.nesterov=true"],
         "nesterov: true needs name: sgd and a momentum above 0"),
    ],
)  # fmt: skip
def test_a_mistake_in_the_training_section_is_a_located_user_error(
    tmp_path, capfd, verb, sets, message
):
    args = [verb, "quickstart", *(w for s in sets for w in ("--set", s))]
    args += ["-o", str(tmp_path / "b")] if verb == "compile" else ["--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = one_line(capfd.readouterr().err)
    assert message in err and "Traceback" not in err and "training failed" not in err
