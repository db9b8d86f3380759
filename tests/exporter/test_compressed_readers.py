"""The compressed format read by its own readers: compressed-tensors' `ModelCompressor` (0.14.0,
the last release that decompresses sparse-bitmask) and transformers' `from_pretrained` (4.55.4,
the last that decompresses it from disk). They need transformers < 5, so they run in a
subprocess with the folder `.ci/reader-env` prepares first on PYTHONPATH; CI prepares it, and
only a local run without it skips this test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from acdc_recipe.exporter import export

from ..conftest import TOKEN_VOCAB, tiny_bert, tiny_gpt2
from .test_export import cnn, masked, mlp

ROOT = Path(__file__).resolve().parents[2]
READERS = ROOT / ".ci-env" / "ct014"
CHECK = Path(__file__).with_name("readers_check.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (READERS / ".complete").is_file(),
        reason=f"the reader environment {READERS.relative_to(ROOT)} (compressed-tensors 0.14.0, "
        "transformers 4.55.4) is not prepared here: `.ci/reader-env` makes it, and .ci/run "
        "runs it before the tests",
    ),
]

# name, model builder, the transformers class that loads it (None: not a transformers model)
MODELS = [
    ("gpt2", tiny_gpt2, "GPT2LMHeadModel"),
    ("bert", tiny_bert, "BertForSequenceClassification"),
    ("mlp", mlp, None),
    ("cnn", cnn, None),
]


def prepare(tmp_path: Path) -> list[dict]:
    """Each model masked at 90% and exported compressed, with what the readers compare."""
    cases = []
    for name, build, model_class in MODELS:
        model, runtime = masked(build())
        model.eval()
        folder = export(model, tmp_path / name, runtime=runtime).path
        original = tmp_path / f"{name}-original.safetensors"
        save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, original)
        reference = None
        if model_class is not None:
            ids = torch.randint(0, TOKEN_VOCAB, (3, 16), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                logits = model(ids).logits
            reference = tmp_path / f"{name}-reference.safetensors"
            save_file({"ids": ids, "logits": logits}, reference)
        cases.append(
            {
                "name": name,
                "folder": str(folder),
                "original": str(original),
                "model_class": model_class,
                "reference": None if reference is None else str(reference),
            }
        )
    return cases


def test_compressed_tensors_and_transformers_read_the_compressed_export_exactly(tmp_path):
    cases = prepare(tmp_path)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    path = os.pathsep.join([str(READERS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, str(CHECK), str(tmp_path / "cases.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": path, "TRANSFORMERS_VERBOSITY": "error"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = dict(zip((case["name"] for case in cases), json.loads(result.stdout), strict=True))
    for name, report in found.items():
        assert report["versions"] == ["0.14.0", "4.55.4"], name
        assert report["sparsity_format"] == "sparse-bitmask" and not report["quantization"]
        assert report["decompressed_differ"] == [], name  # every tensor, bit for bit
        assert report["written_differ"] == [], name  # the tensors compressed-tensors writes
        assert report["config_differs"] is None, name
    for name in ("gpt2", "bert"):
        report = found[name]
        assert report["loading_info"]["missing_keys"] == [], name  # nothing left random
        assert report["loading_info"]["unexpected_keys"] == [], name
        assert report["loaded_differ"] == [], name
        assert report["max_logit_difference"] <= 1e-5, name
