"""Several rasters read as one: a GDAL virtual raster (VRT) mosaic.

:func:`build_mosaic` checks that the rasters can form one mosaic (each readable, the same CRS,
number of bands, data type and band names in one order) and writes a VRT (``gdal.BuildVRT``) whose sources are absolute paths,
so the VRT's XML can be handed to worker processes and Dask workers as it is. Where rasters
overlap, the later one in the list wins (GDAL's rule); pixels no raster covers are nodata (the
rasters' nodata value, when they have one). A raster GDAL leaves out of the VRT (it does so,
with only a warning, for one whose bands' colour interpretation differs) is an error. The band descriptions (band names such as ``B04``)
of the first raster are kept, so bands are still matched by name.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import RasterInputError
from .raster import open_raster


def is_mosaic(input_path: str | Path | Sequence[str | Path]) -> bool:
    """Whether ``input_path`` is a list of rasters to read as one mosaic (not one path)."""
    return not isinstance(input_path, (str, Path))


@contextmanager
def raster_or_mosaic(input_path: str | Path | Sequence[str | Path],
                     log: Callable[[str], None] | None = None) -> Iterator[str]:
    """The raster to read: ``input_path`` itself, or for a list of rasters a VRT mosaic of them
    (:func:`build_mosaic`) in a temporary folder that is removed on exit."""
    if not is_mosaic(input_path):
        yield str(input_path)
        return
    with tempfile.TemporaryDirectory(prefix="glassbox-mosaic-") as folder:
        yield build_mosaic([str(p) for p in input_path], folder, log)


def build_mosaic(paths: Sequence[str], folder: str | Path, log: Callable[[str], None] | None = None) -> str:
    """Write ``folder``/mosaic.vrt over ``paths`` and return its path."""
    log = log or (lambda _m: None)
    paths = [str(p) for p in dict.fromkeys(str(p) for p in paths)]
    if not paths:
        raise RasterInputError("no raster given: choose an input raster or the rasters of a mosaic")
    first = None
    resolutions = set()
    nodata = set()
    misaligned: list[str] = []
    for i, path in enumerate(paths):
        with open_raster(path, f"raster {i + 1} of the mosaic") as ds:
            if first is None:
                first = dict(path=path, crs=ds.crs, count=ds.count, descriptions=ds.descriptions, dtypes=ds.dtypes,
                             transform=ds.transform)
            elif _off_grid(ds.transform, first["transform"]):
                misaligned.append(Path(path).name)
            elif ds.crs != first["crs"]:
                raise RasterInputError(
                    f"the rasters of a mosaic must share one CRS: {Path(path).name} is in {ds.crs.to_string()}, "
                    f"{Path(first['path']).name} in {first['crs'].to_string()}; reproject them to one CRS first "
                    "(Raster > Projections > Warp)")
            elif ds.count != first["count"]:
                raise RasterInputError(
                    f"the rasters of a mosaic must have the same bands: {Path(path).name} has {ds.count} band(s), "
                    f"{Path(first['path']).name} {first['count']}")
            elif ds.dtypes != first["dtypes"]:
                raise RasterInputError(
                    f"the rasters of a mosaic must have one data type: {Path(path).name} holds {ds.dtypes[0]}, "
                    f"{Path(first['path']).name} {first['dtypes'][0]}; convert them to one (Raster > Conversion > "
                    "Translate, output data type)")
            elif all(ds.descriptions) and all(first["descriptions"]) and ds.descriptions != first["descriptions"]:
                raise RasterInputError(
                    f"the rasters of a mosaic must have their bands in one order: {Path(path).name} has "
                    f"{', '.join(ds.descriptions)}, {Path(first['path']).name} {', '.join(first['descriptions'])}; "
                    "stack them in one band order first (e.g. Build Virtual Raster with the bands in order)")
            resolutions.add((round(abs(ds.transform.a), 9), round(abs(ds.transform.e), 9)))
            nodata.add(ds.nodata)
    try:
        from osgeo import gdal
    except ImportError as exc:
        raise RasterInputError("a mosaic of several rasters needs GDAL's Python bindings (osgeo.gdal), which "
                               "are missing; build a VRT with gdalbuildvrt and classify that") from exc
    target = Path(folder) / "mosaic.vrt"
    absolute = [os.path.abspath(p) if os.path.exists(p) else p for p in paths]
    messages: list[str] = []
    gdal.PushErrorHandler(lambda _level, _number, message: messages.append(str(message)))
    try:
        vrt = gdal.BuildVRT(str(target), absolute, resolution="highest")
    finally:
        gdal.PopErrorHandler()
    if vrt is None:
        raise RasterInputError(f"cannot build a mosaic of the rasters: {'; '.join(messages) or gdal.GetLastErrorMsg()}")
    included = set(vrt.GetFileList() or [])
    skipped = [p for p in absolute if p not in included]
    if skipped:
        vrt = None
        target.unlink(missing_ok=True)
        reasons = "; ".join(m for m in messages if "Skipping" in m or "skipping" in m) or "; ".join(messages)
        raise RasterInputError(
            f"GDAL left {', '.join(Path(p).name for p in skipped)} out of the mosaic ({reasons}): the rasters must "
            "agree in band colour interpretation, data type and band count; make them alike (e.g. Raster > "
            "Conversion > Translate) or build the mosaic yourself")
    for band, name in enumerate(first["descriptions"], start=1):
        if name:
            vrt.GetRasterBand(band).SetDescription(name)
    vrt = None  # writes the file
    folder_abs = str(target.parent.resolve())

    def absolute_source(match: re.Match) -> str:
        return f'relativeToVRT="0">{os.path.join(folder_abs, match.group(1))}<'

    text = re.sub(r'relativeToVRT="1">([^<]+)<', absolute_source, target.read_text(encoding="utf-8"))
    target.write_text(text, encoding="utf-8")
    log(f"mosaic of {len(paths)} rasters (a virtual raster; where they overlap, the later one wins)")
    if misaligned:
        log(f"WARNING: {', '.join(misaligned)} not on the first raster's pixel grid (shifted by a fraction of a "
            "pixel): GDAL resamples it onto the mosaic's grid (nearest neighbour), moving its pixels by up to half a pixel")
    if len(resolutions) > 1:
        log(f"the rasters' pixel sizes differ ({sorted(resolutions)}): the mosaic takes the finest")
    if None in nodata:
        log("some rasters of the mosaic have no nodata value: pixels between them that no raster covers are read "
            "as 0 (set NODATA=0 to skip them, if 0 is no valid value)")
    return str(target)


def _off_grid(transform, reference, tolerance: float = 0.01) -> bool:
    """Whether a raster's origin lies off ``reference``'s pixel grid (by more than ``tolerance``
    of a pixel), for rasters of the same pixel size; rasters of other sizes are resampled anyway."""
    if abs(transform.a - reference.a) > 1e-9 * abs(reference.a) or abs(transform.e - reference.e) > 1e-9 * abs(reference.e):
        return False
    shifts = ((transform.c - reference.c) / reference.a, (transform.f - reference.f) / reference.e)
    return any(abs(v - round(v)) > tolerance for v in shifts)
