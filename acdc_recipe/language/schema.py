"""The recipe schema: the single source of truth for keys, types, defaults and docs.

Every model is immutable and rejects unknown keys. Field descriptions feed the recipe
reference (``acdc_recipe.language.reference``) and the CLI help. The sparsity, schedule and
optimizer-state sections are here; the `train` section, what `acdc run` trains, is
`train_config.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from acdc_recipe.language.strict import MAX_NAME, Count, PositiveInt, Strict, check_printable
from acdc_recipe.language.train_config import RESUMABLE_KEYS, TrainSpec

# The layer kinds the compiler registers itself (`acdc_recipe.compiler.LAYER_KINDS` holds them
# and any a user adds); Conv1D is transformers' (GPT-2), registered when transformers is used.
BUILTIN_LAYER_KINDS = (
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "MultiheadAttention",
    "Conv1D",
)
DECOMPRESS_POLICIES = ("reset", "keep", "reset_reactivated")
DecompressPolicy = Literal[DECOMPRESS_POLICIES]  # type: ignore[valid-type]
_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block:(\d+)x(\d+)$")


def parse_pattern(text: str) -> tuple[str, int, int]:
    """Split a pattern string into (kind, a, b): ("unstructured", 1, 1), ("n:m", N, M) or ("block", rows, cols)."""
    if text == "unstructured":
        return ("unstructured", 1, 1)
    if match := _NM.match(text):
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise ValueError(f"N:M pattern needs 0 < N < M, got {text!r}")
        return ("n:m", n, m)
    if match := _BLOCK.match(text):
        rows, cols = int(match[1]), int(match[2])
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise ValueError(f"a block needs at least 2 elements, got {text!r}")
        return ("block", rows, cols)
    raise ValueError(
        f"unknown pattern {text!r}: expected 'unstructured', 'N:M' (e.g. '2:4') "
        "or 'block:RxC' (e.g. 'block:1x4')"
    )


Pattern = Field(
    default="unstructured",
    description="'unstructured', 'N:M' (keep N of every M weights along the input-channel axis, "
    "e.g. '2:4'), or 'block:RxC' (prune whole RxC blocks of the weight matrix, e.g. 'block:1x4').",
)


def _check_pattern(value: str | None) -> str | None:
    if value is not None:
        parse_pattern(value)
    return value


def _check_fraction(value: float | None) -> float | None:
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError(f"a sparsity target must lie strictly between 0 and 1, got {value}")
    return value


class Rule(Strict):
    """A per-layer rule. Rules are tried in order; the first that matches a layer claims it."""

    match: str = Field(
        description="Which layers: an exact name ('conv1'), a glob ('layer4.*.conv2'), a regex "
        "('re:layer4\\..*conv2') or a module type ('type:Linear'). Matched against the layer "
        "name and the parameter name ('fc' and 'fc.weight').",
    )
    dense: bool = Field(default=False, description="Keep the matched layers dense (never pruned).")
    target: float | None = Field(
        default=None, description="Sparsity for the matched layers, overriding sparsity.target."
    )
    pattern: str | None = Field(
        default=None, description="Sparsity pattern for the matched layers (see sparsity.pattern)."
    )
    include: bool = Field(
        default=False,
        description="Also prune matched parameters that are not prunable by default "
        "(e.g. a norm weight named explicitly).",
    )
    min_density: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Under scope global or lamp: the matched layers keep at least this "
        "fraction of their weights (overrides sparsity.min_density).",
    )
    min_per_channel: int | None = Field(
        default=None,
        ge=0,
        description="Under scope global or lamp: every output channel of the matched layers "
        "keeps at least this many of its largest weights (overrides sparsity.min_per_channel; "
        "0 turns it off for them).",
    )

    _fraction = field_validator("target")(_check_fraction)
    _pattern = field_validator("pattern")(_check_pattern)

    @field_validator("match")
    @classmethod
    def _match_compiles(cls, value: str) -> str:
        check_printable(value, "a rule's match")
        if not value.strip() or value.strip() in ("re:", "type:"):
            raise ValueError("a rule's match must name something")
        if value.startswith("re:"):
            try:
                re.compile(value[3:])
            except re.error as error:
                raise ValueError(f"invalid regular expression {value[3:]!r}: {error}") from None
        return value

    @model_validator(mode="after")
    def _dense_is_exclusive(self) -> Rule:
        if self.dense and (self.target is not None or self.pattern is not None):
            raise ValueError("a rule with dense: true cannot also set target or pattern")
        own = self.dense or self.target is not None or self.pattern is not None
        for name in ("min_density", "min_per_channel"):
            if own and getattr(self, name) is not None:
                raise ValueError(
                    f"{name} floors layers that share the global (or lamp) selection; a rule "
                    "with dense: true, its own target or its own pattern chooses its layers' "
                    f"sparsity by itself, so it cannot also set {name}"
                )
        return self


class Sparsity(Strict):
    """What to prune and how much."""

    target: float = Field(description="Overall sparsity of the prunable weights, in (0, 1).")
    scope: Literal["global", "uniform", "erk", "lamp"] = Field(
        default="global",
        description="global: one magnitude threshold over all prunable weights (the paper's); "
        "uniform: the same sparsity in every layer; erk: Erdos-Renyi-Kernel per-layer "
        "densities; lamp: one threshold over layer-adaptive magnitude scores (LAMP, Lee et al. "
        "2021: w^2 over the sum of the squares of the weights of its layer at least as large), "
        "which never empties a layer.",
    )
    min_density: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="With scope global or lamp: every layer keeps at least this fraction of "
        "its weights; the total stays exact, the rest of the budget taken from the other "
        "layers in the same global order.",
    )
    min_per_channel: int | None = Field(
        default=None,
        ge=0,
        description="With scope global or lamp: every output channel (a conv filter, a Linear "
        "row) keeps at least this many of its largest weights, so no channel is emptied; the "
        "total stays exact. With batch norm an emptied channel outputs a constant that a ReLU "
        "can silence for good, and no dense phase revives it; 1 prevents that.",
    )
    pattern: str = Pattern
    prunable: tuple[str, ...] | None = Field(
        default=None,
        description="Layer kinds whose weights are prunable; default: every registered kind ("
        + ", ".join(BUILTIN_LAYER_KINDS)
        + " (transformers' GPT-2 layer), and kinds added to acdc_recipe.compiler.LAYER_KINDS). "
        "Biases, norms and embeddings never are, unless a rule includes them; names are checked "
        "against the registry when compiling.",
    )
    rules: tuple[Rule, ...] = Field(
        default=(), description="Ordered per-layer rules; each must match at least one layer."
    )

    _fraction = field_validator("target")(_check_fraction)
    _pattern = field_validator("pattern")(_check_pattern)

    @model_validator(mode="after")
    def _floors_fit(self) -> Sparsity:
        for name in ("min_density", "min_per_channel"):
            floored = getattr(self, name) is not None or any(
                getattr(r, name) is not None for r in self.rules
            )
            if floored and self.scope not in ("global", "lamp"):
                raise ValueError(
                    f"{name} floors layers of one global selection (scope global or lamp); "
                    f"with scope {self.scope} every layer's count is fixed already"
                )
        if self.min_density is not None and self.min_density > 1.0 - self.target + 1e-12:
            raise ValueError(
                f"min_density {self.min_density:g} keeps more of every layer than the target "
                f"{self.target:g} leaves overall ({1.0 - self.target:g}); lower one of them"
            )
        return self

    @field_validator("prunable")
    @classmethod
    def _kind_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("list at least one layer kind, or leave `prunable` out for all")
        bad = [name for name in value if not name.isidentifier()]
        if bad:
            raise ValueError(f"layer kinds are class names like 'Linear'; got {bad[0]!r}")
        if len(set(value)) != len(value):
            raise ValueError("a layer kind is listed twice")
        return value


class DensePhase(Strict):
    """A dense (decompressed) phase: no mask."""

    dense: PositiveInt = Field(description="Length in schedule units.")


class SparsePhase(Strict):
    """A sparse (compressed) phase: masks chosen by magnitude at its start, fixed throughout."""

    sparse: PositiveInt = Field(description="Length in schedule units.")
    target: float | None = Field(default=None, description="Overrides sparsity.target.")

    _fraction = field_validator("target")(_check_fraction)


class GradualPhase(Strict):
    """A gradual pruning ramp (GMP): sparsity grows from `initial` to the target on a curve."""

    gradual: PositiveInt = Field(description="Length in schedule units.")
    initial: float = Field(default=0.0, ge=0.0, lt=1.0, description="Sparsity at the ramp start.")
    target: float | None = Field(
        default=None, description="Final sparsity; default sparsity.target."
    )
    curve: Literal["cubic", "linear"] = Field(default="cubic", description="Shape of the ramp.")
    update: PositiveInt = Field(default=1, description="Recompute the mask every this many units.")

    _fraction = field_validator("target")(_check_fraction)


class RepeatBlock(Strict):
    """A block of phases repeated `repeat` times."""

    repeat: PositiveInt = Field(description="How many times to repeat `phases`.")
    phases: tuple[PhaseItem, ...] = Field(min_length=1, description="The phases to repeat.")


PHASE_KINDS = ("dense", "sparse", "gradual", "repeat")


def _phase_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return next(k for k in PHASE_KINDS if k in type(value).model_fields)
    if isinstance(value, dict):
        return next((k for k in PHASE_KINDS if k in value), None)
    return None


PhaseItem = Annotated[
    Annotated[DensePhase, Tag("dense")]
    | Annotated[SparsePhase, Tag("sparse")]
    | Annotated[GradualPhase, Tag("gradual")]
    | Annotated[RepeatBlock, Tag("repeat")],
    Discriminator(
        _phase_kind,
        custom_error_type="phase_kind",
        custom_error_message="each phase needs one of the keys dense, sparse, gradual or repeat",
    ),
]
RepeatBlock.model_rebuild()


class AcdcMacro(Strict):
    """AC/DC in one line: warm-up, alternating sparse/dense blocks, last dense, final sparse."""

    epochs: PositiveInt = Field(description="Total length in schedule units.")
    warmup: Count = Field(default=10, description="Dense warm-up at the start.")
    sparse: PositiveInt = Field(default=5, description="Length of each alternating sparse block.")
    dense: PositiveInt = Field(default=5, description="Length of each alternating dense block.")
    last_dense: Count = Field(default=10, description="The last dense phase before the end.")
    final_sparse: PositiveInt = Field(default=15, description="Final sparse fine-tune, mask fixed.")


class Transitions(Strict):
    """The reference code's form: the epochs at which to prune and to restore dense training."""

    epochs: PositiveInt = Field(description="Total length in schedule units.")
    sparse_at: tuple[Count, ...] = Field(description="Positions where a sparse phase starts.")
    dense_at: tuple[Count, ...] = Field(
        default=(), description="Positions where a dense phase starts."
    )


