"""What a new user trips on, from the README on: each behaviour here is one they met."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import acdc_recipe
from acdc_recipe.cli.main import main
from acdc_recipe.errors import RecipeError
from acdc_recipe.loading import dump_recipe, load_recipe
from acdc_recipe.runtime.train import checkpoint as ckpt
from acdc_recipe.runtime.train.records import (
    EpochEnded,
    Note,
    RunDiverged,
    RunStarted,
    read_records,
    record_to_dict,
)

HERE = Path(__file__).parent
TINY = HERE / "data" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
# A quickstart whose learning rate jumps 1e12-fold at epoch 3: it diverges in epoch 3.
DIVERGES = ["--set", "epochs=12", "--set", "train.lr_schedule.name=multistep",
            "--set", "train.lr_schedule.milestones=[3]", "--set", "train.lr_schedule.gamma=1e12"]  # fmt: skip


def acdc(*args, timeout=180, **kwargs):
    command = [sys.executable, "-m", "acdc_recipe.cli.main", *map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, env=ENV, timeout=timeout, **kwargs
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("state", ["does not exist", "is empty"])
def test_resume_of_a_missing_or_empty_folder_is_an_error(tmp_path, capfd, state):
    folder = tmp_path / "run"
    if state == "is empty":
        folder.mkdir()
    assert main(["run", str(TINY), "--out", str(folder), "--resume"]) == 2
    err = one_line(capfd.readouterr().err)
    assert f"nothing to resume: {folder} {state}" in err and "checkpoint-*.pt" in err
    assert "Traceback" not in err
    assert not folder.exists() if state == "does not exist" else not any(folder.iterdir())


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, capfd):
    recipe = load_recipe(TINY)
    (tmp_path / "recipe.yaml").write_text(dump_recipe(recipe))
    started = RunStarted(0, "tiny", 6, 12, 72, "cpu", 1, 1, None, [], [])
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record_to_dict(started)) + "\n")
    assert main(["run", str(TINY), "--out", str(tmp_path), "--resume", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] == 72
    assert any("started again from step 0" in note for note in summary["notes"])


def test_a_diverging_run_stops_at_that_step_and_keeps_only_finite_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = acdc("run", "quickstart", *DIVERGES, "--out", out, "--device", "cpu")
    err = one_line(result.stderr)
    assert result.returncode == 1 and "Traceback" not in err
    step = int(re.search(r"the training loss at step (\d+) \(epoch 3\) is nan", err)[1])
    assert 69 <= step < 92  # epoch 3 of 23 steps
    assert "the newest checkpoint, checkpoint-000000069.pt" in err
    assert "--set train.optimizer.lr=0.005 --out" in err and "--resume" in err
    assert result.stdout.count("loss nan") == 0  # no epoch of NaN losses before it stops
    records = read_records(out / "metrics.jsonl")
    assert isinstance(records[-1], RunDiverged) and records[-1].step == step
    recipe_hash = _hash_of(out)
    for path in ckpt.list_checkpoints(out):
        state = ckpt.read_checkpoint(path, recipe_hash)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
    # The advice works: a resume may change the learning rate and its schedule.
    fixed = [*DIVERGES, "--set", "train.lr_schedule.gamma=0.1"]
    resumed = acdc("run", "quickstart", *fixed, "--out", out, "--device", "cpu", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == 69 and summary["sparse_top1"] > 0.5
    assert "from step 69: train.lr_schedule.gamma 1000000000000.0 -> 0.1" in summary["notes"]
    assert load_recipe(out / "recipe.yaml").train.lr_schedule.gamma == 0.1
    notes = [r.text for r in read_records(out / "metrics.jsonl") if isinstance(r, Note)]
    assert "from step 69: train.lr_schedule.gamma 1000000000000.0 -> 0.1" in notes


def _hash_of(run_dir: Path) -> str:
    from acdc_recipe.schema import recipe_hash

    return recipe_hash(load_recipe(run_dir / "recipe.yaml"))


def test_a_resume_that_changes_the_schedule_names_the_keys(tmp_path, capfd):
    args = ["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]
    assert main([*args, "--set", "train.checkpoint_every_steps=100"]) == 0
    capfd.readouterr()
    assert main([*args, "--resume", "--set", "sparsity.target=0.5"]) == 2
    err = one_line(capfd.readouterr().err)
    assert "with a different sparsity.target" in err
    assert "may change only train.optimizer.lr, train.lr_schedule, train.grad_clip" in err


def test_a_closed_stdout_does_not_end_the_run(tmp_path):
    command = [sys.executable, "-m", "acdc_recipe.cli.main", "run", str(TINY), "--out",
               str(tmp_path), "--device", "cpu", "--log-every", "0"]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline()  # like `| head -1`: read one line, then go away
    process.stdout.close()
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert stderr == b""
    assert (tmp_path / "sparse.safetensors").exists() and (tmp_path / "summary.json").exists()


def test_overwrite_removes_every_output_of_the_earlier_run(tmp_path, capfd):
    args = ["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0
    assert main(["report", str(tmp_path)]) == 0
    (tmp_path / "tensorboard").mkdir(exist_ok=True)
    (tmp_path / "checkpoint-000000999.pt").write_bytes(b"an old one")
    assert main([*args, "--overwrite", "--set", "train.checkpoint_every_steps=100"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert "report.html" not in names and "tensorboard" not in names
    assert "checkpoint-000000999.pt" not in names
    records = read_records(tmp_path / "metrics.jsonl")
    started = [r for r in records if isinstance(r, RunStarted)]
    assert len(started) == 1 and not hasattr(started[0], "refused_checkpoints")
    notes = [r.text for r in records if isinstance(r, Note)]
    assert any(n.startswith("started fresh (--overwrite): removed") for n in notes)


def test_a_damaged_checkpoint_is_refused_in_our_own_words(tmp_path, capfd):
    args = ["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]
    assert main([*args, "--set", "train.checkpoint_every_steps=100"]) == 0
    for path in ckpt.list_checkpoints(tmp_path):
        path.write_bytes(path.read_bytes()[:100])
    capfd.readouterr()
    assert main([*args, "--resume", "--set", "train.checkpoint_every_steps=100"]) == 2
    err = one_line(capfd.readouterr().err)
    assert "no usable checkpoint" in err and "is damaged" in err
    assert "weights_only" not in err and "Traceback" not in err


def test_the_terminal_counts_epochs_as_the_schedule_does(tmp_path, capfd):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capfd.readouterr().out
    assert "epochs 0-5 x 12 steps" in out
    assert "epoch 0 of 0-5 (dense)" in out and "epoch 5 of 0-5 (sparse)" in out
    assert "epoch 2 (step 24): sparse phase 1" in out and "epoch 6" not in out


def test_off_a_terminal_step_lines_show_loss_lr_and_throughput(tmp_path, capfd):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--log-every", "0"]) == 0
    lines = [line for line in capfd.readouterr().out.splitlines() if " step " in line]
    assert len(lines) == 72
    assert re.fullmatch(
        r"epoch 0 step 1/12: loss \S+  lr \S+  [\d,]+ samples/s  dense 0%", lines[0]
    )
    assert lines[-1].startswith("epoch 5 step 12/12") and lines[-1].endswith("sparse 80%")


def test_run_help_names_the_build_folder(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = one_line(capsys.readouterr().out)
    assert "RECIPE|BUILD_DIR" in help_text and "acdc compile -o" in help_text


def test_the_compile_table_is_whole_when_written_to_a_pipe(tmp_path):
    result = acdc("compile", "resnet50_imagenet_acdc90", "-o", tmp_path / "build")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "layer4.2.conv3.weight" in line]
    assert rows and "…" not in result.stdout
    cells = [cell.strip() for cell in rows[0].split("│")]
    assert cells[:4] == ["layer4.2.conv3.weight", "Conv2d", "2048x512x1x1", "0.9000"]
    assert float(cells[4]) > 100  # MFLOPs, the last column, whole


def test_the_report_draws_sparsity_as_steps_on_axes_that_end_at_the_data(tmp_path):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert main(["report", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    labels = re.findall(r">(\d+(?:\.\d+)?)%<", html)
    assert labels and max(float(v) for v in labels) <= 100
    charts = html.split("<svg ")[1:]
    sparsity = next(c for c in charts if "Sparsity of the prunable weights" in c)
    line = re.search(r'<polyline points="([^"]+)"', sparsity)[1].split()
    xs = [float(p.split(",")[0]) for p in line]
    assert any(a == b for a, b in zip(xs, xs[1:]))  # vertical segments: a step function
    layers = next(c for c in charts if "Final sparsity per layer" in c)
    assert "1 Linear 64-&gt;32" in layers and "3 Linear 32-&gt;10" in layers


def test_the_python_api_warns_when_a_mask_empties_a_layer():
    from acdc_recipe.runtime import EmptiedLayerWarning, LayersEmptied

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-4)  # far below the first layer: global pruning takes it all
    recipe = acdc_recipe.load_recipe_text(
        "name: t\nsparsity: {target: 0.9}\nschedule: {unit: step, phases: [{sparse: 2}]}\n"
    )
    compiled = acdc_recipe.compile(model, recipe)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = acdc_recipe.attach(compiled, optimizer)
    events = []
    runtime.add_listener(events.append)
    with pytest.warns(EmptiedLayerWarning, match="every weight of 2.weight is pruned") as seen:
        runtime.begin_step()
    assert "scope: lamp" in str(seen[0].message) and "min_density" in str(seen[0].message)
    assert [e for e in events if isinstance(e, LayersEmptied)] == [
        LayersEmptied(0, 0, ("2.weight",))
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.begin_step()  # no second warning for the same mask
    runtime.close()
    guarded = recipe.model_copy(
        update={"sparsity": recipe.sparsity.model_copy(update={"scope": "lamp"})}
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = acdc_recipe.attach(acdc_recipe.compile(model, guarded), optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.begin_step()  # scope: lamp leaves every layer some weights
    assert all(mask.count_nonzero() > 0 for mask in runtime.masks)


def test_api_errors_speak_of_the_api():
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


def test_report_refuses_a_damaged_record_or_summary_by_name(tmp_path, capfd):
    run = tmp_path / "run"
    assert main(["run", str(TINY), "--out", str(run), "--device", "cpu"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    epoch = next(i for i, line in enumerate(lines) if '"EpochEnded"' in line)
    broken = json.loads(lines[epoch])
    del broken["top1"]
    lines[epoch] = json.dumps(broken)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    capfd.readouterr()
    assert main(["report", str(run)]) == 2
    err = one_line(capfd.readouterr().err)
    assert f"metrics.jsonl, line {epoch + 1}: the EpochEnded record lacks 'top1'" in err
    (run / "metrics.jsonl").write_text("\n".join(lines[:epoch] + lines[epoch + 1 :]) + "\n")
    summary = json.loads((run / "summary.json").read_text())
    summary["wall_seconds"] = "fast"
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run)]) == 2
    assert "not numbers: wall_seconds" in one_line(capfd.readouterr().err)


def test_epoch_records_use_the_schedule_numbering(tmp_path):
    assert main(["run", str(TINY), "--out", str(tmp_path), "--device", "cpu"]) == 0
    epochs = [r for r in read_records(tmp_path / "metrics.jsonl") if isinstance(r, EpochEnded)]
    assert [r.epoch for r in epochs] == list(range(6))


def test_a_recipe_name_cannot_lead_outside_the_runs_folder(tmp_path, monkeypatch):
    from acdc_recipe.files import default_run_dir

    assert default_run_dir("../../etc/x") == Path("runs") / "etc_x"
    assert default_run_dir("a/b c") == Path("runs") / "a_b_c"
    assert default_run_dir("..") == Path("runs") / "recipe"
