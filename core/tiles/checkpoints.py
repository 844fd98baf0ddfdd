"""Resume an interrupted tiled run from the row bands it finished.

A run's finished row bands (:class:`~.rowbands.BandResult`) are saved in a hidden folder beside
its first output, ``.<output file name>.glassbox-resume/``: one ``band_<index>.npz`` per band,
written atomically, and ``manifest.json`` with a hash of what decides the model's results: the
input (path, size, modification time of each raster), the model file(s), the options (bands,
nodata, stride, extent, mask, batch size, ...) and the tile plan. A rerun whose manifest is the
same reuses the saved bands and computes only the others; with anything different the folder
is removed and the run starts afresh. The run that completes removes the folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from .rowbands import BandResult

SUFFIX = ".glassbox-resume"
MANIFEST = "manifest.json"
FORMAT = 1


def resume_folder(output: str | Path) -> Path:
    """The resume folder of a run whose first output is ``output``."""
    output = Path(output)
    return output.parent / f".{output.name}{SUFFIX}"


def file_identity(path: str) -> dict[str, Any]:
    """Path, size and modification time of a file (a URL or GDAL path: the string alone)."""
    p = Path(path)
    if p.is_file():
        stat = p.stat()
        return {"path": str(p.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"path": str(path)}


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes. Hashed once per version of the file (its size and modification
    time): a run asks for its model's hash more than once (resume manifest, provenance metadata),
    and a model can be hundreds of megabytes."""
    stat = Path(path).stat()
    return _file_hash(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_hash(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(path: str | Path) -> dict[str, str]:
    """SHA-256 of the model file and, for a Torch model, of its card beside it."""
    path = Path(path)
    out = {"model": file_hash(path)} if path.is_file() else {"model": str(path)}
    card = path.with_suffix(".json")
    if path.suffix.lower() != ".onnx" and card.is_file():
        out["card"] = file_hash(card)
    return out


def manifest_key(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class Checkpoints:
    """The saved bands of one run. ``done`` holds the indices of the bands saved by an earlier
    run with the same manifest (loaded with :meth:`load`). Nothing is written until
    :meth:`save` is first called."""

    def __init__(self, output: str | Path, manifest: dict[str, Any], log: Callable[[str], None] | None = None):
        log = log or (lambda _m: None)
        self.folder = resume_folder(output)
        self.manifest = dict(manifest, format=FORMAT)
        self.key = manifest_key(self.manifest)
        self.done: set[int] = set()
        if not self.folder.exists():
            return
        try:
            old = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old is not None and old.get("key") == self.key:
            self.done = {int(p.stem.split("_")[1]) for p in self.folder.glob("band_*.npz")}
        else:
            log(f"{self.folder.name}: saved bands of a run with other input, model or options were "
                "removed; starting afresh")
            self.remove()

    def path(self, index: int) -> Path:
        return self.folder / f"band_{index:06d}.npz"

    def load(self, index: int) -> BandResult | None:
        """The saved band ``index``, or None when its file cannot be read (it is then computed)."""
        try:
            result = BandResult.load(self.path(index))
        except Exception:
            self.done.discard(index)
            return None
        return result if result.index == index else None

    def save(self, result: BandResult) -> None:
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            manifest = dict(self.manifest, key=self.key)
            tmp = self.folder / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str), encoding="utf-8")
            tmp.replace(self.folder / MANIFEST)
        result.save(self.path(result.index))
        self.done.add(result.index)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.done = set()


def inputs_identity(paths: Iterable[str]) -> list[dict[str, Any]]:
    return [file_identity(p) for p in paths]
