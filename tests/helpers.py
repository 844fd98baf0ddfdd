"""Helpers for the tests: generated patterns and rasters."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

PLUGIN_DIR = Path(__file__).resolve().parent.parent
#: the binary: Debian's /usr/bin/qgis_process wrapper passes --noversioncheck, which 3.22 rejects
QGIS_PROCESS = "/usr/bin/qgis_process.bin"

TINY_TILE = 16
TINY_CLASSES = [("Vegetation", "#2ca02c"), ("Water", "#1f77b4")]
TINY_BANDS = ["B08", "B03"]


def pattern_tile(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Raw values (2 bands, size, size) of the tiny model's two classes: 'Vegetation' is bright
    in band 1 (NIR) and dark in band 2; 'Water' the other way round. Noise on top."""
    high, low = 3000.0, 600.0
    first, second = (high, low) if kind == 0 else (low, high)
    tile = np.empty((2, size, size), dtype=np.float32)
    tile[0] = first
    tile[1] = second
    tile += rng.normal(0, 250, tile.shape)
    return np.clip(tile, 1, None)


def write_raster(path, data, crs="EPSG:32633", origin=(500000.0, 6000000.0), pixel=10.0, nodata=None,
                 descriptions=None, dtype=None):
    """Write ``data`` (bands, rows, cols) as a GeoTIFF with a north-up grid."""
    import rasterio
    from rasterio.transform import from_origin

    data = np.asarray(data)
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=dtype or data.dtype, crs=crs, transform=from_origin(origin[0], origin[1], pixel, pixel),
        nodata=nodata,
    ) as ds:
        ds.write(data.astype(dtype or data.dtype))
        for i, name in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, name)
    return str(path)


def write_eurosat_ms_folder(root, per_class: int = 3, seed: int = 0):
    """A EuroSAT-like 13-band folder: one sub-folder per EuroSAT class with ``per_class`` generated
    uint16 64 x 64 patches (``<Class>/<Class>_N.tif``), each class a different mean level."""
    from glassbox.core.models.card import EUROSAT_CLASSES

    rng = np.random.default_rng(seed)
    root = Path(root)
    for index, info in enumerate(EUROSAT_CLASSES):
        (root / info.name).mkdir(parents=True)
        for k in range(per_class):
            tile = rng.normal(800 + 150 * index, 100, (13, 64, 64)).clip(1, None).astype(np.uint16)
            write_raster(root / info.name / f"{info.name}_{k + 1}.tif", tile)
    return root


def two_halves(rows: int, cols: int, seed: int = 1) -> np.ndarray:
    """A 2-band uint16 scene: left half the 'Vegetation' pattern, right half 'Water'."""
    rng = np.random.default_rng(seed)
    left = pattern_tile(0, max(rows, cols), rng)[:, :rows, : cols // 2]
    right = pattern_tile(1, max(rows, cols), rng)[:, :rows, : cols - cols // 2]
    return np.concatenate([left, right], axis=2).astype(np.uint16)


def load_script(relative_path: str) -> ModuleType:
    """A script of the repository (e.g. ``bench/reproduce_paper2.py``) imported as a module."""
    path = PLUGIN_DIR / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def venv_site_packages() -> str:
    """The venv's site-packages folder (on sys.path of the Python running the tests)."""
    return next(p for p in sys.path if p.endswith("site-packages") and str(PLUGIN_DIR / ".venv") in p)


def qgis_env(config_dir, with_venv: bool = True) -> dict:
    """Environment for a QGIS process (qgis_process, or Python with QGIS) with the throw-away
    profile ``config_dir`` (see the ``qgis_profile`` fixture) and the venv's packages."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(config_dir))
    env.pop("PYTHONPATH", None)
    if with_venv:
        env["PYTHONPATH"] = venv_site_packages()
    return env


#: the start of a Python script run in a fresh process with QGIS (``sys.argv[1]``: the plugin
#: folder): QGIS and Processing initialised, the plugin imported as ``glassbox`` as QGIS does
#: (``module``); the script goes on with ``module.classFactory(None)`` and what it tests.
QGIS_PLUGIN_PRELUDE = """import importlib.util, json, sys
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.setPrefixPath("/usr", True)
app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")
from processing.core.Processing import Processing
Processing.initialize()
spec = importlib.util.spec_from_file_location("glassbox", sys.argv[1] + "/__init__.py",
                                              submodule_search_locations=[sys.argv[1]])
module = importlib.util.module_from_spec(spec)
sys.modules["glassbox"] = module
spec.loader.exec_module(module)
"""
