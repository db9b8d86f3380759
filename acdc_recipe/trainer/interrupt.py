"""Stop `acdc run` cleanly on Ctrl-C or SIGTERM: finish the step, checkpoint, then stop.

The first SIGINT or SIGTERM only sets a flag; the loop checks it after each optimizer step,
writes a checkpoint at that exact position (the same kind `checkpoint_every_steps` writes, so
`--resume` continues bitwise equal to an uninterrupted run) and raises `TrainingInterrupted`.
A second signal stops at once, as Python normally does. Only for one process on the main
thread: data-parallel ranks would need to agree on the step, so there a signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a step boundary on request, after writing a checkpoint there."""

    def __init__(self, step: int, checkpoint: str, signal_number: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint
        self.signal_number = signal_number


@dataclass
class StopRequest:
    """Set by the first signal; `signal_number` says which one."""

    signal_number: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal_number is not None


@contextmanager
def stop_at_step_boundary(enabled: bool = True) -> Iterator[StopRequest]:
    """Within the block, the first SIGINT/SIGTERM sets the returned request instead of raising;
    the second raises KeyboardInterrupt. Handlers are restored on exit."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def on_signal(number: int, frame: object) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.signal_number = number

    previous = {number: signal.signal(number, on_signal) for number in _SIGNALS}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
