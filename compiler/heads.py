"""Output heads of transformers models: dense unless a rule matches them.

Pruning tools for language models (llm-compressor, SparseGPT, Wanda, ModelOpt) leave the
output projection dense, and classifiers keep their heads dense too: a head is small against
the model and decides every prediction. For a transformers model the heads are the module
`get_output_embeddings()` returns (an untied `lm_head`; a tied one is the input embedding,
never pruned anyway) and a sequence-classification head (`classifier`, `score`). Their weights
get the role "head": not pruned by default, claimed by any rule that matches them (a rule with
no target prunes them at the overall target, `dense: true` keeps them dense explicitly).
"""

from __future__ import annotations

from torch import nn

HEAD_ATTRIBUTES = ("classifier", "score")  # of transformers' *ForSequenceClassification


def output_heads(model: nn.Module) -> tuple[str, ...]:
    """Module paths of the heads of a transformers model (empty for any other model)."""
    if not is_transformers_model(model):
        return ()
    paths = {id(module): path for path, module in model.named_modules()}
    getter = getattr(model, "get_output_embeddings", None)
    found = [getter() if callable(getter) else None]
    if type(model).__name__.endswith("ForSequenceClassification"):
        found += [getattr(model, attribute, None) for attribute in HEAD_ATTRIBUTES]
    heads = [paths[id(m)] for m in found if isinstance(m, nn.Module) and id(m) in paths]
    return tuple(dict.fromkeys(heads))


def is_transformers_model(model: nn.Module) -> bool:
    """A transformers `PreTrainedModel` (checked by class name: nothing is imported)."""
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers")
        for cls in type(model).__mro__
    )


def in_head(layer: str, heads: tuple[str, ...]) -> bool:
    """Whether the module path `layer` is a head or inside one."""
    return any(layer == head or layer.startswith(f"{head}.") for head in heads)
