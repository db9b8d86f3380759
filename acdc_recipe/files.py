"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed into place,
so a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_directory(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomic(
    path: Path,
    write: Callable[[Path], None],
    before_rename: Callable[[], None] | None = None,
) -> None:
    """Call `write(temporary_path)`, fsync it, and rename it to `path`.

    The file gets the usual permissions (0666 less the umask) whatever `write` chose;
    safetensors, for one, writes 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o666 & ~umask)
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """`write_atomic` for UTF-8 text."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
