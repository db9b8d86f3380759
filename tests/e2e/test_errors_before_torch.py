"""The mistakes a person makes most with `run`, `report` and `export` (a recipe typo, flags that
conflict, a path that is not there, a folder that holds a run) are one paragraph and exit 2
before torch is imported, so they answer in a fraction of a second instead of several."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from acdc_recipe.formats.run_dir import RunDir, digest_path


def finished_run(folder: Path) -> RunDir:
    """A run directory as `acdc run` leaves it, by its file names (the bytes are not read)."""
    run = RunDir(folder)
    folder.mkdir()
    run.recipe.write_text("name: quickstart\n")
    run.metrics.write_text("")
    for step in (437, 460):
        path = run.checkpoint_file(step)
        path.write_bytes(b"x")
        digest_path(path).write_text(f"0  {path.name}\n")
    run.sparse_model.write_bytes(b"x")
    return run


def test_common_mistakes_fail_fast_without_importing_torch(tmp_path):
    run = finished_run(tmp_path / "q")
    run.export("compressed").mkdir()
    run.checkpoint_folder(144).mkdir()
    (run.export("compressed") / "model.safetensors").write_bytes(b"x")
    cases = [
        (["run", "quickstart", "--set", "train.optimzer.lr=0.1"],
         "--set train.optimzer.lr at `train.optimzer`: unknown key 'optimzer' (did you mean "
         "'optimizer'?)"),
        (["run", "quickstart", "--resume", "--overwrite", "--out", str(tmp_path / "new")],
         "--resume continues the run in the folder and --overwrite removes it; give one"),
        (["run", "fashion_mnist_cnn_acdc90", "--set", f"train.data.root={tmp_path / 'none'}",
          "--out", str(tmp_path / "fm")], f"{tmp_path / 'none'} does not exist"),
        (["run", "quickstart", "--out", str(run)], "and the run would replace it"),
        (["report", str(tmp_path / "nowhere")], "it has no metrics.jsonl"),
        (["export", str(run.checkpoint_file(240))],
         f"{run.checkpoint_file(240)} does not exist; {run.path} holds "
         f"{run.checkpoint_file(460)}, {run.checkpoint_file(437)}"),
        (["export", str(tmp_path)], f"{tmp_path} is not a run directory"),
        (["export", str(run.checkpoint_folder(144))],
         f"is a checkpoint folder of a sharded (FSDP2) run; export its run directory ({run})"),
        (["export", str(run), "--threads", "2"], "--threads steer the torch-sparse format"),
        (["export", str(run)], f"{run.export('compressed')} already exists"),
    ]  # fmt: skip
    code = (
        "import contextlib, io, json, sys\nfrom acdc_recipe.cli.main import main\n"
        "results = []\n"
        f"for args in {[args for args, _ in cases]!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        results.append((main(args), err.getvalue()))\n"
        "print(json.dumps({'results': results, 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for (args, expected), (exit_code, message) in zip(cases, report["results"], strict=True):
        said = " ".join(message.split())  # the console wraps long lines
        assert exit_code == 2 and message.startswith("error: "), (args, message)
        assert expected in said, (args, said)
        assert "Traceback" not in message
    assert report["torch"] is False
