"""The recipe schema: the single source of truth for keys, types, defaults and docs.

Every model is immutable and rejects unknown keys. Field descriptions feed the recipe
reference in the README (``acdc_recipe.reference``) and the CLI help.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

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
SPARSE_KERNEL_MODES = ("off", "auto", "on")
INPUT_DTYPES = ("float", "int64")
SparseKernelMode = Literal[SPARSE_KERNEL_MODES]  # type: ignore[valid-type]
# Keys a resumed run may change (`acdc run --resume --set ...`): they steer how the remaining
# steps train, not what the schedule, the masks or the data are. Everything else must match.
RESUMABLE_KEYS: tuple[tuple[str, ...], ...] = (
    ("train", "optimizer", "lr"),
    ("train", "lr_schedule"),
    ("train", "grad_clip"),
    ("train", "checkpoint_every_steps"),
    ("train", "eval_batch_size"),
    ("train", "data", "num_workers"),
    ("train", "sparse_kernels"),
)

_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block:(\d+)x(\d+)$")


MAX_LENGTH = 1_000_000_000  # any length, count or position, in its unit
MAX_NAME = 200  # characters of a recipe name
PositiveInt = Annotated[int, Field(gt=0, le=MAX_LENGTH)]
Count = Annotated[int, Field(ge=0, le=MAX_LENGTH)]


class Strict(BaseModel):
    """Base for every recipe model: immutable, unknown keys are errors, numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_printable(value: str, what: str) -> str:
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        raise ValueError(f"{what} must be printable text; it holds the character {bad!r}")
    return value


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

    _fraction = field_validator("target")(_check_fraction)
    _pattern = field_validator("pattern")(_check_pattern)

    @field_validator("match")
    @classmethod
    def _match_compiles(cls, value: str) -> str:
        _check_printable(value, "a rule's match")
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
        if self.min_density is not None and (
            self.dense or self.target is not None or self.pattern is not None
        ):
            raise ValueError(
                "min_density floors layers that share the global (or lamp) selection; a rule "
                "with dense: true, its own target or its own pattern chooses its layers' "
                "sparsity by itself, so it cannot also set min_density"
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
        floored = self.min_density is not None or any(r.min_density is not None for r in self.rules)
        if floored and self.scope not in ("global", "lamp"):
            raise ValueError(
                f"min_density floors layers of one global selection (scope global or lamp); "
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


class ModelSpec(Strict):
    """The model `acdc compile` and `acdc run` build."""

    name: str = Field(
        description="A built-in model (mlp, cnn, resnet20), a torchvision name (resnet50), a "
        "transformers language model built from its config with kwargs as its fields "
        "('transformers:gpt2', no download), or an import path 'package.module:callable'."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    input_shape: tuple[PositiveInt, ...] | None = Field(
        default=None, description="One sample's shape (no batch dim), for tracing and FLOPs."
    )
    input_dtype: Literal[INPUT_DTYPES] = Field(  # type: ignore[valid-type]
        default="float",
        description="The example input's type: float (the model's floating dtype) or int64 "
        "(token ids, for models whose first input is a sequence of ids).",
    )


class DataSpec(Strict):
    """Where training and evaluation data come from."""

    source: Literal[
        "digits",
        "fashion_mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "imagefolder",
        "callable",
        "text",
        "tokens",
        "python_source",
    ] = Field(
        default="digits",
        description="The data source. Token sequences for language models (next-token labels): "
        "text (your text files, tokenized by `tokenizer`), tokens (a .npy or .safetensors array "
        "of token ids) and python_source (the Python standard library's own .py files, on every "
        "machine).",
    )
    root: str | None = Field(
        default=None,
        description="Folder with the data files (text: a file or a folder; tokens: the array file).",
    )
    glob: str = Field(
        default="**/*.txt",
        description="text: which files of the `root` folder to read, in sorted order.",
    )
    tokenizer: Literal["byte", "char"] = Field(
        default="byte",
        description="text and python_source: byte-level (vocabulary 256) or character-level "
        "(the sorted characters of the text) tokens.",
    )
    sequence_length: int = Field(
        default=64, gt=1, description="Token sources: tokens per training sequence."
    )
    max_tokens: int | None = Field(
        default=None, gt=1, description="Token sources: read at most this many tokens."
    )
    callable: str | None = Field(
        default=None, description="For source 'callable': 'package.module:fn' returning datasets."
    )
    num_workers: int = Field(default=0, ge=0, le=1024, description="DataLoader worker processes.")
    augment: bool = Field(default=False, description="Random crop and flip (image sources).")

    @model_validator(mode="after")
    def _callable_needs_path(self) -> DataSpec:
        if (self.source == "callable") != (self.callable is not None):
            raise ValueError("set `callable` exactly when source is 'callable'")
        return self


class OptimizerSpec(Strict):
    """The optimizer `acdc run` builds."""

    name: Literal["sgd", "adam", "adamw"] = Field(default="sgd", description="Optimizer.")
    lr: float = Field(default=0.1, gt=0, description="Peak learning rate.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(default=False, description="SGD Nesterov momentum.")
    weight_decay: float = Field(default=0.0, ge=0, description="Weight decay.")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="Adam betas.")
    eps: float = Field(default=1e-8, gt=0, description="Adam epsilon.")
    decay_norm_and_bias: bool = Field(
        default=True, description="Apply weight decay to norm weights and biases too."
    )

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError(f"Adam betas must each lie in [0, 1), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov: true needs name: sgd and a momentum above 0")
        return self


class LRScheduleSpec(Strict):
    """The learning-rate schedule, stepped every iteration."""

    name: Literal["constant", "step", "multistep", "cosine"] = Field(
        default="constant", description="Shape after warm-up."
    )
    warmup_epochs: float = Field(default=0, ge=0, description="Linear warm-up from ~0 to lr.")
    milestones: tuple[Count, ...] = Field(default=(), description="multistep: epochs to decay at.")
    step_size: PositiveInt = Field(default=30, description="step: decay every this many epochs.")
    gamma: float = Field(default=0.1, gt=0, description="step/multistep: decay factor.")
    final_lr: float = Field(default=0.0, ge=0, description="cosine: the lr reached at the end.")


class TrainSpec(Strict):
    """What `acdc run` trains. Training length comes from the schedule."""

    model: ModelSpec = Field(description="The model.")
    data: DataSpec = Field(default_factory=DataSpec, description="The data.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="The optimizer.")
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec, description="LR schedule.")
    batch_size: PositiveInt = Field(default=128, description="Batch size per process.")
    eval_batch_size: PositiveInt = Field(default=512, description="Batch size for evaluation.")
    seed: int = Field(
        default=0, ge=0, lt=2**63, description="Seed for weights, shuffling and augmentation."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where to train.")
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16: autocast on CUDA."
    )
    compile: bool = Field(default=False, description="Wrap the model in torch.compile.")
    distributed: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="With several processes (--nproc-per-node): 'ddp' keeps a replica of the "
        "model on every process; 'fsdp' shards parameters, gradients and optimizer state over "
        "them (FSDP2, fully_shard), and masks are chosen over the shards with the same exact "
        "global threshold.",
    )
    grad_clip: float | None = Field(default=None, gt=0, description="Clip the gradient norm.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="Label smoothing.")
    checkpoint_every_steps: PositiveInt | None = Field(
        default=None, description="Also checkpoint every this many steps (always per epoch)."
    )
    sparse_kernels: SparseKernelMode = Field(  # type: ignore[valid-type]
        default="off",
        description="Sparse phases on sparse kernels: off; auto (each masked Linear/Conv2d runs "
        "forward and backward on CSR kernels where timing at the phase start shows it faster, "
        "on CPU; on a CUDA GPU a 2:4 Linear's bf16/fp16 forward on semi-structured kernels); "
        "on (sparse wherever possible, untimed).",
    )

    @field_validator("sparse_kernels", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads a bare `on`/`off` as a boolean; they mean the modes of those names."""
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    @model_validator(mode="after")
    def _sparse_kernels_need_whole_weights(self) -> TrainSpec:
        if self.sparse_kernels != "off" and self.distributed == "fsdp":
            raise ValueError(
                "sparse_kernels needs whole weights on every process; with distributed: fsdp "
                "the layers compute on gathered shards. Use distributed: ddp or sparse_kernels: off"
            )
        return self


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
        return _check_printable(value, "the recipe name")

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


def recipe_changes(old: Recipe, new: Recipe) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two recipes."""
    changes: list[tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, path: tuple[str, ...]) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in dict.fromkeys([*a, *b]):
                walk(a.get(key), b.get(key), (*path, str(key)))
        elif a != b:
            changes.append((".".join(path), a, b))

    walk(old.model_dump(mode="json"), new.model_dump(mode="json"), ())
    return changes


def is_resumable(dotted: str) -> bool:
    """Whether a resumed run may change this key (one of `RESUMABLE_KEYS` or inside one)."""
    parts = tuple(dotted.split("."))
    return any(parts[: len(key)] == key for key in RESUMABLE_KEYS)
