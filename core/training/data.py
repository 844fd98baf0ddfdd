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
band names. :func:`train_classifier` trains one of :data:`core.models.architectures.ARCHITECTURES` on
it and returns the network with a complete model card (classes, colours, bands, scaling computed
from the training tiles, tile size, ground sample distance, architecture, provenance and
validation accuracy). :func:`evaluate` measures a loaded model on labelled tiles.
:func:`save_model_files` writes the Torch weights, the card and optionally ONNX, all or nothing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import Cancelled, RasterInputError, TrainingDataError
from ..io.vectors import box_geometry
from ..feedback import IsCancelled, Log, ignore, never


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GEOTIFF_SUFFIXES = (".tif", ".tiff")
#: Band names given to tiles read with Pillow, by image mode.
PILLOW_BANDS = {
    "L": ["gray"], "LA": ["gray", "alpha"], "RGB": ["red", "green", "blue"],
    "RGBA": ["red", "green", "blue", "alpha"], "I;16": ["gray"], "I": ["gray"], "F": ["gray"],
}
AUGMENTATION = "random flips and 90-degree rotations (the 8 symmetries of the square), per tile and batch"


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

    def subset(self, index: Sequence[int]) -> "TrainingData":
        """The tiles at ``index`` (their labels, sources and footprints with them)."""
        index = np.asarray(index, dtype=np.int64)
        return replace(self, tiles=self.tiles[index], labels=self.labels[index],
                       sources=[self.sources[i] for i in index],
                       footprints=None if self.footprints is None else self.footprints[index])

    def without_empty_classes(self, log: Log | None = None) -> "TrainingData":
        """A copy without the classes that have no tile (e.g. whose polygons all lie off the
        raster), labels renumbered; the classes left out are logged as a warning."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        empty = [n for n, c in zip(self.class_names, counts) if c == 0]
        if not empty:
            return self
        kept = [i for i, c in enumerate(counts) if c > 0]
        renumber = np.full(len(self.class_names), -1, dtype=np.int64)
        renumber[kept] = np.arange(len(kept))
        why = ("their polygons lie off the raster or hold no tile" if self.footprints is not None
               else "their folders hold no image tile")
        (log or ignore)(f"WARNING: class(es) {'; '.join(empty)} have no tile ({why}) and are left out of the model")
        return replace(self, labels=renumber[self.labels], class_names=[self.class_names[i] for i in kept])

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


def _one_label_per_tile(tiles: list, labels: list[int], sources: list[str], footprints: list, class_names: list[str],
                        log: Log) -> tuple[list, list[int], list[str], list]:
    """Tiles cut more than once, where polygons overlap: a tile in polygons of two or more
    classes is ambiguous and left out; one in several polygons of one class is kept once (a
    copy in the training and one in the validation tiles would make validation look better).
    Both are counted in the log."""
    first: dict[tuple, int] = {}
    classes_of: dict[tuple, set[int]] = {}
    for index, (footprint, label) in enumerate(zip(footprints, labels)):
        first.setdefault(footprint, index)
        classes_of.setdefault(footprint, set()).add(label)
    keep = [i for i, footprint in enumerate(footprints) if first[footprint] == i and len(classes_of[footprint]) == 1]
    if len(keep) == len(tiles):
        return tiles, labels, sources, footprints
    ambiguous = [f for f, c in classes_of.items() if len(c) > 1]
    pairs = sorted({" / ".join(class_names[c] for c in sorted(classes_of[f])) for f in ambiguous})
    repeated = sum(1 for i, f in enumerate(footprints) if first[f] != i and len(classes_of[f]) == 1)
    if ambiguous:
        log(f"WARNING: {len(ambiguous)} tile(s) lie in overlapping polygons of different classes "
            f"({'; '.join(pairs[:5])}{' ...' if len(pairs) > 5 else ''}) and were left out")
    if repeated:
        log(f"{repeated} repeated tile(s) of overlapping polygons of one class were kept once")
    return ([tiles[i] for i in keep], [labels[i] for i in keep], [sources[i] for i in keep],
            [footprints[i] for i in keep])


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
                        from ..io.raster import pixel_size_metres

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
    for RGB images). ``gsd``: the georeferenced tiles' typical pixel size in metres
    (:func:`_typical_pixel_size`), else None.
    """
    from .datasets import scan_tile_folder

    is_cancelled = is_cancelled or never
    log = log or ignore
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
    pixel_sizes = [gsd] if gsd else []
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
        if tile_gsd:
            pixel_sizes.append(tile_gsd)
        tiles[i] = data
    gsd = _typical_pixel_size(pixel_sizes, log)
    band_names = names if names and len(set(names)) == len(names) else [f"band_{b + 1}" for b in range(bands)]
    return TrainingData(
        tiles=tiles, labels=labels, class_names=list(class_names), band_names=band_names,
        sources=[str(p) for p in paths], gsd=gsd,
        description=f"tile folder {Path(root).name}: {len(paths)} tiles of {cols}x{rows} px, {bands} band(s)",
    )


def _typical_pixel_size(sizes: Sequence[float], log: Log | None = None) -> float | None:
    """The median of tiles' pixel sizes (metres), rounded to a whole metre (to 0.01 m below 2 m)
    when within 1 % of it: EuroSAT's 13-band tiles range from 9.94 to 10.05 m, and the first
    one's 10.016 m as a model's GSD had every 10 m scene resampled by 0.16 %. None without sizes."""
    if not sizes:
        return None
    median = float(np.median(sizes))
    nice = float(round(median)) if median >= 2 else round(median, 2)
    typical = nice if nice > 0 and abs(median - nice) <= 0.01 * nice else median
    if len(sizes) > 1 and (max(sizes) - min(sizes)) > 1e-6 * median and log:
        log(f"pixel sizes of the tiles: {min(sizes):g} to {max(sizes):g} m, median {median:g} m: the model's ground "
            f"sample distance is {typical:g} m")
    return typical


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


