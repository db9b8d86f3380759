"""Accuracy in AC/DC's own regime: the paper's 100-epoch schedule against dense training, the
paper's gradual magnitude pruning (GMP), GMP with layer-adaptive scores (`scope: lamp`) and
one-shot pruning, at the same 100 epochs.

Models: LeNet-300-100 and the batch-norm CNN on the full Fashion-MNIST training split (60,000
images, validated on the 10,000 test images), and the tiny GPT-2 of the shipped recipe
tiny_gpt2_python_source (next-byte accuracy and loss on Python source). Every run is one of
the recipes in benchmarks/recipes/regime (dense, acdc, gmp, oneshot) with variables, so each
row equals `PYTHONPATH=. acdc run benchmarks/recipes/regime/<method>.yaml --set ...` (the
command is stored with the run).

    python benchmarks/accuracy_regime.py [--jobs 2] [--out DIR] [--only mlp|cnn|gpt2] [--list]
    python benchmarks/accuracy_regime.py --collect --out DIR  # tables of what has finished

The queue runs the most important comparisons first (the MLP's AC/DC, GMP and dense at
90/95/98%, then the CNN at 95% with one seed, the GPT-2, the CNN's other seeds, then the guard
and one-shot pruning). Resumable:
a run whose summary.json exists is skipped, an interrupted one resumes from its newest
checkpoint. `touch OUT/STOP` lets the runs in progress finish and starts no new one
(`OUT/STOP.<pid>`: only for that runner); several runners may share one OUT (each claims the
runs it trains). Prints a
table, writes benchmarks/results/accuracy_regime.json and the figures under
benchmarks/plots/regime/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the recipes import their data from benchmarks.accuracy
    sys.path.insert(0, str(ROOT))
from benchmarks.accuracy import (  # noqa: E402
    DATA_ROOT_ENV,
    _mean_std,
    _pct,
    _train_job,
    aligned,
    declared_variables,
    read_run,
)
from benchmarks.records import machine, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "accuracy_regime.json"
PLOTS = ROOT / "benchmarks" / "plots" / "regime"
SEEDS = (0, 1, 2)
MLP_TARGETS = (0.9, 0.95, 0.98)
GPT2_TARGETS = (0.5, 0.75)
# The widest CNN that fits. One epoch of 60,000 images with its evaluation, one thread, alone:
# 12.4 s at width 8, 19.0 s at 12, 25.4 s at 16, 57.5 s at 24, 69.3 s at 32, so the CNN's
# 15 runs of 100 epochs take 5.3 core-hours at width 8, 8.0 at 12, 10.6 at 16 and 29 at 32.
# On this shared machine the first MLP runs took 2.3x their measured time (391-408 s against
# 170 s, two niced runs beside other work): at that rate the MLP's, GPT-2's and the CNN's
# 95% comparison (dense, AC/DC, GMP; 3 seeds) take 5.8 hours of the 8 on two cores at
# width 8 and 7.8 at width 12, so width 8 is the widest that fits.
CNN_ARCH = "cnn8"
CNN_TARGET = 0.95
STOP_FILE = "STOP"


@dataclass(frozen=True)
class Job:
    """One training run: a regime recipe and the variables it is loaded with."""

    arch: str  # mlp | cnn<W> | gpt2
    method: str  # dense | acdc | gmp | oneshot
    seed: int = 0
    target: float | None = None
    scope: str = "global"  # global | lamp
    pattern: str = "unstructured"
    min_per_channel: int | None = None  # the channel guard (AC/DC only)
    extra: tuple[tuple[str, Any], ...] = ()  # more recipe variables (smaller data in tests)

    @property
    def config(self) -> str:
        if self.method == "dense":
            return "dense"
        scope = "" if self.scope == "global" else f"-{self.scope}"
        if self.pattern != "unstructured":
            return f"{self.method}{scope}-{self.pattern}"
        guard = f"-min_per_channel{self.min_per_channel}" if self.min_per_channel else ""
        return f"{self.method}{scope}{round(100 * (self.target or 0))}{guard}"

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.config.replace(':', 'to')}/seed{self.seed}"

    @property
    def recipe(self) -> str:
        """The recipe's path relative to benchmarks/recipes, without .yaml."""
        return f"regime/{self.method}"

    def variables(self) -> dict[str, Any]:
        """The recipe variables of this run (only those its recipe declares)."""
        wanted = {
            "arch": self.arch,
            "seed": self.seed,
            "sparsity": self.target,
            "scope": self.scope,
            "pattern": self.pattern,
            "min_per_channel": self.min_per_channel,
            **dict(self.extra),
        }
        declared = declared_variables(self.recipe)
        return {k: v for k, v in wanted.items() if k in declared and v is not None}

    def command(self, run_dir: Path) -> str:
        sets = " ".join(f"--set {k}={json.dumps(v)}" for k, v in self.variables().items())
        return f"PYTHONPATH=. acdc run benchmarks/recipes/{self.recipe}.yaml {sets} --out {run_dir}"


