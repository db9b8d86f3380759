"""Runtime events serialize to plain dicts and back, also from logs written before a field
with a default existed."""

from __future__ import annotations

import pytest

from acdc_recipe.runtime import MasksComputed, event_from_dict
from acdc_recipe.runtime.events import event_to_dict

COMPUTED = MasksComputed(
    3, 1, 0.9, 0.9, {"fc.weight": 0.9}, 0.1, {"fc.weight": 0.1}, 0.02, 0.5, {"fc.weight": 2}
)


def test_an_event_round_trips_through_its_dict():
    assert event_from_dict(event_to_dict(COMPUTED)) == COMPUTED


def test_a_record_without_emptied_channels_reads_as_unknown():
    old = event_to_dict(COMPUTED)
    del old["emptied_channels"]
    assert event_from_dict(old).emptied_channels is None


def test_a_record_missing_a_required_field_is_refused():
    broken = event_to_dict(COMPUTED)
    del broken["target"]
    with pytest.raises(KeyError):
        event_from_dict(broken)
