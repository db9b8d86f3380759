"""What an export reads: a sparse model, the masks of its pruned weights, and where it came from.

Three sources: a run directory (its `sparse.safetensors`, with the masks of its newest
checkpoint), one checkpoint file (its model and its masks), or a model in memory with the
runtime that masked it. Each becomes a `SparseModel`, whose masks are checked against the
weights before anything is written: a weight that is non-zero where its mask prunes means the
masks were not applied, and the export refuses it, naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from acdc_recipe.compiler import compile as compile_recipe
from acdc_recipe.compiler.tracing import unwrap
from acdc_recipe.errors import UserError
from acdc_recipe.loading import load_recipe_text
from acdc_recipe.runtime import SparsityRuntime
from acdc_recipe.runtime.train import checkpoint as ckpt
from acdc_recipe.runtime.train import sharded_checkpoint as sharded
from acdc_recipe.runtime.train.models import build_model
from acdc_recipe.schema import Recipe, recipe_hash


class ExportError(UserError, ValueError):
    """The source cannot be exported as asked (no sparse model, masks not applied, ...)."""


@dataclass(frozen=True)
class SparseModel:
    """A model to export: weights loaded, masks (bool) by state-dict name, patterns by name."""

    model: nn.Module
    masks: dict[str, Tensor]
    patterns: dict[str, str]
    origin: str  # one phrase: "run runs/quickstart", "checkpoint ... (step 120)", ...
    recipe: str | None
    sample_shape: tuple[int, ...] | None  # one input sample, for timing the torch-sparse choice
    input_dtype: str = "float"  # "int64": the sample holds token ids

    @property
    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    @property
    def sparsity(self) -> float:
        """Exact zeros over all pruned weights' entries."""
        state = self.state_dict
        zeros = sum(int((state[name] == 0).sum()) for name in self.masks)
        return zeros / max(sum(state[name].numel() for name in self.masks), 1)


def first_problem(error: RuntimeError) -> str:
    """The first line of `load_state_dict`'s error that names a tensor."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    named = [line for line in lines if not line.startswith("Error(s) in loading")]
    return (named or lines or [type(error).__name__])[0].rstrip(".")


def check_masks_applied(source: SparseModel) -> None:
    """Refuse weights that are non-zero where their mask prunes (see the module docstring)."""
    state = source.state_dict
    wrong = []
    for name, mask in source.masks.items():
        weight = state[name]
        if tuple(mask.shape) != tuple(weight.shape):
            raise ExportError(
                f"{source.origin}: the mask of {name} has shape {tuple(mask.shape)}, the weight "
                f"{tuple(weight.shape)}; the masks belong to another model"
            )
        count = int((weight[~mask.to(weight.device)] != 0).sum())
        if count:
            wrong.append(f"{name} ({count} entries)")
    if wrong:
        raise ExportError(
            f"{source.origin}: the masks were not applied: {', '.join(wrong[:4])}"
            f"{' and more' if len(wrong) > 4 else ''} non-zero where the mask prunes; export "
            "the model after an optimizer step of a sparse phase (the runtime masks the weights "
            "there), or apply the masks with acdc_recipe.runtime.apply_masks_"
        )


def _recipe_model(recipe: Recipe, origin: str) -> tuple[nn.Module, list[str], list[str]]:
    """The recipe's model (CPU, eval) and its prunable weights' names and patterns."""
    if recipe.train is None:
        raise ExportError(
            f"{origin}: its recipe has no train.model, so the model cannot be rebuilt; export "
            "it from Python: acdc_recipe.export(model, out, runtime=runtime)"
        )
    model = build_model(recipe.train.model).eval()
    compiled = compile_recipe(model, recipe)
    return model, compiled.plan.names, [p.pattern for p in compiled.params]


def _with_masks(
    names: list[str], patterns: list[str], masks: list[Tensor] | None, origin: str
) -> tuple[dict[str, Tensor], dict[str, str]]:
    if masks is None:
        raise ExportError(
            f"{origin} is in a dense phase: no masks are in force, so there is no sparse model "
            "to export; export a checkpoint of a sparse phase, or the finished run"
        )
    if len(masks) != len(names):
        raise ExportError(
            f"{origin} holds {len(masks)} masks, the model {len(names)} prunable weights"
        )
    return (
        {name: mask.bool().cpu() for name, mask in zip(names, masks, strict=True)},
        dict(zip(names, patterns, strict=True)),
    )


def _load_weights(model: nn.Module, state: dict[str, Tensor], origin: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = first_problem(error)
        raise ExportError(f"{origin}: the weights do not fit the recipe's model: {first}") from None


def from_run_dir(run_dir: Path) -> SparseModel:
    """The finished run's sparse model, with the masks of its newest checkpoint."""
    origin = f"run {run_dir}"
    written = run_dir / "recipe.yaml"
    if not written.is_file() and (run_dir / sharded.MANIFEST).is_file():
        raise ExportError(
            f"{run_dir} is a checkpoint folder of a sharded (FSDP2) run; export its run "
            f"directory ({run_dir.parent}), which holds the gathered sparse model"
        )
    if not written.is_file():
        raise ExportError(
            f"{run_dir} is not a run directory (it has no recipe.yaml); give a folder written by "
            "`acdc run` or one of its checkpoint-*.pt files"
        )
    sparse = run_dir / "sparse.safetensors"
    if not sparse.is_file():
        raise ExportError(
            f"{run_dir} has no sparse model (sparse.safetensors): the run has not finished, or "
            "its schedule ends with a dense phase; export one of its checkpoints of a sparse "
            "phase instead (acdc export RUN_DIR/checkpoint-NNNNNNNNN.pt)"
        )
    recipe = load_recipe_text(written.read_text(encoding="utf-8"), str(written))
    loaded = ckpt.load_latest(run_dir, recipe_hash(recipe))
    if loaded is not None:
        saved_masks = loaded.state["runtime"]["masks"]
    else:  # an FSDP2 run: checkpoint folders of mask shards
        saved_masks = sharded.read_full_masks(run_dir, recipe_hash(recipe))
        if saved_masks is None:
            raise ExportError(f"{run_dir} has no checkpoint holding the masks of its sparse model")
    model, names, patterns = _recipe_model(recipe, origin)
    _load_weights(model, ckpt.load_safetensors(sparse), origin)
    masks, by_name = _with_masks(names, patterns, saved_masks, origin)
    return SparseModel(model, masks, by_name, origin, recipe.name, *_sample(recipe))


