"""Inference over a batch sweep: the exported `torch-sparse` model beside dense PyTorch and peers.

For each model and sparsity the model is masked (`scope: uniform`, every layer at the target:
global magnitude pruning of freshly initialised weights empties whole layers, which would
flatter the kernels), exported once with `TorchSparse(batch_sizes=<the sweep>, threads=1)` (one
export serves every batch size: each layer dispatches per call), loaded back with
`load_sparse`, and at each batch size timed end to end on one thread in one process, rounds
interleaved (each model against dense PyTorch eager, in alternating order; the fastest round of
each side), beside its peers in the same rounds:

- `onnxruntime`: the masked model exported with torch.onnx and run by ONNX Runtime (one
  thread, all graph optimizations); it multiplies the zeros like any weight ("ORT dense");
- `sparseprop`: every pruned Linear as sparseprop's `SparseLinear` (convolutions and attention
  stay dense in that model);
- `deepsparse`: the same ONNX file run by DeepSparse 1.8 (one core, compiled per batch size)
  from its own venv, through `deepsparse_worker.py`.

`--threads N` gives every one of them N threads instead (the export times with N). A peer
that cannot run is reported as such, with the reason. `bound` is the FLOPs bound: the
model's dense FLOPs over those left at its density (pruned layers at their density, the rest
dense), the speedup of kernels that skipped every zero at dense speed. Each peer's outputs are
compared with dense PyTorch's (the largest difference is in the JSON).

    python benchmarks/inference.py [--quick] [--models mlp transformer resnet50]
        [--sparsities 0.9 0.95 0.98] [--threads 1] [--deepsparse /work/deepsparse-venv/bin/python]

Prints a table and writes benchmarks/results/inference.json with the CPU and thread count.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

THREADS = 1  # --threads: torch, ONNX Runtime, DeepSparse cores, the export's timing
os.environ.setdefault("OMP_NUM_THREADS", "1")  # sparseprop's OpenMP reads it when loaded

import numpy  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from acdc_recipe.compiler import compile  # noqa: E402
from acdc_recipe.exporter import TorchSparse, export, load_sparse  # noqa: E402
from acdc_recipe.language.schema import Recipe  # noqa: E402
from acdc_recipe.runtime import attach  # noqa: E402
from benchmarks.records import machine, write_json  # noqa: E402
from benchmarks.sparse_training import interleaved  # noqa: E402
from benchmarks.step_overhead import mlp, transformer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "inference.json"
WORKER = Path(__file__).with_name("deepsparse_worker.py")
DEEPSPARSE = Path("/work/deepsparse-venv/bin/python")
SPARSITIES = (0.9, 0.95, 0.98)
PEERS = ("onnxruntime", "sparseprop", "deepsparse")
# model -> (factory, one sample's shape, batch sizes)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], tuple[int, ...]]] = {
    "mlp": (mlp, (784,), (1, 4, 16, 64, 256)),
    "transformer": (transformer, (32, 128), (1, 4, 16, 64, 256)),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), (3, 224, 224), (1, 16)),
}


def masked(name: str, sparsity: float):
    """The model masked at `sparsity` (uniform), its runtime and its compiled recipe."""
    factory, shape, _ = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    plan = Recipe.model_validate(
        {
            "name": "bench",
            "sparsity": {"target": sparsity, "scope": "uniform"},
            "schedule": {"unit": "step", "phases": [{"sparse": 1}]},
        }
    )
    compiled = compile(model, plan, example_inputs=(torch.zeros(1, *shape),))
    runtime = attach(compiled, torch.optim.SGD(model.parameters(), lr=0.0))
    runtime.begin_step()  # masks computed and applied
    return model.eval(), runtime, compiled


def flops_bound(compiled) -> float:
    """Dense FLOPs over the FLOPs left at the pruned weights' density."""
    dense = compiled.dense_forward_flops
    saved = sum(
        p.dense_flops * float((w == 0).float().mean())
        for p, w in zip(compiled.params, compiled.parameters, strict=True)
    )
    return dense / max(dense - saved, 1)


def seconds_per_call(call: Callable[[], object], repeats: int) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        return (time.perf_counter() - start) / repeats


def sparseprop_model(model: nn.Module) -> nn.Module | str:
    """`model` with each pruned Linear (outside attention) as sparseprop's SparseLinear."""
    try:
        from sparseprop.modules import SparseLinear
    except ImportError as error:
        return f"not installed ({error}); pip install pybind11 wheel && pip install --no-build-isolation sparseprop"
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
            peer.register_forward_pre_hook(
                lambda *_: None
            )  # no encoder fast path: it reads .weight
            setattr(holder, child, peer)
    return twin.eval()


