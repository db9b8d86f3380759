"""Global magnitude threshold: radix select against sort, kthvalue and topk on the concatenation.

The weights are a ResNet-50-like list of conv/linear layers (53 convs and the classifier,
each normal with its own scale), scaled to the requested total; the threshold is the
k-th smallest |w| at 90% sparsity. Each (method, size) runs in a fresh subprocess that also times
one read pass over the same weights (a fused `torch._foreach_norm`, the floor), so the ratio
is measured in one process. Peak extra memory: on CPU the rise of the process's peak RSS
(`resource.getrusage`, ru_maxrss) over its value after the weights were created, i.e. every
temporary the method allocates (the concatenation included for the baselines); on CUDA
`torch.cuda.max_memory_allocated` over the allocated weights. Thresholds of all methods are
checked to be identical. Times are medians of interleaved repeats, as wall clock and as the
process's CPU time (with --threads 1 the CPU time is the compute time even on a shared machine).

    python benchmarks/threshold.py [--quick] [--sizes 1e6,25.5e6] [--device cuda] [--threads 0]
    python benchmarks/threshold.py --distributed 2   # split across gloo ranks (threshold_sharded)

Prints a table and writes benchmarks/results/threshold.json. The default is one torch thread:
on a shared machine, multi-threaded runs measure mostly barrier stalls of the thread pool
(every parallel op waits for a descheduled worker), which punishes many-op methods. Pass
`--threads 0` (torch's default) on a dedicated machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.records import machine, write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "threshold.json"
SPARSITY = 0.9
METHODS = ["read pass", "radix select", "radix masks", "kthvalue", "topk", "sort"]
SORT_LIMIT = 30_000_000  # sort above this is skipped: seconds per repeat and 16+ bytes/weight


def resnet50_layer_sizes() -> list[int]:
    """numel of the 54 conv/linear weights of ResNet-50 (25,502,912 in total)."""
    sizes = [64 * 3 * 7 * 7]
    in_channels = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            sizes += [in_channels * width, width * width * 9, width * width * 4]
            if block == 0:
                sizes.append(in_channels * width * 4)
            in_channels = width * 4
    return sizes + [2048 * 1000]


def make_weights(total: int, device: str) -> list[torch.Tensor]:
    """Layers scaled to `total` weights, each normal with its own scale (in place, no temp)."""
    base = resnet50_layer_sizes()
    scale = total / sum(base)
    sizes = [max(1, round(s * scale)) for s in base]
    sizes[-1] += total - sum(sizes)
    generator = torch.Generator(device=device).manual_seed(0)
    weights = []
    for size in sizes:
        weight = torch.empty(size, device=device).normal_(generator=generator)
        weights.append(weight.mul_(2.0 / size**0.25))
    return weights


def run_method(method: str, weights: list[torch.Tensor], k: int):
    """Run `method` once; the result is what `threshold_of` reads the threshold from."""
    from acdc_recipe.runtime.threshold import kth_smallest_magnitude, prune_mask_unstructured

    if method == "read pass":
        return torch._foreach_norm(weights)
    if method == "radix select":
        return kth_smallest_magnitude(weights, k)
    if method == "radix masks":
        return prune_mask_unstructured(weights, k)
    flat = torch.cat([w.reshape(-1) for w in weights]).abs_()
    if method == "kthvalue":
        return flat.kthvalue(k).values
    if method == "topk":
        return flat.topk(flat.numel() - k + 1).values.min()
    if method == "sort":
        return torch.sort(flat).values[k - 1]
    raise ValueError(f"unknown method {method!r}")


def threshold_of(method: str, result, weights: list[torch.Tensor]) -> float:
    if method == "read pass":
        return float("nan")
    if method == "radix masks":  # exactly k entries pruned: the largest of them is the threshold
        pruned = [torch.where(m == 0, w.abs(), 0.0).max() for w, m in zip(weights, result)]
        return torch.stack(pruned).max().item()
    return result.item()


def measure(method: str, total: int, repeats: int, device: str) -> dict:
    """In this process: peak extra bytes of one run, then median times of method and read pass."""
    warm = make_weights(10_000, device)  # load kernels and thread pools before measuring
    run_method(method, warm, 9_000)
    weights = make_weights(total, device)
    k = round(SPARSITY * total)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = run_method(method, weights, k)
    sync()
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    value = threshold_of(method, result, weights)
    del result
    wall: dict[str, list[float]] = {"method": [], "read": []}
    cpu: dict[str, list[float]] = {"method": [], "read": []}
    for _ in range(repeats):
        for name, which in (("read", "read pass"), ("method", method)):
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            run_method(which, weights, k)
            sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        "method": method,
        "weights": total,
        "threshold": value,
        "seconds": statistics.median(wall["method"]),
        "read_pass_seconds": statistics.median(wall["read"]),
        "cpu_seconds": statistics.median(cpu["method"]),
        "read_pass_cpu_seconds": statistics.median(cpu["read"]),
        "extra_bytes_per_weight": max(peak, 0) / total,
    }


def spawn(method: str, total: int, repeats: int, device: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", method, str(total), str(repeats), device]
    command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,11e6,25.5e6,100e6", help="comma-separated totals")
    parser.add_argument("--quick", action="store_true", help="1M and 11M weights, 3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--distributed", type=int, default=0, help="split the weights across N gloo ranks"
    )
    args = parser.parse_args()
    if args.distributed:  # a module of its own, which builds on this one's weights
        from benchmarks.threshold_sharded import RESULTS as SHARDED
        from benchmarks.threshold_sharded import run

        sizes = (
            [1_000_000, 25_500_000]
            if args.sizes == parser.get_default("sizes")
            else [round(float(s)) for s in args.sizes.split(",")]
        )
        out = SHARDED if args.out == RESULTS else args.out
        run(args.distributed, sizes, 3 if args.quick else 5, args.threads or 1, out)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        method, total, repeats, device = args.child
        print(json.dumps(measure(method, int(total), int(repeats), device)))
        return
    sizes = (
        [1_000_000, 11_000_000] if args.quick else [round(float(s)) for s in args.sizes.split(",")]
    )
    repeats = 3 if args.quick else args.repeats
    rows, skipped = [], []
    load_before = os.getloadavg()[0]
    for total in sizes:
        for method in args.methods.split(","):
            if method == "sort" and total > SORT_LIMIT:
                skipped.append({"method": method, "weights": total, "reason": "too slow / memory"})
                continue
            slow = method in ("sort", "kthvalue", "topk") and total > 20_000_000
            rows.append(spawn(method, total, 3 if slow else repeats, args.device, args.threads))
        found = {
            r["threshold"] for r in rows if r["weights"] == total and r["method"] != "read pass"
        }
        if len(found) != 1:
            raise SystemExit(f"methods disagree at {total} weights: {sorted(found)}")
    print_table(rows, skipped)
    write_json(args.out, {
        "sparsity": SPARSITY,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "machine": machine(),
        "memory_method": "CUDA max_memory_allocated" if args.device.startswith("cuda")
        else "peak RSS rise in a fresh subprocess (resource.getrusage)",
        "rows": rows,
        "skipped": skipped,
    })  # fmt: skip
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"wrote {args.out}")


def print_table(rows: list[dict], skipped: list[dict]) -> None:
    header = (
        f"{'weights':>11} {'method':<13} {'wall ms':>9} {'x read':>7} {'cpu ms':>9} "
        f"{'x read':>7} {'extra B/weight':>15}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['weights']:>11,} {r['method']:<13} {r['seconds'] * 1e3:>9.1f} "
            f"{r['seconds'] / r['read_pass_seconds']:>7.1f} {r['cpu_seconds'] * 1e3:>9.1f} "
            f"{r['cpu_seconds'] / max(r['read_pass_cpu_seconds'], 1e-9):>7.1f} "
            f"{r['extra_bytes_per_weight']:>15.2f}"
        )
    for s in skipped:
        print(f"{s['weights']:>11,} {s['method']:<13} skipped ({s['reason']})")


if __name__ == "__main__":
    main()
