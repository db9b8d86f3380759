"""Sparse phases on sparse kernels: step time, the per-layer kernel, drift, and whole runs.

1. Step time: for each model, sparsity and thread count, one copy of the model trains in a
   long sparse phase with `sparse_kernels: auto` (and one with `off`, and a second `off` copy:
   how far two identical models measure apart on this machine), another in a long dense
   phase; rounds are interleaved (the order alternates) and the table shows the fastest
   sparse-phase round over the fastest dense-phase round (the JSON also has the median of the
   per-round ratios). Masks are `scope: uniform` (every
   layer at the target): global magnitude pruning of freshly initialised weights empties whole
   layers, which would flatter the kernels.
2. The kernel alone: one 1024x1024 Linear at batch 256, forward and backward, dense autograd
   against `SparseLayerFunction` and, when the `sparseprop` package is installed, its
   `SparseLinear` (IST-DASLab's CPU kernels, an anchor only).
3. Drift: the same sparse phase from the same state with kernels on and off.
4. Whole runs (`--runs`): an AC/DC recipe (MLP 784-1024-1024-10, 90%) on Fashion-MNIST (a
   fixed 12,800-image subset; `--data synthetic`: Gaussian class clusters of its shape), with
   kernels auto, off, and dense training of the same length; wall time and final top-1, seeds
   0 and 1.

    python benchmarks/sparse_training.py --threads 1 [--quick] [--runs]

Prints tables and writes benchmarks/results/sparse_training.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from acdc_recipe.compiler import compile  # noqa: E402
from acdc_recipe.language.loading import load_recipe_text  # noqa: E402
from acdc_recipe.language.schema import Recipe  # noqa: E402
from acdc_recipe.models import resnet20  # noqa: E402
from acdc_recipe.runtime import attach  # noqa: E402
from acdc_recipe.runtime.events import KernelsChosen, kernels_note  # noqa: E402
from acdc_recipe.runtime.kernels import SparseLayerFunction, build_operands, form_of  # noqa: E402
from acdc_recipe.trainer.data import TensorData  # noqa: E402
from benchmarks.records import machine, write_json  # noqa: E402
from benchmarks.step_overhead import mlp, transformer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sparse_training.json"
SPARSITIES = (0.9, 0.95, 0.98)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (256, 784)),
    "transformer": (transformer, (32, 32, 128)),
    "resnet20": (resnet20, (32, 3, 32, 32)),
}


def recipe(phases: list[dict], sparsity: float, scope: str) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "bench",
            "sparsity": {"target": sparsity, "scope": scope},
            "schedule": {"unit": "step", "phases": phases},
        }
    )


class Trainer:
    """One model copy with its optimizer and runtime; `steps(n)` trains n steps on one batch."""

    def __init__(self, base, phases, sparsity, scope, kernels, x, y) -> None:
        self.model = copy.deepcopy(base)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4
        )
        compiled = compile(self.model, recipe(phases, sparsity, scope), example_inputs=(x,))
        self.runtime = attach(compiled, self.optimizer, sparse_kernels=kernels)
        self.x, self.y = x, y

    def steps(self, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            self.runtime.begin_step()
            self.optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(self.model(self.x), self.y).backward()
            self.optimizer.step()
        return time.perf_counter() - start


def interleaved(baseline: Callable[[], float], others: dict[str, Callable[[], float]], rounds: int):
    """(other / baseline per key, baseline seconds, median of per-round ratios per key).

    Each pair is timed in alternating order. The ratio compares the fastest of each side's
    rounds: work of other processes on a shared machine only ever adds time, so the minimum is
    the least disturbed measurement; the median of the per-round ratios is kept beside it."""
    seconds: dict[str, list[float]] = {k: [] for k in others}
    base_seconds: list[float] = []
    ratios: dict[str, list[float]] = {k: [] for k in others}
    for index in range(rounds):
        for key, other in others.items():
            if index % 2 == 0:
                b, o = baseline(), other()
            else:
                o, b = other(), baseline()
            seconds[key].append(o)
            base_seconds.append(b)
            ratios[key].append(o / b)
    best = min(base_seconds)
    return (
        {k: min(v) / best for k, v in seconds.items()},
        best,
        {k: statistics.median(v) for k, v in ratios.items()},
    )


def step_ratios(name: str, sparsity: float, scope: str, rounds: int, steps: int) -> dict:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    base = factory()
    x, y = torch.randn(*shape), torch.randint(0, 10, (shape[0],))
    dense = Trainer(base, [{"dense": 10**9}, {"sparse": 1}], sparsity, scope, "off", x, y)
    # "off, copy" trains a second kernels-off copy: how far two identical models measure apart
    variants = {
        name: Trainer(base, [{"sparse": 10**9}], sparsity, scope, name.split(",")[0], x, y)
        for name in ("off", "auto", "off, copy")
    }
    for trainer in (dense, *variants.values()):
        trainer.steps(2)  # the first step of `auto` times its layers and chooses
    ratios, base_seconds, medians = interleaved(
        lambda: dense.steps(steps),
        {f"sparse, kernels {k}": (lambda t=t: t.steps(steps)) for k, t in variants.items()},
        rounds,
    )
    (chosen,) = [e for e in variants["auto"].runtime.history if isinstance(e, KernelsChosen)]
    return {
        **ratios,
        "median of round ratios": medians,
        "dense step ms": 1000 * base_seconds / steps,
        "kernels": kernels_note(chosen),
        "per_layer": chosen.kernels,
        "timings": chosen.timings,
    }


def kernel_alone(sparsity: float, rounds: int) -> dict:
    """One 1024x1024 Linear at batch 256: forward and backward, as time / dense time."""
    torch.manual_seed(0)
    layer = nn.Linear(1024, 1024)
    mask = torch.rand(layer.weight.shape) >= sparsity
    with torch.no_grad():
        layer.weight.mul_(mask)
    operands = build_operands(mask, torch.float32)
    operands.refresh_(layer.weight)
    form = form_of(layer)
    x = torch.randn(256, 1024, requires_grad=True)

    def timed(forward: Callable[[], torch.Tensor]) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            for _ in range(5):
                forward().sum().backward()
            return time.perf_counter() - start

        return run

    others = {
        "SparseLayerFunction": timed(
            lambda: SparseLayerFunction.apply(x, layer.weight, layer.bias, form, operands)
        )
    }
    peer = sparseprop_linear(layer)
    if peer is not None:
        others["sparseprop"] = timed(lambda: peer(x))
    ratios, _, _ = interleaved(timed(lambda: layer(x)), others, rounds)
    return {key: 1 / value for key, value in ratios.items()}  # speedups


def sparseprop_linear(layer: nn.Linear) -> nn.Module | None:
    try:
        from sparseprop.modules import SparseLinear
    except ImportError:
        return None
    bias = nn.Parameter(layer.bias.detach().clone())
    return SparseLinear(layer.weight.detach().clone(), bias)


def drift(steps: int) -> dict:
    """Kernels on vs off over one sparse phase from the same state (MLP, batch 256, 90%)."""
    torch.manual_seed(0)
    base = mlp()
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(256, 784, generator=generator),
            torch.randint(0, 10, (256,), generator=generator),
        )
        for _ in range(steps)
    ]
    finals, losses = {}, {}
    for kernels in ("off", "on"):
        trainer = Trainer(base, [{"sparse": steps}], 0.9, "uniform", kernels, *batches[0])
        for x, y in batches:
            trainer.x, trainer.y = x, y
            trainer.steps(1)
        finals[kernels] = [p.detach().clone() for p in trainer.model.parameters()]
        with torch.no_grad():
            losses[kernels] = float(nn.functional.cross_entropy(trainer.model(x), y))
    absolute = max(float((a - b).abs().max()) for a, b in zip(finals["off"], finals["on"]))
    scale = max(float(a.abs().max()) for a in finals["off"])
    return {
        "steps": steps,
        "max_abs_weight_diff": absolute,
        "relative_to_max_weight": absolute / scale,
        "final_loss_off": losses["off"],
        "final_loss_on": losses["on"],
    }


def synthetic_blobs() -> tuple[TensorData, TensorData]:
    """Fashion-MNIST-shaped synthetic data: 10 Gaussian clusters in 784 dimensions."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 784, generator=generator) * 0.08
    datasets = []
    for size in (12800, 2000):
        labels = torch.randint(0, 10, (size,), generator=generator)
        inputs = centers[labels] + torch.randn(size, 784, generator=generator)
        datasets.append(TensorData(inputs.reshape(size, 1, 28, 28), labels))
    return datasets[0], datasets[1]


