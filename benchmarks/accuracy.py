"""Accuracy benchmark: AC/DC against dense, GMP and one-shot pruning on Fashion-MNIST.

Every run is one of the recipes in benchmarks/recipes (dense, acdc, gmp, oneshot), loaded with
variable overrides (model, target, scope, seed, epochs) and trained by `acdc_recipe`'s trainer,
so each row equals `PYTHONPATH=. acdc run benchmarks/recipes/<method>.yaml --set ...` (the
command is stored with the run). All methods of one comparison share the epoch budget and the
learning-rate schedule. Per run: sparse top-1, dense-twin top-1, exact sparsity, training and
inference FLOPs as multiples of dense, wall time, and the mask change at every re-pruning;
per configuration: mean and sample std over seeds.

    python benchmarks/accuracy.py [--quick | --only wide|lamp] [--jobs 2] [--out runs/accuracy]

`--only wide` runs just the wide-CNN check (cnn32: the built-in cnn at width 32) with the full
mode's budget: dense, AC/DC global 90/95% and GMP 90/95%, one seed; it writes
accuracy_wide.json and the figures under benchmarks/plots/wide. `--only lamp` runs the guard
against layer collapse on the width-8 CNN at 95% with the full mode's budget: AC/DC with
`scope: lamp`, beside AC/DC global and GMP (3 seeds each), GMP with lamp and AC/DC with
`min_density: 0.02`; it writes accuracy_lamp.json and benchmarks/plots/lamp.

Resumable: a run whose summary.json exists is skipped, an interrupted one resumes from its
newest checkpoint. Prints a table, writes benchmarks/results/accuracy.json (accuracy_quick.json
with --quick) and the figures under benchmarks/plots/.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import statistics
import sys
import traceback
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the recipes import their data from benchmarks.accuracy
    sys.path.insert(0, str(ROOT))
from benchmarks.records import machine, write_json  # noqa: E402

RECIPES = ROOT / "benchmarks" / "recipes"
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "benchmarks" / "plots"
METHODS = ("dense", "acdc", "gmp", "oneshot")


# --- data: fixed, seed-independent subsets of Fashion-MNIST -------------------------------


DATA_ROOT_ENV = "FASHION_MNIST_ROOT"  # the IDX folder; unset: Debian's dataset-fashion-mnist


@functools.lru_cache(maxsize=1)
def _fashion_mnist() -> Any:
    from acdc_recipe.language.train_config import DataSpec
    from acdc_recipe.trainer.data import load_data

    return load_data(DataSpec(source="fashion_mnist", root=os.environ.get(DATA_ROOT_ENV)))


def fashion_mnist_subset(train_size: int, val_size: int) -> tuple[Any, Any]:
    """The first `train_size` / `val_size` samples of fixed permutations of Fashion-MNIST's
    train and test splits (standardized with the full training split's statistics)."""
    from acdc_recipe.trainer.data import DataError, TensorData

    bundle = _fashion_mnist()
    subsets = []
    for name, data, size in (("train", bundle.train, train_size), ("val", bundle.val, val_size)):
        if not 0 < size <= len(data):
            raise DataError(
                f"benchmarks.accuracy: {name} subset of {size} samples asked for, Fashion-MNIST "
                f"has {len(data)}; set the recipe variable {name}_size between 1 and {len(data)}"
            )
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:size]
        subsets.append(TensorData(data.inputs[order], data.labels[order]))
    return subsets[0], subsets[1]


_SUBSET_NAME = re.compile(r"fashion_mnist_train(\d+)_val(\d+)")


