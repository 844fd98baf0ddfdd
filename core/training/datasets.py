"""Tile datasets for training: a fixed train/val/test split, folder scanning and jpg decoding.

QGIS-free and Torch-free (numpy + Pillow only). A *tile folder* has one sub-folder per class,
named after the class, holding image tiles (``.jpg``, ``.jpeg``, ``.png``, ``.tif``, ``.tiff``),
e.g. EuroSAT RGB: ``eurosat_rgb/<Class>/<Class>_N.jpg``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..io.units import S2_FILE_NAME_ORDER

Split = Literal["train", "val", "test"]

TILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: band order inside the EuroSAT multispectral GeoTIFFs (B8A is LAST): Sentinel-2's file-name order
EUROSAT_MS_BANDS = list(S2_FILE_NAME_ORDER)

#: The split rule in words, for model cards.
SPLIT_RULE = (
    "h = int(sha256(file base name, utf-8).hexdigest(), 16) % 100; "
    "h < {test} -> test, h < {test} + {val} -> val, else train"
)


def split_of(filename: str | Path, test_percent: int = 20, val_percent: int = 10) -> Split:
    """The fixed, documented held-out split of one tile, from its file base name only.

    ``h = int(hashlib.sha256(basename.encode("utf-8")).hexdigest(), 16) % 100``;
    ``h < test_percent`` -> ``"test"``, ``h < test_percent + val_percent`` -> ``"val"``,
    otherwise ``"train"``. The base name is the file name without folders (e.g.
    ``"Forest_10.jpg"``), so the split does not depend on where the data lives, on the order
    of files, on random seeds or on the machine. With the defaults about 20 % of tiles are
    test, 10 % validation and 70 % training.
    """
    if test_percent < 0 or val_percent < 0 or test_percent + val_percent > 100:
        raise ValueError("test_percent and val_percent must be >= 0 and sum to at most 100")
    name = Path(filename).name
    h = int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % 100
    if h < test_percent:
        return "test"
    if h < test_percent + val_percent:
        return "val"
    return "train"


def split_rule_text(test_percent: int = 20, val_percent: int = 10) -> str:
    """:data:`SPLIT_RULE` with the percentages filled in (for a model card's ``training``)."""
    return SPLIT_RULE.format(test=test_percent, val=val_percent)


def scan_tile_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """List the tiles of a folder with one sub-folder per class.

    Returns ``(paths, labels, class_names)``: ``class_names`` are the sub-folder names, sorted;
    ``labels`` is an int64 array of shape ``(N,)`` with each tile's index into ``class_names``;
    ``paths`` are sorted within each class. Hidden folders and other files are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"tile folder not found: {root}")
    class_names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    try:  # as class values from polygons are sorted: numerically when every name is a number (1, 2, 10)
        class_names.sort(key=float)
    except ValueError:
        pass
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        files = sorted(
            f for f in (root / name).iterdir()
            if f.is_file() and f.suffix.lower() in TILE_SUFFIXES and not f.name.startswith(".")
        )
        paths += files
        labels += [index] * len(files)
    if not paths:
        loose = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in TILE_SUFFIXES]
        if loose:
            raise FileNotFoundError(
                f"{root} holds {len(loose)} image tile(s) but no class sub-folders: put each class's tiles in a "
                f"sub-folder named after the class (e.g. {root / 'Forest'}/...), and choose the folder above them")
        raise FileNotFoundError(f"no image tiles ({', '.join(TILE_SUFFIXES)}) in the class sub-folders of {root} "
                                "(one sub-folder per class, named after it)")
    return paths, np.asarray(labels, dtype=np.int64), class_names


def decode_tile(path: str | Path, tile_size: int = 64) -> np.ndarray:
    """Decode one 8-bit RGB tile with Pillow to a uint8 array ``(3, tile_size, tile_size)``."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if rgb.shape[:2] != (tile_size, tile_size):
        raise ValueError(f"{path}: tile is {rgb.shape[1]}x{rgb.shape[0]}, expected {tile_size}x{tile_size}")
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def load_tiles(
    paths: Sequence[str | Path],
    tile_size: int = 64,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Decode RGB tiles into one uint8 array ``(N, 3, tile_size, tile_size)`` (digital numbers
    0..255, band order R, G, B as stored in the file).

    With ``cache_dir`` the array is cached there as ``tiles_<key>.npy``; the key hashes the
    paths, their sizes and modification times, so a changed dataset is decoded again. Keep the
    cache outside the repository.
    """
    paths = [Path(p) for p in paths]
    cache_file: Path | None = None
    if cache_dir is not None:
        digest = hashlib.sha256(str(tile_size).encode())
        for p in paths:
            stat = p.stat()
            digest.update(f"{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode("utf-8"))
        cache_file = Path(cache_dir) / f"tiles_{digest.hexdigest()[:16]}.npy"
        if cache_file.exists():
            cached = np.load(cache_file)
            if cached.shape == (len(paths), 3, tile_size, tile_size) and cached.dtype == np.uint8:
                return cached
    tiles = np.empty((len(paths), 3, tile_size, tile_size), dtype=np.uint8)
    for i, p in enumerate(paths):
        tiles[i] = decode_tile(p, tile_size)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npy")
        np.save(tmp, tiles)
        tmp.replace(cache_file)
    return tiles


def load_eurosat_ms(root: str | Path):
    """The EuroSAT multispectral tiles of ``root`` (``<Class>/<Class>_N.tif``, 13 bands, 64 px)
    as :class:`core.training.data.TrainingData` with the bands named (:data:`EUROSAT_MS_BANDS`).
    Raises :class:`core.errors.TrainingDataError` unless there are 13 bands and EuroSAT's 10
    class folders."""
    from ..errors import TrainingDataError
    from ..models.card import EUROSAT_CLASSES
    from .data import tiles_from_folder

    data = tiles_from_folder(root, tile_size=64)
    if data.num_bands != 13:
        raise TrainingDataError(f"expected 13-band tiles, got {data.num_bands}")
    expected = [c.name for c in EUROSAT_CLASSES]
    if data.class_names != expected:
        raise TrainingDataError(f"class folders {data.class_names} differ from EuroSAT's {expected}")
    return data.with_band_names(EUROSAT_MS_BANDS)
