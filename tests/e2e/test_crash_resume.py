"""A run stopped dead at any moment (before its first checkpoint, in the middle of writing any
of its files, or at a random time) and resumed with `--resume` ends with the same bytes in its
dense and sparse models as a run that was never stopped. `sitecustomize.py` beside this file
does the stopping."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .shell import ENV, TINY

RUN = [sys.executable, "-m", "acdc_recipe.cli.main", "run", str(TINY), "--device", "cpu",
       "--threads", "1"]  # fmt: skip
MODELS = ("dense.safetensors", "sparse.safetensors")
# (moment, file, n): every kind of file a run writes, stopped before and after its rename, and
# the appended log torn in half; n picks an occurrence before, at and after the first checkpoint.
STOPS = [
    ("before_rename", r"^recipe\.yaml$", 1),
    ("mid_write", r"^metrics\.jsonl$", 3),
    ("before_rename", r"^checkpoint-\d+\.pt$", 1),
    ("after_rename", r"^checkpoint-\d+\.pt$", 2),
    ("before_rename", r"\.sha256$", 3),
    ("before_rename", r"^dense\.safetensors$", 1),
    ("after_rename", r"^dense\.safetensors$", 1),
    ("before_rename", r"^sparse\.safetensors$", 1),
    ("before_rename", r"^summary\.json$", 1),
]


def run(out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RUN, "--out", str(out), *extra], env=env or ENV, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run(out)
    assert result.returncode == 0, result.stderr
    return out


def assert_same_models(reference: Path, out: Path) -> None:
    for name in MODELS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    for key in ("dense_top1", "sparse_top1", "achieved_sparsity", "training_flops_multiplier"):
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("moment, pattern, n", STOPS)
def test_stopped_while_writing_then_resumed_ends_with_the_same_bytes(
    reference, tmp_path, moment, pattern, n
):
    stopped = run(tmp_path, env={**ENV, "ACDC_TEST_STOP_AT": f"{moment}:{pattern}:{n}:kill"})
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr
    resumed = run(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert_same_models(reference, tmp_path)
    assert not list(tmp_path.glob(".*.tmp-*"))


@pytest.mark.parametrize(
    "n, said",
    [
        (1, "the run stopped while it wrote its first checkpoint (checkpoint-000000005.pt), so "
            "it started again from step 0"),
        (2, "the run stopped while it wrote checkpoint-000000010.pt, so it continued from the "
            "checkpoint before it"),
    ],
)  # fmt: skip
def test_killed_between_a_checkpoints_digest_and_the_checkpoint_then_resumed(
    reference, tmp_path, n, said
):
    """The digest is in place and the checkpoint is not: an unfinished write, so the run
    continues from the checkpoint before it, or from step 0 when it was the first."""
    stop = f"after_rename:^checkpoint-\\d+\\.pt\\.sha256$:{n}:kill"
    stopped = run(tmp_path, env={**ENV, "ACDC_TEST_STOP_AT": stop})
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr
    assert not (tmp_path / f"checkpoint-{5 * n:09d}.pt").exists()
    resumed = run(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert said in " ".join(resumed.stdout.split())
    assert_same_models(reference, tmp_path)


def test_killed_at_random_moments_and_resumed_until_done_ends_with_the_same_bytes(
    reference, tmp_path
):
    rng = random.Random(7)
    kills = 0
    for attempt in range(5):  # four SIGKILLs at random moments, then a resume left to finish
        started = any(tmp_path.iterdir())  # a kill during start-up may leave nothing to resume
        args = [*RUN, "--out", str(tmp_path)] + (["--resume"] if started else [])
        process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + (rng.uniform(0.3, 6.0) if attempt < 4 else 240)
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            process.kill()
            kills += 1
        _, stderr = process.communicate(timeout=240)
        assert b"Traceback" not in stderr and process.returncode in (0, -signal.SIGKILL), stderr
        if process.returncode == 0:
            break
    assert process.returncode == 0 and kills >= 2
    assert_same_models(reference, tmp_path)
