"""Ctrl-C during training: the first signal asks for a stop, the second one stops at once."""

import os
import signal

import pytest

from acdc_recipe.trainer.interrupt import TrainingInterrupted, stop_at_step_boundary


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_requests_a_stop_the_second_interrupts(number):
    before = signal.getsignal(number)
    with stop_at_step_boundary() as stop:
        assert not stop.requested
        os.kill(os.getpid(), number)
        assert stop.requested and stop.signal_number == number
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), number)
    assert signal.getsignal(number) == before


def test_disabled_leaves_the_handlers_alone():
    before = signal.getsignal(signal.SIGINT)
    with stop_at_step_boundary(enabled=False) as stop:
        assert signal.getsignal(signal.SIGINT) == before
    assert not stop.requested


def test_training_interrupted_is_a_keyboard_interrupt():
    stop = TrainingInterrupted(12, "checkpoint-000000012.pt", signal.SIGINT)
    assert isinstance(stop, KeyboardInterrupt) and stop.step == 12
