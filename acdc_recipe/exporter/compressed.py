"""The `compressed` format: compressed-tensors' sparse-bitmask layout, in safetensors.

Every pruned weight `name`, taken as its matrix `[out, in * kernel]`, is stored as four tensors:

- `name.shape`: int64, the matrix shape;
- `name.compressed`: its nonzero values, row-major, in the weight's dtype;
- `name.bitmask`: uint8 `[rows, ceil(cols / 8)]`, one bit per entry, little-endian within a
  byte (what `numpy.packbits(..., bitorder="little")` and compressed-tensors' `pack_bitmasks`
  write);
- `name.row_offsets`: int64 `[rows]`, where each row's values start in `compressed`.

Everything else (biases, norms, layers kept dense) is stored dense under its own name.
`config.json` names the format (`quantization_config.sparsity_config.format:
"sparse-bitmask"`) as the compressed-tensors library and the loaders built on it read it; a
convolution's own shape is kept in manifest.json, so `read_state_dict` restores every tensor:
kept values bit for bit, pruned positions as +0.0 (masking by multiplication leaves -0.0 where
a negative weight was pruned; the tensors are `torch.equal`).
"""

from __future__ import annotations

import json
from math import prod
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from acdc_recipe.exporter.source import SparseModel
from acdc_recipe.formats.run_dir import ExportDir

PARTS = ("shape", "compressed", "bitmask", "row_offsets")
_BITS = 2 ** torch.arange(8, dtype=torch.int32)


def pack_bits(mask: Tensor) -> Tensor:
    """A 2-D bool mask as uint8 bytes along its rows, little-endian bit order."""
    rows, cols = mask.shape
    padded = torch.zeros(rows, -(-cols // 8) * 8, dtype=torch.int32)
    padded[:, :cols] = mask
    return (padded.reshape(rows, -1, 8) * _BITS).sum(-1).to(torch.uint8)


def unpack_bits(packed: Tensor, cols: int) -> Tensor:
    """Inverse of `pack_bits`."""
    bits = (packed.to(torch.int32).unsqueeze(-1) & _BITS).ne(0)
    return bits.reshape(packed.shape[0], -1)[:, :cols]


def compress(weight: Tensor) -> dict[str, Tensor]:
    """The four sparse-bitmask tensors of one weight (see the module docstring)."""
    matrix = weight.detach().cpu().reshape(weight.shape[0], -1)
    keep = matrix != 0
    counts = keep.sum(1)
    return {
        "shape": torch.tensor(matrix.shape, dtype=torch.int64),
        "compressed": matrix[keep].clone(),
        "bitmask": pack_bits(keep),
        "row_offsets": (torch.cumsum(counts, 0) - counts).to(torch.int64),
    }


def decompress(parts: dict[str, Tensor]) -> Tensor:
    """The dense matrix of `compress`'s tensors."""
    rows, cols = parts["shape"].tolist()
    keep = unpack_bits(parts["bitmask"], cols)
    matrix = torch.zeros(rows, cols, dtype=parts["compressed"].dtype)
    matrix[keep] = parts["compressed"]
    return matrix


def write(source: SparseModel, folder: ExportDir) -> dict[str, Any]:
    """Write model.safetensors and config.json into `folder`; return the manifest entries."""
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    dense_bytes = compressed_bytes = 0
    for name, tensor in source.state_dict.items():
        if name not in source.masks:
            tensors[name] = tensor.cpu().contiguous().clone()
            continue
        parts = compress(tensor)
        tensors.update({f"{name}.{part}": value for part, value in parts.items()})
        shapes[name] = list(tensor.shape)
        dense_bytes += tensor.numel() * tensor.element_size()
        compressed_bytes += sum(t.numel() * t.element_size() for t in parts.values())
    save_file(tensors, str(folder.weights), metadata={"format": "pt"})
    patterns = set(source.patterns.values())
    structure = "2:4" if patterns == {"2:4"} else "unstructured"
    config = {
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "sparse-bitmask",
            "sparsity_config": {
                "format": "sparse-bitmask",
                "global_sparsity": source.sparsity,
                "sparsity_structure": structure,
                "targets": sorted({name.rsplit(".", 1)[0] for name in source.masks}),
                "ignore": [],
            },
        }
    }
    folder.config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {
        "shapes": shapes,
        "pruned_bytes": {"dense": dense_bytes, "compressed": compressed_bytes},
    }


def read_state_dict(folder: ExportDir, manifest: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict `write` stored (kept values bit for bit, pruned positions +0.0)."""
    tensors = load_file(str(folder.weights))
    state: dict[str, Tensor] = {}
    for name, shape in manifest["shapes"].items():
        parts = {part: tensors.pop(f"{name}.{part}") for part in PARTS}
        matrix = decompress(parts)
        if matrix.numel() != prod(shape):
            raise ValueError(f"{name}: {tuple(matrix.shape)} cannot hold shape {tuple(shape)}")
        state[name] = matrix.reshape(shape)
    state.update(tensors)
    return state
