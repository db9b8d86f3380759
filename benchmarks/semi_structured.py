"""2:4 semi-structured kernels on CUDA against dense, per Linear size and batch.

For each size, batch and half dtype: the forward of the export's `SemiStructuredLinear`
against the dense Linear (inference), and a whole training step of a one-layer model under a
2:4 recipe with `sparse_kernels: on` (2:4 forward, dense backward, the runtime's masking)
against the same step with kernels off, in bf16 autocast. Each pair runs in the same process,
rounds interleaved; the table shows the fastest dense round over the fastest 2:4 round, and
the largest output difference from dense. Needs a CUDA GPU of compute capability 8.0 or newer
(exits 2 without one).

    python benchmarks/semi_structured.py [--rounds 10] [--quick]

Prints a table and writes benchmarks/results/semi_structured.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from acdc_recipe.compiler import compile  # noqa: E402
from acdc_recipe.language.schema import Recipe  # noqa: E402
from acdc_recipe.runtime import attach  # noqa: E402
from acdc_recipe.runtime.kernels.semi_structured import semi_structured_problem  # noqa: E402
from acdc_recipe.runtime.kernels.semi_structured_layer import SemiStructuredLinear  # noqa: E402
from acdc_recipe.runtime.masks import prune_mask_n_m  # noqa: E402
from benchmarks.records import machine, write_json  # noqa: E402
from benchmarks.sparse_training import interleaved  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "semi_structured.json"
SIZES = ((4096, 4096), (4096, 16384))  # (in, out)
BATCHES = (64, 4096)
_MIN_SECONDS = 0.02


def seconds(call: Callable[[], object]) -> Callable[[], float]:
    """A timer of `call`: seconds per call, repeated until about 20 ms, GPU synchronized."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    repeats = max(1, int(_MIN_SECONDS / max(time.perf_counter() - start, 1e-6)))

    def timed() -> float:
        torch.cuda.synchronize()
        begin = time.perf_counter()
        for _ in range(repeats):
            call()
        torch.cuda.synchronize()
        return (time.perf_counter() - begin) / repeats

    return timed


def masked_linear(size: tuple[int, int], dtype: torch.dtype) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(*size).cuda()
    with torch.no_grad():
        (mask,) = prune_mask_n_m([linear.weight], 2, 4, linear.weight.numel() // 2)
        linear.weight.mul_(mask)
    return linear.to(dtype).eval()


def inference_row(size, batch, dtype, rounds) -> dict:
    dense = masked_linear(size, dtype)
    sparse = SemiStructuredLinear.of(dense)
    x = torch.randn(batch, size[0], device="cuda", dtype=dtype)
    with torch.inference_mode():
        difference = float((sparse(x) - dense(x)).abs().max())
        ratio, base, median = interleaved(
            seconds(lambda: dense(x)), {"2:4": seconds(lambda: sparse(x))}, rounds
        )
    return {
        "case": "inference", "in": size[0], "out": size[1], "batch": batch,
        "dtype": str(dtype).removeprefix("torch."), "dense_ms": 1000 * base,
        "speedup": 1 / ratio["2:4"], "median_speedup": 1 / median["2:4"],
        "max_abs_diff": difference, "problem": sparse.problem,
    }  # fmt: skip


def training_step(size: tuple[int, int], kernels: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(*size)).cuda()
    recipe = Recipe.model_validate(
        {
            "name": "two-four",
            "sparsity": {"target": 0.5, "pattern": "2:4"},
            "schedule": {"unit": "step", "phases": [{"sparse": 1_000_000}]},
        }
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    runtime = attach(compile(model, recipe), optimizer, sparse_kernels=kernels)
    return model, optimizer, runtime


def training_row(size, batch, rounds) -> dict:
    x = torch.randn(batch, size[0], device="cuda")
    steps = {}
    for kernels in ("off", "on"):
        model, optimizer, runtime = training_step(size, kernels)

        def step(model=model, optimizer=optimizer, runtime=runtime) -> None:
            runtime.begin_step()
            optimizer.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().square().mean()
            loss.backward()
            optimizer.step()

        steps[kernels] = (step, runtime)
    ratio, base, median = interleaved(
        seconds(steps["off"][0]), {"2:4": seconds(steps["on"][0])}, rounds
    )
    return {
        "case": "training step", "in": size[0], "out": size[1], "batch": batch,
        "dtype": "bfloat16 (autocast)", "dense_ms": 1000 * base,
        "speedup": 1 / ratio["2:4"], "median_speedup": 1 / median["2:4"],
        "kernels": steps["on"][1].kernels,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="one size, one batch, 3 rounds")
    args = parser.parse_args(argv)
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    problem = semi_structured_problem(
        torch.zeros(64, 64, dtype=torch.bool), torch.bfloat16, capability
    )
    if problem is not None:
        print(f"error: {problem}; nothing was measured", file=sys.stderr)
        return 2
    sizes, batches, rounds = (
        (SIZES[:1], BATCHES[:1], 3) if args.quick else (SIZES, BATCHES, args.rounds)
    )
    rows = []
    for size in sizes:
        for batch in batches:
            for dtype in (torch.bfloat16, torch.float16):
                rows.append(inference_row(size, batch, dtype, rounds))
            rows.append(training_row(size, batch, rounds))
            row = rows[-1]
            print(
                f"{size[0]}x{size[1]} batch {batch}: inference "
                + ", ".join(f"{r['dtype']} {r['speedup']:.2f}x" for r in rows[-3:-1])
                + f"; training step {row['speedup']:.2f}x",
                flush=True,
            )
    print(f"\n{'case':<14} {'in x out':>12} {'batch':>6} {'dtype':<20} {'dense ms':>9} "
          f"{'speedup':>8} {'max diff':>9}")  # fmt: skip
    for r in rows:
        diff = f"{r['max_abs_diff']:.2g}" if "max_abs_diff" in r else ""
        print(
            f"{r['case']:<14} {r['in']:>5}x{r['out']:<6} {r['batch']:>6} {r['dtype']:<20} "
            f"{r['dense_ms']:>9.3f} {r['speedup']:>7.2f}x {diff:>9}"
        )
    device = {"gpu": torch.cuda.get_device_name(), "capability": list(capability)}
    write_json(RESULTS, {"machine": {**machine(), **device}, "rounds": rounds, "rows": rows})
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
