"""Running `acdc` as a user does, for the end-to-end tests: a fresh interpreter, one torch
thread, and this folder on PYTHONPATH (sitecustomize.py: the crash hook, inert unless
ACDC_TEST_STOP_AT is set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
TINY = HERE / "data" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
ENV.pop("ACDC_TRACEBACK", None)


def acdc(
    *args: object, env: dict[str, str] = ENV, timeout: float = 300, **kwargs: object
) -> subprocess.CompletedProcess:
    """`acdc ARGS...` in a subprocess, its output captured as text."""
    command = [sys.executable, "-m", "acdc_recipe.cli.main", *map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, **kwargs
    )


def one_line(text: str) -> str:
    """`text` with every run of whitespace one space (a paragraph as one line)."""
    return " ".join(text.split())