RUN_RECIPE = """
name: bench-acdc-mlp
sparsity: {{target: 0.9, scope: global}}
schedule:
  unit: epoch
  {schedule}
train:
  model: {{name: mlp, kwargs: {{in_features: 784, hidden: [1024, 1024], num_classes: 10}},
          input_shape: [1, 28, 28]}}
  data: {{source: callable, callable: "{data}"}}
  optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0001}}
  lr_schedule: {{name: cosine, warmup_epochs: 1}}
  batch_size: 256
  seed: {seed}
  sparse_kernels: {kernels}
  checkpoint_every_steps: 100000
"""
ACDC = "acdc: {{epochs: {epochs}, warmup: 4, sparse: 2, dense: 2, last_dense: 2, final_sparse: 4}}"


def run_variants(epochs: int) -> dict[str, tuple[str, str]]:
    """Whole-run variant -> (schedule, sparse_kernels), all of `epochs` epochs."""
    return {
        "acdc, kernels auto": (ACDC.format(epochs=epochs), "auto"),
        "acdc, kernels off": (ACDC.format(epochs=epochs), "off"),
        "dense": (f"phases: [{{dense: {epochs}}}]", "off"),
    }


# --data: the whole runs' data callable and how the JSON describes it
RUN_DATA = {
    "fashion-mnist": (
        "benchmarks.accuracy:fashion_mnist_train12800_val2000",
        "Fashion-MNIST: a fixed 12,800-image subset of the training split, 2,000 test images",
    ),
    "synthetic": (
        "benchmarks.sparse_training:synthetic_blobs",
        "synthetic_blobs (12,800 train / 2,000 val samples, 784 features, 10 classes)",
    ),
}


