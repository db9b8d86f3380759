"""The global threshold over weights split across gloo ranks, against one process.

Each of N ranks (processes on this machine, gloo) builds the ResNet-50-like weights of
`threshold.py`, keeps the dim-0 block of every layer that FSDP2 would give it (torch.chunk),
and selects over all ranks: the k-th smallest |w| at 90% sparsity (`kth_smallest_magnitude`
with a `Sharding`) and the full masks (`prune_mask_unstructured`). Rank 0 also runs the same
selection in one process over the full weights, round by round between the sharded ones, so
the two are timed under the same load. Every collective is counted (bytes and calls); the
threshold must equal the single-process one and the masks must prune exactly k entries over
the ranks. Each (size, method) runs in fresh rank processes, so the peak extra memory per rank
is the rise of its peak RSS during its first sharded selection (`resource.getrusage`), before
the single-process one, per local weight (the masks themselves included for "radix masks").

    python benchmarks/threshold.py --distributed 2 [--sizes 1e6,25.5e6] [--repeats 5]

Prints a table and writes benchmarks/results/threshold_distributed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import Shard

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from acdc_recipe.runtime.sharding import Sharding  # noqa: E402
from acdc_recipe.runtime.threshold import (  # noqa: E402
    kth_smallest_magnitude,
    prune_mask_unstructured,
)
from benchmarks.records import machine, write_json  # noqa: E402
from benchmarks.threshold import SPARSITY, make_weights  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "threshold_distributed.json"
METHODS = {"radix select": kth_smallest_magnitude, "radix masks": prune_mask_unstructured}


@dataclasses.dataclass(frozen=True)
class CountingSharding(Sharding):
    """A `Sharding` that counts what its collectives move: [bytes, calls]."""

    moved: list = dataclasses.field(default_factory=lambda: [0, 0])

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        self._count(tensor)
        return super().sum_(tensor)

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        self._count(tensor)
        return super().max_(tensor)

    def _count(self, tensor: torch.Tensor) -> None:
        self.moved[0] += tensor.numel() * tensor.element_size()
        self.moved[1] += 1


def local_blocks(weights: list[torch.Tensor], rank: int, world: int) -> list[torch.Tensor]:
    blocks = []
    for weight in weights:
        size, start = Shard.local_shard_size_and_offset(weight.shape[0], world, rank)
        blocks.append(weight[start : start + size])
    return blocks


def timed(function) -> tuple[float, float, object]:
    dist.barrier()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def measure(name: str, total: int, repeats: int) -> dict:
    """On every rank: the sharded selection of `total` weights; rank 0 adds one process's."""
    rank, world = dist.get_rank(), dist.get_world_size()
    method = METHODS[name]
    warm = make_weights(10_000, "cpu")  # load kernels and thread pools before measuring
    warm_shapes = tuple((w.numel(),) for w in warm)
    method(
        local_blocks(warm, rank, world),
        9_000,
        Sharding(None, rank, world, warm_shapes, (0,) * len(warm)),
    )
    weights = make_weights(total, "cpu")
    local = local_blocks(weights, rank, world)
    k = round(SPARSITY * total)
    shapes = tuple((w.numel(),) for w in weights)
    sharding = CountingSharding(None, rank, world, shapes, (0,) * len(weights))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = method(local, k, sharding)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    moved = list(sharding.moved)
    check = _check(name, result, weights, k, sharding)
    del result
    times: dict[str, list[float]] = {"wall": [], "cpu": [], "single": [], "single_cpu": []}
    for _ in range(repeats):
        wall, cpu, _ = timed(lambda: method(local, k, sharding))
        times["wall"].append(wall)
        times["cpu"].append(cpu)
        if rank == 0:
            wall, cpu, _ = timed(lambda: method(weights, k))
        else:
            dist.barrier()
            wall = cpu = float("nan")
        times["single"].append(wall)
        times["single_cpu"].append(cpu)
    local_weights = sum(w.numel() for w in local)
    return {
        "method": name,
        "weights": total,
        "ranks": world,
        "local_weights": local_weights,
        "seconds": statistics.median(times["wall"]),
        "cpu_seconds": statistics.median(times["cpu"]),
        "single_process_seconds": statistics.median(times["single"]),
        "single_process_cpu_seconds": statistics.median(times["single_cpu"]),
        "reduced_bytes": moved[0],
        "collectives": moved[1],
        "extra_bytes_per_local_weight": max(peak, 0) / local_weights,
        "agrees_with_single_process": check,
    }


