"""What an export reads: a sparse model's weights, the masks of its pruned weights, and where
they came from.

Three sources: a run directory (its `sparse.safetensors` and `masks.safetensors`), one
checkpoint file (its model and its masks, which name their parameters), or a model in memory
with the runtime that masked it. Each becomes a `SparseModel`, read from files alone: the
recipe's model is built only when a format needs a runnable model (`torch-sparse`), never
compiled. The masks are checked against the weights before anything is written: a weight that
is non-zero where its mask prunes means the masks were not applied, and the export refuses it,
naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from acdc_recipe.compiler.tracing import unwrap
from acdc_recipe.errors import UserError
from acdc_recipe.formats import checkpoint as ckpt
from acdc_recipe.formats.mask_file import load_masks
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.language.loading import load_recipe_text
from acdc_recipe.language.schema import Recipe
from acdc_recipe.models import build_model
from acdc_recipe.runtime import SparsityRuntime


class ExportError(UserError, ValueError):
    """The source cannot be exported as asked (no sparse model, masks not applied, ...)."""


@dataclass(frozen=True)
class SparseModel:
    """A model to export: its state dict, masks (bool) and patterns by state-dict name."""

    state_dict: dict[str, Tensor]
    masks: dict[str, Tensor]
    patterns: dict[str, str]
    origin: str  # one phrase: "run runs/quickstart", "checkpoint ... (step 120)", ...
    recipe: str | None
    sample_shape: tuple[int, ...] | None  # one input sample, for timing the torch-sparse choice
    input_dtype: str = "float"  # "int64": the sample holds token ids
    build: Callable[[], nn.Module] | None = field(default=None, repr=False)

    @property
    def sparsity(self) -> float:
        """Exact zeros over all pruned weights' entries."""
        state = self.state_dict
        zeros = sum(int((state[name] == 0).sum()) for name in self.masks)
        return zeros / max(sum(state[name].numel() for name in self.masks), 1)

    def model(self) -> nn.Module:
        """A runnable model holding these weights (the recipe's model, built and loaded)."""
        if self.build is None:
            raise ExportError(
                f"{self.origin}: its recipe has no train.model, so the model cannot be rebuilt; "
                "export it from Python: acdc_recipe.export(model, out, runtime=runtime)"
            )
        return self.build()


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
        if name not in state:
            raise ExportError(
                f"{source.origin}: a mask names {name}, which the model's weights do not hold; "
                "the masks belong to another model"
            )
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


def _builder(recipe: Recipe, state: dict[str, Tensor], origin: str) -> Callable[[], nn.Module]:
    """Build the recipe's model (CPU, eval) with `state` loaded, when asked to."""

    def build() -> nn.Module:
        if recipe.train is None:
            raise ExportError(
                f"{origin}: its recipe has no train.model, so the model cannot be rebuilt; "
                "export it from Python: acdc_recipe.export(model, out, runtime=runtime)"
            )
        model = build_model(recipe.train.model).eval()
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ExportError(
                f"{origin}: the weights do not fit the recipe's model: {first_problem(error)}"
            ) from None
        return model

    return build


def _masks_by_name(
    names: list[str] | None, patterns: list[str] | None, masks: list[Tensor] | None, origin: str
) -> tuple[dict[str, Tensor], dict[str, str]]:
    if masks is None:
        raise ExportError(
            f"{origin} is in a dense phase: no masks are in force, so there is no sparse model "
            "to export; export a checkpoint of a sparse phase, or the finished run"
        )
    if names is None or patterns is None:
        raise ExportError(
            f"{origin} does not name the parameters its masks belong to (it was written by an "
            "earlier version); export the run directory instead"
        )
    if not len(masks) == len(names) == len(patterns):
        raise ExportError(f"{origin} holds {len(masks)} masks for {len(names)} parameters")
    return (
        {name: mask.bool().cpu() for name, mask in zip(names, masks, strict=True)},
        dict(zip(names, patterns, strict=True)),
    )


def from_run_dir(run_dir: RunDir) -> SparseModel:
    """The finished run's sparse model and the masks written beside it."""
    origin = f"run {run_dir}"
    parent = RunDir(run_dir.path.parent)
    if not run_dir.recipe.is_file() and run_dir.path in parent.checkpoint_folders():
        raise ExportError(
            f"{run_dir} is a checkpoint folder of a sharded (FSDP2) run; export its run "
            f"directory ({parent}), which holds the gathered sparse model and its masks"
        )
    if not run_dir.recipe.is_file():
        raise ExportError(
            f"{run_dir} is not a run directory (it has no {run_dir.recipe.name}); give a folder "
            "written by `acdc run` or one of its checkpoint-*.pt files"
        )
    if not run_dir.sparse_model.is_file():
        raise ExportError(
            f"{run_dir} has no sparse model ({run_dir.sparse_model.name}): the run has not "
            "finished, or its schedule ends with a dense phase; export one of its checkpoints "
            "of a sparse phase instead (acdc export RUN_DIR/checkpoint-NNNNNNNNN.pt)"
        )
    if not run_dir.masks.is_file():
        raise ExportError(
            f"{run_dir} has a sparse model but no {run_dir.masks.name} beside it (the run was "
            "made by an earlier version, or the file was removed); export one of its "
            "checkpoints of a sparse phase instead"
        )
    recipe = load_recipe_text(run_dir.recipe.read_text(encoding="utf-8"), str(run_dir.recipe))
    found = load_masks(run_dir.masks)
    state = ckpt.load_safetensors(run_dir.sparse_model)
    build = _builder(recipe, state, origin)
    return SparseModel(
        state, found.masks, found.patterns, origin, recipe.name, *_sample(recipe), build
    )


def from_checkpoint(path: Path) -> SparseModel:
    """The model and masks of one checkpoint (verified against its digest first)."""
    state = ckpt.read_checkpoint(path, None)
    origin = f"checkpoint {path} (step {state['step']})"
    recipe = load_recipe_text(state["recipe"], f"{path}:recipe")
    runtime = state["runtime"]
    masks, patterns = _masks_by_name(
        runtime.get("names"), runtime.get("patterns"), runtime["masks"], origin
    )
    weights = state["model"]
    build = _builder(recipe, weights, origin)
    return SparseModel(weights, masks, patterns, origin, recipe.name, *_sample(recipe), build)


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
    names = list(runtime.plan.names)
    state = {k: v.detach() for k, v in root.state_dict().items()}
    missing = [name for name in names if name not in state]
    if missing:
        raise ExportError(
            f"{origin}: the runtime prunes {', '.join(missing[:3])}, which the model does not "
            "hold; pass the model the runtime was attached to"
        )
    patterns = [p.pattern for p in runtime.plan.params]
    current = None if runtime.masks is None else list(runtime.masks)
    masks, by_name = _masks_by_name(names, patterns, current, origin)
    return SparseModel(state, masks, by_name, origin, None, sample_shape, build=lambda: root)


def _sample(recipe: Recipe) -> tuple[tuple[int, ...] | None, str]:
    """One sample's shape and input dtype, as the recipe's train.model states them."""
    if recipe.train is None or recipe.train.model.input_shape is None:
        return None, "float"
    return tuple(recipe.train.model.input_shape), recipe.train.model.input_dtype


def example_batch(source: SparseModel, model: nn.Module, batch_size: int) -> Tensor:
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
            (m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)),
            default=2,
        )
        return torch.randint(0, vocabulary, shape, generator=generator)
    return torch.randn(shape, generator=generator)
