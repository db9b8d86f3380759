"""`acdc run` and `acdc report` as a user runs them: outputs, kill -9 and resume, errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from acdc_recipe.cli.main import main
from acdc_recipe.formats.checkpoint import load_safetensors
from acdc_recipe.formats.records import (
    CheckpointWritten,
    EpochEnded,
    RunInterrupted,
    read_records,
)
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.runtime.events import KernelsChosen

from .shell import ENV, TINY, acdc

SLOW = ["--set", "train.data.source=callable", "--set", "train.data.callable=slow_data:slow_digits"]


def same_weights(first: Path, second: Path) -> bool:
    a, b = load_safetensors(first), load_safetensors(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = acdc("run", TINY, *SLOW, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return out


def test_a_previous_run_is_never_overwritten_without_asking(reference, tmp_path):
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    refused = acdc("run", TINY, *SLOW, "--out", reference, "--device", "cpu")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "already holds a run" in refused.stderr and "--resume" in refused.stderr
    assert {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()} == before
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in before.items():
        (copy / name).write_bytes(data)
    replaced = acdc("run", TINY, "--out", copy, "--device", "cpu", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert same_weights(copy / "sparse.safetensors", reference / "sparse.safetensors")


def test_quickstart_prints_the_pair(tmp_path):
    result = acdc("run", "quickstart", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    for label in ("dense top-1", "sparse top-1", "achieved sparsity"):
        assert label in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert summary["dense_top1"] > 0.9 and summary["sparse_top1"] > 0.9
    assert f"{100 * summary['sparse_top1']:.2f}%" in result.stdout
    assert len(result.stdout.splitlines()) < 60  # no progress-bar spam without a terminal


def wait_for_checkpoint(metrics: Path, step: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if metrics.exists():
            steps = [r.step for r in read_records(metrics) if isinstance(r, CheckpointWritten)]
            if steps and max(steps) >= step:
                return
        time.sleep(0.005)
    raise AssertionError(f"the run ended or stalled before checkpointing step {step}")


def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(reference, tmp_path):
    command = [sys.executable, "-m", "acdc_recipe.cli.main", "run", str(TINY), *SLOW,
               "--out", str(tmp_path), "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_checkpoint(tmp_path / "metrics.jsonl", 30, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "sparse.safetensors").exists()
    # the newest checkpoint was torn apart as well: resume must refuse it and use the previous
    newest, previous = RunDir(tmp_path).checkpoint_files()
    newest.write_bytes(newest.read_bytes()[:1000])
    result = acdc("run", TINY, *SLOW, "--out", tmp_path, "--device", "cpu", "--resume")
    assert result.returncode == 0, result.stderr
    assert f"resumed at step {int(previous.name[11:20])}" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert any("is damaged" in note for note in summary["notes"])
    for name in ("sparse.safetensors", "dense.safetensors"):  # equal content, equal bytes
        assert (reference / name).read_bytes() == (tmp_path / name).read_bytes()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_checkpoints_that_step_then_resume_is_bitwise_equal(
    reference, tmp_path, stop_signal
):
    """The first Ctrl-C (or SIGTERM) finishes the step, checkpoints it and says how to resume."""
    no_periodic = ["--set", "train.checkpoint_every_steps=null"]
    command = [sys.executable, "-m", "acdc_recipe.cli.main", "run", str(TINY), *SLOW,
               *no_periodic, "--out", str(tmp_path), "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(
        command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_for_checkpoint(tmp_path / "metrics.jsonl", 12, process)  # the end of epoch 0
    process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + stop_signal, stderr
    assert "Traceback" not in stderr and "nothing is lost" in stderr
    assert "train.checkpoint_every_steps=null" in stderr and "--resume" in stderr
    last = read_records(tmp_path / "metrics.jsonl")[-1]
    assert isinstance(last, RunInterrupted) and 12 <= last.step < 72
    assert [c.name for c in RunDir(tmp_path).checkpoint_files()][0] == last.checkpoint
    assert not (tmp_path / "sparse.safetensors").exists()
    result = acdc("run", TINY, *SLOW, *no_periodic, "--out", tmp_path, "--device", "cpu",
                  "--resume")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"resumed at step {last.step}" in result.stdout
    assert same_weights(reference / "sparse.safetensors", tmp_path / "sparse.safetensors")
    assert same_weights(reference / "dense.safetensors", tmp_path / "dense.safetensors")


def test_crash_while_writing_a_checkpoint_then_resume_is_bitwise_equal(reference, tmp_path):
    # 5, 10, 12, 15, 20, 24, then dies writing 25 (see sitecustomize.py)
    env = {**ENV, "ACDC_TEST_STOP_AT": r"before_rename:^checkpoint-\d+\.pt$:7"}
    crashed = acdc("run", TINY, *SLOW, "--out", tmp_path, "--device", "cpu", env=env)
    assert crashed.returncode == 17
    assert [p.name for p in RunDir(tmp_path).checkpoint_files()] == [
        "checkpoint-000000024.pt", "checkpoint-000000020.pt"]  # fmt: skip
    assert list(tmp_path.glob(".checkpoint-000000025.pt.tmp-*"))
    result = acdc("run", TINY, *SLOW, "--out", tmp_path, "--device", "cpu", "--resume")
    assert result.returncode == 0, result.stderr
    assert "resumed at step 24" in result.stdout
    assert same_weights(reference / "sparse.safetensors", tmp_path / "sparse.safetensors")
    epochs = [r for r in read_records(tmp_path / "metrics.jsonl") if isinstance(r, EpochEnded)]
    assert [r.epoch for r in epochs] == list(range(6))  # redone work is not logged twice


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_report_is_a_self_contained_page(reference, tmp_path, capsys):
    assert main(["report", str(reference), "-o", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") == 5
    assert "<script" not in html and "http" not in html
    assert "Mask entries changed at each re-pruning" in html and "band-sparse" in html
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_run_accepts_a_compiled_build_folder(tmp_path, one_thread):
    build = tmp_path / "build"
    assert main(["compile", str(TINY), "-o", str(build)]) == 0
    args = [
        "run",
        str(build),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "train.checkpoint_every_steps=100",
    ]
    assert main(args) == 0
    assert (tmp_path / "run" / "sparse.safetensors").exists()
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "run2")]) == 2  # no recipe.yaml


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.model.name=resnet21"], "unknown model 'resnet21'"),
        (["--set", "train.data.source=fashion_mnist", "--set", "train.data.root=/nowhere"],
         "apt-get install dataset-fashion-mnist"),
        (["--nproc-per-node", "0"], "at least 1"),
        (["--set", "train.optimizer.nam=adam"], "did you mean 'name'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, capsys, args, message):
    assert main(["run", str(TINY), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    result = acdc(
        "run",
        TINY,
        "--out",
        tmp_path,
        "--device",
        "cuda" if not torch.cuda.is_available() else "bogus",
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_resume_from_foreign_checkpoints_is_refused(tmp_path, capsys, one_thread):
    (tmp_path / "checkpoint-000000010.pt").write_bytes(b"not a checkpoint")
    assert main(["run", str(TINY), "--out", str(tmp_path), "--resume"]) == 2
    assert "no usable checkpoint" in capsys.readouterr().err


def test_resume_without_checkpoints_never_replaces_a_finished_run(reference, tmp_path):
    copy = tmp_path / "finished"
    copy.mkdir()
    for path in reference.iterdir():
        if path.is_file() and not path.name.startswith("checkpoint-"):
            (copy / path.name).write_bytes(path.read_bytes())
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    result = acdc("run", TINY, "--out", copy, "--device", "cpu", "--resume")
    assert result.returncode == 2 and "no checkpoint to resume from" in result.stderr
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_report_ignores_lines_that_are_not_event_records(reference, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = (reference / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(["[1, 2]", '"text"', *lines, "{torn"]) + "\n")
    result = acdc("report", run)
    assert result.returncode == 0, result.stderr
    assert (run / "report.html").stat().st_size > 1000


KERNELS_ON = ["--set", "train.sparse_kernels=on"]


@pytest.fixture(scope="module")
def kernels_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels-reference")
    result = acdc("run", TINY, *SLOW, *KERNELS_ON, "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "kernels: 2 of 2 layers sparse" in result.stdout
    return out


def test_sigkill_then_resume_on_sparse_kernels_is_bitwise_equal(kernels_reference, tmp_path):
    command = [sys.executable, "-m", "acdc_recipe.cli.main", "run", str(TINY), *SLOW,
               *KERNELS_ON, "--out", str(tmp_path), "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_checkpoint(tmp_path / "metrics.jsonl", 30, process)  # inside the first sparse phase
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    result = acdc("run", TINY, *SLOW, *KERNELS_ON, "--out", tmp_path, "--device", "cpu",
                  "--resume")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("sparse.safetensors", "dense.safetensors"):
        assert (kernels_reference / name).read_bytes() == (tmp_path / name).read_bytes()
    chosen = [r for r in read_records(tmp_path / "metrics.jsonl") if isinstance(r, KernelsChosen)]
    assert [r.step for r in chosen] == [24, 48]  # once per sparse phase, none repeated
    assert main(["report", str(tmp_path)]) == 0
    assert "kernels: 2 of 2 layers sparse" in (tmp_path / "report.html").read_text()


def test_sparse_kernels_change_the_last_bits_only(reference, kernels_reference):
    dense, sparse = (
        load_safetensors(r / "sparse.safetensors") for r in (reference, kernels_reference)
    )
    assert dense.keys() == sparse.keys()
    drift = max(float((dense[k] - sparse[k]).abs().max()) for k in dense)
    assert drift < 1e-4
    summaries = [
        json.loads((r / "summary.json").read_text()) for r in (reference, kernels_reference)
    ]
    assert summaries[0]["achieved_sparsity"] == summaries[1]["achieved_sparsity"]
    off, on = summaries  # the dense twin is evaluated densely, not through the CSR layers
    assert abs(off["dense_loss"] - on["dense_loss"]) < 1e-4
    assert abs(off["dense_loss"] - off["sparse_loss"]) > 1e-3  # a masked one would differ
