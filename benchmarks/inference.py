"""Inference of the exported `torch-sparse` model against the masked dense model, and file sizes.

For each model, sparsity, batch size and thread count: the model is masked (`scope: uniform`,
every layer at the target: global magnitude pruning of freshly initialised weights empties
whole layers, which would flatter the kernels), exported with `format="torch-sparse"` for that
batch size and thread count (the per-layer timing included, its seconds reported), loaded back
with `load_sparse`, and timed end to end against the dense model in the same process, rounds
interleaved (the order alternates); the table shows the fastest dense round over the fastest
sparse round (the JSON also has the median of the per-round ratios). When the `sparseprop` package is installed, a peer row replaces every pruned
Linear with its `SparseLinear` (convolutions stay dense there). File sizes: the `compressed`
export's bytes for the pruned weights against their dense bytes, and the whole files.

    python benchmarks/inference.py --threads 1 [--quick] [--models mlp resnet50]

Prints a table and writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from acdc_recipe.compiler import compile  # noqa: E402
from acdc_recipe.exporter import TorchSparse, export, load_sparse  # noqa: E402
from acdc_recipe.language.schema import Recipe  # noqa: E402
from acdc_recipe.models import resnet20  # noqa: E402
from acdc_recipe.runtime import attach  # noqa: E402
from benchmarks.records import machine, write_json  # noqa: E402
from benchmarks.sparse_training import (  # noqa: E402
    interleaved,
    kernel_benchmark_parser,
    pin_peer_threads,
)
from benchmarks.step_overhead import mlp, transformer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "inference.json"
SPARSITIES = (0.9, 0.95, 0.98)
# model -> (factory, one sample's shape, batch sizes)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], tuple[int, ...]]] = {
    "mlp": (mlp, (784,), (1, 64)),
    "transformer": (transformer, (32, 128), (1, 16, 64)),
    "resnet20": (resnet20, (3, 32, 32), (1, 64)),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), (3, 224, 224), (1,)),
}


def masked(factory: Callable[[], nn.Module], sparsity: float, scope: str, shape: tuple[int, ...]):
    torch.manual_seed(0)
    model = factory()
    plan = Recipe.model_validate(
        {
            "name": "bench",
            "sparsity": {"target": sparsity, "scope": scope},
            "schedule": {"unit": "step", "phases": [{"sparse": 1}]},
        }
    )
    compiled = compile(model, plan, example_inputs=(torch.zeros(1, *shape),))
    runtime = attach(compiled, torch.optim.SGD(model.parameters(), lr=0.0))
    runtime.begin_step()  # masks computed and applied
    return model.eval(), runtime


def sparseprop_model(model: nn.Module) -> nn.Module | None:
    """`model` with each pruned Linear (outside attention) as sparseprop's SparseLinear."""
    try:
        from sparseprop.modules import SparseLinear
    except ImportError:
        return None
    twin = copy.deepcopy(model)
    inside = {
        id(s) for m in twin.modules() if isinstance(m, nn.MultiheadAttention) for s in m.modules()
    }
    for name, module in list(twin.named_modules()):
        if type(module) is nn.Linear and id(module) not in inside:
            bias = None if module.bias is None else nn.Parameter(module.bias.detach().clone())
            parent, _, child = name.rpartition(".")
            holder = twin.get_submodule(parent) if parent else twin
            peer = SparseLinear(module.weight.detach().clone(), bias)
            peer.register_forward_pre_hook(lambda *_: None)  # as CsrLayer: no encoder fast path
            setattr(holder, child, peer)
    return twin