def matrix(cnn: str = CNN_ARCH) -> list[Job]:
    """Every run, in the order they are trained: the most important comparisons first."""
    jobs: list[Job] = []
    for seed in SEEDS:  # 1. the MLP: AC/DC against the paper's GMP and dense
        jobs.append(Job("mlp", "dense", seed))
        jobs += [Job("mlp", m, seed, t) for t in MLP_TARGETS for m in ("acdc", "gmp")]
    cnn_core = [
        Job(cnn, m, seed, None if m == "dense" else CNN_TARGET)
        for seed in SEEDS
        for m in ("dense", "acdc", "gmp")
    ]
    jobs += cnn_core[:3]  # 2. the CNN at 95%, seed 0
    jobs.append(Job("gpt2", "dense"))  # 3. the GPT-2: 50%, 75% and 2:4 (one seed)
    jobs += [Job("gpt2", m, 0, t) for t in GPT2_TARGETS for m in ("acdc", "gmp")]
    jobs.append(Job("gpt2", "acdc", 0, 0.5, pattern="2:4"))
    jobs += cnn_core[3:]  # the CNN's seeds 1 and 2 (a CNN run costs four GPT-2 runs)
    # 4. the guard (layer-adaptive scores) where layers collapse, and one-shot pruning
    jobs += [Job(cnn, m, seed, CNN_TARGET, "lamp") for seed in SEEDS for m in ("gmp", "acdc")]
    jobs += [Job(cnn, "oneshot", seed, CNN_TARGET) for seed in SEEDS]
    jobs += [Job("gpt2", m, 0, t, s) for t in GPT2_TARGETS for m, s in GUARD_AND_ONESHOT]
    jobs.append(Job("gpt2", "oneshot", 0, 0.5, pattern="2:4"))  # no GMP ramp at 2:4
    for seed in SEEDS:
        jobs += [Job("mlp", m, seed, t, s) for t in MLP_TARGETS for m, s in GUARD_AND_ONESHOT]
    # 5. the channel guard, which keeps the CNN's filters from dying behind batch norm
    jobs.append(Job(cnn, "acdc", 0, CNN_TARGET, "lamp", min_per_channel=1))
    return jobs


GUARD_AND_ONESHOT = (("gmp", "lamp"), ("oneshot", "global"))


# --- running --------------------------------------------------------------------------------


