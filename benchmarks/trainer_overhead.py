"""Step time of transformers' Trainer with the AcdcCallback against the same Trainer without it.

One process, one model shape (a GPT-2 of 4 layers, width 256, on 128-token sequences), the
same data. The callback's run follows a recipe that is dense for the first half of the timed
steps and sparse (90%) for the second half; the baseline trains the same steps with no
callback. Rounds are interleaved (baseline first in even rounds, the callback first in odd
ones); in every round each window's median step time (on_step_begin to on_step_end: forward,
backward, clipping, optimizer step, the engine's hooks) is divided by the baseline's median
over the same step positions; the table shows the median of those ratios. The step that enters
the sparse phase (masks computed) is left out of the sparse window.

Two clocks: the CPU time of the training thread (with one torch thread all compute runs on it,
and time spent waiting for a core that another process holds is not counted, so this is the
figure to read on a shared machine) and wall-clock time (what a user waits; on a loaded
machine its ratios scatter widely).

    python benchmarks/trainer_overhead.py --threads 1 [--quick]

Prints a table and writes benchmarks/results/trainer_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from acdc_recipe.integrations.huggingface import AcdcCallback
from acdc_recipe.language.schema import Recipe

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.records import machine, write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "trainer_overhead.json"
SPARSITY = 0.9
LENGTH, BATCH = 128, 8


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


class StepTimes(TrainerCallback):
    """Seconds from on_step_begin to on_step_end per global step, on each clock."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[int, float]] = {clock: {} for clock in CLOCKS}

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = {clock: read() for clock, read in CLOCKS.items()}

    def on_step_end(self, args, state, control, **kwargs):
        for clock, read in CLOCKS.items():
            self.seconds[clock][state.global_step - 1] = read() - self._start[clock]


class Tokens(torch.utils.data.Dataset):
    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 512, (count, LENGTH), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4, n_embd=256, n_head=4, n_positions=LENGTH, vocab_size=512,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def run(steps: int, warmup: int, with_callback: bool, folder: str) -> dict[str, dict[int, float]]:
    """One Trainer run of warmup + 2 * steps steps; step times by clock and global step."""
    total = warmup + 2 * steps
    args = TrainingArguments(
        output_dir=folder, max_steps=total, per_device_train_batch_size=BATCH,
        learning_rate=1e-3, max_grad_norm=1.0, logging_steps=10**6, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model(), args=args, train_dataset=Tokens(total * BATCH))
    times = StepTimes()
    trainer.add_callback(times)
    if with_callback:
        recipe = Recipe.model_validate(
            {
                "name": "trainer-overhead",
                "sparsity": {"target": SPARSITY},
                "schedule": {
                    "unit": "step",
                    "phases": [{"dense": warmup + steps}, {"sparse": steps}],
                },
                "train": {"model": {"name": "x", "input_shape": [LENGTH], "input_dtype": "int64"}},
            }
        )
        trainer.add_callback(AcdcCallback(trainer, recipe))
    trainer.train()
    return times.seconds


def _median(seconds: dict[int, float], window: range) -> float:
    return statistics.median(seconds[step] for step in window)


def measure(rounds: int, steps: int, warmup: int) -> dict:
    ratios: dict[str, list[float]] = {f"{c} {w}": [] for c in CLOCKS for w in ("dense", "sparse")}
    baseline_ms: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
    windows = {
        "dense": range(warmup, warmup + steps),
        "sparse": range(warmup + steps + 1, warmup + 2 * steps),  # after the masking step
    }
    with tempfile.TemporaryDirectory() as folder:
        for index in range(rounds):
            order = [False, True] if index % 2 == 0 else [True, False]
            times = {flag: run(steps, warmup, flag, folder) for flag in order}
            for clock in CLOCKS:
                acdc, plain = times[True][clock], times[False][clock]
                for name, window in windows.items():
                    ratios[f"{clock} {name}"].append(_median(acdc, window) / _median(plain, window))
                baseline_ms[clock].append(1000 * _median(plain, windows["dense"]))
    result: dict = {f"{key} phase": statistics.median(values) for key, values in ratios.items()}
    result.update(
        {f"baseline {clock} ms": statistics.median(v) for clock, v in baseline_ms.items()}
    )
    result["ratios"] = ratios
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    rounds, steps, warmup = (2, 6, 2) if args.quick else (9, 12, 3)
    result = measure(rounds, steps, warmup)
    print(
        f"Trainer step time with AcdcCallback / without (median of {rounds} interleaved rounds, "
        f"median of {steps} steps per window; {args.threads} threads; sparsity {SPARSITY}); "
        "model: GPT-2 4 layers x 256, batch 8 x 128 tokens"
    )
    print(f"{'clock':<6} {'base ms':>8} {'dense phase':>12} {'sparse phase':>13}")
    for clock in CLOCKS:
        print(
            f"{clock:<6} {result[f'baseline {clock} ms']:>8.1f} "
            f"{result[f'{clock} dense phase']:>11.3f}x {result[f'{clock} sparse phase']:>12.3f}x"
        )
    write_json(
        RESULTS,
        {
            "benchmark": "trainer_overhead",
            "sparsity": SPARSITY,
            "rounds": rounds,
            "steps_per_window": steps,
            "threads": args.threads,
            "machine": machine(),
            "quick": args.quick,
            "results": result,
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
