"""What the export's timing chose: per layer and batch size a kernel (`BatchChoice`,
`LayerChoice`), and the blocks computed on a dense copy of themselves at some batch sizes
(`BlockRoute`). Plain records: `inference.py` and `blocks.py` make them, the exporter writes
them into its manifest."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from acdc_recipe.runtime.kernels.csr_layer import Dispatch
from acdc_recipe.runtime.kernels.timing import KernelTiming


@dataclass(frozen=True)
class BatchChoice:
    """One layer at one batch size: the columns its input matrix has, each kernel's
    milliseconds (`ms`, "dense", "bag", "mm"), the kernel chosen, and the module whose timing
    reverted it to dense, if one did."""

    batch: int
    columns: int
    kernel: str
    ms: dict[str, float]
    reverted_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        entry = {"batch": self.batch, "columns": self.columns, "kernel": self.kernel}
        entry.update({f"{kernel}_ms": ms for kernel, ms in self.ms.items()})
        if self.reverted_by is not None:
            entry["reverted_by"] = self.reverted_by or "the model"
        return entry


@dataclass(frozen=True)
class LayerChoice:
    """One eligible layer's inference kernels: "csr" (a CSR twin dispatching per batch, as
    `batches` say), "semi_structured" (2:4 on CUDA, with its `timing`) or "dense", and for a
    CUDA Linear left dense untimed, `problem`: why no 2:4 kernel computes it."""

    name: str
    kind: str
    kernel: str
    density: float
    batches: tuple[BatchChoice, ...] = ()
    contiguous: bool = False  # the model needs the layer's output contiguous
    timing: KernelTiming | None = None
    problem: str | None = None
    reverted_by: str | None = None  # a 2:4 layer the module that was faster with it dense

    @property
    def dispatch(self) -> Dispatch:
        return Dispatch.of([(b.columns, b.kernel) for b in self.batches])

    def with_batches(self, batches: tuple[BatchChoice, ...]) -> LayerChoice:
        sparse = any(b.kernel != "dense" for b in batches)
        return replace(self, batches=batches, kernel="csr" if sparse else "dense")


@dataclass(frozen=True)
class BlockRoute:
    """A block that computes on a dense copy of itself at some batch sizes (`dense_routes`):
    per measured batch, the elements of its first input and "dense" or "sparse"."""

    name: str
    batches: tuple[tuple[int, int, str], ...]  # (batch, elements, route)

    @property
    def dispatch(self) -> Dispatch:
        return Dispatch.of([(elements, route) for _, elements, route in self.batches])

    def to_list(self) -> list[dict[str, Any]]:
        return [{"batch": b, "elements": n, "route": r} for b, n, r in self.batches]