def run_queue(jobs: Sequence[Job], out: Path, workers: int) -> dict[str, str | None]:
    """Train, in order, every job whose run directory has no summary.json, `workers` at a
    time; start no new one once OUT/STOP exists. Returns key -> error text or None."""
    todo = [j for j in jobs if not (out / j.key / "summary.json").exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs done already; {len(todo)} to go")
    errors: dict[str, str | None] = {}
    if workers <= 1:  # in this process, one after the other
        while todo and not _stopped(out):
            job = todo.pop(0)
            if _claim(out / job.key):
                errors[job.key] = _train_job(job.recipe, job.variables(), str(out / job.key), 1)
                (out / job.key / CLAIM_FILE).unlink(missing_ok=True)
                _report(job, out, errors[job.key])
        return errors
    running: dict[Future, Job] = {}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        while todo or running:
            stop = _stopped(out)
            while todo and len(running) < workers and not stop:
                job = todo.pop(0)
                if not _claim(out / job.key):
                    continue  # another runner trains it
                folder = str(out / job.key)
                print(f"{time.strftime('%H:%M:%S')} start {job.key}", flush=True)
                running[pool.submit(_train_job, job.recipe, job.variables(), folder, 1)] = job
            if not running:
                print(f"asked to stop in {out}: {len(todo)} runs not started")
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                errors[job.key] = future.result()
                (out / job.key / CLAIM_FILE).unlink(missing_ok=True)
                _report(job, out, errors[job.key])
    return errors


def _stopped(out: Path) -> bool:
    """Whether OUT/STOP or OUT/STOP.<this process's pid> exists."""
    return (out / STOP_FILE).exists() or (out / f"{STOP_FILE}.{os.getpid()}").exists()


CLAIM_FILE = "claimed-by"  # the pid of the runner training the run


def _claim(folder: Path) -> bool:
    """Mark `folder` as trained by this process; False when a live runner holds it already
    (a claim of a process that is gone is taken over)."""
    folder.mkdir(parents=True, exist_ok=True)
    claim = folder / CLAIM_FILE
    try:
        holder = int(claim.read_text(encoding="utf-8"))
        os.kill(holder, 0)
        if holder != os.getpid():
            return False
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass
    claim.write_text(str(os.getpid()), encoding="utf-8")
    return True


def _report(job: Job, out: Path, error: str | None) -> None:
    if error is not None:
        print(f"FAILED {job.key}: {error} (see {out / job.key / 'log.txt'})", flush=True)
        return
    run = read_run(out / job.key)
    top1 = run["sparse_top1"] if run["sparse_top1"] is not None else run["dense_snapshot_top1"]
    print(
        f"{time.strftime('%H:%M:%S')} done {job.key}: top-1 {100 * top1:.2f}%, "
        f"{run['wall_seconds']:.0f} s",
        flush=True,
    )


# --- results --------------------------------------------------------------------------------


def collect(job: Job, out: Path) -> dict[str, Any] | None:
    """One finished run as a flat record (None when it has no summary.json)."""
    folder = out / job.key
    if not (folder / "summary.json").exists():
        return None
    run = read_run(folder)
    ends_sparse = run["sparse_top1"] is not None
    twin = job.method in ("acdc", "dense")  # GMP's and one-shot's last dense epoch is no twin
    return {
        "key": job.key,
        "arch": job.arch,
        "config": job.config,
        "method": job.method,
        "target": job.target,
        "scope": job.scope,
        "pattern": job.pattern,
        "seed": job.seed,
        "top1": run["sparse_top1"] if ends_sparse else run["dense_snapshot_top1"],
        "loss": run["sparse_loss"] if ends_sparse else run["dense_snapshot_loss"],
        "dense_twin_top1": run["dense_snapshot_top1"] if twin else None,
        "dense_twin_loss": run["dense_snapshot_loss"] if twin else None,
        **{k: v for k, v in run.items() if not k.startswith(("sparse_", "dense_snapshot"))},
        "mask_changed": [m["changed"] for m in run["remasks"][1:]],
        "command": job.command(folder),
    }


METRICS = (
    "top1",
    "loss",
    "dense_twin_top1",
    "dense_twin_loss",
    "achieved_sparsity",
    "training_flops",
    "inference_flops",
    "wall_seconds",
)


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (model, configuration), in matrix order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["arch"], run["config"]), []).append(run)
    rows = []
    for (arch, config), members in groups.items():
        first = members[0]
        row: dict[str, Any] = {"arch": arch, "config": config, "seeds": len(members)}
        row.update(method=first["method"], target=first["target"], pattern=first["pattern"])
        for metric in METRICS:
            row[metric], row[f"{metric}_std"] = _mean_std(m[metric] for m in members)
        row["mask_changed"] = [
            statistics.fmean(c) for c in zip(*(m["mask_changed"] for m in members))
        ]
        row["emptied"] = sorted({n for m in members for r in m["remasks"] for n in r["emptied"]})
        row["command"] = first["command"]  # seed 0's (or the first finished seed's)
        rows.append(row)
    order = {"mlp": 0, "gpt2": 2}
    return sorted(rows, key=lambda row: (order.get(row["arch"], 1), _config_order(row)))


def _config_order(row: dict[str, Any]) -> tuple:
    methods = ("dense", "acdc", "gmp", "oneshot")
    return (row["target"] or 0, row["pattern"], methods.index(row["method"]), row["config"])


