"""`acdc run --nproc-per-node 2` failing as a user sees it: one paragraph, exit 2 for bad input,
no launcher traceback; Ctrl-C / SIGTERM stop the workers."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acdc_recipe.trainer.launch import WorkerReport, summarize_failure

HERE = Path(__file__).parent
TINY = HERE / "data" / "tiny.yaml"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(Path(__file__).parent),
}  # sitecustomize.py
ENV.pop("ACDC_TRACEBACK", None)


def acdc(*args, env=ENV):
    command = [sys.executable, "-m", "acdc_recipe.cli.main", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def two_ranks(*args, env=ENV):
    return acdc("run", *args, "--device", "cpu", "--nproc-per-node", "2", env=env)


def the_one_paragraph(result: subprocess.CompletedProcess) -> str:
    """stderr must be exactly one `error:` paragraph and carry no launcher traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "ChildFailedError" not in output, output[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    result = acdc("run", TINY, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_a_missing_data_folder_on_every_rank_prints_once_and_exits_2(tmp_path):
    result = two_ranks(
        "quickstart",
        *("--set", "epochs=12", "--set", "train.data.source=fashion_mnist"),
        *("--set", "train.data.root=/nonexistent", "--out", tmp_path),
    )
    assert result.returncode == 2
    paragraph = the_one_paragraph(result)
    assert "'fashion_mnist'" in paragraph and "/nonexistent" in paragraph


def test_resuming_a_single_process_run_on_two_ranks_names_the_world_size(single_process_run):
    result = two_ranks(TINY, "--out", single_process_run, "--resume")
    assert result.returncode == 2
    paragraph = the_one_paragraph(result)
    assert "written by 1 processes and this run has 2" in paragraph
    assert "--nproc-per-node 1" in paragraph


def test_an_error_only_rank_0_sees_still_exits_2(single_process_run):
    before = sorted(p.name for p in single_process_run.iterdir())
    result = two_ranks(TINY, "--out", single_process_run)  # neither --resume nor --overwrite
    assert result.returncode == 2
    assert "already holds a run" in the_one_paragraph(result)
    assert sorted(p.name for p in single_process_run.iterdir()) == before


def test_a_worker_dying_is_one_paragraph_and_exit_1(tmp_path):
    result = two_ranks(
        TINY,
        "--out",
        tmp_path,
        env={**ENV, "ACDC_TEST_STOP_AT": r"before_rename:^checkpoint-\d+\.pt$:2"},
    )
    assert result.returncode == 1
    assert "worker 0 of 2 exited with code 17" in the_one_paragraph(result)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_launcher_stops_every_worker(tmp_path, stop):
    command = [sys.executable, "-m", "acdc_recipe.cli.main", "run", "quickstart",
               "--set", "epochs=400", "--out", str(tmp_path), "--device", "cpu",
               "--nproc-per-node", "2"]  # fmt: skip
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    started = tmp_path / "metrics.jsonl"  # rank 0 opens it once both ranks are set up
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.1)
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text()
    workers = [int(pid) for pid in children.split()]
    assert started.exists() and len(workers) == 2, "the workers never started training"
    launcher.send_signal(stop)
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 128 + stop
    assert stderr.decode().strip() == "interrupted"
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_user_error_on_any_rank_wins_and_prints_each_distinct_paragraph_once():
    reports = {
        0: WorkerReport(2, "error: no data", 5.0),
        1: WorkerReport(2, "error: no data", 4.0),
        2: WorkerReport(1, "error: training failed: connection closed", 3.0),
        3: WorkerReport(2, "error: bad checkpoint", 6.0),
    }
    result = summarize_failure(reports, {0: 2, 1: 2, 2: 1, 3: 2}, world_size=4)
    assert result.exit_code == 2
    assert result.message == "error: no data\nerror: bad checkpoint"


def test_without_user_errors_a_silent_death_then_the_earliest_report_explains():
    late = WorkerReport(1, "error: training failed: connection closed", 9.0)
    early = WorkerReport(1, "error: training failed: nan loss", 2.0)
    killed = summarize_failure({0: late}, {0: 1, 1: -9}, world_size=2)
    assert killed.exit_code == 1 and "worker 1 of 2 was killed by SIGKILL" in killed.message
    first = summarize_failure({0: late, 1: early}, {0: 1, 1: 1}, world_size=2)
    assert (first.exit_code, first.message) == (1, early.message)
