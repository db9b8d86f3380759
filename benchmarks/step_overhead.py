"""Training-step overhead of the sparsity runtime against plain dense training.

For each model, every variant trains its own copy (same initial weights, same batch). Rounds
are interleaved: in each round every variant is timed right after (or, in odd rounds, right
before) a dense baseline run of the same number of steps, and the ratio of the two is kept;
the table shows the median ratio over rounds. Variants at 90% sparsity:

- torch.nn.utils.prune (global_unstructured, L1) and torch.ao.pruning (WeightNormSparsifier),
- bare foreach: in-place masking of grads and weights with precomputed masks (the floor),
- acdc dense / acdc sparse: the runtime attached, in a dense and in a sparse phase,
- phase switch: the step that enters a sparse phase (masks computed) / the step after it.

    python benchmarks/step_overhead.py [--quick]

Prints a table and writes benchmarks/results/step_overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from torch.nn.utils import prune

from acdc_recipe.compiler import compile
from acdc_recipe.language.schema import Recipe
from acdc_recipe.models import resnet20
from acdc_recipe.runtime import attach

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.records import machine, write_json  # noqa: E402

SPARSITY = 0.9
RESULTS = Path(__file__).parent / "results" / "step_overhead.json"


def transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True)
    return nn.Sequential(
        nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
        nn.Flatten(),
        nn.Linear(128 * 32, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "mlp": (mlp, (256, 784), 256),
    "resnet20": (resnet20, (32, 3, 32, 32), 32),
    "transformer": (transformer, (32, 32, 128), 32),
}


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Linear and conv weights outside attention blocks: MultiheadAttention reads its
    projection weights directly, so torch.nn.utils.prune's forward pre-hooks never refresh
    them (training fails); the attention weights are left dense for the peers."""
    inside_attention = {
        id(sub)
        for m in model.modules()
        if isinstance(m, nn.MultiheadAttention)
        for sub in m.modules()
    }
    found = []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and id(module) not in inside_attention:
            found.append((module, "weight"))
    return found


def recipe(phases: list[dict]) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "bench",
            "sparsity": {"target": SPARSITY},
            "schedule": {"unit": "step", "phases": phases},
        }
    )


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)