def _apart(origins: list[tuple[int, int]], footprint: tuple[int, int]) -> list[tuple[int, int]]:
    """Of ``origins`` (row, col), in their order, those whose tiles do not overlap a tile kept
    before them."""
    kept: list[tuple[int, int]] = []
    for row, col in origins:
        if all(abs(row - r) >= footprint[0] or abs(col - c) >= footprint[1] for r, c in kept):
            kept.append((row, col))
    return kept


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
    polygon_ids: Sequence[Any] | None = None,
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

    ``polygon_ids``: one id per polygon (e.g. the layer's feature ids) to name polygons by in log
    lines and in the tiles' ``sources`` ("feature 34"); without them, "polygon N", its 1-based
    position in ``polygons``.

    Raises :class:`RasterInputError` when no polygon overlaps the raster and
    :class:`TrainingDataError` when no tile fits inside any polygon.
    """
    from rasterio.enums import Resampling
    from rasterio.features import bounds as geometry_bounds
    from rasterio.windows import Window

    from ..io.raster import (band_descriptions, describe_band_choice, open_raster, pixel_size_metres, select_bands,
                             smaller_than_tile_error)

    is_cancelled = is_cancelled or never
    log = log or ignore
    if len(polygons) != len(labels):
        raise TrainingDataError(f"{len(polygons)} polygons but {len(labels)} labels")
    if tile_size <= 0:
        raise TrainingDataError("tile size must be positive")
    if not 0 < min_inside <= 1:
        raise TrainingDataError("min_inside must be in (0, 1]")
    class_names, names = class_names_from_values(labels)
    if not class_names:
        raise TrainingDataError("no polygon has a class value")
    alike: dict[str, list[str]] = {}
    for n in class_names:
        alike.setdefault(" ".join(n.casefold().split()), []).append(n)
    alike_text = ["; ".join(repr(n) for n in group) for group in alike.values() if len(group) > 1]
    if alike_text:
        log("WARNING: class values that differ only in upper/lower case or spaces are separate classes: "
            + " | ".join(alike_text) + "; make them the same in the class field, or join them with a Custom "
            "class mapping (it matches values case-insensitively)")
    with open_raster(raster_path) as ds:
        all_names = band_descriptions(ds)  # as classify reads them (a -separate VRT's bands by their files)
        if band_indices:
            bands = [int(b) for b in band_indices]
            bad = [b for b in bands if not 1 <= b <= ds.count]
            if bad:
                raise RasterInputError(f"band(s) {bad} do not exist: the raster has bands 1..{ds.count}")
        elif band_names:
            bands = select_bands(all_names, ds.count, list(band_names), None)
            (log or ignore)(describe_band_choice(all_names, list(band_names), bands, None))
        else:
            bands = list(range(1, ds.count + 1))
        descriptions = [all_names[b - 1] for b in bands]
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

        # tiles reaching past the polygon are centred in it; the others lie wholly inside it
        inside_rule = (dict(margin=(footprint[0] // 2, footprint[1] // 2), centre_inside=True) if beyond_polygon
                       else {})
        overlapping = 0
        outside: list[str] = []
        tiles: list[np.ndarray] = []
        tile_labels: list[int] = []
        sources: list[str] = []
        footprints: list[tuple[float, float, float, float]] = []
        dropped_nodata = dropped_nan = 0
        for index, (geometry, name) in enumerate(zip(polygons, names)):
            polygon = f"feature {polygon_ids[index]}" if polygon_ids is not None else f"polygon {index + 1}"
            if is_cancelled():
                raise Cancelled("cancelled while sampling tiles; nothing was written")
            if not geometry or name is None:
                continue
            _check_polygon(geometry)
            xmin, ymin, xmax, ymax = geometry_bounds(geometry)
            if xmax <= west or xmin >= east or ymax <= south or ymin >= north:
                outside.append(polygon)
                continue
            overlapping += 1
            origins = _tile_origins(ds, geometry, footprint, step, min_inside, **inside_rule)
            if not origins:  # the grid from the polygon's corner can miss a narrow or turned field
                fine = (max(1, step[0] // 4), max(1, step[1] // 4))
                origins = _apart(_tile_origins(ds, geometry, footprint, fine, min_inside, **inside_rule), footprint)
                if origins:
                    log(f"{polygon} ({name}): {len(origins)} tile(s) found on a grid a quarter tile apart (none "
                        "on the grid from its corner)")
            if max_tiles_per_polygon and len(origins) > max_tiles_per_polygon:
                keep = np.sort(rng.choice(len(origins), size=max_tiles_per_polygon, replace=False))
                origins = [origins[k] for k in keep]
            if not origins:
                log(f"{polygon} ({name}): no {tile_size}-pixel tile ({footprint[1]}x{footprint[0]} "
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
                sources.append(polygon)
                left, bottom, right, top = ds.window_bounds(window)
                footprints.append((min(left, right), min(bottom, top), max(left, right), max(bottom, top)))
        tiles, tile_labels, sources, footprints = _one_label_per_tile(tiles, tile_labels, sources, footprints,
                                                                      class_names, log)
        if outside and overlapping:
            shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
            log(f"{len(outside)} polygon(s) lie outside the raster and were skipped: {shown}")
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
                + f"; use polygons at least {footprint[1] * size_x:g} m across, or, when training a model, "
                f"smaller tiles (TILE_SIZE, at least 16 px) or a finer ground sample distance (GSD {gsd / 2:g} m halves "
                "a tile's width on the ground). A model's own tiles (evaluate, finetune_masked) cannot be changed"
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