def onnx_file(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path | str:
    """The masked model as ONNX with a dynamic batch dimension (the fused transformer path
    off, which ONNX cannot express)."""
    try:
        with torch.no_grad(), _no_fast_path():
            torch.onnx.export(
                model, (torch.zeros(2, *shape),), str(path), input_names=["input"],
                output_names=["output"], dynamic_axes={"input": {0: "batch"}},
                dynamo=False, opset_version=17,
            )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - the peers that need it are reported as not run
        return f"torch.onnx.export failed: {type(error).__name__}: {str(error)[:200]}"
    return path


class _no_fast_path:
    def __enter__(self) -> None:
        self.before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch.backends.mha.set_fastpath_enabled(self.before)


def ort_session(path: Path | str):
    if isinstance(path, str):
        return path
    try:
        import onnxruntime
    except ImportError as error:
        return f"not installed ({error}); pip install onnxruntime"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class DeepSparse:
    """The worker process running DeepSparse (see `deepsparse_worker.py`)."""

    def __init__(self, python: Path) -> None:
        self.problem: str | None = None
        self.process: subprocess.Popen | None = None
        if not python.is_file():
            self.problem = (
                f"no DeepSparse venv at {python} (python3.11 -m venv /work/deepsparse-venv && "
                "/work/deepsparse-venv/bin/pip install deepsparse==1.8.0 'numpy<2')"
            )
            return
        self.process = subprocess.Popen(
            [str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "NM_DISABLE_ANALYTICS": "1"},
        )  # fmt: skip

    def ask(self, **request: object) -> dict:
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the DeepSparse worker exited")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def measure_cell(
    name: str, sparsity: float, batch: int, models: dict, deepsparse: DeepSparse,
    onnx: Path | str, folder: Path, rounds: int,
) -> dict:  # fmt: skip
    """Every model at one batch size, timed against dense PyTorch in interleaved rounds."""
    _, shape, _ = MODELS[name]
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    dense = models["dense"]
    with torch.no_grad():
        reference = dense(x)
    calls: dict[str, Callable[[], object]] = {}
    differences: dict[str, float] = {}
    notes: dict[str, str] = {}
    for key in ("torch-sparse", "sparseprop"):
        if isinstance(models[key], nn.Module):
            model = models[key]
            calls[key] = lambda m=model: m(x)
            with torch.no_grad():
                differences[key] = float((model(x) - reference).abs().max())
        else:
            notes[key] = models[key]
    session = models["onnxruntime"]
    if isinstance(session, str):
        notes["onnxruntime"] = session
    else:
        feed = {"input": x.numpy()}
        calls["onnxruntime"] = lambda: session.run(None, feed)
        differences["onnxruntime"] = float(
            numpy.abs(session.run(None, feed)[0] - reference.numpy()).max()
        )
    if deepsparse.problem or isinstance(onnx, str):
        notes["deepsparse"] = deepsparse.problem or str(onnx)
    else:
        data = folder / f"input-{batch}.npy"
        numpy.save(data, x.numpy())
        try:
            deepsparse.ask(op="compile", onnx=str(onnx), batch=batch, cores=THREADS)
            out = folder / f"output-{batch}.npy"
            deepsparse.ask(op="run", onnx=str(onnx), batch=batch, input=str(data), output=str(out))
            differences["deepsparse"] = float(numpy.abs(numpy.load(out) - reference.numpy()).max())
        except RuntimeError as error:
            notes["deepsparse"] = str(error)[:300]
    single = seconds_per_call(lambda: dense(x), 1)
    repeats = max(1, min(500, int(0.1 / max(single, 1e-6))))  # ~0.1 s a measurement
    timed = {k: (lambda c=c: seconds_per_call(c, repeats)) for k, c in calls.items()}
    if "deepsparse" not in notes:
        timed["deepsparse"] = lambda: deepsparse.ask(
            op="time", onnx=str(onnx), batch=batch, input=str(data), repeats=repeats
        )["seconds"]
    for call in (lambda: dense(x), *calls.values()):
        seconds_per_call(call, 2)  # warm-up
    ratios, best, medians = interleaved(lambda: seconds_per_call(lambda: dense(x), repeats),
                                        timed, rounds)  # fmt: skip
    return {
        "speedup": {k: 1 / v for k, v in ratios.items()},
        "median_speedup": {k: 1 / v for k, v in medians.items()},
        "dense_ms": 1000 * best,
        "max_abs_diff": differences,
        "not_run": notes,
    }


