"""Language models built from a transformers config by name, with random weights (nothing is
downloaded): ``transformers:gpt2`` with ``kwargs`` as the config's fields builds
``AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **kwargs))``. Needs the
``hf`` extra. A config field that the model type does not have is an error, not ignored.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from acdc_recipe.compiler import CompileError

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