def __getattr__(name: str) -> Any:
    """`fashion_mnist_train<N>_val<M>`: the data callable the recipes name."""
    if match := _SUBSET_NAME.fullmatch(name):
        return functools.partial(fashion_mnist_subset, int(match[1]), int(match[2]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the matrix -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One training run: a recipe file and the variables it is loaded with."""

    arch: str
    method: str
    seed: int
    target: float | None = None
    scope: str = "global"
    extra: tuple[tuple[str, Any], ...] = ()  # study variables (lr, block), also in the label

    @property
    def config(self) -> str:
        if self.method == "dense":
            label = "dense"
        else:
            percent = round(100 * (self.target or 0))
            shown = self.method == "acdc" or self.scope != "global"
            scope = f"-{self.scope}" if shown else ""
            label = f"{self.method}{scope}{percent}"
        return label + "".join(f"-{v}" if isinstance(v, str) else f"-{k}{v}" for k, v in self.extra)

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.config}/seed{self.seed}"


@dataclass(frozen=True)
class Mode:
    """Budget and data size of one benchmark mode; all methods share them."""

    name: str
    epochs: int
    warmup: int  # AC/DC and GMP dense warm-up
    block: int  # AC/DC sparse, dense and last-dense block length
    final_sparse: int  # AC/DC final sparse phase
    train_size: dict[str, int]
    val_size: int
    seeds: int  # seeds of the 3-seed configurations
    study: bool = False  # add the MLP mask-change study (dense-block length, learning rate)
    archs: tuple[str, ...] = ("cnn", "mlp")


MODES = {
    "full": Mode(
        "full", 18, 2, 2, 4, {"cnn": 10000, "cnn32": 10000, "mlp": 20000}, 10000, 3, study=True
    ),
    "quick": Mode("quick", 9, 1, 1, 2, {"cnn": 3000, "mlp": 3000}, 2000, 1),
    "smoke": Mode("smoke", 4, 1, 1, 1, {"cnn": 256, "mlp": 256}, 256, 1, archs=("cnn",)),
}

ACDC_TARGETS = (0.8, 0.9, 0.95, 0.98)
BASELINE_TARGETS = (0.9, 0.95, 0.98)  # GMP and one-shot
MULTI_SEED = {("dense", None), ("acdc", 0.9), ("acdc", 0.95), ("gmp", 0.9), ("gmp", 0.95)}
MULTI_SEED_MLP = MULTI_SEED | {("acdc", 0.98), ("gmp", 0.98), ("oneshot", 0.98)}  # MLPs are cheap


def matrix(mode: Mode) -> list[Job]:
    """Every run of `mode`, the most informative first (an interrupted run leaves those)."""
    configs: list[tuple[str, float | None, str]] = [("dense", None, "global")]
    configs += [("acdc", t, "global") for t in ACDC_TARGETS] + [("acdc", 0.9, "uniform")]
    configs += [(m, t, "global") for m in ("gmp", "oneshot") for t in BASELINE_TARGETS]
    jobs = [Job(a, m, 0, t, s) for a in mode.archs for m, t, s in configs]
    if "cnn" in mode.archs:  # ERK keeps the small conv layers denser (see docs/accuracy.md)
        jobs += [Job("cnn", m, 0, t, "erk") for m in ("acdc", "gmp") for t in (0.9, 0.95)]
    for arch in mode.archs:
        repeated = MULTI_SEED_MLP if arch == "mlp" else MULTI_SEED
        jobs += [
            Job(arch, m, seed, t, s)
            for seed in range(1, mode.seeds)
            for m, t, s in configs
            if (m, t) in repeated and s == "global"
        ]
    if mode.study and "mlp" in mode.archs:
        study = (("block", 1),), (("block", 3),), (("lr", 0.02),), (("lr", 0.2),)
        for extra in (*study, (("lr_shape", "constant"),)):
            jobs.append(Job("mlp", "acdc", 0, 0.9, "global", extra))  # block 1/3 fit 18 epochs
    return jobs


WIDE_ARCH = "cnn32"  # the built-in cnn at width 32: 97,568 prunable weights (width 8: 7,112)


def wide_matrix() -> list[Job]:
    """The wide-CNN check: does the small CNN's AC/DC collapse at 95% survive more weights?"""
    configs = [("acdc", 0.95), ("gmp", 0.95), ("dense", None), ("acdc", 0.9), ("gmp", 0.9)]
    return [Job(WIDE_ARCH, method, 0, target) for method, target in configs]


def lamp_matrix() -> list[Job]:
    """The guard check: does `scope: lamp` (or a `min_density` / `min_per_channel` floor) keep
    the width-8 CNN at 95% alive where global magnitude pruning empties a layer and collapses?"""
    jobs = [Job("cnn", m, seed, 0.95, s, e) for seed in range(3) for m, s, e in LAMP_CONFIGS]
    jobs.append(Job("cnn", "acdc", 0, 0.95, "global", (("min_density", 0.02),)))
    return jobs


PER_CHANNEL = (("min_per_channel", 1),)  # every conv filter and Linear row keeps a weight
LAMP_CONFIGS = (
    ("acdc", "lamp", ()),
    ("acdc", "global", ()),
    ("gmp", "global", ()),
    ("gmp", "lamp", ()),
    ("acdc", "lamp", PER_CHANNEL),
    ("acdc", "global", PER_CHANNEL),
)


@functools.cache
def declared_variables(method: str) -> frozenset[str]:
    text = (RECIPES / f"{method}.yaml").read_text(encoding="utf-8")
    return frozenset(yaml.safe_load(text).get("variables", {}))


def overrides(job: Job, mode: Mode) -> dict[str, Any]:
    """The recipe variables of `job` in `mode` (only those its recipe declares)."""
    wanted: dict[str, Any] = {
        "arch": job.arch,
        "seed": job.seed,
        "epochs": mode.epochs,
        "warmup": mode.warmup,
        "block": mode.block,
        "final_sparse": mode.final_sparse,
        "train_size": mode.train_size[job.arch],
        "val_size": mode.val_size,
        "sparsity": job.target,
        "scope": job.scope,
        **dict(job.extra),
    }
    declared = declared_variables(job.method)
    return {k: v for k, v in wanted.items() if k in declared and v is not None}


def command(job: Job, mode: Mode, run_dir: Path) -> str:
    sets = " ".join(f"--set {k}={json.dumps(v)}" for k, v in overrides(job, mode).items())
    return f"PYTHONPATH=. acdc run benchmarks/recipes/{job.method}.yaml {sets} --out {run_dir}"


# --- running --------------------------------------------------------------------------------


def _train_job(method: str, variables: dict[str, Any], run_dir: str, threads: int) -> str | None:
    """Train one run in this process (output to run_dir/log.txt); None, or the error text."""
    from acdc_recipe.formats.run_dir import RunDir
    from acdc_recipe.language.loading import load_recipe
    from acdc_recipe.trainer.loop import train

    torch.set_num_threads(threads)
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "log.txt").open("a", encoding="utf-8") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                recipe = load_recipe(RECIPES / f"{method}.yaml", overrides=variables)
                resume = bool(RunDir(folder).checkpoint_files())
                train(recipe, folder, resume=resume, device="cpu")
            except Exception:  # one failed run must not stop the matrix; it is reported
                text = traceback.format_exc()
                log.write(text)
                return text.strip().splitlines()[-1]
    return None


def run_matrix(
    jobs: Sequence[Job], mode: Mode, out: Path, workers: int = 1
) -> dict[str, str | None]:
    """Train every job whose run directory has no summary.json; returns key -> error or None."""
    todo = [j for j in jobs if not (out / j.key / "summary.json").exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs done already; {len(todo)} to go")
    errors: dict[str, str | None] = {}
    args = [(j.method, overrides(j, mode), str(out / j.key)) for j in todo]
    if workers <= 1:
        for job, (method, variables, folder) in zip(todo, args):
            errors[job.key] = _train_job(method, variables, folder, max(1, torch.get_num_threads()))
            _report_done(job, out, errors[job.key])
        return errors
    context = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_train_job, *a, 1): job for job, a in zip(todo, args)}
        for future, job in futures.items():
            errors[job.key] = future.result()
            _report_done(job, out, errors[job.key])
    return errors


