"""The `compressed` format: compressed-tensors' sparse-bitmask layout, in safetensors.

Every pruned weight `<layer>.weight` is stored as the four tensors compressed-tensors'
`BitmaskCompressor` writes, under the layer's name and in the weight's own shape:

- `<layer>.shape`: int64, the weight's shape;
- `<layer>.compressed`: its nonzero values in row-major order, in the weight's dtype;
- `<layer>.bitmask`: uint8 `[*shape[:-1], ceil(shape[-1] / 8)]`, one bit per entry along the
  last dimension, little-endian within a byte (`numpy.packbits(..., bitorder="little")`);
- `<layer>.row_offsets`: int64 `[*shape[:-1]]`, `cumsum(counts, 0) - counts` of the nonzeros
  counted along the last dimension (where each row's values start, for a matrix).

Everything else (biases, norms, layers kept dense, a pruned tensor that is not some layer's
`.weight`, which compressed-tensors would not compress) is stored dense under its own name.
`config.json` holds `quantization_config` as compressed-tensors' `ModelCompressor` writes it
(`quant_method`, `sparsity_config` naming the compressed layers as its `targets`,
`transform_config`), beside the model's own transformers config when it has one, so
compressed-tensors (0.14.0 and earlier) and `transformers` (up to 4.55) decompress the
folder. `read_state_dict` restores every tensor (kept values bit for bit, pruned positions
+0.0) and checks each one: nothing is loaded partially.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from acdc_recipe.exporter.source import SparseModel
from acdc_recipe.formats.run_dir import ExportDir

NAME = "compressed"
PARTS = ("shape", "compressed", "bitmask", "row_offsets")
WEIGHT = ".weight"
_BITS = 2 ** torch.arange(8, dtype=torch.int32)


def pack_bits(mask: Tensor) -> Tensor:
    """A bool mask as uint8 bytes along its last dimension, little-endian bit order."""
    *rows, cols = mask.shape
    flat = mask.reshape(-1, cols)
    padded = torch.zeros(flat.shape[0], -(-cols // 8) * 8, dtype=torch.int32)
    padded[:, :cols] = flat
    packed = (padded.reshape(flat.shape[0], -1, 8) * _BITS).sum(-1).to(torch.uint8)
    return packed.reshape(*rows, -1)


def unpack_bits(packed: Tensor, cols: int) -> Tensor:
    """Inverse of `pack_bits` for a last dimension of `cols` entries."""
    bits = (packed.to(torch.int32).unsqueeze(-1) & _BITS).ne(0)
    return bits.reshape(*packed.shape[:-1], -1)[..., :cols]


def compress(weight: Tensor) -> dict[str, Tensor]:
    """The four sparse-bitmask tensors of one weight (see the module docstring)."""
    weight = weight.detach().cpu()
    keep = weight != 0
    counts = keep.sum(-1)
    return {
        "shape": torch.tensor(list(weight.shape), dtype=torch.int64),
        "compressed": weight[keep].clone(),
        "bitmask": pack_bits(keep),
        "row_offsets": torch.cumsum(counts, 0) - counts,
    }


def decompress(parts: Mapping[str, Tensor], name: str) -> Tensor:
    """The dense weight of `compress`'s tensors, each checked against the others; a
    `ValueError` naming `name` when they do not describe one weight."""
    shape = parts["shape"]
    if shape.dtype != torch.int64 or shape.dim() != 1 or len(shape) == 0 or (shape < 1).any():
        raise ValueError(f"{name}.shape is not a weight's shape")
    dims = [int(size) for size in shape.tolist()]
    bitmask, values = parts["bitmask"], parts["compressed"]
    wanted = (*dims[:-1], -(-dims[-1] // 8))
    if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != wanted:
        raise ValueError(f"{name}.bitmask is not a uint8 tensor of shape {wanted}")
    keep = unpack_bits(bitmask, dims[-1])
    padding = unpack_bits(bitmask, wanted[-1] * 8)[..., dims[-1] :]
    counts = keep.sum(-1)
    if padding.any() or values.dim() != 1 or values.numel() != int(counts.sum()):
        raise ValueError(
            f"{name}.bitmask marks {int(counts.sum())} entries, {name}.compressed holds "
            f"{values.numel()}"
        )
    if not torch.equal(parts["row_offsets"], torch.cumsum(counts, 0) - counts):
        raise ValueError(f"{name}.row_offsets do not match its bitmask")
    weight = torch.zeros(dims, dtype=values.dtype)
    weight[keep] = values
    return weight


def compressed_layers(source: SparseModel) -> list[str]:
    """The layers whose `.weight` is stored compressed: every pruned tensor named
    `<layer>.weight` (compressed-tensors compresses a layer's weight, nothing else)."""
    return sorted(name[: -len(WEIGHT)] for name in source.masks if name.endswith(WEIGHT))


def quantization_config(source: SparseModel, layers: list[str]) -> dict[str, Any]:
    """`quantization_config` as compressed-tensors' `ModelCompressor.update_config` writes it
    for a model with sparsity and no quantization."""
    patterns = {source.patterns[f"{layer}{WEIGHT}"] for layer in layers}
    return {
        "quant_method": "compressed-tensors",
        "sparsity_config": {
            "format": "sparse-bitmask",
            "global_sparsity": source.sparsity,
            "ignore": None,
            "registry_requires_subclass": False,
            "sparsity_structure": "2:4" if patterns == {"2:4"} else "unstructured",
            "targets": layers,
        },
        "transform_config": {},
    }


def write(source: SparseModel, folder: ExportDir) -> dict[str, Any]:
    """Write model.safetensors and config.json into `folder`; return the manifest entries."""
    layers = compressed_layers(source)
    compressed_names = {f"{layer}{WEIGHT}" for layer in layers}
    tensors: dict[str, Tensor] = {}
    dense_bytes = compressed_bytes = 0
    for name, tensor in source.state_dict.items():
        if name not in compressed_names:
            tensors[name] = tensor.detach().cpu().contiguous().clone()
            continue
        parts = compress(tensor)
        tensors.update({f"{name[: -len(WEIGHT)]}.{part}": value for part, value in parts.items()})
        dense_bytes += tensor.numel() * tensor.element_size()
        compressed_bytes += sum(t.numel() * t.element_size() for t in parts.values())
    save_file(tensors, str(folder.weights), metadata={"format": "pt"})
    config = {**(source.transformers_config or {})}
    config["quantization_config"] = quantization_config(source, layers)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    folder.config.write_text(text, encoding="utf-8")
    return {
        "compressed": layers,
        "stored_dense": sorted(set(source.masks) - compressed_names),
        "pruned_bytes": {"dense": dense_bytes, "compressed": compressed_bytes},
    }


def read_state_dict(folder: ExportDir, manifest: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict `write` stored (kept values bit for bit, pruned positions +0.0); a
    `ValueError` or `KeyError` when a tensor is missing, extra or inconsistent."""
    tensors = load_file(str(folder.weights))
    state: dict[str, Tensor] = {}
    for layer in manifest["compressed"]:
        parts = {part: tensors.pop(f"{layer}.{part}") for part in PARTS}
        state[f"{layer}{WEIGHT}"] = decompress(parts, layer)
    clash = sorted(set(state) & set(tensors))
    if clash:
        raise ValueError(f"{clash[0]} is stored both compressed and dense")
    state.update(tensors)
    return state