class Schedule(Strict):
    """When each phase runs. Give exactly one of `acdc`, `phases` or `transitions`."""

    unit: Literal["epoch", "step"] = Field(default="epoch", description="Unit of every length.")
    acdc: AcdcMacro | None = Field(default=None, description="The AC/DC macro.")
    phases: tuple[PhaseItem, ...] | None = Field(
        default=None, description="An explicit list of phases and repeat blocks."
    )
    transitions: Transitions | None = Field(
        default=None, description="Switch positions, as the reference code writes them."
    )

    @model_validator(mode="after")
    def _exactly_one_form(self) -> Schedule:
        given = [k for k in ("acdc", "phases", "transitions") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "schedule needs exactly one of 'acdc', 'phases' or 'transitions'"
                + (f", got {' and '.join(given)}" if given else "")
            )
        return self


class OptimizerState(Strict):
    """What happens to optimizer state (momentum, Adam moments) at phase switches."""

    on_decompress: DecompressPolicy = Field(  # type: ignore[valid-type]
        default="reset",
        description="At the start of each dense phase: reset all momentum state (the reference), "
        "keep it, or reset only the positions that were pruned and now train again.",
    )


class Recipe(Strict):
    """A whole recipe."""

    version: Literal[1] = Field(default=1, description="Recipe format version.")
    name: str = Field(
        min_length=1, max_length=MAX_NAME, description="A short name, used for output folders."
    )
    description: str | None = Field(default=None, description="What the recipe reproduces.")
    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Template variables, used as {{ name }} in string values; --set name=value.",
    )
    sparsity: Sparsity | None = Field(default=None, description="Targets and per-layer rules.")
    schedule: Schedule = Field(description="The phase schedule.")
    optimizer_state: OptimizerState = Field(
        default_factory=OptimizerState, description="Optimizer-state policy at phase switches."
    )
    train: TrainSpec | None = Field(default=None, description="What `acdc run` trains.")

    @field_validator("name")
    @classmethod
    def _name_is_printable(cls, value: str) -> str:
        return check_printable(value, "the recipe name")

    @model_validator(mode="after")
    def _sparse_phases_need_a_target(self) -> Recipe:
        if self.sparsity is None and _has_pruning(self.schedule):
            raise ValueError("the schedule has sparse phases, so a `sparsity` section is required")
        return self

    @model_validator(mode="after")
    def _lamp_needs_whole_layers(self) -> Recipe:
        sharded = self.train is not None and self.train.distributed == "fsdp"
        if sharded and self.sparsity is not None and self.sparsity.scope == "lamp":
            raise ValueError(
                "scope: lamp scores each weight against the larger weights of its whole layer, "
                "which distributed: fsdp splits over processes; use distributed: ddp, or scope: "
                "global with min_density (exact over the shards) to keep every layer alive"
            )
        return self


def _has_pruning(schedule: Schedule) -> bool:
    if schedule.acdc is not None or schedule.transitions is not None:
        return True

    def walk(items: tuple[PhaseItem, ...]) -> bool:
        return any(
            walk(item.phases) if isinstance(item, RepeatBlock) else not isinstance(item, DensePhase)
            for item in items
        )

    return walk(schedule.phases or ())


def recipe_hash(recipe: Recipe) -> str:
    """sha256 of the recipe's canonical JSON (sorted keys, no whitespace), leaving out the
    `RESUMABLE_KEYS`: two recipes with one hash train the same schedule on the same data."""
    data = recipe.model_dump(mode="json")
    for path in RESUMABLE_KEYS:
        node = data
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