def kernels_at(manifest: dict, batch: int) -> dict[str, str]:
    """Each pruned layer's kernel at this batch ("dense by X": reverted by module X; "dense
    block": inside a block computed on its dense copy there)."""
    routed = [
        name
        for name, entries in manifest["dense_blocks"].items()
        if any(e["batch"] == batch and e["route"] == "dense" for e in entries)
    ]
    kernels = {}
    for name, layer in manifest["layers"].items():
        entry = next((e for e in layer["dispatch"] if e["batch"] == batch), None)
        kernel = "dense" if entry is None else entry["kernel"]
        if entry is not None and "reverted_by" in entry:
            kernel = f"dense by {entry['reverted_by']!r}"
        if any(block == "" or name.startswith(block + ".") for block in routed):
            kernel = "dense block"
        kernels[name] = kernel
    return kernels


def measure(name: str, sparsity: float, deepsparse: DeepSparse, rounds: int) -> list[dict]:
    factory, shape, batches = MODELS[name]
    model, runtime, compiled = masked(name, sparsity)
    bound = flops_bound(compiled)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        start = time.perf_counter()
        exported = export(
            model, folder / "sparse", runtime=runtime,
            format=TorchSparse(batch_sizes=batches, threads=THREADS), input_shape=shape,
        )  # fmt: skip
        export_seconds = time.perf_counter() - start
        torch.manual_seed(0)
        sparse = load_sparse(exported.path, factory())
        runtime.close()
        onnx = onnx_file(model, shape, folder / "model.onnx")
        models = {
            "dense": model,
            "torch-sparse": sparse,
            "sparseprop": sparseprop_model(model),
            "onnxruntime": ort_session(onnx),
        }
        for batch in batches:
            cell = measure_cell(name, sparsity, batch, models, deepsparse, onnx, folder, rounds)
            kernels = kernels_at(exported.manifest, batch)
            on_csr = sum(k in ("bag", "mm") for k in kernels.values())
            rows.append(
                {
                    "model": name, "sparsity": sparsity, "batch": batch, "threads": THREADS,
                    "flops_bound": bound, **cell, "sparse_layers": on_csr,
                    "pruned_layers": len(kernels), "kernels": kernels,
                    "export_seconds": export_seconds,
                    "memory": exported.manifest["memory"],
                }
            )  # fmt: skip
            print_row(rows[-1])
    return rows


def print_header() -> None:
    print(
        f"{'model':<12} {'sp':>5} {'batch':>5} {'dense ms':>9} {'ours':>7} {'ORT':>7} "
        f"{'sprop':>7} {'DS':>7} {'bound':>7} {'ours/ORT':>8} {'ours/DS':>7} {'sparse':>7}"
    )


def print_row(row: dict) -> None:
    speed = row["speedup"]

    def cell(key: str) -> str:
        return f"{speed[key]:.2f}x" if key in speed else "n/a"

    def ratio(key: str) -> str:
        return f"{speed['torch-sparse'] / speed[key]:.2f}" if key in speed else "n/a"

    print(
        f"{row['model']:<12} {row['sparsity']:>5} {row['batch']:>5} {row['dense_ms']:>9.3f} "
        f"{cell('torch-sparse'):>7} {cell('onnxruntime'):>7} {cell('sparseprop'):>7} "
        f"{cell('deepsparse'):>7} {row['flops_bound']:>6.1f}x {ratio('onnxruntime'):>8} "
        f"{ratio('deepsparse'):>7} {row['sparse_layers']:>3}/{row['pruned_layers']:<3}",
        flush=True,
    )


def peer_versions() -> dict[str, str]:
    versions = {}
    for module in ("onnxruntime", "sparseprop"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "installed")
        except ImportError:
            versions[module] = "not installed"
    return versions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds (a smoke run)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sparsities", nargs="*", type=float, default=list(SPARSITIES))
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 3)")
    parser.add_argument("--deepsparse", type=Path, default=DEEPSPARSE, help="its venv's python")
    parser.add_argument("--threads", type=int, default=1, help="threads of every model (1)")
    parser.add_argument("--out", type=Path, help="the JSON to write (default under results/)")
    args = parser.parse_args(argv)
    global THREADS
    THREADS = args.threads
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)
    rounds = args.rounds or (3 if args.quick else 7)
    deepsparse = DeepSparse(args.deepsparse)
    rows: list[dict] = []
    print_header()
    try:
        for name in args.models:
            for sparsity in args.sparsities:
                rows += measure(name, sparsity, deepsparse, rounds)
    finally:
        deepsparse.close()
    out = args.out or RESULTS
    write_json(
        out,
        {
            "benchmark": "inference",
            "command": " ".join(["python", "benchmarks/inference.py", *(argv or sys.argv[1:])]),
            "threads": THREADS,
            "rounds": rounds,
            "machine": machine(),
            "peers": {**peer_versions(), "deepsparse": deepsparse.problem or "1.8.0 (worker)"},
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
