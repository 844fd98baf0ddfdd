"""Train and evaluate patch classifiers on labelled tiles. QGIS-free; torch is imported inside
the functions that need it, so importing this module is cheap.

Labelled tiles come from

* a *tile folder* (:func:`tiles_from_folder`): one sub-folder per class, named after the
  class, holding image tiles: ``.jpg``/``.jpeg``/``.png`` (read with Pillow: grey, grey+alpha,
  RGB, RGBA, 16-bit grey) or ``.tif``/``.tiff`` (read with rasterio: any band count and data
  type). All tiles must be square and share one size and band count;
* a *raster and labelled polygons* (:func:`tiles_from_polygons`): tiles are cut from the raster
  where they fit inside a polygon and take the polygon's label (see that function for the rule).

Both give a :class:`TrainingData`: raw values ``(N, bands, H, W)`` plus labels, class names and
band names. :func:`train_classifier` trains one of :data:`core.architectures.ARCHITECTURES` on
it and returns the network with a complete model card (classes, colours, bands, scaling computed
from the training tiles, tile size, ground sample distance, architecture, provenance and
validation accuracy). :func:`evaluate` measures a loaded model on labelled tiles.
:func:`save_model_files` writes the Torch weights, the card and optionally ONNX, all or nothing.
"""

from __future__ import annotations

import datetime
import json
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .card import ClassInfo, ModelCard, Scaling, default_colour
from .errors import Cancelled, ModelLoadError, RasterInputError, TrainingDataError
from .metrics import Metrics, compute_metrics
from .radiometry import random_radiometry
from .vectors import VectorLayer, _InMemory, box_geometry, boxes_layer, is_file_target, write_gpkg

Progress = Callable[[float], None]
IsCancelled = Callable[[], bool]
Log = Callable[[str], None]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GEOTIFF_SUFFIXES = (".tif", ".tiff")
#: Band names given to tiles read with Pillow, by image mode.
PILLOW_BANDS = {
    "L": ["gray"], "LA": ["gray", "alpha"], "RGB": ["red", "green", "blue"],
    "RGBA": ["red", "green", "blue", "alpha"], "I;16": ["gray"], "I": ["gray"], "F": ["gray"],
}
AUGMENTATION = "random flips and 90-degree rotations (the 8 symmetries of the square), per tile and batch"


def _noop(*_args: Any) -> None:
    return None


def _never() -> bool:
    return False


