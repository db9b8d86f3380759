"""The run directory: one value that names every file, decides how a run may start there, and is
the only module that spells a file name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from acdc_recipe.errors import UserError
from acdc_recipe.formats.run_dir import (
    BuildDir,
    ExportDir,
    ModelFolder,
    RunDir,
    RunDirectoryError,
    TrainerDir,
    digest_path,
)

ROOT = Path(__file__).resolve().parents[2]
RESOLVED = "name: t\n"


def names_the_module_owns() -> set[str]:
    """Every file and folder name `run_dir.py` hands out."""
    where = Path("/x")
    owned = {RunDir(where).checkpoint_file(7).name, BuildDir(where).recipe.name}
    for value in (RunDir(where), BuildDir(where), ExportDir(where), ModelFolder(where)):
        for attribute in dir(type(value)):
            found = getattr(value, attribute)
            if isinstance(found, Path):
                owned.add(found.name)
    folders = TrainerDir(where)
    owned |= {folders.weights("dense").name, TrainerDir.runtime_state(where).name}
    return owned


def test_no_module_but_the_run_directory_spells_a_file_name():
    owned = names_the_module_owns()
    assert {"recipe.yaml", "sparse.safetensors", "masks.safetensors", "plan.json"} <= owned
    prefixes = ("checkpoint-", "export-")
    found = []
    for folder in (ROOT / "acdc_recipe", ROOT / "compiler", ROOT / "runtime"):
        for path in folder.rglob("*.py"):
            if path.name == "run_dir.py" and path.parent.name == "formats":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                pieces = node.values if isinstance(node, ast.JoinedStr) else [node]
                first = pieces[0] if pieces else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    text = first.value
                    spelled = text in owned or (
                        isinstance(node, ast.JoinedStr) and text.startswith(prefixes)
                    )
                    if spelled:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {text!r}")
    assert found == []


def test_a_fresh_folder_starts_fresh_and_a_finished_run_is_not_replaced(tmp_path):
    run = RunDir(tmp_path / "run")
    plan = run.plan_start(RESOLVED, resume=False, overwrite=False)
    assert plan.kind == "fresh" and plan.remove == () and plan.note is None
    run.path.mkdir()
    run.recipe.write_text(RESOLVED)
    run.metrics.write_text("{}\n")
    run.sparse_model.write_bytes(b"x")
    with pytest.raises(RunDirectoryError, match="already holds a run.*--resume.*--overwrite"):
        run.plan_start(RESOLVED, resume=False, overwrite=False)
    assert run.sparse_model.exists()  # planning changes nothing


def test_overwrite_removes_every_output_of_the_earlier_run_exports_included(tmp_path):
    run = RunDir(tmp_path)
    run.recipe.write_text(RESOLVED)
    checkpoint = run.checkpoint_file(12)
    for path in (checkpoint, digest_path(checkpoint), run.sparse_model, run.masks, run.summary):
        path.write_bytes(b"x")
    run.export("torch-sparse").mkdir()
    (run.export("torch-sparse") / "model.safetensors").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    plan = run.plan_start(RESOLVED, resume=False, overwrite=True)
    assert "removed" in plan.note and run.export("torch-sparse").name in plan.note
    plan.carry_out()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "recipe.yaml"]


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(RunDirectoryError, match="give one"):
        RunDir(tmp_path).plan_start(RESOLVED, resume=True, overwrite=True)


def test_resume_needs_something_to_resume(tmp_path):
    with pytest.raises(RunDirectoryError, match="nothing to resume.*does not exist"):
        RunDir(tmp_path / "missing").plan_start(RESOLVED, resume=True, overwrite=False)
    with pytest.raises(RunDirectoryError, match="nothing to resume.*is empty"):
        RunDir(tmp_path).plan_start(RESOLVED, resume=True, overwrite=False)


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path):
    run = RunDir(tmp_path)
    run.recipe.write_text(RESOLVED)
    run.metrics.write_text("{}\n")
    plan = run.plan_start(RESOLVED, resume=True, overwrite=False)
    assert plan.kind == "restart" and plan.remove == (run.metrics,) and "step 0" in plan.note
    run.summary.write_text("{}")  # more than a start-up: not restartable
    with pytest.raises(RunDirectoryError, match="no checkpoint to resume from"):
        run.plan_start(RESOLVED, resume=True, overwrite=False)


def finished_checkpoint(run: RunDir, step: int) -> Path:
    path = run.checkpoint_file(step)
    path.write_bytes(b"x")
    digest_path(path).write_text(f"0  {path.name}\n")
    return path


def unfinished_checkpoint(run: RunDir, step: int) -> Path:
    """What a stop between writing a checkpoint's digest and the checkpoint leaves."""
    digest = digest_path(run.checkpoint_file(step))
    digest.write_text(f"0  {run.checkpoint_file(step).name}\n")
    return digest


