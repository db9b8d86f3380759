"""TEMPORARY stand-ins for compile() and runtime/masks.py until they land. Delete then."""

from __future__ import annotations

import hashlib
import sys
import types
from dataclasses import dataclass

import torch
from torch import nn

from acdc_recipe.compiler.plan import MaskGroup, PrunableParam
from acdc_recipe.timeline import lower


class NonFiniteWeightError(ValueError):
    pass


def check_finite(tensors, names):
    for t, n in zip(tensors, names):
        if not torch.isfinite(t).all():
            raise NonFiniteWeightError(f"non-finite weights in {n}")


def compute_masks(tensors, groups):
    masks = [torch.ones_like(t) for t in tensors]
    for g in groups:
        flat = torch.cat([tensors[i].detach().abs().reshape(-1).float() for i in g.indices])
        order = torch.sort(flat, stable=True).indices[: g.prune]
        keep = torch.ones_like(flat)
        keep[order] = 0
        offset = 0
        for i in g.indices:
            n = tensors[i].numel()
            masks[i] = keep[offset : offset + n].reshape(tensors[i].shape).to(tensors[i].dtype)
            offset += n
    return masks


def mask_sparsity(masks):
    per = [float((m == 0).sum()) / m.numel() for m in masks]
    total = sum(m.numel() for m in masks)
    return sum(float((m == 0).sum()) for m in masks) / total, per


def mask_change_fraction(old, new):
    per = [float((a.bool() != b.bool()).sum()) / a.numel() for a, b in zip(old, new)]
    total = sum(a.numel() for a in old)
    return sum(float((a.bool() != b.bool()).sum()) for a, b in zip(old, new)) / total, per


try:
    import acdc_recipe.runtime.masks  # noqa: F401
except ImportError:
    mod = types.ModuleType("acdc_recipe.runtime.masks")
    for f in (check_finite, compute_masks, mask_sparsity, mask_change_fraction):
        setattr(mod, f.__name__, f)
    mod.NonFiniteWeightError = NonFiniteWeightError
    sys.modules["acdc_recipe.runtime.masks"] = mod


@dataclass
class StandInCompiled:
    recipe: object
    module: nn.Module
    params: tuple
    parameters: list
    timeline: object
    recipe_hash: str

    def mask_groups(self, overall):
        total = sum(p.numel for p in self.params)
        return [MaskGroup(tuple(range(len(self.params))), round(overall * total), "unstructured")]

    def attach(self, optimizer, steps_per_epoch=None):
        from acdc_recipe.runtime.state import SparsityRuntime

        return SparsityRuntime(self, optimizer, steps_per_epoch=steps_per_epoch)


def compile(model, recipe, example_inputs=None):
    params, parameters = [], []
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            params.append(PrunableParam(f"{mname}.weight", mname, type(m).__name__, tuple(m.weight.shape), None, recipe.sparsity.target, "unstructured", "global", 0))
            parameters.append(m.weight)
    h = hashlib.sha256(recipe.model_dump_json().encode()).hexdigest()[:16]
    return StandInCompiled(recipe, model, tuple(params), parameters, lower(recipe.schedule), h)