def from_checkpoint(path: Path) -> SparseModel:
    """The model and masks of one checkpoint (verified against its digest first)."""
    state = ckpt.read_checkpoint(path, None)
    origin = f"checkpoint {path} (step {state['step']})"
    recipe = load_recipe_text(state["recipe"], f"{path}:recipe")
    model, names, patterns = _recipe_model(recipe, origin)
    _load_weights(model, state["model"], origin)
    masks, by_name = _with_masks(names, patterns, state["runtime"]["masks"], origin)
    return SparseModel(model, masks, by_name, origin, recipe.name, *_sample(recipe))


def from_runtime(
    model: nn.Module, runtime: SparsityRuntime, sample_shape: tuple[int, ...] | None
) -> SparseModel:
    """A model in memory, masked by `runtime` (attached to it, in a sparse phase)."""
    root, _ = unwrap(model)
    origin = f"the {type(root).__name__} at step {runtime.step}"
    if any(isinstance(p, DTensor) for p in root.parameters()):
        raise ExportError(
            f"{origin} is sharded with FSDP2: each process holds only its shards. Export the "
            "run directory `acdc run` wrote (its sparse model is gathered), or gather the full "
            "state dict and export an unsharded copy of the model"
        )
    names = runtime.plan.names
    state = root.state_dict()
    missing = [name for name in names if name not in state]
    if missing:
        raise ExportError(
            f"{origin}: the runtime prunes {', '.join(missing[:3])}, which the model does not "
            "hold; pass the model the runtime was attached to"
        )
    patterns = [p.pattern for p in runtime.plan.params]
    masks = None if runtime.masks is None else list(runtime.masks)
    by_mask, by_name = _with_masks(names, patterns, masks, origin)
    return SparseModel(root, by_mask, by_name, origin, None, sample_shape)


def _sample(recipe: Recipe) -> tuple[tuple[int, ...] | None, str]:
    """One sample's shape and input dtype, as the recipe's train.model states them."""
    if recipe.train is None or recipe.train.model.input_shape is None:
        return None, "float"
    return tuple(recipe.train.model.input_shape), recipe.train.model.input_dtype


def example_batch(source: SparseModel, batch_size: int) -> Tensor:
    """A fixed random batch of the source's sample shape (for timing and the output check)."""
    if source.sample_shape is None:
        raise ExportError(
            f"{source.origin}: the torch-sparse format times every layer on a real batch, but "
            "the input shape is unknown; set train.model.input_shape in the recipe, or pass "
            "input_shape (--input-shape C,H,W)"
        )
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, *source.sample_shape)
    if source.input_dtype == "int64":  # token ids every embedding of the model can look up
        vocabulary = min(
            (m.num_embeddings for m in source.model.modules() if isinstance(m, nn.Embedding)),
            default=2,
        )
        return torch.randint(0, vocabulary, shape, generator=generator)
    return torch.randn(shape, generator=generator)
