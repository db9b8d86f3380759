"""How long a person waits for `acdc`: the common mistakes (which must answer before torch is
imported) and the whole quickstart run, with importing torch as the baseline.

Every case runs as a fresh `python -m acdc_recipe.cli.main ...` process; rounds interleave the
cases (a busy moment of the machine hits every case alike) and the table gives the minimum and
median wall seconds and the minimum's ratio to `python -c "import torch"` measured in the same
rounds. The quickstart is split into the wait before its first line, the whole run, and the
time between its last line and the end of the process.

Run: python benchmarks/cli_latency.py [--rounds N] [--source DIR]
(writes benchmarks/results/cli_latency.json). `--source` runs another checkout's acdc_recipe
(a folder holding acdc_recipe/, with compiler/ and runtime/ linked inside it) to compare
commits on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cli_latency.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.records import machine, write_json  # noqa: E402

CLI = [sys.executable, "-m", "acdc_recipe.cli.main"]
CASES = {
    "python (baseline)": [sys.executable, "-c", "pass"],
    "import torch (baseline)": [sys.executable, "-c", "import torch"],
    "validate: --set typo": [*CLI, "validate", "quickstart", "--set", "train.optimzer.lr=0.1"],
    "run: --set typo": [*CLI, "run", "quickstart", "--set", "train.optimzer.lr=0.1"],
    "run: --resume --overwrite": [*CLI, "run", "quickstart", "--resume", "--overwrite"],
    "run: data root missing": [*CLI, "run", "fashion_mnist_cnn_acdc90", "--set",
                               "train.data.root=/nonexistent"],
    "report: no run there": [*CLI, "report", "nowhere"],
    "export: no such checkpoint": [*CLI, "export", "nowhere/checkpoint-000000001.pt"],
}  # fmt: skip
QUICKSTART = [*CLI, "run", "quickstart", "--out", "quick", "--overwrite"]


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - started


def timed_quickstart(env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(seconds to the first line, the whole run, last line to the end of the process)."""
    started = time.perf_counter()
    process = subprocess.Popen(QUICKSTART, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    first = last = None
    for _ in process.stdout:
        last = time.perf_counter()
        first = first or last
    process.wait()
    ended = time.perf_counter()
    if process.returncode != 0 or first is None:
        raise SystemExit(f"the quickstart failed (exit {process.returncode})")
    return first - started, ended - started, ended - last


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=f"Writes {RESULTS.relative_to(ROOT)}."
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--source", type=Path, help="import acdc_recipe from this folder")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.source is not None:
        env["PYTHONPATH"] = str(args.source.resolve())
    env.pop("OMP_NUM_THREADS", None)  # the quickstart chooses its threads, as for a user
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    quick: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        for _ in range(args.rounds):
            for name, command in CASES.items():
                times[name].append(timed(command, env, cwd))
            quick.append(timed_quickstart(env, cwd))
    for index, part in enumerate(("first line", "whole run", "after last line")):
        times[f"quickstart: {part}"] = [q[index] for q in quick]
    torch_import = min(times["import torch (baseline)"])
    rows = {
        name: {
            "min_s": min(values),
            "median_s": statistics.median(values),
            "min_over_import_torch": min(values) / torch_import,
        }
        for name, values in times.items()
    }
    print(f"{'case':32} {'min s':>7} {'median s':>9} {'min / import torch':>19}")
    for name, row in rows.items():
        print(
            f"{name:32} {row['min_s']:7.2f} {row['median_s']:9.2f} "
            f"{row['min_over_import_torch']:19.2f}"
        )
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    write_json(
        RESULTS,
        {
            "benchmark": "cli_latency",
            "rounds": args.rounds,
            "source": str(args.source) if args.source else "installed",
            "machine": machine(),
            "load_average": {"before": load_before, "after": load_after},
            "cases": rows,
            "samples_s": times,
        },
    )


if __name__ == "__main__":
    main()