def _report_done(job: Job, out: Path, error: str | None) -> None:
    if error is not None:
        print(f"FAILED {job.key}: {error} (see {out / job.key / 'log.txt'})", flush=True)
        return
    summary = json.loads((out / job.key / "summary.json").read_text(encoding="utf-8"))
    top1 = summary["sparse_top1"] if summary["sparse_top1"] is not None else summary["dense_top1"]
    print(f"done {job.key}: top-1 {100 * top1:.2f}%, {summary['wall_seconds']:.0f} s", flush=True)


# --- results --------------------------------------------------------------------------------


def collect(job: Job, mode: Mode, out: Path) -> dict[str, Any] | None:
    """One finished run as a flat record (None when it has no summary.json)."""
    folder = out / job.key
    if not (folder / "summary.json").exists():
        return None
    run = read_run(folder)
    twin = run["dense_snapshot_top1"] if job.method in ("acdc", "dense") else None
    return {
        "key": job.key,
        "arch": job.arch,
        "config": job.config,
        "method": job.method,
        "target": job.target,
        "scope": job.scope,
        "seed": job.seed,
        "sparse_top1": run["sparse_top1"],
        "dense_twin_top1": twin,
        "dense_snapshot_top1": run["dense_snapshot_top1"],
        "top1": run["sparse_top1"] if run["sparse_top1"] is not None else twin,
        **{k: v for k, v in run.items() if k not in ("sparse_top1", "dense_snapshot_top1")},
        "command": command(job, mode, folder),
    }


