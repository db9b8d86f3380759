"""The terminal sink's lines for mask computations: a layer pruned empty gets a warning."""

import io

from rich.console import Console

from acdc_recipe.runtime.events import MasksComputed, event_to_dict
from acdc_recipe.runtime.sinks import TerminalSink, emptied_layers


def masks_record(per_layer: dict[str, float], target: float = 0.95) -> dict:
    event = MasksComputed(40, 1, target, target, per_layer, None, None, 0.01, 0.002)
    return event_to_dict(event)


def lines_for(record: dict) -> list[str]:
    output = io.StringIO()
    sink = TerminalSink(Console(file=output, width=300))
    sink.steps_per_epoch = 10
    sink.write(record)
    return output.getvalue().splitlines()


def test_an_emptied_layer_is_named_in_a_warning():
    lines = lines_for(masks_record({"conv1.weight": 0.4, "conv3.weight": 1.0, "fc.weight": 0.9}))
    assert "sparse phase 1, sparsity 95.00%" in lines[0]
    assert lines[1].startswith("warning: every weight of conv3.weight is pruned")
    assert "scope: erk" in lines[1]


def test_no_warning_when_every_layer_keeps_weights_or_everything_is_asked_for():
    assert len(lines_for(masks_record({"a.weight": 0.99, "b.weight": 0.9}))) == 1
    assert len(lines_for(masks_record({"a.weight": 1.0}, target=1.0))) == 1
    assert emptied_layers({"a": 1.0, "b": 0.999, "c": 1.0}) == ["a", "c"]
