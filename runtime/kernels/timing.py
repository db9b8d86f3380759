"""Timing the dense and the sparse paths of one layer, to choose between them.

All paths run on the same tensors, interleaved (the order changes each round), after one
warm-up call each; each measurement repeats a call until it lasts about a millisecond, and the
minimum over the rounds is kept (the least disturbed by other work on the machine). The sparse
path is chosen only when it is at least `SPARSE_MARGIN` faster, so timing noise never picks a
path slower than dense.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

SPARSE_MARGIN = 0.95  # the sparse path must take at most this fraction of the dense time
ROUNDS = 3
_MIN_SECONDS = 1e-3
_MAX_REPEATS = 64


@dataclass(frozen=True)
class KernelTiming:
    """Milliseconds per call of each path (the minimum over the rounds)."""

    dense_ms: float
    sparse_ms: float

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms if self.sparse_ms > 0 else float("inf")

    @property
    def sparse_wins(self) -> bool:
        return self.sparse_ms <= SPARSE_MARGIN * self.dense_ms

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def time_calls(
    calls: Sequence[Callable[[], object]], device: torch.device, rounds: int | None = None
) -> list[float]:
    """Milliseconds per call of each of `calls` (which compute the same thing), interleaved:
    the order rotates by one each round, so each call leads in turn (see the module doc)."""
    warm = [_seconds(call, 1, device) for call in calls]
    repeats = [max(1, min(_MAX_REPEATS, int(_MIN_SECONDS / max(s, 1e-9)))) for s in warm]
    best = [float("inf")] * len(calls)
    for round_index in range(ROUNDS if rounds is None else rounds):
        first = round_index % len(calls)
        for which in [*range(first, len(calls)), *range(first)]:
            best[which] = min(best[which], _seconds(calls[which], repeats[which], device))
    return [1000 * seconds for seconds in best]


def time_paths(
    dense: Callable[[], object],
    sparse: Callable[[], object],
    device: torch.device,
    rounds: int | None = None,
) -> KernelTiming:
    """The dense and the sparse path of one layer, timed by `time_calls`."""
    dense_ms, sparse_ms = time_calls([dense, sparse], device, rounds)
    return KernelTiming(dense_ms=dense_ms, sparse_ms=sparse_ms)
