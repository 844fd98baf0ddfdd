"""Checking output paths before any work is done (standard library only, so the Processing
algorithms can call it before the heavy packages are imported)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError

WRITE_HINT = "choose an output in a folder you can write to"


def check_output_path(target: str | os.PathLike, what: str = "the output") -> None:
    """Raise :class:`OutputError` when ``target`` clearly cannot be written: it is a folder, or
    its folder (or the nearest folder above it that exists, since missing folders are created)
    is a file or is not writable. Writing can still fail later (a full disk, a file system that
    refuses new folders); the writers report that as an :class:`OutputError` too."""
    target = Path(target)
    try:
        if target.is_dir():
            raise OutputError(f"{what} {target} is a folder: give a file name")
        folder = target.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(f"cannot write {what} {target}: {folder} is a file, not a folder; {WRITE_HINT}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {what} {target}: the folder {folder} is read-only for you; {WRITE_HINT}")
    except OSError as exc:  # e.g. a folder on the way that cannot be looked into
        raise OutputError(f"cannot write {what} {target}: {exc.strerror or exc}; {WRITE_HINT}") from exc


def output_error(target: str | os.PathLike, exc: OSError) -> OutputError:
    """The error for an output that failed to be created."""
    return OutputError(f"cannot write {target}: {exc.strerror or exc}; {WRITE_HINT}")