def test_resume_with_checkpoints_removes_only_interrupted_writes(tmp_path):
    run = RunDir(tmp_path)
    finished_checkpoint(run, 3)
    interrupted = tmp_path / f".{run.checkpoint_file(4).name}.tmp-123"
    interrupted.write_bytes(b"half")
    (tmp_path / ".other.tmp-1").write_bytes(b"not ours")
    plan = run.plan_start(RESOLVED, resume=True, overwrite=False)
    assert plan.kind == "resume" and plan.remove == (interrupted,) and plan.note is None


def test_a_stop_before_a_checkpoint_was_written_resumes_from_the_one_before(tmp_path):
    """Its digest is written first: a digest without its checkpoint is an unfinished write,
    removed, and the run continues from the newest checkpoint there is."""
    run = RunDir(tmp_path)
    run.recipe.write_text(RESOLVED)
    finished_checkpoint(run, 3)
    digest = unfinished_checkpoint(run, 6)
    stale = unfinished_checkpoint(run, 1)  # a stop while older checkpoints were removed
    plan = run.plan_start(RESOLVED, resume=True, overwrite=False)
    assert plan.kind == "resume" and set(plan.remove) == {digest, stale}
    assert plan.note == (
        "the run stopped while it wrote checkpoint-000000006.pt, so it continued from the "
        "checkpoint before it"
    )


def test_a_stop_while_writing_the_first_checkpoint_starts_the_run_again(tmp_path):
    run = RunDir(tmp_path)
    run.recipe.write_text(RESOLVED)
    run.metrics.write_text("{}\n")
    digest = unfinished_checkpoint(run, 4)
    plan = run.plan_start(RESOLVED, resume=True, overwrite=False)
    assert plan.kind == "restart" and set(plan.remove) == {run.metrics, digest}
    assert plan.note == (
        "the run stopped while it wrote its first checkpoint (checkpoint-000000004.pt), so it "
        "started again from step 0"
    )
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        run.plan_start(RESOLVED, resume=False, overwrite=False)


def test_a_checkpoint_without_its_digest_is_left_for_the_resume_to_refuse(tmp_path):
    """A stop never leaves one, so it was copied alone or is not ours: not removed."""
    run = RunDir(tmp_path)
    run.checkpoint_file(5).write_bytes(b"copied alone")
    plan = run.plan_start(RESOLVED, resume=True, overwrite=False)
    assert plan.kind == "resume" and plan.remove == () and plan.note is None


def test_the_recipe_being_read_is_never_replaced(tmp_path):
    run = RunDir(tmp_path)
    run.recipe.write_text("name: original\n")
    with pytest.raises(UserError, match="would replace the recipe"):
        run.plan_start(RESOLVED, resume=False, overwrite=True, source=str(run.recipe))


def test_checkpoints_are_listed_newest_first_files_and_folders_apart(tmp_path):
    run = RunDir(tmp_path)
    for step in (5, 12, 9):
        finished_checkpoint(run, step)
    run.checkpoint_folder(20).mkdir()
    assert [p.name for p in run.checkpoint_files()] == [
        "checkpoint-000000012.pt",
        "checkpoint-000000009.pt",
        "checkpoint-000000005.pt",
    ]
    assert run.checkpoint_folders() == [run.checkpoint_folder(20)]


def test_the_default_run_directory_is_a_safe_folder_name():
    assert RunDir.of("../../etc/x").path == Path("runs") / "etc_x"
    assert RunDir.of("x", "elsewhere").path == Path("elsewhere")
    assert BuildDir.of("a b").path == Path("builds") / "a_b"