def read_run(folder: Path) -> dict[str, Any]:
    """What a finished run directory measured: top-1 and loss of the final and the dense model,
    exact sparsity, FLOPs multipliers, wall time, the per-epoch curve and every mask computation."""
    from acdc_recipe.formats.records import EpochEnded, RunStarted, read_records
    from acdc_recipe.runtime.events import MasksComputed

    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    records = read_records(folder / "metrics.jsonl")
    started = [r for r in records if isinstance(r, RunStarted)][-1]
    spe = started.steps_per_epoch
    return {
        "sparse_top1": summary["sparse_top1"],
        "dense_snapshot_top1": summary["dense_top1"],
        "sparse_loss": summary["sparse_loss"],
        "dense_snapshot_loss": summary["dense_loss"],
        "achieved_sparsity": summary["achieved_sparsity"],
        "training_flops": summary["training_flops_multiplier"],
        "inference_flops": summary["inference_flops_multiplier"],
        "wall_seconds": summary["wall_seconds"],
        "epochs": summary["epochs"],
        "phases": started.phases,
        "steps_per_epoch": spe,
        "curve": [
            {
                "epoch": r.epoch,
                "phase": r.phase,
                "top1": r.top1,
                "val_loss": r.val_loss,
                "train_loss": r.train_loss,
                "seconds": r.seconds,
            }
            for r in records
            if isinstance(r, EpochEnded)
        ],
        "remasks": [
            {
                "epoch": r.step / spe,
                "target": r.target,
                "changed": r.changed_fraction,
                "per_layer_sparsity": r.per_layer_sparsity,
                "emptied": sorted(k for k, v in r.per_layer_sparsity.items() if v == 1.0),
            }
            for r in records
            if isinstance(r, MasksComputed)
        ],
    }


def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    spread = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), spread


METRICS = ("top1", "dense_twin_top1", "achieved_sparsity", "training_flops", "inference_flops")


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (model, configuration), in matrix order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["arch"], run["config"]), []).append(run)
    rows = []
    for (arch, config), members in groups.items():
        row: dict[str, Any] = {"arch": arch, "config": config, "seeds": len(members)}
        row.update(method=members[0]["method"], target=members[0]["target"])
        for metric in (*METRICS, "wall_seconds"):
            row[metric], row[f"{metric}_std"] = _mean_std(m[metric] for m in members)
        changes = [[r["changed"] for r in m["remasks"][1:]] for m in members]
        row["mask_changed"] = [statistics.fmean(c) for c in zip(*changes)]
        rows.append(row)
    return sorted(rows, key=lambda row: row["arch"])  # stable: matrix order within a model