def forward_seconds(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        return (time.perf_counter() - start) / repeats


def speedups(dense: nn.Module, others: dict[str, nn.Module], x: torch.Tensor, rounds: int) -> dict:
    """Dense time / other time over interleaved rounds (see `sparse_training.interleaved`)."""
    for model in (dense, *others.values()):
        forward_seconds(model, x, 2)  # warm-up
    single = forward_seconds(dense, x, 1)
    repeats = max(1, min(2000, int(0.1 / max(single, 1e-6))))  # ~0.1 s a measurement
    calls = {k: (lambda m=m: forward_seconds(m, x, repeats)) for k, m in others.items()}
    ratios, best, medians = interleaved(lambda: forward_seconds(dense, x, repeats), calls, rounds)
    result = {k: 1 / v for k, v in ratios.items()}
    result["median of round speedups"] = {k: 1 / v for k, v in medians.items()}
    result["dense ms"] = 1000 * best
    return result


def file_sizes(model: nn.Module, runtime, folder: Path) -> dict:
    dense_file = folder / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dense_file))
    exported = export(model, folder / "compressed", runtime=runtime)
    pruned = exported.manifest["pruned_bytes"]
    return {
        "pruned_compressed_over_dense": pruned["compressed"] / pruned["dense"],
        "file_compressed_over_dense": (exported.path / "model.safetensors").stat().st_size
        / dense_file.stat().st_size,
    }


def measure(name: str, sparsity: float, batch: int, threads: int, scope: str, rounds: int) -> dict:
    factory, shape, _ = MODELS[name]
    model, runtime = masked(factory, sparsity, scope, shape)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        exported = export(
            model,
            Path(folder) / "sparse",
            runtime=runtime,
            format=TorchSparse(batch_size=batch, threads=threads),
            input_shape=shape,
        )
        export_seconds = time.perf_counter() - start
        torch.manual_seed(0)
        sparse = load_sparse(exported.path, factory())
        sizes = file_sizes(model, runtime, Path(folder)) if batch == MODELS[name][2][0] else {}
    runtime.close()
    others = {"torch-sparse": sparse}
    peer = sparseprop_model(model)
    if peer is not None:
        others["sparseprop"] = peer.eval()
    row = speedups(model, others, x, rounds)
    layers = exported.manifest["layers"]
    csr = [n for n, layer in layers.items() if layer["kernel"] == "csr"]
    return {
        "model": name, "sparsity": sparsity, "batch": batch, "threads": threads, **row,
        "csr_layers": len(csr), "pruned_layers": len(layers),
        "csr_kinds": sorted({layers[n]["kind"] for n in csr}),
        "export_seconds": export_seconds, "max_abs_diff": exported.manifest["max_abs_diff"],
        **sizes,
    }  # fmt: skip


def main() -> None:
    args = kernel_benchmark_parser(__doc__, list(MODELS)).parse_args()
    pin_peer_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 9)
    rows = []
    print(f"{'model':<12} {'sp':>5} {'batch':>5} {'thr':>3} {'dense ms':>9} {'sparse':>8} "
          f"{'peer':>8} {'csr layers':>10} {'export s':>8} {'pruned bytes':>12}")  # fmt: skip
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.models:
            for sparsity in SPARSITIES:
                for batch in MODELS[name][2]:
                    row = measure(name, sparsity, batch, threads, args.scope, rounds)
                    rows.append(row)
                    peer = f"{row['sparseprop']:.2f}x" if "sparseprop" in row else "n/a"
                    size = row.get("pruned_compressed_over_dense")
                    print(
                        f"{name:<12} {sparsity:>5} {batch:>5} {threads:>3} {row['dense ms']:>9.2f} "
                        f"{row['torch-sparse']:>7.2f}x {peer:>8} "
                        f"{row['csr_layers']:>4}/{row['pruned_layers']:<5} "
                        f"{row['export_seconds']:>8.1f} "
                        f"{'' if size is None else f'{size:.3f}x':>12}",
                        flush=True,
                    )
    out = args.out or RESULTS
    write_json(
        out,
        {
            "benchmark": "inference",
            "threads": args.threads,
            "scope": args.scope,
            "rounds": rounds,
            "quick": args.quick,
            "machine": machine(),
            "sparseprop": sparseprop_model(nn.Sequential()) is not None,
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