def run_recipe(schedule: str, kernels: str, seed: int, data: str = "synthetic") -> Recipe:
    text = RUN_RECIPE.format(
        schedule=schedule, seed=seed, kernels=f'"{kernels}"', data=RUN_DATA[data][0]
    )
    return load_recipe_text(text)


def whole_runs(epochs: int, seeds: tuple[int, ...], data: str) -> dict:
    from acdc_recipe.trainer.loop import train

    variants = run_variants(epochs)
    results: dict[str, list[dict]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            for key, (schedule, kernels) in variants.items():  # interleaved by seed
                summary = train(
                    run_recipe(schedule, kernels, seed, data),
                    Path(folder) / f"{key}-{seed}".replace(" ", "_").replace(",", ""),
                    log_every=1e9,
                )
                top1 = (
                    summary.sparse_top1 if summary.sparse_top1 is not None else summary.dense_top1
                )
                results[key].append(
                    {"seed": seed, "wall_seconds": summary.wall_seconds, "top1": top1}
                )
    off = statistics.median(r["wall_seconds"] for r in results["acdc, kernels off"])
    return {
        "epochs": epochs,
        "data": RUN_DATA[data][1],
        "runs": results,
        "wall_ratio_to_kernels_off": {
            key: statistics.median(r["wall_seconds"] for r in runs) / off
            for key, runs in results.items()
        },
    }


def kernel_benchmark_parser(doc: str, models: list[str]) -> argparse.ArgumentParser:
    """The options both kernel benchmarks take."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--models", nargs="*", default=models, choices=models)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--scope", default="uniform", choices=("uniform", "global", "erk"))
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 10, quick 3)")
    parser.add_argument("--out", type=Path, help="the JSON to write (default under results/)")
    return parser


def pin_peer_threads(threads: list[int]) -> None:
    """A peer with an OpenMP runtime of its own (sparseprop) reads OMP_NUM_THREADS at load."""
    if len(threads) == 1:
        os.environ["OMP_NUM_THREADS"] = str(threads[0])


def main() -> None:
    parser = kernel_benchmark_parser(__doc__, list(MODELS))
    parser.add_argument("--runs", action="store_true", help="also time whole AC/DC runs")
    parser.add_argument("--epochs", type=int, default=20, help="whole runs: epochs")
    parser.add_argument(
        "--data",
        choices=sorted(RUN_DATA),
        default="fashion-mnist",
        help="whole runs: Fashion-MNIST (Debian's dataset-fashion-mnist, or FASHION_MNIST_ROOT) "
        "or synthetic clusters of its shape",
    )
    args = parser.parse_args()
    pin_peer_threads(args.threads)
    rounds, steps = (3, 2) if args.quick else (10, 3)
    rounds = args.rounds or rounds
    steps_table: dict = {}
    kernels: dict = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.models:
            for sparsity in SPARSITIES:
                row = step_ratios(name, sparsity, args.scope, rounds, steps)
                steps_table[f"{name} {sparsity} t{threads}"] = {
                    "model": name, "sparsity": sparsity, "threads": threads, **row,
                }  # fmt: skip
                print(
                    f"{name:<12} {sparsity:>5} t{threads}  dense {row['dense step ms']:7.1f} ms  "
                    f"sparse/dense: kernels auto {row['sparse, kernels auto']:.3f}x, off "
                    f"{row['sparse, kernels off']:.3f}x (a second off copy "
                    f"{row['sparse, kernels off, copy']:.3f}x)  ({row['kernels']})",
                    flush=True,
                )
        for sparsity in SPARSITIES:
            kernels[f"{sparsity} t{threads}"] = kernel_alone(sparsity, rounds)
            cells = ", ".join(f"{k} {v:.2f}x" for k, v in kernels[f"{sparsity} t{threads}"].items())
            print(f"Linear 1024x1024 batch 256 fwd+bwd {sparsity} t{threads}: speedup {cells}")
    torch.set_num_threads(args.threads[0])
    numerics = drift(20 if args.quick else 100)
    print(f"drift over a {numerics['steps']}-step sparse phase: {numerics}")
    payload = {
        "benchmark": "sparse_training",
        "threads": args.threads,
        "scope": args.scope,
        "rounds": rounds,
        "steps_per_timing": steps,
        "quick": args.quick,
        "machine": machine(),
        "steps": steps_table,
        "kernel_alone": kernels,
        "sparseprop": sparseprop_linear(nn.Linear(2, 2)) is not None,
        "drift": numerics,
    }
    if args.runs:
        epochs = max(4, args.epochs // 4) if args.quick else args.epochs
        runs = whole_runs(epochs, (0, 1), args.data)
        payload["whole_runs"] = runs
        for key, ratio in runs["wall_ratio_to_kernels_off"].items():
            top1 = [f"{100 * r['top1']:.2f}%" for r in runs["runs"][key]]
            print(f"whole run {key:<20} wall x{ratio:.3f} of kernels off; top-1 {top1}")
    out = args.out or RESULTS
    write_json(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