def _pct(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table, one line per (model, configuration)."""
    head = ("model", "config", "n", "top-1 %", "dense twin %", "sparsity", "train F", "infer F")
    lines = [(*head, "wall s")]
    for r in rows:
        lines.append(
            (
                r["arch"],
                r["config"],
                str(r["seeds"]),
                _pct(r["top1"], r["top1_std"], r["seeds"]),
                _pct(r["dense_twin_top1"], r["dense_twin_top1_std"], r["seeds"]),
                f"{100 * r['achieved_sparsity']:.2f}%",
                f"{r['training_flops']:.3f}",
                f"{r['inference_flops']:.3f}",
                f"{r['wall_seconds']:.0f}",
            )
        )
    return aligned(lines)


def aligned(lines: Sequence[Sequence[str]]) -> str:
    """Rows of cells as left-aligned columns, the first row a header underlined by dashes."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


def mask_table(rows: Sequence[dict[str, Any]]) -> str:
    """Mask entries flipped at each AC/DC re-pruning (vs. the previous sparse phase's mask), as
    % of all prunable weights and, in brackets, as % of the kept weights that were replaced."""
    lines = ["model  config                     flipped at re-pruning 1, 2, ... (% replaced)"]
    for r in rows:
        if r["method"] != "acdc" or not r["mask_changed"]:
            continue
        kept = 1 - r["target"]
        cells = [f"{100 * c:.2f}% ({100 * c / (2 * kept):.1f}%)" for c in r["mask_changed"]]
        lines.append(f"{r['arch']:<6} {r['config']:<26} " + ", ".join(cells))
    return "\n".join(lines)


def emptied_table(runs: Sequence[dict[str, Any]]) -> str:
    """Per run, the layers a mask left with no weight at all, at each (re-)pruning."""
    lines = ["model  config                     layers fully pruned at each mask computation"]
    for run in runs:
        if not run["remasks"]:
            continue
        cells = [
            f"ep{m['epoch']:g}: " + (", ".join(m["emptied"]) if m["emptied"] else "none")
            for m in run["remasks"]
        ]
        if run["method"] == "gmp":  # a mask every epoch: show the first and last only
            cells = [cells[0], "...", cells[-1]] if len(cells) > 2 else cells
        lines.append(f"{run['arch']:<6} {run['config']:<26} " + "; ".join(cells))
    return "\n".join(lines)


def benchmark(
    mode: Mode,
    out: Path,
    workers: int,
    results: Path,
    plots: Path | None,
    jobs: Sequence[Job] | None = None,
) -> dict:
    """Run (or finish) `jobs` (default: the matrix of `mode`), then write the JSON and figures."""
    jobs = matrix(mode) if jobs is None else list(jobs)
    errors = run_matrix(jobs, mode, out, workers)
    runs = [r for r in (collect(j, mode, out) for j in jobs) if r is not None]
    rows = aggregate(runs)
    payload = {
        "mode": mode.name,
        "settings": {k: v for k, v in vars(mode).items() if k != "name"},
        "machine": machine(),
        "out": str(out),
        "failed": {k: v for k, v in errors.items() if v is not None},
        "missing": [j.key for j in jobs if not (out / j.key / "summary.json").exists()],
        "configs": rows,
        "runs": runs,
    }
    write_json(results, payload)
    if plots is not None:
        from benchmarks.accuracy_plots import write_figures

        write_figures(payload, plots)
    return payload


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="9 epochs, 3k samples, 1 seed")
    parser.add_argument(
        "--only",
        choices=("wide", "lamp"),
        default=None,
        help="wide: just the width-32 CNN check; lamp: just the layer-collapse guard check",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 thread each)")
    parser.add_argument("--out", type=Path, default=None, help="run directories")
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder with the Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist)",
    )
    args = parser.parse_args(argv)
    if args.data_root:
        os.environ[DATA_ROOT_ENV] = args.data_root
    if args.quick and args.only:
        parser.error(
            f"--only {args.only} uses the full mode's budget; it cannot be combined with --quick"
        )
    mode = MODES["quick" if args.quick else "full"]
    out = args.out or ROOT / "runs" / f"accuracy-{mode.name}"
    suffix = f"_{args.only}" if args.only else ("_quick" if args.quick else "")
    results = RESULTS / f"accuracy{suffix}.json"
    plots = PLOTS / (args.only or mode.name)
    jobs = {"wide": wide_matrix, "lamp": lamp_matrix}[args.only]() if args.only else None
    payload = benchmark(mode, out, args.jobs, results, plots, jobs)
    print(table(payload["configs"]))
    print()
    print(mask_table(payload["configs"]))
    if args.only:
        print()
        print(emptied_table(payload["runs"]))
    print(f"wrote {results} and figures under {plots}")
    if payload["failed"] or payload["missing"]:
        print(f"failed: {payload['failed']}; missing: {payload['missing']}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