def _loss(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table, one line per (model, configuration)."""
    head = ("model", "config", "n", "top-1 %", "twin top-1 %", "loss", "twin loss", "sparsity")
    lines = [(*head, "train F", "infer F", "wall s")]
    for r in rows:
        lines.append(
            (
                r["arch"],
                r["config"],
                str(r["seeds"]),
                _pct(r["top1"], r["top1_std"], r["seeds"]),
                _pct(r["dense_twin_top1"], r["dense_twin_top1_std"], r["seeds"]),
                _loss(r["loss"], r["loss_std"], r["seeds"]),
                _loss(r["dense_twin_loss"], r["dense_twin_loss_std"], r["seeds"]),
                f"{100 * r['achieved_sparsity']:.2f}%",
                f"{r['training_flops']:.3f}",
                f"{r['inference_flops']:.3f}",
                f"{r['wall_seconds']:.0f}",
            )
        )
    return aligned(lines)


def mask_table(rows: Sequence[dict[str, Any]]) -> str:
    """Mask entries flipped at each AC/DC re-pruning, as % of all prunable weights (mean over
    seeds), and the layers any mask of the configuration emptied."""
    lines = ["model  config            flipped at re-pruning 1, 2, ... (% of prunable weights)"]
    for r in rows:
        if r["method"] == "acdc" and r["mask_changed"]:
            cells = ", ".join(f"{100 * c:.2f}" for c in r["mask_changed"])
            lines.append(f"{r['arch']:<6} {r['config']:<17} {cells}")
    emptied = [
        f"{r['arch']} {r['config']}: {', '.join(r['emptied'])}" for r in rows if r["emptied"]
    ]
    lines.append("layers emptied by a mask: " + ("; ".join(emptied) if emptied else "none"))
    return "\n".join(lines)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table as Markdown, each row with the command that re-measures it (seed S)."""
    head = "| model | config | n | top-1 % | dense twin % | loss | twin loss | sparsity | train F "
    head += "| infer F | wall s | re-measure (S: each seed) |"
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        n = r["seeds"]
        command = re.sub(r"--set seed=\d+", "--set seed=S", r["command"]).split(" --out ")[0]
        cells = [
            r["arch"],
            r["config"],
            str(n),
            _pct(r["top1"], r["top1_std"], n),
            _pct(r["dense_twin_top1"], r["dense_twin_top1_std"], n),
            _loss(r["loss"], r["loss_std"], n),
            _loss(r["dense_twin_loss"], r["dense_twin_loss_std"], n),
            f"{100 * r['achieved_sparsity']:.2f}%",
            f"{r['training_flops']:.3f}",
            f"{r['inference_flops']:.3f}",
            f"{r['wall_seconds']:.0f}",
            f"`{command}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def benchmark(
    jobs: Sequence[Job],
    out: Path,
    workers: int,
    results: Path,
    plots: Path | None,
    train: Sequence[Job] | None = None,
) -> dict:
    """Run (or finish) `train` (default: all of `jobs`), then write the JSON and the figures
    of every finished run of `jobs`."""
    errors = run_queue(jobs if train is None else train, out, workers)
    runs = [r for r in (collect(j, out) for j in jobs) if r is not None]
    payload = {
        "settings": {"epochs": 100, "seeds": len(SEEDS), "cnn": CNN_ARCH, "threads_per_run": 1},
        "machine": machine(),
        "jobs_in_parallel": workers,
        "out": str(out),
        "failed": {k: v for k, v in errors.items() if v is not None},
        "missing": [j.key for j in jobs if not (out / j.key / "summary.json").exists()],
        "configs": aggregate(runs),
        "runs": runs,
    }
    write_json(results, payload)
    if plots is not None:
        from benchmarks.accuracy_regime_plots import write_figures

        write_figures(payload, plots)
    return payload


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "accuracy-regime")
    parser.add_argument(
        "--only", choices=("mlp", "cnn", "gpt2"), help="train one model's runs (report all)"
    )
    parser.add_argument("--list", action="store_true", help="print the queue and exit")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: write the JSON, figures and tables (also as Markdown) of the "
        "finished runs",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder with the Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist)",
    )
    args = parser.parse_args(argv)
    if args.data_root:
        os.environ[DATA_ROOT_ENV] = args.data_root
    jobs = matrix()
    train = [j for j in jobs if j.arch.startswith(args.only)] if args.only else jobs
    if args.list:
        for job in train:
            done = (args.out / job.key / "summary.json").exists()
            print(f"{'done' if done else 'todo'}  {job.command(args.out / job.key)}")
        return
    payload = benchmark(jobs, args.out, args.jobs, RESULTS, PLOTS, [] if args.collect else train)
    print(table(payload["configs"]))
    print()
    print(mask_table(payload["configs"]))
    if args.collect:
        print()
        print(markdown(payload["configs"]))
    print(f"wrote {RESULTS} and figures under {PLOTS}")
    if payload["failed"] or payload["missing"]:
        print(f"failed: {payload['failed']}; missing: {payload['missing']}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
