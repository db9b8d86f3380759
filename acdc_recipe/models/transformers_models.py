"""Language models built from a transformers config by name, with random weights (nothing is
downloaded): ``transformers:gpt2`` with ``kwargs`` as the config's fields builds
``AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **kwargs))``. Needs the
``hf`` extra. A config field that the model type does not have is an error, not ignored.

A transformers model's config as its config.json holds it (`transformers_config`), and the
model such a config describes (`model_from_config`), for the files other tools load.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from acdc_recipe.compiler import CompileError
from acdc_recipe.language.train_config import ModelSpec

PREFIX = "transformers:"
_PATH = ("train", "model", "name")


def transformers_factory(name: str) -> Callable[..., nn.Module]:
    """The builder behind ``transformers:<model type>``."""
    try:
        import transformers  # an optional dependency: the hf extra
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        raise CompileError(
            f"model {name!r} is built by transformers, which is not installed: "
            "pip install 'acdc-recipe[hf]'",
            _PATH,
        ) from None
    model_type = name[len(PREFIX) :]
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        close = difflib.get_close_matches(model_type, list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), 3)
        hint = f" Did you mean {', '.join(repr(PREFIX + c) for c in close)}?" if close else ""
        raise CompileError(
            f"transformers has no causal language model of type {model_type!r}.{hint} acdc run "
            "trains next-token prediction, so the type must be one AutoModelForCausalLM builds "
            "(gpt2, llama, bert, ...)",
            _PATH,
        )

    def build(**fields: object) -> nn.Module:
        default = transformers.AutoConfig.for_model(model_type)
        known = set(default.to_dict()) | set(getattr(default, "attribute_map", {}))
        unknown = [key for key in fields if key not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), 3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise CompileError(
                f"{model_type} configs have no field {unknown[0]!r}{hint}",
                ("train", "model", "kwargs", unknown[0]),
            )
        config = transformers.AutoConfig.for_model(model_type, **fields)
        return transformers.AutoModelForCausalLM.from_config(config)

    return build


def transformers_config(model: nn.Module) -> dict[str, Any] | None:
    """A transformers model's config as its config.json holds it (with `architectures` and
    the weights' dtype, under the key each transformers version reads); None for any other
    model."""
    config = getattr(model, "config", None)
    if not hasattr(model, "save_pretrained") or not callable(getattr(config, "to_dict", None)):
        return None
    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_THE_MODELS}
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None:
        fields["torch_dtype"] = fields["dtype"] = str(dtype).removeprefix("torch.")
    fields["architectures"] = [type(model).__name__]
    return fields


def spec_config(spec: ModelSpec) -> dict[str, Any] | None:
    """The transformers config of the model `spec` names (built on the meta device: nothing is
    allocated); None when it is not a transformers model."""
    if not spec.name.startswith(PREFIX):
        return None
    with torch.device("meta"):
        model = transformers_factory(spec.name)(**spec.kwargs)
    return transformers_config(model)


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """The transformers model a config.json describes (its first `architectures` entry), with
    fresh weights; `ValueError` when transformers cannot build it."""
    try:
        import transformers
    except ImportError:
        raise ValueError(
            "it is a transformers model, and transformers is not installed: pip install "
            "'acdc-recipe[hf]'"
        ) from None
    architectures = config.get("architectures") or [None]
    model_class = getattr(transformers, str(architectures[0]), None)
    if model_class is None or "model_type" not in config:
        raise ValueError(
            f"its config.json names no transformers model class this transformers "
            f"({transformers.__version__}) has (architectures: {architectures})"
        )
    fields = {k: v for k, v in config.items() if k not in _NOT_THE_MODELS}
    built = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    return model_class(built)


# config.json keys that describe a file, not the model
_NOT_THE_MODELS = ("quantization_config", "acdc_recipe", "_name_or_path", "transformers_version")
