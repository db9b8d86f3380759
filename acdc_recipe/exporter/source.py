"""What an export reads: a sparse model's weights, the masks of its pruned weights, and where
they came from.

The sources: a run directory (its `sparse.safetensors` and `masks.safetensors`), one checkpoint
file (its model and its masks, which name their parameters), what the trainer callbacks write
(`trainer_sources`), or a model in memory with the runtime that masked it. Each becomes a
`SparseModel`, read from files alone: the recipe's model is built only when a format needs a
runnable model (`torch-sparse`), never compiled. The masks are checked against the weights
before anything is written: a weight that is non-zero where its mask prunes means the masks were
not applied, and the export refuses it, naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from acdc_recipe.compiler.tracing import unwrap
from acdc_recipe.errors import UserError
from acdc_recipe.formats import checkpoint as ckpt
from acdc_recipe.formats.mask_file import load_masks
from acdc_recipe.formats.run_dir import RunDir
from acdc_recipe.language.loading import load_recipe, load_recipe_text
from acdc_recipe.language.schema import Recipe
from acdc_recipe.models import build_model
from acdc_recipe.models.transformers_models import (
    model_from_config,
    spec_config,
    transformers_config,
)
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
    recipe: Recipe | None
    sample_shape: tuple[int, ...] | None  # one input sample, for timing the torch-sparse choice
    input_dtype: str = "float"  # "int64": the sample holds token ids
    build: Callable[[], nn.Module] | None = field(default=None, repr=False)
    transformers_config: dict[str, Any] | None = field(default=None, repr=False)

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
                f"{self.origin}: it names no model to rebuild (no recipe with train.model, no "
                "transformers config.json), so the torch-sparse format cannot run it; export "
                "it from Python: acdc_recipe.export(model, out, runtime=runtime)"
            )
        return self.build()


def first_problem(error: RuntimeError) -> str:
    """The first line of `load_state_dict`'s error that names a tensor."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    named = [line for line in lines if not line.startswith("Error(s) in loading")]
    return (named or lines or [type(error).__name__])[0].rstrip(".")


def load_weights(model: nn.Module, state: Mapping[str, Tensor], where: str) -> nn.Module:
    """Load `state` into `model`, every tensor of both: only a tied tensor (one the model holds
    under another name that `state` has) may be absent. `ExportError` naming the first
    mismatch otherwise."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a shape differs
        raise ExportError(f"{where} does not fit the model: {first_problem(error)}") from None
    names_of: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names_of.setdefault(id(tensor), []).append(name)
    tied = {name for names in names_of.values() if set(names) & set(state) for name in names}
    missing = [name for name in result.missing_keys if name not in tied]
    if missing or result.unexpected_keys:
        which = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        count = len(missing) + len(result.unexpected_keys)
        raise ExportError(
            f"{where} does not fit the model: {which} ({count} tensors differ); load it into "
            "the model it was exported from"
        )
    return model


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


def recipe_builder(
    recipe: Recipe | None, state: dict[str, Tensor], origin: str
) -> Callable[[], nn.Module] | None:
    """Build the recipe's model (CPU, eval) with `state` loaded, when asked to; None when the
    recipe names no model."""
    if recipe is None or recipe.train is None:
        return None
    spec = recipe.train.model
    return lambda: load_weights(build_model(spec).eval(), state, f"{origin}: its weights")


def config_builder(
    config: dict[str, Any], state: dict[str, Tensor], origin: str
) -> Callable[[], nn.Module]:
    """Build the transformers model `config` describes with `state` loaded, when asked to."""

    def build() -> nn.Module:
        try:
            model = model_from_config(config)
        except ValueError as error:
            raise ExportError(f"{origin}: {error}") from None
        return load_weights(model.eval(), state, f"{origin}: its weights")

    return build


def masks_by_name(
    names: list[str] | None, patterns: list[str] | None, masks: list[Tensor] | None, origin: str
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A saved runtime state's mask list, keyed by the parameter names saved beside it."""
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


def from_recipe_files(
    state: dict[str, Tensor],
    masks: dict[str, Tensor],
    patterns: dict[str, str],
    origin: str,
    recipe: Recipe | None,
) -> SparseModel:
    """A sparse model whose recipe names its model (or does not): its runnable form and its
    transformers config come from the recipe's train.model."""
    spec = recipe.train.model if recipe is not None and recipe.train is not None else None
    shape, dtype = sample_of(recipe)
    return SparseModel(
        state, masks, patterns, origin, recipe, shape, dtype,
        build=recipe_builder(recipe, state, origin),
        transformers_config=None if spec is None else spec_config(spec),
    )  # fmt: skip


def from_run_dir(run_dir: RunDir) -> SparseModel:
    """The finished run's sparse model and the masks written beside it (a run directory
    `formats.run_dir.check_export_source` accepted: it holds a sparse model)."""
    origin = f"run {run_dir}"
    if not run_dir.masks.is_file():
        raise ExportError(
            f"{run_dir} has a sparse model but no {run_dir.masks.name} beside it (the run was "
            "made by an earlier version, or the file was removed); export one of its "
            "checkpoints of a sparse phase instead"
        )
    recipe = load_recipe(run_dir.recipe)
    found = load_masks(run_dir.masks)
    state = ckpt.load_safetensors(run_dir.sparse_model)
    return from_recipe_files(state, found.masks, found.patterns, origin, recipe)


def from_checkpoint(path: Path) -> SparseModel:
    """The model and masks of one checkpoint (verified against its digest first)."""
    state = ckpt.read_checkpoint(path, None)
    origin = f"checkpoint {path} (step {state['step']})"
    recipe = load_recipe_text(state["recipe"], f"{path}:recipe")
    runtime = state["runtime"]
    masks, patterns = masks_by_name(
        runtime.get("names"), runtime.get("patterns"), runtime["masks"], origin
    )
    return from_recipe_files(state["model"], masks, patterns, origin, recipe)


def from_runtime(
    model: nn.Module, runtime: SparsityRuntime, sample_shape: tuple[int, ...] | None
) -> SparseModel:
    """A model in memory, masked by `runtime` (attached to it, in a sparse phase); one sample
    of the input is `sample_shape`, else the one the recipe was compiled with."""
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
    masks, by_name = masks_by_name(names, patterns, current, origin)
    compiled_with = runtime.plan.sample
    dtype = "float" if compiled_with is None else compiled_with.dtype
    if sample_shape is None and compiled_with is not None:
        sample_shape = compiled_with.shape
    return SparseModel(
        state, masks, by_name, origin, None, sample_shape, dtype,
        build=lambda: root, transformers_config=transformers_config(root),
    )  # fmt: skip


def sample_of(recipe: Recipe | None) -> tuple[tuple[int, ...] | None, str]:
    """One sample's shape and input dtype, as the recipe's train.model states them."""
    if recipe is None or recipe.train is None or recipe.train.model.input_shape is None:
        return None, "float"
    return tuple(recipe.train.model.input_shape), recipe.train.model.input_dtype


def example_batch(source: SparseModel, model: nn.Module, batch_size: int) -> Tensor:
    """A fixed random batch of the source's sample shape (for timing and the output check)."""
    if source.sample_shape is None:
        raise ExportError(
            f"{source.origin}: the torch-sparse format times every layer on a real batch, but "
            "the input shape is unknown; set train.model.input_shape in the recipe, pass "
            "example_inputs to compile(), or pass input_shape (--input-shape C,H,W)"
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
