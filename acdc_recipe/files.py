"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed into place,
so a crash leaves either the old file or the new one, never half of one; and the guard that
keeps an output folder's recipe.yaml from replacing one it should not."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from acdc_recipe.errors import UserError


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


def usual_permissions(path: Path) -> None:
    """Give a file the permissions a plain `open` would have (0666 less the umask), whatever
    its writer chose; safetensors, for one, writes 0600."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def sha256_of(path: Path) -> str:
    """A file's sha256, read in blocks (model files are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)`, fsync it, and rename it to `path` (with
    `usual_permissions`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        usual_permissions(temporary)
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_folder_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_folder)`, fsync what it wrote (each file with
    `usual_permissions`), and rename the folder to `path`, which must not exist or be empty: a
    failure at any point leaves `path` as it was and no temporary folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        write(temporary)
        for written in temporary.rglob("*"):
            if written.is_file():
                usual_permissions(written)
                with written.open("rb+") as handle:
                    os.fsync(handle.fileno())
        fsync_directory(temporary)
        os.rename(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    fsync_directory(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """`write_atomic` for UTF-8 text."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def refuse_to_replace_recipe(
    target: Path, resolved: str, flag: str, source: str | None = None, others: bool = True
) -> None:
    """Raise `UserError` instead of writing `resolved` over a recipe.yaml that holds something
    else: never over `source` (the recipe file being read, whose original would be lost), and
    over any other only when `others` allows it."""
    if not target.is_file() or target.read_text(encoding="utf-8", errors="replace") == resolved:
        return
    if source is not None and Path(source).is_file() and target.samefile(source):
        raise UserError(
            f"{flag} {target.parent} would replace the recipe being read ({source}) with its "
            f"resolved form; choose another {flag}"
        )
    if not others:
        raise UserError(
            f"{target} exists and is not this run's resolved recipe, and the run would replace "
            f"it; choose another {flag}, or replace it with --overwrite"
        )


def folder_name(name: str) -> str:
    """A recipe name as one safe folder name: `runs/<this>`, `builds/<this>` (no separators,
    no `..`, nothing a shell would trip on)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "recipe"


def default_run_dir(name: str) -> Path:
    return Path("runs") / folder_name(name)
