"""Several rasters read as one: a GDAL virtual raster (VRT) mosaic.

:func:`build_mosaic` checks that the rasters can form one mosaic (each readable, the same CRS,
the same number of bands) and writes a VRT (``gdal.BuildVRT``) whose sources are absolute paths,
so the VRT's XML can be handed to worker processes and Dask workers as it is. Where rasters
overlap, the later one in the list wins (GDAL's rule); pixels no raster covers are nodata (the
rasters' nodata value, when they have one). The band descriptions (band names such as ``B04``)
of the first raster are kept, so bands are still matched by name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

from ..errors import RasterInputError
from .raster import open_raster


def build_mosaic(paths: Sequence[str], folder: str | Path, log: Callable[[str], None] | None = None) -> str:
    """Write ``folder``/mosaic.vrt over ``paths`` and return its path."""
    log = log or (lambda _m: None)
    paths = [str(p) for p in dict.fromkeys(str(p) for p in paths)]
    if not paths:
        raise RasterInputError("no raster given: choose an input raster or the rasters of a mosaic")
    first = None
    resolutions = set()
    nodata = set()
    for i, path in enumerate(paths):
        with open_raster(path, f"raster {i + 1} of the mosaic") as ds:
            if first is None:
                first = dict(path=path, crs=ds.crs, count=ds.count, descriptions=ds.descriptions)
            elif ds.crs != first["crs"]:
                raise RasterInputError(
                    f"the rasters of a mosaic must share one CRS: {Path(path).name} is in {ds.crs.to_string()}, "
                    f"{Path(first['path']).name} in {first['crs'].to_string()}; reproject them to one CRS first "
                    "(Raster > Projections > Warp)")
            elif ds.count != first["count"]:
                raise RasterInputError(
                    f"the rasters of a mosaic must have the same bands: {Path(path).name} has {ds.count} band(s), "
                    f"{Path(first['path']).name} {first['count']}")
            resolutions.add((round(abs(ds.transform.a), 9), round(abs(ds.transform.e), 9)))
            nodata.add(ds.nodata)
    try:
        from osgeo import gdal
    except ImportError as exc:
        raise RasterInputError("a mosaic of several rasters needs GDAL's Python bindings (osgeo.gdal), which "
                               "are missing; build a VRT with gdalbuildvrt and classify that") from exc
    target = Path(folder) / "mosaic.vrt"
    absolute = [os.path.abspath(p) if os.path.exists(p) else p for p in paths]
    vrt = gdal.BuildVRT(str(target), absolute, resolution="highest")
    if vrt is None:
        raise RasterInputError(f"cannot build a mosaic of the rasters: {gdal.GetLastErrorMsg()}")
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
    if len(resolutions) > 1:
        log(f"the rasters' pixel sizes differ ({sorted(resolutions)}): the mosaic takes the finest")
    if None in nodata:
        log("some rasters of the mosaic have no nodata value: pixels between them that no raster covers are read "
            "as 0 (set NODATA=0 to skip them, if 0 is no valid value)")
    return str(target)
