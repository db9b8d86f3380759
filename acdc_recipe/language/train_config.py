"""The `train` section: what `acdc run` trains (model, data, optimizer, LR schedule, how).

The recipe's own language (sparsity, schedule, optimizer-state policy) is `schema.py`; this is
the trainer's configuration, carried in the same file so one recipe describes one run.
`RESUMABLE_KEYS` are the keys of this section a resumed run may change.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from acdc_recipe.language.strict import Count, PositiveInt, Strict

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


def is_resumable(dotted: str) -> bool:
    """Whether a resumed run may change this key (one of `RESUMABLE_KEYS` or inside one)."""
    parts = tuple(dotted.split("."))
    return any(parts[: len(key)] == key for key in RESUMABLE_KEYS)
