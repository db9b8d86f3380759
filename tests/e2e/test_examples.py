"""Every script in examples/ runs to its end ("ok") in a fresh process, in well under a minute
of CPU time each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def test_there_is_an_example_per_integration() -> None:
    assert {p.stem for p in EXAMPLES} == {
        "hf_trainer_gpt2",
        "hf_trainer_bert",
        "lightning_cnn",
        "plain_loop",
    }


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    """With torch's own thread default left alone (no OMP_NUM_THREADS), each example sets the
    threads as `acdc run` does: never every core of a machine with more than one."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    args = [sys.executable, str(script)] + ([] if script.stem == "plain_loop" else [str(tmp_path)])
    result = subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("ok")
    threads = int(result.stdout.split("torch threads: ")[1].split()[0])
    assert 1 <= threads <= max(1, len(os.sched_getaffinity(0)) - 1)
