"""What every benchmark writes beside its numbers: the machine, and the JSON file itself."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """The software and CPU the numbers were measured on (ratios differ between CPUs)."""
    import torch  # here, not at import: compile_time.py times importing torch itself

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomically (temp + fsync + rename), so an interrupted run leaves the old file whole."""
    from acdc_recipe.files import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
