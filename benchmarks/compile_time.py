"""How long `acdc compile` takes on the ResNet50 ImageNet AC/DC 90% recipe.

Targets: the compile step (after imports and model construction) under 1 s, the whole
`acdc compile` command under 5 s wall. For scale, the compile step is also given as a ratio to
one eager dense forward pass of the same model at batch 1, measured in the same process.

Run: python benchmarks/compile_time.py  (writes benchmarks/results/compile_time.json)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "resnet50_imagenet_acdc90.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "compile_time.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.records import machine, write_json  # noqa: E402


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=f"Writes {RESULTS.relative_to(ROOT)}."
    ).parse_args()  # no options: this makes --help print instead of running
    started = time.perf_counter()
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    seconds_imports = time.perf_counter() - started
    from acdc_recipe.compiler import compile
    from acdc_recipe.compiler.emit import plan_json
    from acdc_recipe.language.loading import load_recipe
    from acdc_recipe.models import build_model

    recipe = load_recipe(RECIPE)
    seconds_build, model = timed(build_model, recipe.train.model)
    seconds_first, compiled = timed(compile, model, recipe)
    repeats = [timed(compile, model, recipe)[0] for _ in range(5)]
    seconds_plan, _ = timed(plan_json, compiled)
    x = torch.zeros(1, *recipe.train.model.input_shape)
    model.eval()
    with torch.no_grad():
        model(x)
        forwards = [timed(model, x)[0] for _ in range(3)]
    forward = statistics.median(forwards)

    walls = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(3):
            command = ["acdc", "compile", str(RECIPE), "-o", folder, "--json"]
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            walls.append(time.perf_counter() - start)

    imports_only = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, torchvision.models"], check=True)
        imports_only.append(time.perf_counter() - start)
    overhead = statistics.median(walls) - statistics.median(imports_only)

    steady = statistics.median(repeats)
    rows = [
        ("import torch + torchvision", seconds_imports, None),
        ("build resnet50", seconds_build, None),
        ("compile step, first call", seconds_first, 1.0),
        ("compile step, steady (median of 5)", steady, 1.0),
        ("plan() (FLOPs multipliers, JSON data)", seconds_plan, None),
        ("eager dense forward, batch 1 (baseline)", forward, None),
        ("acdc compile command, wall (median of 3)", statistics.median(walls), 5.0),
        ("python -c 'import torch, torchvision' (baseline)", statistics.median(imports_only), None),
        ("command wall minus that baseline", overhead, None),
    ]
    print(f"{'measurement':50} {'seconds':>9} {'limit':>6}")
    for name, value, limit in rows:
        flag = "" if limit is None else ("  ok" if value < limit else "  OVER")
        print(f"{name:50} {value:9.3f} {'' if limit is None else f'{limit:6.1f}'}{flag}")
    print(
        f"compile step / eager forward: first {seconds_first / forward:.2f}x, steady {steady / forward:.2f}x"
    )
    result = {
        "recipe": str(RECIPE.relative_to(ROOT)),
        "machine": machine(),
        "seconds": {name: value for name, value, _ in rows},
        "compile_walls": walls,
        "import_walls": imports_only,
        "compile_over_forward": {"first": seconds_first / forward, "steady": steady / forward},
        "limits": {"compile_step": 1.0, "command_wall": 5.0},
        "within_limits": seconds_first < 1.0 and statistics.median(walls) < 5.0,
    }
    write_json(RESULTS, result)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
