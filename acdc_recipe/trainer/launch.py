"""Start `acdc` as N data-parallel workers on this machine and turn their failure into one
paragraph and one exit code.

`acdc run --nproc-per-node N` calls `launch_workers`, which runs torch elastic's launcher in
this process (what `torchrun --standalone` does) instead of a `torchrun` subprocess, so a
worker's failure arrives as a `ChildFailedError` here rather than as torchrun's traceback.
Workers do not print their error paragraph: each writes it (`report_worker_error`) into a
folder the launcher names in `ERRORS_ENV`, and the launcher prints each distinct paragraph
once. Identical errors on every rank (a missing data folder, a checkpoint from another world
size) therefore print once, and an error only one rank hit still prints.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from acdc_recipe.files import write_text_atomic

ERRORS_ENV = "ACDC_WORKER_ERRORS"
USER_ERROR_EXIT = 2
_TORCH_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")


@dataclass(frozen=True)
class LaunchResult:
    """What the command exits with, and the paragraph (or paragraphs) to print first."""

    exit_code: int
    message: str | None = None


@dataclass(frozen=True)
class WorkerReport:
    """The paragraph one worker handed to the launcher, and when (seconds since the epoch)."""

    exit_code: int
    message: str
    time: float


def report_worker_error(paragraph: str, exit_code: int) -> bool:
    """In a worker started by `launch_workers`, hand `paragraph` to the launcher to print and
    return True; elsewhere (single process, plain `torchrun`) return False: print it yourself."""
    folder = os.environ.get(ERRORS_ENV)
    if not folder or "RANK" not in os.environ:
        return False
    record = {"exit_code": exit_code, "message": paragraph, "time": time.time()}
    write_text_atomic(Path(folder) / f"rank{int(os.environ['RANK'])}.json", json.dumps(record))
    return True


def _reports(folder: Path) -> dict[int, WorkerReport]:
    """rank -> report, for every worker that reported an error."""
    found = {}
    for path in folder.glob("rank*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        found[int(path.stem[4:])] = WorkerReport(
            int(record["exit_code"]), str(record["message"]), float(record["time"])
        )
    return dict(sorted(found.items()))


def summarize_failure(
    reports: dict[int, WorkerReport], exit_codes: dict[int, int], world_size: int
) -> LaunchResult:
    """One outcome for a failed launch, from the workers' reports and the exit codes of the
    ranks that failed.

    A user error on any rank wins: exit 2 and each distinct paragraph once (every rank usually
    hits the same one). Otherwise a rank that died without a report (a signal, `os._exit`) is
    the likely cause, since its peers then fail on the broken connection; failing that, the
    earliest report explains it. Either way exit 1.
    """
    user_errors = [r.message for r in reports.values() if r.exit_code == USER_ERROR_EXIT]
    if user_errors:
        return LaunchResult(USER_ERROR_EXIT, "\n".join(dict.fromkeys(user_errors)))
    silent = sorted(rank for rank in exit_codes if rank not in reports)
    if silent or not reports:
        rank = silent[0] if silent else min(exit_codes)
        code = exit_codes[rank]
        how = f"was killed by {signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return LaunchResult(
            1,
            f"error: data-parallel worker {rank} of {world_size} {how}; see its output above, "
            "if any (set ACDC_TRACEBACK=1 to also see the launcher's log).",
        )
    return LaunchResult(1, min(reports.values(), key=lambda r: r.time).message)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


@contextmanager
def _quiet_launcher_logs() -> Iterator[None]:
    """Keep torch elastic's own failure log (and its traceback) off the terminal, unless
    ACDC_TRACEBACK asks for everything."""
    if os.environ.get("ACDC_TRACEBACK"):
        yield
        return
    sink = logging.NullHandler()  # a handler, so Python's last-resort stderr handler stays off
    saved = []
    for name in _TORCH_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.propagate = False
        logger.addHandler(sink)
    try:
        yield
    finally:
        for logger, propagate in saved:
            logger.propagate = propagate
            logger.removeHandler(sink)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the workers (they inherit this process's environment)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launch_workers(nproc_per_node: int, cli_args: Sequence[str]) -> LaunchResult:
    """Run `python -m acdc_recipe.cli.main *cli_args` as `nproc_per_node` workers (torchrun
    --standalone semantics: local rendezvous on a free port, no restarts) and wait for them.

    Ctrl-C or SIGTERM stops every worker and raises `SignalException` from torch elastic.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": "1"}  # as torchrun
    with tempfile.TemporaryDirectory(prefix="acdc-launch-") as scratch:
        errors = Path(scratch) / "errors"
        errors.mkdir()
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc_per_node,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=str(Path(scratch) / "logs")),
        )
        command = ["-m", "acdc_recipe.cli.main", *cli_args]
        with _quiet_launcher_logs(), _environment(**threads, **{ERRORS_ENV: str(errors)}):
            try:
                elastic_launch(config, sys.executable)(*command)
            except ChildFailedError as failure:
                exit_codes = {rank: f.exitcode for rank, f in failure.failures.items()}
                return summarize_failure(_reports(errors), exit_codes, nproc_per_node)
    return LaunchResult(0)
