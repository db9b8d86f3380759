"""The terminal sink: lines for mask computations and emptied layers, off-terminal step lines,
and a closed stdout that must not stop training."""

import io

from rich.console import Console

from acdc_recipe.console import QuietOnBrokenPipe
from acdc_recipe.runtime.events import LayersEmptied, MasksComputed
from acdc_recipe.trainer.sinks import StepUpdate, TerminalSink, emptied_layers


def lines_for(*records, log_every: float = 10.0, updates=()) -> list[str]:
    output = io.StringIO()
    sink = TerminalSink(Console(file=output, width=300), log_every=log_every)
    sink.steps_per_epoch = 10
    for record in records:
        sink.write(record)
    for update in updates:
        sink.progress(update)
    return output.getvalue().splitlines()


def test_a_mask_computation_is_one_line_and_an_emptied_layer_a_warning():
    masks = MasksComputed(40, 1, 0.95, 0.95, {"conv3.weight": 1.0}, None, None, 0.01, 0.002)
    lines = lines_for(masks, LayersEmptied(40, 1, ("conv3.weight",)))
    assert lines[0].startswith("epoch 4 (step 40): sparse phase 1, sparsity 95.00%")
    assert lines[1].startswith("warning: every weight of conv3.weight is pruned")
    assert "scope: erk" in lines[1] and len(lines) == 2


def test_a_mask_computation_line_counts_emptied_channels():
    masks = MasksComputed(40, 1, 0.95, 0.95, {"c.weight": 0.9}, None, None, 0.01, 0.002, {})
    assert "channel" not in lines_for(masks)[0]
    emptied = MasksComputed(
        40, 1, 0.95, 0.95, {"c.weight": 0.9}, None, None, 0.01, 0.0, {"c.weight": 3}
    )
    (line,) = lines_for(emptied)
    assert "3 output channels without a weight (min_per_channel keeps them)" in line


def test_emptied_layers_are_those_at_full_sparsity():
    assert emptied_layers({"a": 1.0, "b": 0.999, "c": 1.0}) == ["a", "c"]


def test_off_a_terminal_step_lines_carry_loss_lr_and_throughput():
    update = StepUpdate(3, 7, 12, 0.4321, 0.05, 1234.0, "sparse 90%")
    (line,) = lines_for(log_every=0.0, updates=[update])
    assert line == "epoch 3 step 7/12: loss 0.4321  lr 0.05  1,234 samples/s  sparse 90%"
    assert lines_for(log_every=3600.0, updates=[update]) == []


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError


def test_a_closed_stdout_silences_the_terminal_without_stopping(monkeypatch):
    silenced = []
    monkeypatch.setattr("acdc_recipe.console.silence_stdout", lambda: silenced.append(1))
    console = QuietOnBrokenPipe(file=ClosedPipe(), width=300)
    sink = TerminalSink(console, log_every=0.0)
    sink.write(LayersEmptied(4, 1, ("fc.weight",)))  # rich alone would raise SystemExit(1)
    sink.progress(StepUpdate(0, 1, 2, 0.5, 0.1, 10.0, "dense 0%"))
    assert console.quiet and silenced == [1]