class Variant:
    """A model copy, its optimizer and the hooks a method adds around `optimizer.step()`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.optimizer = make_optimizer(model)
        self.before_step: Callable[[], None] = lambda: None
        self.after_step: Callable[[], None] = lambda: None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(x), y).backward()
        self.before_step()
        self.optimizer.step()
        self.after_step()


def torch_prune(base: nn.Module) -> Variant:
    model = copy.deepcopy(base)
    prune.global_unstructured(prunable_weights(model), prune.L1Unstructured, amount=SPARSITY)
    return Variant(model)


def torch_ao(base: nn.Module) -> Variant | None:
    """None when the model has conv weights: WeightNormSparsifier masks only 2-D weights."""
    model = copy.deepcopy(base)
    if any(isinstance(m, nn.Conv2d) for m, _ in prunable_weights(model)):
        return None
    config = [
        {"tensor_fqn": f"{name}.{attr}"}
        for name, module in model.named_modules()
        for m, attr in prunable_weights(module)
        if m is module
    ]
    sparsifier = WeightNormSparsifier(
        sparsity_level=SPARSITY, sparse_block_shape=(1, 1), zeros_per_block=1
    )
    sparsifier.prepare(model, config)
    sparsifier.step()
    return Variant(model)


def bare_foreach(base: nn.Module) -> Variant:
    variant = Variant(copy.deepcopy(base))
    weights = [getattr(m, attr) for m, attr in prunable_weights(variant.model)]
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    threshold = flat.kthvalue(int(SPARSITY * flat.numel())).values
    masks = [(w.detach().abs() > threshold).to(w.dtype) for w in weights]

    def before() -> None:
        torch._foreach_mul_([w.grad for w in weights], masks)

    def after() -> None:
        with torch.no_grad():
            torch._foreach_mul_(weights, masks)

    variant.before_step, variant.after_step = before, after
    return variant


def acdc(base: nn.Module, phases: list[dict], x: torch.Tensor, y: torch.Tensor) -> Variant:
    variant = Variant(copy.deepcopy(base))
    compiled = compile(variant.model, recipe(phases), example_inputs=(x,))
    variant.runtime = attach(compiled, variant.optimizer)
    variant.step(x, y)  # enter the first phase (masks computed for a sparse one)
    return variant


def timed(variant: Variant, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        variant.step(x, y)
    return time.perf_counter() - start


def switch_ratios(base: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int) -> list[float]:
    """Per sparse-phase entry: time of that step / time of the next (ordinary sparse) step."""
    variant = acdc(base, [{"repeat": rounds + 1, "phases": [{"dense": 2}, {"sparse": 2}]}], x, y)
    ratios = []
    for _ in range(rounds):  # positions 4k+1 .. 4k+4
        variant.step(x, y)  # dense
        entry = timed(variant, x, y, 1)  # enters a sparse phase: masks computed
        normal = timed(variant, x, y, 1)  # an ordinary sparse step
        variant.step(x, y)  # enters a dense phase
        ratios.append(entry / normal)
    return ratios


def measure(name: str, rounds: int, steps: int) -> dict:
    factory, shape, batch = MODELS[name]
    torch.manual_seed(0)
    base = factory()
    x = torch.randn(*shape)
    y = torch.randint(0, 10, (batch,))
    candidates = {
        "baseline": Variant(copy.deepcopy(base)),
        "torch.nn.utils.prune": torch_prune(base),
        "torch.ao.pruning": torch_ao(base),
        "bare foreach": bare_foreach(base),
        "acdc dense phase": acdc(base, [{"dense": 10**9}, {"sparse": 1}], x, y),
        "acdc sparse phase": acdc(base, [{"sparse": 10**9}], x, y),
    }
    variants = {key: variant for key, variant in candidates.items() if variant is not None}
    for variant in variants.values():  # warm-up: allocator, optimizer state, kernels
        timed(variant, x, y, 2)
    ratios: dict[str, list[float]] = {k: [] for k in variants if k != "baseline"}
    baseline_seconds = []
    for round_index in range(rounds):
        for key in ratios:
            pair = ["baseline", key] if round_index % 2 == 0 else [key, "baseline"]
            seconds = {k: timed(variants[k], x, y, steps) for k in pair}
            ratios[key].append(seconds[key] / seconds["baseline"])
            baseline_seconds.append(seconds["baseline"] / steps)
    result = {
        key: statistics.median(ratios[key]) if key in ratios else None
        for key in candidates
        if key != "baseline"
    }
    result["phase switch step"] = statistics.median(switch_ratios(base, x, y, max(3, rounds // 2)))
    result["baseline step ms"] = 1000 * statistics.median(baseline_seconds)
    sparse = variants["acdc sparse phase"].runtime
    result["acdc achieved sparsity"] = sum(int((m == 0).sum()) for m in sparse.masks) / sum(
        m.numel() for m in sparse.masks
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, steps = (4, 2) if args.quick else (20, 3)
    results = {name: measure(name, rounds, steps) for name in args.models}
    columns = [
        k
        for k in next(iter(results.values()))
        if k not in ("baseline step ms", "acdc achieved sparsity")
    ]
    print(
        f"step time / dense baseline (median of {rounds} interleaved rounds x {steps} steps; "
        f"{args.threads} threads; sparsity {SPARSITY})"
    )
    print(f"{'model':<12} {'base ms':>8} " + " ".join(f"{c:>22}" for c in columns))
    for name, row in results.items():
        cells = " ".join(
            "n/a".rjust(22) if row[c] is None else f"{row[c]:>21.3f}x" for c in columns
        )
        print(f"{name:<12} {row['baseline step ms']:>8.1f} {cells}")
    write_json(
        RESULTS,
        {
            "benchmark": "step_overhead",
            "sparsity": SPARSITY,
            "rounds": rounds,
            "steps_per_timing": steps,
            "threads": args.threads,
            "machine": machine(),
            "quick": args.quick,
            "results": results,
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