# -- labelled tiles -------------------------------------------------------------------------
@dataclass
class TrainingData:
    """Labelled tiles in memory.

    ``tiles``: raw values ``(N, bands, size, size)``, uint8, uint16, other integers or floats,
    as read (no scaling). ``labels``: int64 ``(N,)`` indices into ``class_names``.
    ``band_names``: one per band. ``sources``: per tile, where it came from (a file path, or
    ``"polygon <n>"`` with n counted from 1 in the order given). ``gsd``: ground sample distance
    in metres per pixel when known. ``footprints``: for tiles cut from a raster, float64
    ``(N, 4)`` = (xmin, ymin, xmax, ymax) in the raster CRS (``crs_wkt``); None for folders.
    """

    tiles: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    band_names: list[str]
    sources: list[str]
    gsd: float | None = None
    footprints: np.ndarray | None = None
    crs_wkt: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.tiles.ndim != 4 or self.tiles.shape[2] != self.tiles.shape[3]:
            raise TrainingDataError(f"tiles must be an array (N, bands, size, size), got shape {self.tiles.shape}")
        n = self.tiles.shape[0]
        if self.labels.shape != (n,) or len(self.sources) != n:
            raise TrainingDataError(f"{n} tiles but {self.labels.size} labels and {len(self.sources)} sources")
        if len(self.band_names) != self.tiles.shape[1]:
            raise TrainingDataError(f"{self.tiles.shape[1]} bands but {len(self.band_names)} band names")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise TrainingDataError("a label is not an index into the class names")

    @property
    def num_tiles(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def num_bands(self) -> int:
        return int(self.tiles.shape[1])

    @property
    def tile_size(self) -> int:
        return int(self.tiles.shape[2])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def with_band_names(self, names: Sequence[str]) -> "TrainingData":
        """A copy (sharing the arrays) with other band names (one per band, unique)."""
        names = [str(n).strip() for n in names]
        if len(names) != self.num_bands:
            raise TrainingDataError(
                f"{len(names)} band names given for tiles with {self.num_bands} bands: give one name per band, "
                "in band order, or leave the band names empty")
        if len(set(names)) != len(names) or not all(names):
            raise TrainingDataError(f"band names must be unique and not empty: {names}")
        return replace(self, band_names=names)


def read_tile_file(path: str | Path) -> tuple[np.ndarray, list[str] | None, float | None]:
    """One tile file -> (values ``(bands, rows, cols)`` in the file's data type, band names or
    None, pixel size in metres or None). GeoTIFFs keep every band and their descriptions."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in GEOTIFF_SUFFIXES:
            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as ds:
                    data = ds.read()
                    names = list(ds.descriptions) if all(ds.descriptions) else None
                    gsd = None
                    if ds.crs is not None and not ds.transform.is_identity:
                        from .raster import pixel_size_metres

                        gsd = float(pixel_size_metres(ds)[0])
            return data, names, gsd
        from PIL import Image

        with Image.open(path) as image:
            mode = image.mode
            if mode in ("P", "PA"):
                image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
            elif mode == "1":
                image = image.convert("L")
            elif mode not in PILLOW_BANDS:
                image = image.convert("RGB")
            array = np.asarray(image)
            names = PILLOW_BANDS[image.mode]
        if array.ndim == 2:
            array = array[None]
        else:
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array), list(names), None
    except TrainingDataError:
        raise
    except Exception as exc:
        raise TrainingDataError(f"cannot read tile {path}: {exc}") from exc


def tiles_from_folder(
    root: str | Path,
    tile_size: int | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
) -> TrainingData:
    """Read a tile folder (one sub-folder per class; see the module docstring).

    Class names are the sub-folder names, sorted; labels index them. ``tile_size`` (pixels),
    when given, is the size every tile must have; otherwise the first tile's size is. Every
    tile must be square and have the first tile's size and band count, else
    :class:`TrainingDataError` names the offending file. Values keep their data type (uint8 for
    jpg/png, the GeoTIFF's type otherwise; mixed types are promoted to a common one). Band names
    come from the first GeoTIFF's band descriptions, else ``band_1`` ... (``red, green, blue``
    for RGB images). ``gsd`` is the first georeferenced GeoTIFF's pixel size in metres, else None.
    """
    from .datasets import scan_tile_folder

    is_cancelled = is_cancelled or _never
    log = log or _noop
    try:
        paths, labels, class_names = scan_tile_folder(root)
    except FileNotFoundError as exc:
        raise TrainingDataError(str(exc)) from exc
    log(f"Reading {len(paths)} tiles of {len(class_names)} classes from {root}")
    first, names, gsd = read_tile_file(paths[0])
    bands, rows, cols = first.shape
    if rows != cols:
        raise TrainingDataError(f"{paths[0]}: tile is {cols}x{rows} pixels; tiles must be square")
    if tile_size is not None and rows != tile_size:
        raise TrainingDataError(f"{paths[0]}: tile is {cols}x{rows} pixels, expected {tile_size}x{tile_size}")
    tiles = np.empty((len(paths), bands, rows, cols), dtype=first.dtype)
    tiles[0] = first
    for i, path in enumerate(paths[1:], start=1):
        if i % 64 == 0 and is_cancelled():
            raise Cancelled("cancelled while reading tiles; nothing was written")
        data, tile_names, tile_gsd = read_tile_file(path)
        if data.shape[0] != bands:
            raise TrainingDataError(
                f"{path}: tile has {data.shape[0]} band(s) but {paths[0].name} has {bands}; "
                "all tiles must have the same bands"
            )
        if data.shape[1:] != (rows, cols):
            raise TrainingDataError(
                f"{path}: tile is {data.shape[2]}x{data.shape[1]} pixels but {paths[0].name} is "
                f"{cols}x{rows}; all tiles must have the same size"
            )
        if data.dtype != tiles.dtype:
            common = np.result_type(tiles.dtype, data.dtype)
            if common != tiles.dtype:
                tiles = tiles.astype(common)
        names = names or tile_names
        gsd = gsd or tile_gsd
        tiles[i] = data
    band_names = names if names and len(set(names)) == len(names) else [f"band_{b + 1}" for b in range(bands)]
    return TrainingData(
        tiles=tiles, labels=labels, class_names=list(class_names), band_names=band_names,
        sources=[str(p) for p in paths], gsd=gsd,
        description=f"tile folder {Path(root).name}: {len(paths)} tiles of {cols}x{rows} px, {bands} band(s)",
    )


def class_names_from_values(values: Sequence[Any]) -> tuple[list[str], list[str | None]]:
    """Class names for label values: ``str(value)`` (whole floats without ``.0``), ordered
    numerically when every value is a number, else alphabetically. Returns (sorted unique
    names, name of each value or None for empty values)."""
    def name_of(value: Any) -> str | None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = str(value).strip()
        return text or None

    names = [name_of(v) for v in values]
    unique = sorted({n for n in names if n is not None})

    def as_number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:
            return None

    if unique and all(as_number(n) is not None for n in unique):
        unique.sort(key=lambda n: as_number(n))
    return unique, names


def _check_polygon(geometry: dict) -> None:
    if geometry.get("type") not in ("Polygon", "MultiPolygon"):
        raise TrainingDataError(f"labelled areas must be polygons, got a {geometry.get('type')} geometry")


def _tile_origins(ds: Any, geometry: dict, footprint: tuple[int, int], step: tuple[int, int],
                  min_inside: float, max_chunk_pixels: int = 4_000_000, margin: tuple[int, int] = (0, 0),
                  centre_inside: bool = False) -> list[tuple[int, int]]:
    """Raster (row, col) origins of tiles of ``footprint`` raster pixels, on a grid every
    ``step`` pixels from the first raster pixel wholly inside the polygon's bounding box, that
    pass the inside rule of :func:`tiles_from_polygons`. ``margin`` (rows, cols) widens the
    bounding box by that many raster pixels on every side (tiles may then reach past the
    polygon); ``centre_inside`` also asks the tile's centre pixel (row/column ``size // 2`` of
    the footprint) to lie inside the polygon."""
    import json

    from osgeo import ogr
    from rasterio.features import bounds as geometry_bounds
    from rasterio.features import geometry_mask
    from rasterio.windows import Window, from_bounds

    xmin, ymin, xmax, ymax = geometry_bounds(geometry)
    win = from_bounds(xmin, ymin, xmax, ymax, transform=ds.transform)
    # the raster pixels wholly inside the polygon's bounding box (tiles cannot reach further)
    r0 = max(0, math.ceil(win.row_off - 1e-6) - margin[0])
    c0 = max(0, math.ceil(win.col_off - 1e-6) - margin[1])
    r1 = min(ds.height, math.floor(win.row_off + win.height + 1e-6) + margin[0])
    c1 = min(ds.width, math.floor(win.col_off + win.width + 1e-6) + margin[1])
    fh, fw = footprint
    height, width = r1 - r0, c1 - c0
    if height < fh or width < fw:
        return []
    exact = min_inside >= 1.0
    polygon = ogr.CreateGeometryFromJson(json.dumps(geometry)) if exact else None
    if exact and polygon is None:
        raise TrainingDataError("a labelled polygon's geometry cannot be read")
    rows = np.arange(0, height - fh + 1, step[0])
    cols = np.arange(0, width - fw + 1, step[1])
    need = fh * fw if exact else math.ceil(min_inside * fh * fw - 1e-9)
    per_chunk = max(1, (max_chunk_pixels // max(1, width) - fh) // step[0] + 1)
    origins: list[tuple[int, int]] = []
    for first in range(0, rows.size, per_chunk):
        chunk = rows[first : first + per_chunk]
        top, bottom = int(chunk[0]), int(chunk[-1]) + fh
        transform = ds.window_transform(Window(c0, r0 + top, width, bottom - top))
        centres = geometry_mask([geometry], out_shape=(bottom - top, width), transform=transform, invert=True)
        integral = np.zeros((centres.shape[0] + 1, width + 1), dtype=np.int64)
        integral[1:, 1:] = centres.cumsum(0).cumsum(1)
        rr = (chunk - top)[:, None]
        cc = cols[None, :]
        counts = integral[rr + fh, cc + fw] - integral[rr, cc + fw] - integral[rr + fh, cc] + integral[rr, cc]
        keep = counts >= need
        if centre_inside:
            keep &= centres[rr + fh // 2, cc + fw // 2]
        for i, j in zip(*np.nonzero(keep)):
            row, col = r0 + int(chunk[i]), c0 + int(cols[j])
            if exact:  # the footprint shrunk by 1/1000 pixel, so round-off on a shared edge is forgiven
                left, bottom_y, right, top_y = ds.window_bounds(Window(col, row, fw, fh))
                ex, ey = 1e-3 * abs(ds.transform.a), 1e-3 * abs(ds.transform.e)
                rectangle = box_geometry(min(left, right) + ex, min(bottom_y, top_y) + ey,
                                           max(left, right) - ex, max(bottom_y, top_y) - ey)
                if not rectangle.Within(polygon):
                    continue
            origins.append((row, col))
    return origins


def tiles_from_polygons(
    raster_path: str | Path,
    polygons: Sequence[dict],
    labels: Sequence[Any],
    tile_size: int,
    *,
    gsd: float | None = None,
    stride: int | None = None,
    max_tiles_per_polygon: int = 0,
    band_indices: Sequence[int] | None = None,
    band_names: Sequence[str] | None = None,
    min_inside: float = 1.0,
    nodata: float | None = None,
    seed: int = 0,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
    beyond_polygon: bool = False,
) -> TrainingData:
    """Cut labelled tiles from a raster inside labelled polygons.

    ``polygons``: GeoJSON-like Polygon/MultiPolygon geometry dicts **in the raster's CRS**;
    ``labels``: one value per polygon (the class field); polygons whose value is empty (None)
    are skipped. Class names: see :func:`class_names_from_values`.

    A tile is ``tile_size`` x ``tile_size`` model pixels of ``gsd`` metres (default: the
    raster's pixel size, i.e. no resampling), i.e. a footprint of ``tile_size * gsd / pixel
    size`` raster pixels, read resampled like ``glassbox:classify`` does (average when
    shrinking, bilinear when enlarging). Candidate footprints lie on a grid every ``stride``
    model pixels (default ``tile_size``: tiles do not overlap), on the raster's pixel grid,
    starting at the top-left raster pixel lying wholly inside the polygon's bounding box.

    **Inside rule.** With the default ``min_inside`` = 1.0 a candidate is taken when its whole
    footprint rectangle lies within the polygon (holes excluded; touching the boundary from
    inside is allowed): every pixel centre must be inside (``rasterio.features.geometry_mask``,
    a fast pre-filter) and the rectangle must be ``Within`` the polygon (OGR/GEOS; to forgive
    coordinate round-off on edges shared with the pixel grid, the rectangle is first shrunk by
    1/1000 of a pixel on each side).
    With ``min_inside`` < 1 a candidate is taken when at least that share of its pixel centres
    lie inside the polygon (tiles may then reach over the polygon's edge). Tiles holding a
    nodata pixel (all selected bands equal ``nodata``, default the raster's own, or any band
    NaN) are dropped.

    **Beyond the polygon** (``beyond_polygon=True``, for masked training, which needs background
    around the polygon to mask): the candidate grid covers the polygon's bounding box widened by
    half a tile on every side (clipped to the raster), and a candidate is taken when its centre
    pixel (row/column ``size // 2`` of the footprint) lies inside the polygon and at least
    ``min_inside`` of its pixel centres do; the rest of the tile may lie outside the polygon.

    ``max_tiles_per_polygon`` > 0 keeps at most that many tiles per polygon, a random sample
    (``seed``) of the candidates. Bands: ``band_indices`` (1-based) or, failing that, bands
    found by ``band_names`` (as ``glassbox:classify`` matches them), else all bands; band names
    are the raster's band descriptions, else ``band_<index>``.

    Raises :class:`RasterInputError` when no polygon overlaps the raster and
    :class:`TrainingDataError` when no tile fits inside any polygon.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.features import bounds as geometry_bounds
    from rasterio.windows import Window

    from .raster import no_crs_error, pixel_size_metres, select_bands, smaller_than_tile_error

    is_cancelled = is_cancelled or _never
    log = log or _noop
    if len(polygons) != len(labels):
        raise TrainingDataError(f"{len(polygons)} polygons but {len(labels)} labels")
    if tile_size <= 0:
        raise TrainingDataError("tile size must be positive")
    if not 0 < min_inside <= 1:
        raise TrainingDataError("min_inside must be in (0, 1]")
    class_names, names = class_names_from_values(labels)
    if not class_names:
        raise TrainingDataError("no polygon has a class value")
    try:
        ds = rasterio.open(raster_path)
    except Exception as exc:
        raise RasterInputError(f"cannot open raster {raster_path}: {exc}") from exc
    with ds:
        if ds.crs is None:
            raise no_crs_error(raster_path)
        if band_indices:
            bands = [int(b) for b in band_indices]
            bad = [b for b in bands if not 1 <= b <= ds.count]
            if bad:
                raise RasterInputError(f"band(s) {bad} do not exist: the raster has bands 1..{ds.count}")
        elif band_names:
            bands = select_bands(ds.descriptions, ds.count, list(band_names), None)
        else:
            bands = list(range(1, ds.count + 1))
        descriptions = [ds.descriptions[b - 1] for b in bands]
        out_names = descriptions if all(descriptions) and len(set(descriptions)) == len(descriptions) \
            else [f"band_{b}" for b in bands]
        size_x, size_y = pixel_size_metres(ds)
        gsd = float(gsd) if gsd else float(size_x)
        fx, fy = gsd / size_x, gsd / size_y
        fx = 1.0 if abs(fx - 1.0) < 0.01 else fx
        fy = 1.0 if abs(fy - 1.0) < 0.01 else fy
        footprint = (max(1, round(tile_size * fy)), max(1, round(tile_size * fx)))
        if ds.height < footprint[0] or ds.width < footprint[1]:
            raise smaller_than_tile_error(ds.width, ds.height, footprint, tile_size, gsd,
                                          "no tile can be cut from it")
        stride_model = stride or tile_size
        if stride_model <= 0:
            raise TrainingDataError("stride must be positive")
        step = (max(1, round(stride_model * footprint[0] / tile_size)),
                max(1, round(stride_model * footprint[1] / tile_size)))
        resample = footprint != (tile_size, tile_size)
        resampling = (Resampling.average if footprint[0] > tile_size else Resampling.bilinear) if resample \
            else Resampling.nearest
        nodata = nodata if nodata is not None else ds.nodata
        west, south, east, north = ds.bounds
        rng = np.random.default_rng(seed)

        overlapping = 0
        tiles: list[np.ndarray] = []
        tile_labels: list[int] = []
        sources: list[str] = []
        footprints: list[tuple[float, float, float, float]] = []
        dropped_nodata = dropped_nan = 0
        for index, (geometry, name) in enumerate(zip(polygons, names)):
            if is_cancelled():
                raise Cancelled("cancelled while sampling tiles; nothing was written")
            if not geometry or name is None:
                continue
            _check_polygon(geometry)
            xmin, ymin, xmax, ymax = geometry_bounds(geometry)
            if xmax <= west or xmin >= east or ymax <= south or ymin >= north:
                continue
            overlapping += 1
            if beyond_polygon:
                origins = _tile_origins(ds, geometry, footprint, step, min_inside,
                                        margin=(footprint[0] // 2, footprint[1] // 2), centre_inside=True)
            else:
                origins = _tile_origins(ds, geometry, footprint, step, min_inside)
            if max_tiles_per_polygon and len(origins) > max_tiles_per_polygon:
                keep = np.sort(rng.choice(len(origins), size=max_tiles_per_polygon, replace=False))
                origins = [origins[k] for k in keep]
            if not origins:
                log(f"polygon {index + 1} ({name}): no {tile_size}-pixel tile ({footprint[1]}x{footprint[0]} "
                    "raster pixels) " + ("is centred in it with enough of it inside" if beyond_polygon
                                          else "fits inside it"))
            for row, col in origins:
                window = Window(col, row, footprint[1], footprint[0])
                data = ds.read(bands, window=window, out_shape=(len(bands), tile_size, tile_size),
                               resampling=resampling)
                invalid = np.any(np.isnan(data), axis=0) if np.issubdtype(data.dtype, np.floating) else None
                if nodata is not None and not np.isnan(nodata):
                    equal = np.all(data == np.asarray(nodata).astype(data.dtype), axis=0)
                    invalid = equal if invalid is None else invalid | equal
                if invalid is not None and invalid.any():
                    dropped_nodata += 1
                    dropped_nan += bool(np.issubdtype(data.dtype, np.floating) and np.isnan(data).any())
                    continue
                tiles.append(data)
                tile_labels.append(class_names.index(name))
                sources.append(f"polygon {index + 1}")
                left, bottom, right, top = ds.window_bounds(window)
                footprints.append((min(left, right), min(bottom, top), max(left, right), max(bottom, top)))
        if overlapping == 0:
            raise RasterInputError(
                f"none of the {len(polygons)} polygons overlaps the raster (raster extent "
                f"{west:.2f}, {south:.2f}, {east:.2f}, {north:.2f} in {ds.crs.to_string()}); "
                "check that the polygons and the raster cover the same area and that each layer's CRS is set "
                "right (coordinates read in the wrong CRS land somewhere else)"
            )
        if not tiles and dropped_nodata:
            raise RasterInputError(
                f"every candidate tile inside the polygons ({dropped_nodata}) holds nodata pixels"
                + (f" ({dropped_nan} of them NaN, i.e. no data)" if dropped_nan else "")
                + f": the raster has no usable data under the polygons. Check its nodata value "
                f"({'none set' if nodata is None else f'{nodata:g}'}), the bands and that the polygons lie on "
                "valid pixels"
            )
        if not tiles:
            raise TrainingDataError(
                f"no tile of {tile_size}x{tile_size} pixels at {gsd:g} m ({footprint[1] * size_x:g} m wide) "
                + (f"is centred in any of the {overlapping} polygons over the raster with at least "
                   f"{min_inside:.0%} of it inside" if beyond_polygon else
                   f"fits inside any of the {overlapping} polygons over the raster")
                + "; use larger polygons or a smaller tile size"
            )
        if dropped_nodata:
            log(f"{dropped_nodata} candidate tiles were dropped because they hold nodata pixels")
        crs_wkt = ds.crs.to_wkt()
    data = TrainingData(
        tiles=np.stack(tiles), labels=np.asarray(tile_labels), class_names=class_names,
        band_names=list(out_names), sources=sources, gsd=gsd,
        footprints=np.asarray(footprints, dtype=np.float64), crs_wkt=crs_wkt,
        description=(f"{Path(raster_path).name} inside {overlapping} labelled polygons: {len(tiles)} tiles "
                     f"of {tile_size}x{tile_size} px at {gsd:g} m, bands {bands}"),
    )
    present = set(np.unique(data.labels).tolist())
    missing = [n for i, n in enumerate(class_names) if i not in present]
    if missing:
        log(f"no tile fits inside the polygons of class(es) {', '.join(missing)}")
    return data


# -- scaling --------------------------------------------------------------------------------
def compute_scaling(tiles: np.ndarray, seed: int = 0, sample_pixels: int = 2_000_000,
                    low_percentile: float = 1.0, high_percentile: float = 99.0) -> Scaling:
    """The card scaling for raw tiles ``(N, bands, H, W)`` (use the training tiles only).

    * uint8 (8-bit imagery, jpg/png): ``scale`` 1, ``offset`` 0, no clip; ``mean``/``std`` per
      band over all training pixels (in 0..255 units).
    * any other type (16-bit digital numbers, reflectance floats, ...): a robust per-band linear
      stretch maps the band's ``low_percentile`` .. ``high_percentile`` (default 1st..99th,
      estimated from up to ``sample_pixels`` random pixels per band, seeded) to 0..1 through
      per-band ``scale`` = 1 / (p_high - p_low) and ``offset`` = -p_low / (p_high - p_low), then
      ``clip`` [0, 1] (so outliers such as clouds or sensor spikes cannot dominate), then
      ``mean``/``std`` per band of the stretched, clipped training pixels.

    A band whose std is 0 (constant) gets std 1.
    """
    tiles = np.asarray(tiles)
    n, bands = tiles.shape[:2]
    if tiles.dtype == np.uint8:
        scaling = Scaling(scale=1.0, offset=0.0, clip=None)
    else:
        rng = np.random.default_rng(seed)
        pixels_per_band = n * tiles.shape[2] * tiles.shape[3]
        flat = tiles.reshape(n, bands, -1)
        count = min(sample_pixels, pixels_per_band)
        pick = rng.choice(pixels_per_band, size=count, replace=False) if count < pixels_per_band \
            else np.arange(pixels_per_band)
        tile_index, pixel_index = np.divmod(pick, flat.shape[2])
        sample = flat[tile_index, :, pixel_index].astype(np.float64)  # (count, bands)
        finite = np.where(np.isfinite(sample), sample, np.nan)
        low = np.nanpercentile(finite, low_percentile, axis=0)
        high = np.nanpercentile(finite, high_percentile, axis=0)
        low = np.where(np.isfinite(low), low, 0.0)
        high = np.where(np.isfinite(high), high, low + 1.0)
        span = np.where(high - low > 0, high - low, 1.0)
        scaling = Scaling(scale=[float(v) for v in 1.0 / span], offset=[float(v) for v in -low / span],
                          clip=[0.0, 1.0])
    total = np.zeros(bands, dtype=np.float64)
    total_sq = np.zeros(bands, dtype=np.float64)
    count = 0
    for start in range(0, n, 512):
        x = scaling.apply(tiles[start : start + 512]).astype(np.float64)
        x = np.nan_to_num(x)
        total += x.sum(axis=(0, 2, 3))
        total_sq += (x * x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(1, count)
    std = np.sqrt(np.maximum(total_sq / max(1, count) - mean * mean, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    scaling.mean = [float(v) for v in mean]
    scaling.std = [float(v) for v in std]
    return scaling


def scale_batch(tiles: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Raw tiles -> float32 model input (the card scaling; NaN becomes 0 = the training mean)."""
    x = scaling.apply(tiles)
    if np.issubdtype(tiles.dtype, np.floating):
        np.nan_to_num(x, copy=False)
    return x


# -- training -------------------------------------------------------------------------------
@dataclass
class TrainOptions:
    """Settings of :func:`train_classifier`.

    ``epochs``: at most this many passes over the training tiles. ``batch_size``: tiles per
    step. ``lr``: peak learning rate of AdamW (one-cycle schedule by default, ``schedule``
    "constant" keeps it fixed, as do runs of fewer than 8 steps). ``weight_decay``: AdamW's. ``label_smoothing``: of the
    cross-entropy loss. ``seed``: the split, initial weights, tile order and augmentation all
    follow from it. ``val_fraction``: share of each class held out for validation (stratified;
    0 = none: no early stopping, the last epoch is kept). ``patience``: stop after this many
    epochs without a better validation accuracy (0 = never stop early); the best epoch's weights
    are kept. ``weights_path``: optional state dict to start from (see
    :func:`load_initial_weights`). ``device``: cpu, cuda or auto. ``threads``: torch CPU threads
    (None: torch's default). ``augment``: dihedral augmentation (:data:`AUGMENTATION`).
    ``name``, ``gsd`` (metres; default the data's, else 10), ``colours`` (class name ->
    ``#rrggbb``) and ``architecture_kwargs`` go into the card.
    ``scaling``: a fixed card scaling to use instead of computing one from the training tiles
    (e.g. the scaling of the model being fine-tuned, whose weights expect it).
    ``initial_state``: a state dict (tensors) to start from, loaded like ``weights_path``
    (matching names and shapes only; :func:`load_matching_weights`), after it when both are
    given; ``initial_state_name`` names it in the log and the card.

    Hooks for training scripts (the defaults leave all of them off):

    * ``split``: ``(train, val)`` tile indices into the data, used instead of
      :func:`stratified_split` (``val_fraction`` is then ignored; ``val`` may be empty; tiles in
      neither are not used, e.g. a test split); ``split_description`` names the rule in the card.
    * ``shift``: augmentation: translate each training tile by a random whole-pixel offset of up
      to this many pixels along each axis (reflection padding, :func:`random_shift`), after the
      dihedral transform; 0 = off.
    * ``teacher_logits``: knowledge distillation: float logits ``(N, classes)`` of a teacher,
      one row per tile of the data (or one per training tile, in ascending index order); the
      loss becomes ``(1 - distill_weight) * label loss + distill_weight *``
      :func:`distillation_loss` at ``distill_temperature``.
    * ``checkpoint_path``: after every finished epoch a checkpoint (model, optimiser, schedule,
      random-number states, history, best weights and the settings) is written there
      atomically. When the file exists at the start, training resumes after its last finished
      epoch and ends with the same weights as an uninterrupted run; it must have been written
      with the same settings (:func:`checkpoint_config`, plus ``checkpoint_config``, the
      caller's own settings, e.g. the data's origin), else :class:`TrainingDataError`. With
      ``reschedule`` a checkpoint with another ``epochs`` is accepted: the one-cycle schedule
      is rebuilt for the new length and continues at the current step (recorded in the card's
      ``training.schedule_changes``). A cancelled run leaves the checkpoint of its last
      finished epoch (there are no mid-epoch checkpoints). The file is left in place when
      training ends: rerunning returns the same result without training again.
    * ``radiometric``: augmentation: each training tile's values changed at random, as other
      seasons, sensors and atmospheres change them (:func:`.radiometry.random_radiometry`: gain
      and offset per band, brightness, contrast, gamma, haze, noise, glint speckle, blur), with
      this strength (0 = off, 1 = the full ranges), on the raw values before scaling;
      ``radiometric_full_scale`` is the raw value of full brightness (None: 255 for uint8 tiles,
      else 10000, Sentinel-2 L1C's reflectance 1).
    * ``stop_after_epoch`` (> 0) and ``stop_at`` (POSIX time, seconds): stop at an epoch end
      (after its checkpoint is written; both need ``checkpoint_path``) by raising
      :class:`TrainingStopped`: after that epoch, or at the first epoch end from which one more
      epoch, as long as the last, would end after ``stop_at``.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 5
    weights_path: str | None = None
    device: str = "cpu"
    threads: int | None = None
    augment: bool = True
    schedule: str = "onecycle"
    channels_last: bool = True
    name: str | None = None
    gsd: float | None = None
    colours: dict[str, str] | None = None
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    scaling: Scaling | None = None
    initial_state: dict[str, Any] | None = None
    initial_state_name: str | None = None
    split: tuple[Sequence[int], Sequence[int]] | None = None
    split_description: str | None = None
    shift: int = 0
    teacher_logits: Any = None
    distill_weight: float = 0.7
    distill_temperature: float = 2.0
    checkpoint_path: str | Path | None = None
    checkpoint_config: dict[str, Any] | None = None
    reschedule: bool = False
    stop_after_epoch: int = 0
    stop_at: float | None = None
    radiometric: float = 0.0
    radiometric_full_scale: float | None = None


class TrainingStopped(Cancelled):
    """Training stopped at an epoch end as asked (``stop_after_epoch`` / ``stop_at``); its
    checkpoint (``checkpoint``, after epoch ``epoch``) lets the same call resume."""

    def __init__(self, message: str, epoch: int, checkpoint: str):
        super().__init__(message)
        self.epoch = epoch
        self.checkpoint = checkpoint


@dataclass
class TrainingResult:
    """``module`` (best weights, eval mode, on the CPU), its ``card``, per-epoch ``history``
    (dicts: epoch, loss, train_acc, val_acc, val_loss, lr, seconds), the tile indices of the
    split and the validation metrics of the kept weights (None without validation). Unpacks
    as ``module, card, history``."""

    module: Any
    card: ModelCard
    history: list[dict[str, Any]]
    train_index: np.ndarray
    val_index: np.ndarray
    val_metrics: Metrics | None
    best_epoch: int
    stopped_early: bool
    #: vector outputs built when saving (``"samples"``), whether written to a file or not
    layers: dict[str, VectorLayer] = field(default_factory=dict)
    #: one-cycle schedules rebuilt on resume (``reschedule``): after_epoch, from_epochs, to_epochs
    schedule_changes: list[dict[str, int]] = field(default_factory=list)
    #: the epoch after which this call resumed from a checkpoint (0: trained from the start)
    resumed_after_epoch: int = 0

    def __iter__(self) -> Iterator[Any]:
        return iter((self.module, self.card, self.history))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) tile indices, sorted. Per class, ``round(n * val_fraction)`` tiles chosen at
    random (``seed``) go to validation, at least 1 and at most n - 1 when the class has 2 or
    more tiles and ``val_fraction`` > 0; a class with one tile stays in training."""
    if not 0 <= val_fraction < 1:
        raise TrainingDataError("the validation share must be at least 0 and below 1 (0-99 %)")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_val = int(round(idx.size * val_fraction))
        if val_fraction > 0 and idx.size >= 2:
            n_val = min(max(1, n_val), idx.size - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index (0..folds-1) of every sample: per class, shuffled (``seed``) and dealt to the
    folds in turn, so each fold holds about the same share of each class."""
    fold = np.empty(labels.size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        fold[idx] = np.arange(idx.size) % folds
    return fold


def augment_batch(x: Any, generator: Any) -> Any:
    """Random dihedral transform per tile of a batch ``(N, C, H, W)`` (torch): one of 8 =
    identity, three 90-degree rotations, and the four with a horizontal flip first."""
    import torch

    ops = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for op in range(8):
        idx = (ops == op).nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        part = x[idx]
        if op >= 4:
            part = part.flip(-1)
        if op % 4:
            part = torch.rot90(part, op % 4, dims=(-2, -1))
        out[idx] = part
    return out


def random_shift(x: Any, max_shift: int, generator: Any) -> Any:
    """Translate each tile of a batch ``(N, C, H, W)`` (torch) by a random whole-pixel offset
    in ``-max_shift..max_shift`` along each axis (drawn from ``generator``), filling the
    uncovered border by reflection."""
    import torch
    from torch import nn

    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def distillation_loss(student: Any, teacher: Any, temperature: float) -> Any:
    """Hinton et al.'s soft-target loss: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``,
    averaged over the batch (torch logits ``(N, classes)``)."""
    from torch import nn

    log_p = nn.functional.log_softmax(student / temperature, dim=1)
    q = nn.functional.softmax(teacher / temperature, dim=1)
    return nn.functional.kl_div(log_p, q, reduction="batchmean") * temperature**2


def load_initial_weights(module: Any, path: str | Path, log: Log | None = None) -> tuple[list[str], list[str]]:
    """Copy the weights of a state-dict file (read with ``weights_only=True``; pickles are
    refused) into ``module`` where name and shape match; keys whose shape differs (e.g. the
    first convolution for another band count, the last layer for other classes) or that the
    module lacks are skipped and logged. Returns (loaded keys, skipped keys); no matching key
    at all raises :class:`ModelLoadError`."""
    from .backends import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"initial weights file not found: {path}")
    return load_matching_weights(module, load_state_dict(path), path.name, log)


def load_matching_weights(module: Any, state: dict[str, Any], source: str, log: Log | None = None
                          ) -> tuple[list[str], list[str]]:
    """Copy the tensors of ``state`` into ``module`` where name and shape match (see
    :func:`load_initial_weights`); ``source`` names the weights in the log and errors."""
    log = log or _noop
    own = module.state_dict()
    loaded, skipped = [], []
    usable = {}
    for key, value in state.items():
        if key in own and tuple(own[key].shape) == tuple(value.shape):
            usable[key] = value
            loaded.append(key)
        else:
            reason = "not in this network" if key not in own else \
                f"shape {tuple(value.shape)} != {tuple(own[key].shape)}"
            skipped.append(f"{key} ({reason})")
    if not usable:
        raise ModelLoadError(f"{source}: none of its {len(state)} weights fit this network")
    module.load_state_dict(usable, strict=False)
    untouched = [k for k in own if k not in usable]
    log(f"initial weights {source}: loaded {len(loaded)} tensors"
        + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else "")
        + (f"; {len(untouched)} tensors keep their random start: {', '.join(untouched[:12])}"
           + (" ..." if len(untouched) > 12 else "") if untouched else ""))
    return loaded, skipped


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of ``order``; a final batch of one tile joins the one before (batch
    normalisation cannot train on a single tile)."""
    parts = [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
    if len(parts) > 1 and parts[-1].size < 2:
        parts[-2] = np.concatenate([parts[-2], parts.pop()])
    return parts


def _predict_logits(module: Any, tiles: np.ndarray, scaling: Scaling, batch_size: int, device: str,
                    is_cancelled: IsCancelled, channels_last: bool = False) -> np.ndarray:
    import torch

    module.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, tiles.shape[0], batch_size):
            if is_cancelled():
                raise Cancelled("training cancelled; no model was written")
            x = torch.from_numpy(scale_batch(tiles[start : start + batch_size], scaling)).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(module(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(labels.size), labels].mean()) if labels.size else float("nan")


def predict_logits(module: Any, tiles: np.ndarray, scaling: Scaling, batch_size: int = 256,
                   is_cancelled: IsCancelled | None = None) -> np.ndarray:
    """Logits ``(N, classes)`` of a Torch module (eval mode, CPU) on raw tiles scaled with
    ``scaling`` (e.g. a teacher's logits for :attr:`TrainOptions.teacher_logits`; wrap the
    module in :class:`core.architectures.DihedralTTA` for the mean over the 8 rotations/flips)."""
    return _predict_logits(module, tiles, scaling, batch_size, "cpu", is_cancelled or _never)


def module_model(module: Any, card: ModelCard) -> Any:
    """A :class:`core.backends.ClassifierModel` around a Torch module in memory (e.g.
    :attr:`TrainingResult.module`) with ``card``, for :func:`evaluate` (test-time augmentation
    included) without writing the model to a file first."""
    from .backends import ClassifierModel

    class ModuleModel(ClassifierModel):
        backend = "torch"

        def predict_logits(self, batch: np.ndarray) -> np.ndarray:
            import torch

            with torch.inference_mode():
                return self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()

    model = ModuleModel(card, Path(card.name or "model in memory"), "cpu")
    model.module = module.eval()
    return model


def _given_split(split: tuple[Sequence[int], Sequence[int]], num_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """``TrainOptions.split`` checked: sorted int64 (train, val) tile indices."""
    try:
        train, val = (np.asarray(part, dtype=np.int64).reshape(-1) for part in split)
    except (TypeError, ValueError) as exc:
        raise TrainingDataError(f"the split must be (train indices, validation indices): {exc}") from exc
    both = np.concatenate([train, val])
    if both.size and (both.min() < 0 or both.max() >= num_tiles):
        raise TrainingDataError(f"a split index is not a tile index (0..{num_tiles - 1})")
    if np.unique(both).size != both.size:
        raise TrainingDataError("the split names a tile twice (within or across training and validation)")
    if train.size < 2:
        raise TrainingDataError("the split needs at least 2 training tiles")
    return np.sort(train), np.sort(val)


def _teacher_rows(options: TrainOptions, data: TrainingData, train_idx: np.ndarray) -> np.ndarray | None:
    """The teacher logits of the training tiles (float32, in ``train_idx`` order), or None."""
    if options.teacher_logits is None:
        return None
    if not 0.0 <= options.distill_weight <= 1.0 or options.distill_temperature <= 0:
        raise TrainingDataError("the distillation weight must lie in 0..1 and its temperature be positive")
    logits = np.asarray(options.teacher_logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] != len(data.class_names):
        raise TrainingDataError(f"teacher logits must be (tiles, {len(data.class_names)} classes), not {logits.shape}")
    if logits.shape[0] == data.num_tiles:
        return np.ascontiguousarray(logits[train_idx])
    if logits.shape[0] == train_idx.size:
        return logits
    raise TrainingDataError(f"{logits.shape[0]} teacher logit rows for {data.num_tiles} tiles "
                            f"({train_idx.size} for training): give one row per tile or per training tile")


# -- checkpoints ----------------------------------------------------------------------------
CHECKPOINT_FORMAT = "glassbox.core.training checkpoint 1"


def _digest(*arrays: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        if hasattr(a, "detach"):
            a = a.detach().cpu().contiguous().numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.hexdigest()[:16]


def checkpoint_config(data: TrainingData, architecture: str, options: TrainOptions, train_index: np.ndarray,
                      val_index: np.ndarray, scaling: Scaling) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it (JSON values): the
    architecture, the optimisation settings, the tiles and labels (digests), the split, the
    scaling, the initial weights and teacher logits (as digests), and ``options.checkpoint_config``."""
    import dataclasses
    import json

    teacher = options.teacher_logits
    config = {
        "architecture": architecture, "architecture_kwargs": dict(options.architecture_kwargs),
        "epochs": options.epochs, "batch_size": options.batch_size, "lr": options.lr,
        "weight_decay": options.weight_decay, "label_smoothing": options.label_smoothing, "seed": options.seed,
        "schedule": options.schedule, "patience": options.patience, "augment": options.augment,
        "shift": options.shift, "radiometric": options.radiometric,
        "radiometric_full_scale": options.radiometric_full_scale,
        "tiles": [*data.tiles.shape, str(data.tiles.dtype), _digest(data.tiles)], "class_names": list(data.class_names),
        "labels": _digest(data.labels), "train_index": _digest(train_index), "val_index": _digest(val_index),
        "scaling": dataclasses.asdict(scaling),
        "weights_path": Path(options.weights_path).name if options.weights_path else None,
        "initial_state": None if options.initial_state is None else
        [options.initial_state_name, _digest(*[options.initial_state[k] for k in sorted(options.initial_state)])],
        "distillation": None if teacher is None else
        {"teacher_logits": _digest(np.asarray(teacher, dtype=np.float32)), "weight": options.distill_weight,
         "temperature": options.distill_temperature},
        "caller": options.checkpoint_config or {},
    }
    return json.loads(json.dumps(config, default=str))


def _write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """torch.save to a temporary file beside ``path``, then rename it into place."""
    import os

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_checkpoint(path: Path, config: dict[str, Any], reschedule: bool) -> dict[str, Any]:
    """The checkpoint at ``path`` (``weights_only=True``), checked against this run's ``config``."""
    import json

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingDataError(f"cannot read the training checkpoint {path}: {exc}; delete it to start afresh") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise TrainingDataError(f"{path} is not a checkpoint of core.training.train_classifier; "
                                "delete it or choose another checkpoint path")
    saved = checkpoint["config"]
    ignore = {"epochs"} if reschedule else set()
    differ = sorted(k for k in set(saved) | set(config) if k not in ignore and saved.get(k) != config.get(k))
    if differ:
        def shown(value: Any) -> str:
            text = json.dumps(value)
            return text if len(text) <= 100 else text[:97] + "..."

        detail = "; ".join(f"{k}: {shown(saved.get(k))} in the checkpoint, {shown(config.get(k))} now" for k in differ)
        raise TrainingDataError(f"the training checkpoint {path} was written with other settings ({detail}); "
                                "run with the same settings to resume, or delete it to start afresh"
                                + ("" if reschedule or "epochs" not in differ else
                                   " (a different number of epochs can continue with reschedule)"))
    return checkpoint


def train_classifier(
    data: TrainingData,
    architecture: str,
    options: TrainOptions | None = None,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
) -> TrainingResult:
    """Train ``architecture`` (a name in :data:`core.architectures.ARCHITECTURES`) on ``data``.

    Steps: stratified seeded split (:func:`stratified_split`); card scaling from the training
    tiles (:func:`compute_scaling`); the network built for the data's band count, class count
    and tile size, optionally started from ``options.weights_path``; AdamW with a one-cycle
    learning rate, cross-entropy with label smoothing, dihedral augmentation; after every epoch
    the validation accuracy, a log line ``epoch i/n loss .. train_acc .. val_acc ..`` and early
    stopping after ``patience`` epochs without improvement; the best epoch's weights are kept
    (ties: lower validation loss). ``progress`` gets 0..100 % after every training batch and
    ``is_cancelled`` is checked before every batch (training and validation):
    :class:`Cancelled` is raised within one batch.

    The card's ``accuracy`` holds the validation metrics of the kept weights (measured on tiles
    held out from training, but from the same source, so independent test data evaluated with
    :func:`evaluate` is the better measure).

    Scripts can give the split, a random shift, teacher logits for distillation, a checkpoint
    to resume from and when to stop (see :class:`TrainOptions`); without them training is as
    described above.
    """
    import torch
    from torch import nn

    from .architectures import ARCHITECTURES, build_model
    from .backends import resolve_device

    options = options or TrainOptions()
    progress = progress or _noop
    is_cancelled = is_cancelled or _never
    log = log or _noop
    if architecture not in ARCHITECTURES:
        raise TrainingDataError(f"unknown architecture '{architecture}'; choose one of {', '.join(sorted(ARCHITECTURES))}")
    if options.epochs < 1 or options.batch_size < 2:
        raise TrainingDataError("training needs at least 1 epoch and a batch size of at least 2")
    if options.split is not None:
        train_idx, val_idx = _given_split(options.split, data.num_tiles)
        used = np.concatenate([train_idx, val_idx])
        counts = {n: int(c) for n, c in zip(data.class_names,
                                            np.bincount(data.labels[used], minlength=len(data.class_names)))}
    else:
        counts = data.class_counts()
    present = [n for n, c in counts.items() if c > 0]
    if len(present) < 2:
        raise TrainingDataError(f"training needs tiles of at least 2 classes; found {counts}")
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        raise TrainingDataError(f"class(es) {', '.join(empty)} have no tiles; remove them or add tiles")
    if options.shift < 0 or options.shift >= data.tile_size:
        raise TrainingDataError(f"the random shift must be 0..{data.tile_size - 1} pixels, not {options.shift}")
    if (options.stop_after_epoch or options.stop_at is not None) and not options.checkpoint_path:
        raise TrainingDataError("stopping at an epoch end needs a checkpoint path to resume from")
    device = resolve_device(options.device)
    if options.threads:
        torch.set_num_threads(int(options.threads))
    started = time.perf_counter()

    if options.split is None:
        train_idx, val_idx = stratified_split(data.labels, options.val_fraction, options.seed)
    x_train, y_train = data.tiles[train_idx], data.labels[train_idx]
    teacher = _teacher_rows(options, data, train_idx)
    x_val, y_val = data.tiles[val_idx], data.labels[val_idx]
    scaling = options.scaling if options.scaling is not None else compute_scaling(x_train, seed=options.seed)
    log(f"training {architecture} on {train_idx.size} tiles, validating on {val_idx.size} "
        f"({len(data.class_names)} classes, {data.num_bands} bands, {data.tile_size} px tiles, device {device})")
    log("tiles per class: " + ", ".join(f"{n} {c}" for n, c in counts.items()))

    torch.manual_seed(options.seed)
    module = build_model(architecture, data.num_bands, len(data.class_names), data.tile_size,
                         **dict(options.architecture_kwargs))
    if options.weights_path:
        load_initial_weights(module, options.weights_path, log)
    if options.initial_state is not None:
        load_matching_weights(module, options.initial_state, options.initial_state_name or "initial state", log)
    channels_last = bool(options.channels_last and device == "cpu")
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(module.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    generator = torch.Generator().manual_seed(options.seed)
    order_rng = np.random.default_rng(options.seed)
    radiometry_rng = np.random.default_rng([options.seed, 7919])
    full_scale = options.radiometric_full_scale or (255.0 if data.tiles.dtype == np.uint8 else 10000.0)
    steps_per_epoch = len(_batches(np.arange(train_idx.size), options.batch_size))
    total_steps = steps_per_epoch * options.epochs
    if options.schedule == "onecycle" and total_steps >= 8:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=options.lr, total_steps=total_steps, pct_start=0.25)
    elif options.schedule in ("constant", "onecycle"):
        scheduler = None  # a one-cycle schedule needs a few steps; very short runs keep lr fixed
    else:
        raise TrainingDataError(f"unknown learning-rate schedule '{options.schedule}' (onecycle or constant)")
    criterion = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
    teacher_t = None if teacher is None else torch.from_numpy(teacher)

    history: list[dict[str, Any]] = []
    best = (-1.0, float("inf"))
    best_state = None
    best_epoch = 0
    since_best = 0
    stopped_early = False
    step = 0
    start_epoch = 0
    seconds_before = 0.0
    schedule_changes: list[dict[str, int]] = []
    checkpoint_path = Path(options.checkpoint_path) if options.checkpoint_path else None
    config = checkpoint_config(data, architecture, options, train_idx, val_idx, scaling) if checkpoint_path else None
    if checkpoint_path is not None and checkpoint_path.exists():
        ckpt = _read_checkpoint(checkpoint_path, config, options.reschedule)
        start_epoch = int(ckpt["epoch"])
        module.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        schedule_changes = list(ckpt["schedule_changes"])
        old_epochs = int(ckpt["config"]["epochs"])
        if (ckpt["scheduler"] is None) != (scheduler is None):
            raise TrainingDataError(f"{checkpoint_path}: the learning-rate schedule cannot change on resume "
                                    f"({old_epochs} -> {options.epochs} epochs); delete it to start afresh")
        if old_epochs != options.epochs:
            if options.epochs <= start_epoch and not ckpt["stopped_early"]:
                raise TrainingDataError(f"{options.epochs} epochs asked but the checkpoint {checkpoint_path} has "
                                        f"already done {start_epoch}")
            if scheduler is not None:  # the same one-cycle shape over the new length, from the current step
                scheduler = torch.optim.lr_scheduler.OneCycleLR(
                    optimiser, max_lr=options.lr, total_steps=total_steps, pct_start=0.25,
                    last_epoch=int(ckpt["step"]) - 1)
            schedule_changes.append({"after_epoch": start_epoch, "from_epochs": old_epochs, "to_epochs": options.epochs})
        elif scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        order_rng.bit_generator.state = json.loads(ckpt["order_rng"])
        if "radiometry_rng" in ckpt:
            radiometry_rng.bit_generator.state = json.loads(ckpt["radiometry_rng"])
        history = list(ckpt["history"])
        best = tuple(ckpt["best"])
        best_state = {k: v.to(device) for k, v in ckpt["best_state"].items()}
        best_epoch, since_best = int(ckpt["best_epoch"]), int(ckpt["since_best"])
        stopped_early, step = bool(ckpt["stopped_early"]), int(ckpt["step"])
        seconds_before = float(ckpt["seconds"])
        log(f"resumed from {checkpoint_path} after epoch {start_epoch}"
            + (" (early stop reached)" if stopped_early else "")
            + (f"; one-cycle schedule rebuilt for {old_epochs} -> {options.epochs} epochs" if old_epochs != options.epochs
               else ""))
        progress(100.0 * min(step, total_steps) / total_steps)

    def save_checkpoint(epochs_done: int) -> None:
        _write_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "config": config, "epoch": epochs_done,
            "model": module.state_dict(), "optimiser": optimiser.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "order_rng": json.dumps(order_rng.bit_generator.state),
            "radiometry_rng": json.dumps(radiometry_rng.bit_generator.state),
            "history": history, "best": list(best), "best_state": best_state, "best_epoch": best_epoch,
            "since_best": since_best, "stopped_early": stopped_early, "step": step,
            "schedule_changes": schedule_changes, "seconds": seconds_before + time.perf_counter() - started,
        })

    for epoch in range(start_epoch + 1, options.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        module.train()
        total_loss, correct, seen = 0.0, 0, 0
        for batch in _batches(order_rng.permutation(train_idx.size), options.batch_size):
            if is_cancelled():
                raise Cancelled("training cancelled; no model was written"
                                + (f" (the checkpoint {checkpoint_path} of the last finished epoch is kept)"
                                   if checkpoint_path is not None and checkpoint_path.exists() else ""))
            raw = x_train[batch]
            if options.radiometric > 0:
                raw = random_radiometry(raw, full_scale, radiometry_rng, options.radiometric)
            x = torch.from_numpy(scale_batch(raw, scaling))
            if options.augment:
                x = augment_batch(x, generator)
            if options.shift:
                x = random_shift(x, options.shift, generator)
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(y_train[batch]).to(device)
            logits = module(x)
            loss = criterion(logits, y)
            if teacher_t is not None:
                loss = ((1.0 - options.distill_weight) * loss + options.distill_weight
                        * distillation_loss(logits, teacher_t[batch].to(device), options.distill_temperature))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += float(loss.detach()) * y.numel()
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += y.numel()
            step += 1
            progress(100.0 * step / total_steps)
        train_loss, train_acc = total_loss / seen, correct / seen
        entry: dict[str, Any] = {"epoch": epoch, "loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
                                 "lr": optimiser.param_groups[0]["lr"]}
        if val_idx.size:
            logits = _predict_logits(module, x_val, scaling, max(64, options.batch_size), device, is_cancelled,
                                     channels_last)
            val_acc = float((logits.argmax(1) == y_val).mean())
            val_loss = _cross_entropy(logits, y_val)
            entry.update(val_acc=round(val_acc, 5), val_loss=round(val_loss, 5))
            improved = (val_acc, -val_loss) > (best[0], -best[1])
        else:
            val_acc, val_loss, improved = float("nan"), float("nan"), True
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(entry)
        log(f"epoch {epoch}/{options.epochs} loss {train_loss:.4f} train_acc {train_acc:.4f} "
            + (f"val_acc {val_acc:.4f} val_loss {val_loss:.4f}" if val_idx.size else "val_acc -")
            + f" ({entry['seconds']:.1f} s)")
        if improved:
            best = (val_acc, val_loss)
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            since_best = 0
        else:
            since_best += 1
            if options.patience and since_best >= options.patience and epoch < options.epochs:
                log(f"early stop: no better validation accuracy for {options.patience} epochs; "
                    f"keeping epoch {best_epoch} (val_acc {best[0]:.4f})")
                stopped_early = True
                progress(100.0)
        if checkpoint_path is not None:
            save_checkpoint(epoch)
        if stopped_early:
            break
        if epoch < options.epochs:
            if options.stop_after_epoch and epoch >= options.stop_after_epoch:
                reason = f"after epoch {epoch} as asked"
            elif options.stop_at is not None and time.time() + entry["seconds"] > options.stop_at:
                reason = f"after epoch {epoch}: another epoch would end after the stop time"
            else:
                continue
            log(f"stopped {reason}; the checkpoint {checkpoint_path} resumes training")
            raise TrainingStopped(f"training stopped {reason}; run again with the same settings to resume from "
                                  f"{checkpoint_path}", epoch, str(checkpoint_path))

    module.load_state_dict(best_state)
    module = module.to("cpu").to(memory_format=torch.contiguous_format).eval()
    val_metrics = None
    accuracy: dict[str, Any] = {}
    if val_idx.size:
        logits = _predict_logits(module, x_val, scaling, max(64, options.batch_size), "cpu", is_cancelled)
        val_metrics = compute_metrics(y_val, logits.argmax(1), data.class_names)
        accuracy = {
            "val_overall": round(val_metrics.overall_accuracy, 4),
            "n_val": int(val_idx.size),
            "val_macro_f1": round(val_metrics.macro_f1, 4),
            "per_class_f1_val": {n: round(float(f), 4) for n, f in zip(data.class_names, val_metrics.f1)},
            "note": "validation tiles were held out from training but come from the same data; "
                    "evaluate on independent tiles (glassbox:evaluate) for a test accuracy",
        }
    accuracy["train_overall_last_epoch"] = history[-1]["train_acc"]
    seconds = seconds_before + time.perf_counter() - started
    colours = options.colours or {}
    gsd = float(options.gsd or data.gsd or 10.0)
    card = ModelCard(
        name=options.name or f"{architecture} trained on {len(data.class_names)} classes",
        classes=[ClassInfo(n, colours.get(n) or default_colour(i)) for i, n in enumerate(data.class_names)],
        bands=list(data.band_names),
        scaling=scaling,
        tile_size=data.tile_size,
        gsd=gsd,
        architecture={"name": architecture, "kwargs": dict(options.architecture_kwargs)},
        output="logits",
        description=(
            f"{architecture} trained with Glassbox on {data.description or 'labelled tiles'}: classes "
            f"{', '.join(data.class_names)}; bands {', '.join(data.band_names)}; tiles of "
            f"{data.tile_size} x {data.tile_size} px at {gsd:g} m"
            + (f"; validation accuracy {best[0]:.1%} on {val_idx.size} held-out tiles" if val_idx.size else "")
            + "."
        ),
        training={
            "data": data.description,
            "n_train": int(train_idx.size),
            "n_val": int(val_idx.size),
            "tiles_per_class": counts,
            "split": (options.split_description or "given by the caller (training and validation tile indices)")
                     if options.split is not None else
                     f"stratified random, {options.val_fraction:.0%} of each class to validation, seed {options.seed}",
            "seed": options.seed,
            "epochs_max": options.epochs,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "stopped_early": stopped_early,
            "batch_size": options.batch_size,
            "optimizer": f"AdamW (lr {options.lr:g}, weight decay {options.weight_decay:g}), "
                         f"{options.schedule} schedule, label smoothing {options.label_smoothing:g}",
            "early_stopping": f"patience {options.patience} epochs on validation accuracy" if options.patience else "off",
            "augmentation": "; ".join(
                ([AUGMENTATION] if options.augment else [])
                + ([f"random translation up to {options.shift} px (reflection padding)"] if options.shift else [])
                + ([f"random radiometry at strength {options.radiometric:g} (core.radiometry.random_radiometry: "
                    "gain/offset per band, brightness, contrast, gamma, haze, noise, glint, blur)"]
                   if options.radiometric > 0 else [])
            ) or "none",
            "scaling": "given (not computed from these tiles)" if options.scaling is not None
                       else "uint8: (x - mean) / std" if data.tiles.dtype == np.uint8
                       else "per band 1st..99th percentile -> 0..1, clip, (x - mean) / std",
            "initial_weights": Path(options.weights_path).name if options.weights_path
                               else options.initial_state_name if options.initial_state is not None else None,
            "seconds": round(seconds, 1),
            "date": datetime.date.today().isoformat(),
            "torch_version": torch.__version__,
            "history": history,
            **({"distillation": {"weight": options.distill_weight, "temperature": options.distill_temperature,
                                 "loss": "(1 - weight) * label-smoothed cross-entropy + weight * T^2 * "
                                         "KL(teacher || student) at temperature T"}} if teacher is not None else {}),
            **({"schedule_changes": schedule_changes} if schedule_changes else {}),
        },
        accuracy=accuracy,
    )
    card.validate("trained model")
    log(f"trained in {seconds:.1f} s; kept epoch {best_epoch}"
        + (f" (val_acc {best[0]:.4f})" if val_idx.size else ""))
    return TrainingResult(module, card, history, train_idx, val_idx, val_metrics, best_epoch, stopped_early,
                          schedule_changes=schedule_changes, resumed_after_epoch=start_epoch)


# -- evaluation -----------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Metrics over the model's classes (rows/columns of the confusion matrix in the card's
    class order), each tile's true and predicted model class index, and timings."""

    metrics: Metrics
    true: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    seconds: float
    model_seconds: float


def check_data_fits_model(card: ModelCard, data: TrainingData) -> np.ndarray:
    """The data's labels as the model's class indices; errors name what does not fit."""
    if data.num_bands != card.num_bands:
        raise TrainingDataError(
            f"the model reads {card.num_bands} band(s) ({', '.join(card.bands)}) but the tiles have {data.num_bands}"
        )
    if data.tile_size != card.tile_size:
        raise TrainingDataError(
            f"the model reads tiles of {card.tile_size}x{card.tile_size} pixels but the tiles are "
            f"{data.tile_size}x{data.tile_size}"
        )
    index = {n: i for i, n in enumerate(card.class_names)}
    unknown = [n for n, c in data.class_counts().items() if c and n not in index]
    if unknown:
        raise TrainingDataError(
            f"class(es) {', '.join(unknown)} of the labelled tiles are not classes of the model "
            f"({', '.join(card.class_names)}); name the folders or class values like the model's classes"
        )
    mapping = np.array([index.get(n, -1) for n in data.class_names], dtype=np.int64)
    return mapping[data.labels]


def evaluate(
    model: Any,
    data: TrainingData,
    batch_size: int = 64,
    prescaled: bool = False,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    test_time_augmentation: bool = False,
) -> Evaluation:
    """Run ``model`` (a :class:`core.backends.ClassifierModel`) on every tile of ``data`` and
    compare with the labels. Tiles are scaled with the card's scaling; with ``prescaled`` only
    its ``mean``/``std`` are applied (for tiles that already hold the scaled values, e.g. the
    EuroSAT RGB jpgs for a model reading Sentinel-2 digital numbers). Classes are matched by
    name; every labelled class must be a model class. ``progress``/``is_cancelled`` per batch.
    ``test_time_augmentation``: each tile's outputs averaged over its 8 rotations and flips.
    """
    progress = progress or _noop
    is_cancelled = is_cancelled or _never
    card = model.card
    true = check_data_fits_model(card, data)
    scaling = Scaling(mean=card.scaling.mean, std=card.scaling.std) if prescaled else card.scaling
    started = time.perf_counter()
    model_seconds = 0.0
    probabilities = np.zeros((data.num_tiles, card.num_classes), dtype=np.float32)
    for start in range(0, data.num_tiles, batch_size):
        if is_cancelled():
            raise Cancelled("evaluation cancelled; nothing was written")
        x = scale_batch(data.tiles[start : start + batch_size], scaling)
        t0 = time.perf_counter()
        probabilities[start : start + x.shape[0]] = model.predict_proba(x, dihedral_tta=test_time_augmentation)
        model_seconds += time.perf_counter() - t0
        progress(100.0 * min(data.num_tiles, start + batch_size) / data.num_tiles)
    predicted = probabilities.argmax(axis=1)
    metrics = compute_metrics(true, predicted, card.class_names)
    return Evaluation(metrics, true, predicted, probabilities, time.perf_counter() - started, model_seconds)


# -- saving ---------------------------------------------------------------------------------
def save_model_files(
    module: Any,
    card: ModelCard,
    weights_path: str | Path,
    onnx_path: str | Path | None = None,
    samples_path: str | Path | _InMemory | None = None,
    data: TrainingData | None = None,
    result: TrainingResult | None = None,
    check_tolerance: float = 1e-4,
) -> dict[str, str]:
    """Write the state dict (``weights_path``, loadable with ``weights_only=True``), its card
    beside it (``<stem>.json``), optionally the ONNX model with the same card (the export is
    checked against Torch within ``check_tolerance``) and optionally a GeoPackage of the
    training tiles' footprints (``samples_path``; needs ``data`` with footprints and
    ``result``; :data:`.vectors.IN_MEMORY` puts that layer only in ``result.layers``). All
    files are staged and moved into place together, so a failure leaves none of them. Returns {"weights", "card", "onnx", "samples"} -> path for what was written."""
    import torch

    from .backends import card_path_for
    from .export import export_onnx
    from .writers import StagedOutputs

    weights_path = Path(weights_path)
    if weights_path.suffix.lower() not in (".pt", ".pth"):
        raise TrainingDataError(f"Torch weights must be written as .pt or .pth, not {weights_path.name}")
    if onnx_path and Path(onnx_path).suffix.lower() != ".onnx":
        raise TrainingDataError(f"the ONNX model must be written as .onnx, not {Path(onnx_path).name}")
    card.validate(weights_path.name)
    written = {"weights": str(weights_path), "card": str(card_path_for(weights_path))}
    with StagedOutputs() as staged:
        tmp_weights = staged.stage(weights_path)
        tmp_card = staged.stage(card_path_for(weights_path))
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        torch.save(state, tmp_weights)
        tmp_card.write_text(card.to_json(), encoding="utf-8")
        if onnx_path:
            export_onnx(module, card, staged.stage(onnx_path), check_tolerance=check_tolerance)
            written["onnx"] = str(onnx_path)
        if samples_path:
            if data is None or data.footprints is None or result is None:
                raise TrainingDataError("a sample-footprint layer needs tiles cut from a raster")
            result.layers["samples"] = sample_footprints_layer(data, result)
            if is_file_target(samples_path):
                write_gpkg(result.layers["samples"], staged.stage(samples_path))
                written["samples"] = str(samples_path)
        staged.commit()
    return written


def sample_footprints_layer(data: TrainingData, result: TrainingResult) -> VectorLayer:
    """The training tiles' footprints (raster CRS) as a polygon layer ``samples`` with fields
    ``class`` (name), ``class_id``, ``split`` (train/val) and ``source`` (polygon n)."""
    split = np.full(data.num_tiles, "train", dtype=object)
    split[result.val_index] = "val"
    fields = [("class", "str"), ("class_id", "int"), ("split", "str"), ("source", "str")]
    rows = [
        (tuple(float(v) for v in data.footprints[i]),
         {"class": data.class_names[int(data.labels[i])], "class_id": int(data.labels[i]),
          "split": str(split[i]), "source": data.sources[i]})
        for i in range(data.num_tiles)
    ]
    return boxes_layer("samples", data.crs_wkt, fields, rows)


def export_model_file(weights_path: str | Path, onnx_path: str | Path, tolerance: float = 1e-4,
                      seed: int = 0, batch: int = 8) -> dict[str, Any]:
    """Export a Torch model file (state dict with its card beside it, or TorchScript with a
    card) to ONNX carrying the same card. :func:`core.export.export_onnx` refuses an export
    whose logits differ from Torch by more than ``tolerance``; afterwards both models are run
    through Glassbox's backends on ``batch`` random standard-normal tiles (``seed``) and the
    largest absolute differences of logits and class probabilities are returned
    (``max_abs_diff_logits``, ``max_abs_diff_probabilities``), with ``card`` and ``path``.
    The ONNX file is written atomically: on any error there is none."""
    from .backends import OnnxModel, TorchModel, TORCH_SUFFIXES
    from .export import export_onnx
    from .writers import StagedOutputs

    weights_path, onnx_path = Path(weights_path), Path(onnx_path)
    if not weights_path.is_file():
        raise ModelLoadError(f"model file not found: {weights_path}")
    if weights_path.suffix.lower() not in TORCH_SUFFIXES:
        raise ModelLoadError(f"{weights_path.name}: not a Torch model ({', '.join(TORCH_SUFFIXES)})")
    if onnx_path.suffix.lower() != ".onnx":
        raise ModelLoadError(f"the ONNX model must be written as .onnx, not {onnx_path.name}")
    torch_model = TorchModel(weights_path, "cpu")
    card = torch_model.card
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, card.num_bands, card.tile_size, card.tile_size)).astype(np.float32)
    with StagedOutputs() as staged:
        tmp = staged.stage(onnx_path)
        export_onnx(torch_model.module, card, tmp, check_tolerance=tolerance)
        onnx_model = OnnxModel(tmp, "cpu")
        if onnx_model.card != card:
            raise ModelLoadError("internal: the exported card differs from the Torch model's")
        diff_logits = float(np.max(np.abs(onnx_model.predict_logits(x) - torch_model.predict_logits(x))))
        diff_probs = float(np.max(np.abs(onnx_model.predict_proba(x) - torch_model.predict_proba(x))))
        if diff_probs > tolerance:
            raise ModelLoadError(f"ONNX probabilities differ from Torch by {diff_probs:.2e} (> {tolerance})")
        del onnx_model
        staged.commit()
    return {"path": str(onnx_path), "card": card, "max_abs_diff_logits": diff_logits,
            "max_abs_diff_probabilities": diff_probs, "tiles_compared": batch}


def tiles_per_class_text(data: TrainingData) -> str:
    return ", ".join(f"{n}: {c}" for n, c in data.class_counts().items())


__all__ = [
    "TrainingData", "TrainOptions", "TrainingResult", "Evaluation", "tiles_from_folder", "tiles_from_polygons",
    "compute_scaling", "train_classifier", "evaluate", "save_model_files", "export_model_file",
    "load_initial_weights", "load_matching_weights", "stratified_split", "stratified_folds", "augment_batch", "class_names_from_values", "read_tile_file",
    "random_shift", "distillation_loss", "predict_logits", "module_model", "checkpoint_config", "TrainingStopped",
]


# -- one call per Processing algorithm ------------------------------------------------------
@dataclass
class TileSource:
    """Where labelled tiles come from: a tile ``folder``, or a ``raster`` with ``polygons``
    (GeoJSON-like dicts in the raster CRS) and one label value per polygon in ``labels``.
    ``band_indices`` (1-based raster bands), ``max_tiles_per_polygon`` and ``stride`` (model
    pixels) apply to the raster case (see :func:`tiles_from_polygons`)."""

    folder: str | None = None
    raster: str | None = None
    polygons: Sequence[dict] | None = None
    labels: Sequence[Any] | None = None
    band_indices: Sequence[int] | None = None
    max_tiles_per_polygon: int = 0
    stride: int | None = None

    def load(self, tile_size: int | None, gsd: float | None = None, band_names: Sequence[str] | None = None,
             seed: int = 0, is_cancelled: IsCancelled | None = None, log: Log | None = None) -> TrainingData:
        """Read the tiles. ``tile_size`` None: the folder's tiles' size (64 for a raster).
        ``band_names``: for a raster without ``band_indices``, the bands to find by name."""
        if bool(self.folder) == bool(self.raster):
            raise TrainingDataError("give either a folder of labelled tiles, or a raster with labelled polygons")
        if self.folder:
            return tiles_from_folder(self.folder, tile_size, is_cancelled, log)
        if not self.polygons:
            raise TrainingDataError("the polygon layer has no polygons")
        return tiles_from_polygons(
            self.raster, self.polygons, list(self.labels or []), tile_size or 64, gsd=gsd, stride=self.stride,
            max_tiles_per_polygon=self.max_tiles_per_polygon, band_indices=self.band_indices,
            band_names=band_names, seed=seed, is_cancelled=is_cancelled, log=log,
        )


def train_and_save(
    source: TileSource,
    architecture: str,
    options: TrainOptions,
    weights_path: str | Path,
    onnx_path: str | Path | None = None,
    samples_path: str | Path | None = None,
    tile_size: int | None = None,
    band_names: Sequence[str] | None = None,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
) -> tuple[TrainingResult, dict[str, str]]:
    """``glassbox:train_classifier`` in one call: read the labelled tiles, rename the bands
    (``band_names``), train (:func:`train_classifier`) and write the model files
    (:func:`save_model_files`). Nothing is written when anything fails or is cancelled."""
    log = log or _noop
    is_cancelled = is_cancelled or _never
    if samples_path and not source.raster:
        raise TrainingDataError("the training-tile layer can only be made for tiles cut from a raster")
    data = source.load(tile_size, options.gsd, None, options.seed, is_cancelled, log)
    if band_names:
        data = data.with_band_names(band_names)
    log(f"{data.num_tiles} tiles: {tiles_per_class_text(data)}")
    result = train_classifier(data, architecture, options, progress, is_cancelled, log)
    if is_cancelled():
        raise Cancelled("training cancelled; no model was written")
    written = save_model_files(result.module, result.card, weights_path, onnx_path, samples_path, data, result)
    return result, written


def evaluate_and_report(
    model_path: str | Path,
    source: TileSource,
    html_path: str | Path | None,
    csv_path: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    prescaled: bool = False,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
    test_time_augmentation: bool = False,
) -> tuple[Evaluation, dict[str, str]]:
    """``glassbox:evaluate`` in one call: load the model, read the labelled tiles at the
    model's tile size (a raster is read at the model's ground sample distance, bands found as
    ``glassbox:classify`` finds them unless ``source.band_indices`` is set), evaluate and write
    the HTML report and CSV (:mod:`core.report`), all or nothing."""
    from .backends import load_model
    from .report import write_report

    log = log or _noop
    model = load_model(model_path, device)
    card = model.card
    data = source.load(card.tile_size, card.gsd, card.bands, 0, is_cancelled, log)
    log(f"evaluating '{card.name}' on {data.num_tiles} tiles: {tiles_per_class_text(data)}")
    if data.tiles.dtype == np.uint8 and not prescaled and np.any(np.asarray(card.scaling.scale, dtype=float) != 1.0):
        log("warning: the tiles are 8-bit but the model scales raw values (scale "
            f"{card.scaling.scale}); if the tiles already hold the model's scaled 0-255 values (e.g. EuroSAT "
            "RGB jpgs for a model reading Sentinel-2 digital numbers), tick 'Tiles are already scaled'")
    evaluation = evaluate(model, data, batch_size, prescaled, progress, is_cancelled, test_time_augmentation)
    m = evaluation.metrics
    log(f"overall accuracy {m.overall_accuracy:.4f} ({int(np.trace(m.confusion))} of {m.total} tiles), "
        f"macro F1 {m.macro_f1:.4f}, kappa {m.kappa:.4f}")
    notes = []
    if prescaled:
        notes.append("The tiles were taken as already scaled: only the card's mean/std were applied.")
    if test_time_augmentation:
        notes.append("Test-time augmentation: each tile was classified as the mean of the model's outputs "
                     "over its 8 rotations and flips.")
    if source.raster:
        notes.append("Tiles were cut from the raster where they lie wholly inside a labelled polygon.")
    written = write_report(html_path, csv_path, m, card, str(model_path), data.description, notes)
    return evaluation, written
