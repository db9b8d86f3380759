"""Read compressed exports with the format's own readers and report what they found (JSON on
stdout). Run by `test_compressed_readers.py` with compressed-tensors 0.14.0 and transformers
4.55.4 first on PYTHONPATH (the folder `.ci/reader-env` prepares); it imports nothing of
acdc_recipe.

    python readers_check.py CASES.json

CASES.json is a list of cases: {"folder": an export, "original": a safetensors file of the
masked model's state dict, "model_class": the transformers class to `from_pretrained` the
export with (or null), "reference": a safetensors file of token ids and the masked model's
logits on them (or null)}.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import compressed_tensors
import torch
import transformers
from compressed_tensors.compressors import ModelCompressor
from safetensors.torch import load_file


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """The names whose tensors differ (in presence, dtype, shape or any bit)."""
    return sorted(
        name
        for name in set(a) | set(b)
        if name not in a
        or name not in b
        or a[name].dtype != b[name].dtype
        or not torch.equal(a[name], b[name])
    )


def check(case: dict) -> dict:
    folder = Path(case["folder"])
    qconfig = json.loads((folder / "config.json").read_text())["quantization_config"]
    original = load_file(case["original"])
    compressor = ModelCompressor.from_compression_config(qconfig)
    result = {
        "versions": [compressed_tensors.__version__, transformers.__version__],
        "sparsity_format": compressor.sparsity_config.format,
        "quantization": compressor.quantization_config is not None,
    }
    # compressed-tensors' own decompression of the folder, every tensor
    decompressed = dict(compressor.sparsity_compressor.decompress(str(folder)))
    result["decompressed_differ"] = same(decompressed, original)
    # what compressed-tensors writes for the same weights and targets
    targets = set(compressor.sparsity_config.targets)
    theirs = compressor.sparsity_compressor.compress(original, compression_targets=targets)
    result["written_differ"] = same(theirs, load_file(str(folder / "model.safetensors")))
    with tempfile.TemporaryDirectory() as scratch:
        ModelCompressor(sparsity_config=compressor.sparsity_config).update_config(scratch)
        written = json.loads((Path(scratch) / "config.json").read_text())["quantization_config"]
    written.pop("version")
    result["config_differs"] = None if written == qconfig else [written, qconfig]
    if case["model_class"]:
        model_class = getattr(transformers, case["model_class"])
        model, info = model_class.from_pretrained(
            str(folder), torch_dtype="auto", output_loading_info=True
        )
        reference = load_file(case["reference"])
        with torch.no_grad():
            logits = model.eval()(reference["ids"]).logits
        result["loading_info"] = {key: sorted(map(str, value)) for key, value in info.items()}
        result["max_logit_difference"] = float((logits - reference["logits"]).abs().max())
        loaded = model.state_dict()
        result["loaded_differ"] = [n for n in same(loaded, original) if n in loaded]
    return result


if __name__ == "__main__":
    cases = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps([check(case) for case in cases]))
