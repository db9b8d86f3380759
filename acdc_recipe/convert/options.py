"""What a conversion may do beyond the source itself: the run's length, a model for the train
section, the SparseML release whose semantics to follow, and what it may leave behind."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from acdc_recipe.convert.report import ConversionError

LATEST = "latest"
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")


@dataclass(frozen=True)
class ConvertOptions:
    """Options of `convert_recipe` (each is also an `acdc convert` flag).

    - `epochs`: the run's length (reference configs need it; SparseML's modifiers state it).
    - `model`: write a train section for this model (and map the reference's MobileNetV1
      layer names to the built-in `mobilenet_v1`'s).
    - `sparseml_version`: "latest" (every release from 0.12 on) or "0.11" (0.11.x, whose
      ACDCPruningModifier moved end_epoch back; see `sparseml_pruning`).
    - `steps_per_epoch`: batches per epoch of the run; needed to convert masks that SparseML
      updates inside an epoch (a fractional epoch, or every step) into a schedule in steps.
    - `allow_dense`: write a dense recipe when every pruning part of the source is left out.
    - `allow_approximate_lr`: write a constant learning rate (the source's peak) where its LR
      schedule has no acdc equivalent.
    - `keep_dense`: layer -> why, for layers kept dense because their weight cannot hold the
      source's N:M or block pattern (filled by `acdc convert --model`, which checks the model).
    """

    epochs: int | None = None
    model: str | None = None
    sparseml_version: str = LATEST
    steps_per_epoch: int | None = None
    allow_dense: bool = False
    allow_approximate_lr: bool = False
    keep_dense: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> ConvertOptions:
        """These options, or a `ConversionError` naming the flag that is out of range."""
        if self.epochs is not None and self.epochs < 1:
            raise ConversionError(f"--epochs must be at least 1, got {self.epochs}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConversionError(
                f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}"
            )
        sparseml_release(self.sparseml_version)
        return self


def sparseml_release(version: str) -> str:
    """ "0.11" for SparseML 0.11.x, "latest" for any later release; else a `ConversionError`."""
    if version == LATEST:
        return LATEST
    match = _VERSION.match(version)
    if match is None:
        raise ConversionError(
            f"--sparseml-version {version!r} is not a release number like 0.11 or 1.7 (or latest)"
        )
    release = (int(match[1]), int(match[2]))
    if release < (0, 11):
        raise ConversionError(
            f"--sparseml-version {version}: the semantics known here are those of 0.11.x and of "
            "0.12 onwards; give 0.11, a later release, or latest"
        )
    return "0.11" if release == (0, 11) else LATEST