def _check(name: str, result, weights: list[torch.Tensor], k: int, sharding: Sharding) -> bool:
    """The sharded threshold equals one process's; the masks prune exactly k over the ranks."""
    if name == "radix select":
        same = torch.tensor(int(torch.equal(result, kth_smallest_magnitude(weights, k))))
    else:
        zeros = torch.tensor(sum(int((m == 0).sum()) for m in result))
        same = torch.tensor(int(int(sharding.sum_(zeros)) == k))
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same)


def rank_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=args.init, rank=rank, world_size=world)
    row = measure(args.method, args.size, args.repeats)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, row)
    if rank == 0:
        Path(args.rows).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def run(world: int, sizes: list[int], repeats: int, threads: int, out: Path) -> None:
    """Start `world` ranks, then print and write what they measured."""
    load_before = os.getloadavg()[0]
    rows = [spawn(world, method, total, repeats, threads) for total in sizes for method in METHODS]
    if not all(row["agrees_with_single_process"] for row in rows):
        raise SystemExit("the sharded selection disagrees with one process")
    print_table(rows)
    write_json(out, {
        "sparsity": SPARSITY,
        "backend": "gloo",
        "ranks": world,
        "threads_per_rank": threads,
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "machine": machine(),
        "memory_method": "peak RSS rise of each rank during its first sharded selection",
        "rows": rows,
    })  # fmt: skip
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"wrote {out}")


def spawn(world: int, method: str, total: int, repeats: int, threads: int) -> dict:
    """Run one (method, size) on `world` fresh rank processes; the row, with the slowest
    rank's time and the largest memory rise."""
    with tempfile.TemporaryDirectory(prefix="acdc-threshold-") as scratch:
        rows_path = Path(scratch) / "rows.json"
        command = [sys.executable, __file__, "--init", f"file://{scratch}/rendezvous",
                   "--rows", str(rows_path), "--method", method, "--size", str(total),
                   "--repeats", str(repeats), "--threads", str(threads)]  # fmt: skip
        ranks = [
            subprocess.Popen(command, env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(world)})
            for r in range(world)
        ]
        if any(process.wait() for process in ranks):
            raise SystemExit(f"a rank failed measuring {method} at {total} weights")
        per_rank = json.loads(rows_path.read_text())
    row = per_rank[0]
    for key in ("seconds", "cpu_seconds", "extra_bytes_per_local_weight"):
        row[key] = max(r[key] for r in per_rank)
    return row


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'weights':>11} {'ranks':>5} {'method':<13} {'wall ms':>8} {'1 proc ms':>9} "
        f"{'cpu ms':>8} {'1 proc cpu':>10} {'reduced KiB':>11} {'calls':>5} {'extra B/w':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['weights']:>11,} {r['ranks']:>5} {r['method']:<13} {r['seconds'] * 1e3:>8.1f} "
            f"{r['single_process_seconds'] * 1e3:>9.1f} {r['cpu_seconds'] * 1e3:>8.1f} "
            f"{r['single_process_cpu_seconds'] * 1e3:>10.1f} {r['reduced_bytes'] / 1024:>11.0f} "
            f"{r['collectives']:>5} {r['extra_bytes_per_local_weight']:>9.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    rank_main(parser.parse_args())
