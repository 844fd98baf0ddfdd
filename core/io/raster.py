"""Reading rasters through rasterio windows: band selection, nodata, processing area and
resampling to the model's ground sample distance. The whole raster is never read at once.

Coordinates: an *area* is a window of the input raster (whole pixels, on the input grid); tile
offsets are area pixels. The outputs are written on the area's grid, in the input CRS.
"""

from __future__ import annotations

import math
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import RasterInputError

_S2_NAME = re.compile(r"^B0?(\d{1,2})(A?)$")
#: what often follows a Sentinel-2 band name in a band description: 'B4 (Red)', 'B04_10m', 'B04 - Red'
_S2_ANNOTATED = re.compile(r"^(B0?\d{1,2}A?)(?:[\s_-]*\d{2}\s?M)?(?:\s*[(\[:-].*|[\s_]+[A-Z][A-Z0-9 _]*)?$")
#: colour names a true-colour raster's band descriptions hold, as Sentinel-2 bands
_COLOUR_BANDS = {"RED": "B04", "GREEN": "B03", "BLUE": "B02"}


def normalise_band_name(name: str) -> str:
    """'b4', 'B4', 'B04', 'B4 (Red)', 'B04_10m', 'B4_red' -> 'B04'; 'B11 SWIR 1' -> 'B11'; 'B8a' -> 'B8A'; other names are
    upper-cased and stripped."""
    text = (name or "").strip().upper()
    annotated = _S2_ANNOTATED.match(text)
    if annotated:
        text = annotated.group(1)
    match = _S2_NAME.match(text)
    if match:
        number, suffix = int(match.group(1)), match.group(2)
        return f"B{number}A" if suffix else f"B{number:02d}"
    return text


def raster_band_names(descriptions: Sequence[str | None], card_bands: Sequence[str]) -> list[str | None]:
    """The raster's band descriptions normalised (:func:`normalise_band_name`), None where a band
    has none; when the model reads Sentinel-2 bands and the raster names its bands by colour
    ('red', 'green', 'blue'), those become B04, B03, B02."""
    names = [normalise_band_name(d) if d else None for d in descriptions]
    wanted = {normalise_band_name(b) for b in card_bands}
    if set(_COLOUR_BANDS.values()) & wanted and not (set(_COLOUR_BANDS) & wanted):
        names = [_COLOUR_BANDS.get(n, n) if n else None for n in names]
    elif set(_COLOUR_BANDS) & wanted and set(_COLOUR_BANDS.values()) & set(names):
        # the reverse: a model whose card names its bands red, green, blue on a raster of Sentinel-2 names
        by_s2 = {v: k for k, v in _COLOUR_BANDS.items()}
        names = [by_s2.get(n, n) if n else None for n in names]
    return names


#: a Sentinel-2 band file's name ends with its band: T33UUU_20170216T102101_B8A.jp2, ..._B04_10m.jp2
_S2_BAND_FILE = re.compile(r"(?:^|_)(B\d{2}|B8A)(?:_\d{2}m)?\.(?:jp2|tiff?)$", re.IGNORECASE)


def band_descriptions(dataset: Any) -> list[str | None]:
    """The band descriptions of an open rasterio ``dataset``, None where a band has none; a band
    of a virtual raster (VRT) without one is named by its source file when that is a Sentinel-2
    band file (``..._B8A.jp2``): the usual way to stack a product's band files,
    ``gdalbuildvrt -separate``, leaves the descriptions empty, and by file order B8A would not
    follow B08 as a model reads it. A VRT over such stacks (a mosaic of several products) takes
    the name its sources agree on. Failing both, a band whose colour interpretation says red,
    green or blue is named so, unless that is only GDAL's default for an 8-bit image (red, green,
    blue in band order, which says nothing of the bands)."""
    names: list[str | None] = [d or None for d in dataset.descriptions]
    if not all(names) and getattr(dataset, "driver", "") == "VRT" and str(dataset.name).lower().endswith(".vrt"):
        names = [name or _vrt_band_name(str(dataset.name), band) for band, name in enumerate(names, start=1)]
    if all(names):
        return names
    colours = _stated_colours(dataset)
    return [name or colour for name, colour in zip(names, colours)]


def _stated_colours(dataset: Any) -> list[str | None]:
    """Per band 'red', 'green', 'blue' or None from GDAL's colour interpretation, all None when
    it is GDAL's default for an 8-bit image of 3 or 4 bands (red, green, blue[, alpha] in order)."""
    try:
        colours = [getattr(c, "name", str(c)).lower() for c in dataset.colorinterp]
    except Exception:  # a driver without colour interpretation
        return [None] * dataset.count
    stated = [c if c in ("red", "green", "blue") else None for c in colours]
    default = colours[:3] == ["red", "green", "blue"] and all(d == "uint8" for d in dataset.dtypes)
    if default or len([c for c in stated if c]) != len({c for c in stated if c}):
        return [None] * dataset.count
    return stated


def _vrt_band_name(vrt: str, band: int, depth: int = 0) -> str | None:
    """The name the sources of ``band`` (1-based) of the VRT file ``vrt`` agree on: their band
    description, or the Sentinel-2 band of their file name; None if they disagree or have none."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(vrt).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    element = next((e for e in root.iter("VRTRasterBand") if e.get("band") == str(band)), None)
    if element is None:
        return None
    description = element.find("Description")
    if description is not None and description.text:
        return description.text
    found: set[str | None] = set()
    for source in element:
        filename = source.find("SourceFilename")
        if filename is None or not filename.text:
            continue
        path = Path(filename.text)
        if filename.get("relativeToVRT") == "1":
            path = Path(vrt).parent / path
        match = _S2_BAND_FILE.search(path.name)
        if match:
            found.add(match.group(1).upper())
        elif path.suffix.lower() == ".vrt" and depth < 4:
            source_band = source.find("SourceBand")
            found.add(_vrt_band_name(str(path), int(source_band.text) if source_band is not None else 1, depth + 1))
        else:
            # a mosaic VRT over named stacks (gdalbuildvrt A.tif B.tif ... does not copy the band
            # descriptions): the source band's own description
            source_band = source.find("SourceBand")
            found.add(_source_description(str(path), int(source_band.text) if source_band is not None else 1))
    return found.pop() if len(found) == 1 else None


def _source_description(path: str, band: int) -> str | None:
    """The description of ``band`` (1-based) of the raster file ``path``; None if it has none or
    cannot be opened."""
    try:
        import rasterio

        with rasterio.open(path) as source:
            return source.descriptions[band - 1] or None if 1 <= band <= source.count else None
    except Exception:  # a missing or unreadable source: the VRT itself will say so when read
        return None


def _sentinel2_order(dataset: Any, card_bands: Sequence[str], nodata: float | None) -> tuple[list[str | None], str | None]:
    """Band names for a raster that names none of its 13 bands, when the model reads Sentinel-2
    bands: from where its cirrus band is (:func:`core.io.units.infer_sentinel2_order`), so a stack
    in band-number order (B8A ninth) is not read as one in file-name order (B8A last), as the
    shipped 13-band model's card has them. (names, why), or the unnamed bands and None."""
    from .units import S2_BAND_NUMBER_ORDER, infer_sentinel2_order

    unnamed: list[str | None] = [None] * dataset.count
    if not {normalise_band_name(b) for b in card_bands} <= set(S2_BAND_NUMBER_ORDER):
        return unnamed, None
    alpha = set(alpha_bands(dataset))
    data_bands = [b for b in range(1, dataset.count + 1) if b not in alpha]
    found = infer_sentinel2_order(dataset, data_bands, nodata)
    if found is None:
        return unnamed, None
    names, why = found
    for band, name in zip(data_bands, names):
        unnamed[band - 1] = name
    return unnamed, why


def select_bands(
    descriptions: Sequence[str | None], count: int, card_bands: Sequence[str], requested: Sequence[int] | None,
    alpha: Sequence[int] = (),
) -> list[int]:
    """1-based raster band indices to feed the model, in the card's band order.

    ``requested`` (1-based) wins when given. Otherwise bands are matched by name against the
    raster's band descriptions; failing that, a raster with exactly as many bands as the
    model reads, not counting its ``alpha`` bands (1-based; they say where the image is, they are
    no data to classify), is taken in its own order.
    """
    need = len(card_bands)
    if requested:
        bands = [int(b) for b in requested]
        if len(bands) != need:
            raise RasterInputError(
                f"the model reads {need} bands ({', '.join(card_bands)}) but {len(bands)} were selected"
            )
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise RasterInputError(f"band(s) {bad} do not exist: the raster has bands 1..{count}")
        return bands
    by_name = {n: i + 1 for i, n in enumerate(raster_band_names(descriptions, card_bands)) if n}
    wanted = [normalise_band_name(b) for b in card_bands]
    if all(w in by_name for w in wanted):
        return [by_name[w] for w in wanted]
    image = [b for b in range(1, count + 1) if b not in set(alpha)]
    if len(image) == need:
        return image
    count = len(image)
    if count < need:
        raise RasterInputError(
            f"the model reads {need} bands ({', '.join(card_bands)}) but the raster has only {count}; "
            "use a raster that holds these bands (e.g. stack them into one raster with Build Virtual Raster)"
        )
    missing = [b for b, w in zip(card_bands, wanted) if w not in by_name]
    if not any(descriptions):
        raise RasterInputError(
            f"the model reads bands {', '.join(card_bands)}; the raster has {count} bands without names. Choose the "
            f"bands to use (BANDS), in that order (e.g. 3,2,1 for a stack of B02, B03, B04, B08), or name the bands "
            "in their descriptions (B02, B03, ...)."
        )
    raise RasterInputError(
        f"the model reads bands {', '.join(card_bands)}; the raster has {count} bands and "
        f"none named {', '.join(missing)}. Choose the bands to use (BANDS), in that order."
    )


def describe_band_choice(
    descriptions: Sequence[str | None], card_bands: Sequence[str], bands: Sequence[int], requested: Sequence[int] | None
) -> str:
    """One line for the log saying which raster band feeds which model band and how that was
    decided. A raster without band names is read in its own order, which is silently wrong for,
    e.g., a Sentinel-2 stack with B8A after B08 fed to a model whose card puts B8A last."""
    pairs = ", ".join(f"{name}<-band {b}" for name, b in zip(card_bands, bands))
    if requested:
        return f"bands as selected: {pairs}"
    normalised = raster_band_names(descriptions, card_bands)
    names = [normalised[b - 1] for b in bands]
    if names == [normalise_band_name(c) for c in card_bands]:
        return f"bands matched by name: {pairs}"
    if not any(descriptions):
        return (f"WARNING: bands taken in the raster's order (it does not name them): {pairs}; if the raster's "
                f"band order differs, choose the bands (BANDS) in the model's order")
    named = ", ".join(f"band {b} '{descriptions[b - 1]}'" for b in bands if descriptions[b - 1])
    return (f"WARNING: bands taken in the raster's order, as the model's band names ({', '.join(card_bands)}) are not "
            f"the raster's ({named}): {pairs}; if the model was trained on another band order, choose the bands "
            "(BANDS) in the model's order")


#: WGS 84 ellipsoid: semi-major axis (m) and first eccentricity squared
_WGS84_A = 6_378_137.0
_WGS84_E2 = (1 / 298.257223563) * (2 - 1 / 298.257223563)
#: a projected CRS whose scale at the raster's centre is within this fraction of 1 (UTM and other
#: transverse Mercator grids, Lambert and Albers equal-area national grids) keeps its nominal units
PROJECTED_SCALE_TOLERANCE = 0.01


def _ground_metres(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """Distance in metres on the WGS 84 ellipsoid between two nearby points (degrees), from the
    meridian and prime-vertical radii of curvature at their mean latitude (exact to far below a
    millimetre for points a few pixels apart)."""
    phi = math.radians((lat0 + lat1) / 2.0)
    w = 1.0 - _WGS84_E2 * math.sin(phi) ** 2
    meridional = _WGS84_A * (1.0 - _WGS84_E2) / w ** 1.5
    prime_vertical = _WGS84_A / math.sqrt(w)
    north = meridional * math.radians(lat1 - lat0)
    east = prime_vertical * math.cos(phi) * math.radians(lon1 - lon0)
    return math.hypot(north, east)


def _projected_ground_size(dataset: Any, res_x: float, res_y: float) -> tuple[float, float] | None:
    """Ground width and height in metres of one pixel at the raster's centre, by projecting the
    centre and its neighbours one pixel east and north to longitude / latitude; None when the
    CRS cannot be projected to WGS 84."""
    from rasterio.warp import transform

    bounds = dataset.bounds
    x, y = (bounds.left + bounds.right) / 2.0, (bounds.bottom + bounds.top) / 2.0
    try:
        lons, lats = transform(dataset.crs, "EPSG:4326", [x, x + res_x, x], [y, y, y + res_y])
    except Exception:  # a CRS PROJ cannot relate to WGS 84 (engineering or local CRSs)
        return None
    if not all(map(math.isfinite, [*lons, *lats])):
        return None
    return (_ground_metres(lons[0], lats[0], lons[1], lats[1]),
            _ground_metres(lons[0], lats[0], lons[2], lats[2]))


def pixel_size_metres(dataset: Any) -> tuple[float, float]:
    """Pixel width and height in metres on the ground. Geographic CRSs are converted at the
    raster's centre latitude (an approximation good to a fraction of a percent at tile scale).
    A projected CRS whose scale at the raster's centre differs from 1 by more than
    :data:`PROJECTED_SCALE_TOLERANCE` (Web Mercator, EPSG:3857, away from the equator: its
    "metres" are 1 / cos(latitude) ground metres) is converted by its scale there; other
    projected CRSs (UTM, national grids) keep their nominal units."""
    res_x, res_y = abs(dataset.transform.a), abs(dataset.transform.e)
    crs = dataset.crs
    if crs is None:
        raise no_crs_error(getattr(dataset, "name", "the raster"))
    if crs.is_geographic:
        lat = (dataset.bounds.top + dataset.bounds.bottom) / 2.0
        metres_per_degree = 111_320.0
        return res_x * metres_per_degree * math.cos(math.radians(lat)), res_y * metres_per_degree
    try:
        factor = crs.linear_units_factor[1]
    except Exception:  # CRS without declared units
        factor = 1.0
    nominal = (res_x * factor, res_y * factor)
    ground = _projected_ground_size(dataset, res_x, res_y)
    if ground is None or min(ground) <= 0:
        return nominal
    if all(abs(g / n - 1.0) <= PROJECTED_SCALE_TOLERANCE for g, n in zip(ground, nominal)):
        return nominal
    return ground


def open_raster(path: Any, what: str = "raster", require_crs: bool = True) -> Any:
    """``path`` opened with rasterio (the caller closes it). An unreadable file, and with
    ``require_crs`` a raster without a CRS or not north-up (:func:`rotated_error`), raise
    :class:`RasterInputError` naming ``what``."""
    import rasterio

    try:
        ds = rasterio.open(path)
    except Exception as exc:  # rasterio.errors.RasterioIOError and friends
        raise RasterInputError(f"cannot open {what} {path}: {exc}") from exc
    if require_crs and (ds.crs is None or is_rotated(ds.transform)):
        ds.close()
        raise no_crs_error(path) if ds.crs is None else rotated_error(path)
    return ds


def is_rotated(transform: Any) -> bool:
    """True when a geotransform has rotation or shear terms (the raster is not north-up)."""
    return transform.b != 0 or transform.d != 0


def rotated_error(path: Any) -> RasterInputError:
    """The error for a raster whose geotransform is rotated: pixel sizes, tiles and footprints
    are computed for north-up grids, as QGIS draws them."""
    return RasterInputError(
        f"{path}: the raster's geotransform is rotated (not north-up), which Glassbox does not read; warp it "
        "to a north-up grid first (Raster > Projections > Warp (Reproject), or gdalwarp in.tif out.tif) and run again"
    )


def no_crs_error(path: Any) -> RasterInputError:
    """The error for a raster without a coordinate reference system."""
    return RasterInputError(
        f"{path}: the raster has no CRS (coordinate reference system), so where it lies and its pixel size in "
        "metres are unknown; assign its CRS first (Raster > Projections > Assign Projection, or "
        "gdal_edit.py -a_srs EPSG:...) and run again"
    )


def smaller_than_tile_error(width: int, height: int, footprint: tuple[int, int], tile_size: int, gsd: float,
                            needed: str) -> RasterInputError:
    """The error for a raster of ``width`` x ``height`` pixels smaller than one tile (``footprint``
    (rows, cols) raster pixels = ``tile_size`` model pixels of ``gsd`` metres); ``needed`` says why
    that is too small."""
    raster_pixels = "" if tuple(footprint) == (tile_size, tile_size) else \
        f" = {footprint[1]} x {footprint[0]} raster pixels"
    return RasterInputError(
        f"the raster ({width} x {height} pixels) is smaller than one tile ({tile_size} x {tile_size} pixels at "
        f"{gsd:g} m{raster_pixels}): {needed}; use a larger raster (or smaller tiles)"
    )


def no_overlap_error(what: str, bounds: Sequence[float], dataset: Any, verb: str = "do") -> RasterInputError:
    """The error for ``what`` (e.g. 'the mask polygons') with ``bounds`` (xmin, ymin, xmax, ymax
    in the raster CRS) lying off the raster."""
    b = dataset.bounds
    crs = dataset.crs.to_string() if dataset.crs is not None else "no CRS"
    return RasterInputError(
        f"{what} {verb} not overlap the raster: extent {_fmt_bounds(bounds)}, the raster's "
        f"{_fmt_bounds((b.left, b.bottom, b.right, b.top))} (xmin, ymin, xmax, ymax in the raster's CRS, {crs}). "
        "Check that "
        "both cover the same area and that each layer's CRS is set right (coordinates read in the wrong CRS "
        "land somewhere else)"
    )


def _fmt_bounds(bounds: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in bounds) + ")"


@dataclass(frozen=True)
class Area:
    """A window of whole input pixels: ``row_off``, ``col_off``, ``height``, ``width``."""

    row_off: int
    col_off: int
    height: int
    width: int


def area_from_bounds(dataset: Any, bounds: Sequence[float] | None) -> Area:
    """The input-grid window covering ``bounds`` (xmin, ymin, xmax, ymax in the raster CRS),
    snapped outwards to whole pixels and clipped to the raster. ``None`` -> whole raster."""
    if bounds is None:
        return Area(0, 0, dataset.height, dataset.width)
    from rasterio.windows import from_bounds

    xmin, ymin, xmax, ymax = bounds
    if xmax <= xmin or ymax <= ymin:
        raise RasterInputError("the extent is empty")
    win = from_bounds(xmin, ymin, xmax, ymax, transform=dataset.transform)
    row0 = max(0, math.floor(win.row_off + 1e-9))
    col0 = max(0, math.floor(win.col_off + 1e-9))
    row1 = min(dataset.height, math.ceil(win.row_off + win.height - 1e-9))
    col1 = min(dataset.width, math.ceil(win.col_off + win.width - 1e-9))
    if row1 <= row0 or col1 <= col0:
        raise no_overlap_error("the extent (or mask)", bounds, dataset, "does")
    return Area(row0, col0, row1 - row0, col1 - col0)


class MaskPolygons:
    """Polygons (GeoJSON-like geometry dicts in the raster CRS) that limit processing: pixels
    outside all of them are treated as nodata."""

    def __init__(self, geometries: Sequence[dict]):
        from rasterio.features import bounds as geometry_bounds

        self.geometries = [g for g in geometries if g]
        if not self.geometries:
            raise RasterInputError("the mask layer has no polygons")
        self.bounds = np.array([geometry_bounds(g) for g in self.geometries], dtype=np.float64)

    def total_bounds(self) -> tuple[float, float, float, float]:
        b = self.bounds
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())

    def inside(self, transform: Any, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``shape`` array, True for pixels (of a window with ``transform``) inside."""
        from rasterio.features import geometry_mask
        from rasterio.transform import array_bounds

        south, west, north, east = _array_bounds(array_bounds, shape, transform)
        b = self.bounds
        hits = (b[:, 0] <= east) & (b[:, 2] >= west) & (b[:, 1] <= north) & (b[:, 3] >= south)
        if not hits.any():
            return np.zeros(shape, dtype=bool)
        chosen = [self.geometries[i] for i in np.flatnonzero(hits)]
        return geometry_mask(chosen, out_shape=shape, transform=transform, invert=True)


def _array_bounds(array_bounds: Any, shape: tuple[int, int], transform: Any) -> tuple[float, ...]:
    west, south, east, north = array_bounds(shape[0], shape[1], transform)
    return south, west, north, east


# -- GDAL's block cache ----------------------------------------------------------------------------
#: bounds of GDAL's block cache while a raster job runs (see :func:`block_cache_limit`)
BLOCK_CACHE_MIN = 64 * 2**20
BLOCK_CACHE_MAX = 256 * 2**20
_cache_lock = threading.Lock()
_cache_limits: list[int] = []
_cache_saved: list[int] = []


def _set_cache_max(nbytes: int) -> None:
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", int(nbytes))


_cache_overrides: list[int] = []


@contextmanager
def block_cache_limit(nbytes: int, override: bool = False) -> Iterator[None]:
    """Limit GDAL's block cache (of the GDAL rasterio uses) to ``nbytes`` while the block runs.

    GDAL keeps every block it reads or writes in one process-wide cache of up to 5 % of the
    machine's memory by default, so a job's resident memory would grow with the raster up to that
    size (1.2 GB on a 24 GB machine) although the job itself holds only a band of rows. Nested
    and concurrent limits (several jobs, threads) are honoured: the largest active one applies,
    never more than the cache size before the first limit, which is restored when the last one
    ends. An ``override`` limit (e.g. while a finished output is converted, when the cache's
    blocks are of no more use) applies however large the others are; the smallest override wins."""
    users = _cache_overrides if override else _cache_limits
    with _cache_lock:
        if not _cache_limits and not _cache_overrides:
            from rasterio.env import get_gdal_config

            current = get_gdal_config("GDAL_CACHEMAX")
            _cache_saved[:] = [int(current)] if isinstance(current, int) and current > 0 else []
        users.append(int(nbytes))
        _apply_cache_limit()
    try:
        yield
    finally:
        with _cache_lock:
            users.remove(int(nbytes))
            if _cache_limits or _cache_overrides:
                _apply_cache_limit()
            elif _cache_saved:
                _set_cache_max(_cache_saved[0])


def _apply_cache_limit() -> None:
    limit = min(_cache_overrides) if _cache_overrides else max(_cache_limits)
    if _cache_saved:
        limit = min(limit, _cache_saved[0])
    _set_cache_max(limit)


def block_cache_bytes(dataset: Any, bands: Sequence[int]) -> int:
    """A block cache for reading ``bands`` of ``dataset`` row by row and writing outputs of its
    width: a little more than one row of its blocks (each block is then decompressed once however
    many tile rows it spans), plus room for the outputs' blocks, within
    [:data:`BLOCK_CACHE_MIN`, :data:`BLOCK_CACHE_MAX`]."""
    try:
        block_rows = int(dataset.block_shapes[0][0])
        itemsize = max(np.dtype(t).itemsize for t in dataset.dtypes)
        interleaved = str(getattr(dataset.interleaving, "name", "")).lower() == "pixel"
        count = dataset.count if interleaved else len(bands)
        row_of_blocks = dataset.width * block_rows * itemsize * count
    except Exception:  # a driver that does not report its blocks
        return BLOCK_CACHE_MIN
    return int(min(BLOCK_CACHE_MAX, max(BLOCK_CACHE_MIN, 1.25 * row_of_blocks + 32 * 2**20)))


class RasterSource:
    """An open input raster with the bands, nodata and resampling a model needs.

    ``read_tile`` returns raw values ``(bands, tile, tile)`` float32 at the model's resolution
    and a validity mask ``(tile, tile)``: False where every selected band equals nodata, any is
    NaN, the raster's alpha band or mask band marks no data (:func:`uses_dataset_mask`), or the
    pixel lies outside the raster. ``read_tiles`` does the same for several tiles at
    once, reading the tiles of one tile row that need no resampling as one window.

    With the model's ``card``, a raster in other units than the model reads (an 8-bit image or
    reflectance 0..1 for a model of digital numbers, :mod:`core.io.units`) is refused on opening.

    While the source is open, GDAL's block cache is limited (:func:`block_cache_limit`,
    :func:`block_cache_bytes`), so memory does not grow with the raster's size.
    """

    def __init__(self, path: str, band_indices: Sequence[int] | None, card_bands: Sequence[str], nodata: float | None = None,
                 card: Any = None):
        self._cache = None
        self.dataset = open_raster(path, require_crs=False)  # bands are checked before the CRS
        ds = self.dataset
        inferred = None
        try:
            descriptions = band_descriptions(ds)
            if not band_indices and not any(descriptions):
                descriptions, inferred = _sentinel2_order(ds, card_bands, nodata if nodata is not None else ds.nodata)
            self.bands = select_bands(descriptions, ds.count, card_bands, band_indices, alpha_bands(ds))
        except BaseException:
            ds.close()
            raise
        self.band_note = describe_band_choice(descriptions, card_bands, self.bands, band_indices)
        if inferred:
            pairs = ", ".join(f"{name}<-band {b}" for name, b in zip(card_bands, self.bands))
            self.band_note = (f"WARNING: the raster does not name its bands; {inferred}: {pairs}; if that is wrong, "
                              "name the bands or choose them (BANDS) in the model's order")
        self.nodata = nodata if nodata is not None else ds.nodata
        self.masked = uses_dataset_mask(ds)
        from .units import unmarked_zeros_warning

        #: a warning for the log when many pixels are 0 in every band and nothing marks nodata
        self.nodata_note = unmarked_zeros_warning(ds, self.bands, self.nodata, self.masked)
        if ds.crs is None or is_rotated(ds.transform):
            ds.close()
            raise no_crs_error(path) if ds.crs is None else rotated_error(path)
        if card is not None:
            from .units import units_mismatch

            problem = units_mismatch(ds, self.bands, card.scaling, card.name, self.nodata, list(card_bands))
            if problem:
                ds.close()
                raise RasterInputError(problem)
        self._cache = block_cache_limit(block_cache_bytes(ds, self.bands))
        self._cache.__enter__()

    def close(self) -> None:
        self.dataset.close()
        if self._cache is not None:
            cache, self._cache = self._cache, None
            cache.__exit__(None, None, None)

    def describe_invalid(self, area: Area, min_valid_fraction: float, masked: bool = False) -> str:
        """Why no tile of ``area`` holds ``min_valid_fraction`` valid pixels, from a look at (a
        decimated read of) the area: every pixel NaN, every pixel nodata, or valid pixels too few
        (``masked``: pixels outside mask polygons count as invalid too)."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        shape = (len(self.bands), min(area.height, 512), min(area.width, 512))
        data = self.dataset.read(self.bands, window=Window(area.col_off, area.row_off, area.width, area.height),
                                 out_shape=shape, resampling=Resampling.nearest).astype(np.float64)
        nan = np.any(np.isnan(data), axis=0)
        nodata = self.nodata is not None and not np.isnan(self.nodata)
        equal = np.all(data == self.nodata, axis=0) if nodata else np.zeros(nan.shape, bool)
        if self.masked:
            hidden = ~dataset_mask(self.dataset, Window(area.col_off, area.row_off, area.width, area.height),
                                   shape[1:])
            if hidden.all():
                return "every pixel lies outside the image, as the raster's alpha or mask band marks it"
            equal |= hidden
        if nan.all():
            return "every pixel of the bands read is NaN (not a number), i.e. no data"
        if (nan | equal).all():
            return (f"every pixel of the bands read {'is NaN or ' if nan.any() else ''}equals the nodata value "
                    f"{self.nodata:g}")
        where = " inside the mask polygons" if masked else ""
        return (f"{1 - (nan | equal).mean():.0%} of the area's pixels hold data, but no tile has "
                f"{min_valid_fraction:.0%} of its pixels valid{where}")

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def footprint_for(self, tile_size: int, gsd: float) -> tuple[int, int]:
        """Source pixels (rows, cols) covered by one tile of ``tile_size`` model pixels of
        ``gsd`` metres. Within 1 % of the model's resolution no resampling happens."""
        size_x, size_y = pixel_size_metres(self.dataset)
        fx, fy = gsd / size_x, gsd / size_y
        fx = 1.0 if abs(fx - 1.0) < 0.01 else fx
        fy = 1.0 if abs(fy - 1.0) < 0.01 else fy
        return max(1, round(tile_size * fy)), max(1, round(tile_size * fx))

    def read_tile(self, area: Area, row_off: int, col_off: int, footprint: tuple[int, int], tile_size: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        ds = self.dataset
        fh, fw = footprint
        row, col = area.row_off + row_off, area.col_off + col_off
        window = Window(col, row, fw, fh)
        outside = row < 0 or col < 0 or row + fh > ds.height or col + fw > ds.width
        resample = (fh, fw) != (tile_size, tile_size)
        resampling = Resampling.average if fh > tile_size else Resampling.bilinear
        fill = self.nodata if self.nodata is not None and not np.isnan(self.nodata) else 0
        data = ds.read(
            self.bands,
            window=window,
            out_shape=(len(self.bands), tile_size, tile_size),
            resampling=resampling if resample else Resampling.nearest,
            boundless=outside,
            fill_value=fill if outside else None,
            masked=False,
        ).astype(np.float32, copy=False)
        valid = read_validity(ds, data, self.nodata, window, (tile_size, tile_size), outside, self.masked)
        if outside:
            rows = row + (np.arange(tile_size) + 0.5) * fh / tile_size
            cols = col + (np.arange(tile_size) + 0.5) * fw / tile_size
            valid &= ((rows >= 0) & (rows < ds.height))[:, None]
            valid &= ((cols >= 0) & (cols < ds.width))[None, :]
        return data, valid


    def read_tiles(self, area: Area, offsets: Sequence[tuple[int, int]], footprint: tuple[int, int],
                   tile_size: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read_tile` for the tiles at ``offsets`` ((row_off, col_off) area pixels):
        ``(N, bands, tile, tile)`` float32 and ``(N, tile, tile)`` validity, the same values.
        Consecutive tiles with the same row offset that lie inside the raster and need no
        resampling are read as one window and cut apart, instead of one read per tile."""
        n, size = len(offsets), tile_size
        data = np.empty((n, len(self.bands), size, size), np.float32)
        valid = np.empty((n, size, size), bool)
        ds = self.dataset
        fh, fw = footprint
        direct = (fh, fw) == (size, size)
        i = 0
        while i < n:
            row_off, col_off = offsets[i]
            row, col = area.row_off + row_off, area.col_off + col_off
            if not direct or row < 0 or col < 0 or row + fh > ds.height or col + fw > ds.width:
                data[i], valid[i] = self.read_tile(area, row_off, col_off, footprint, size)
                i += 1
                continue
            j = i + 1  # the run of tiles on this row, left to right, inside the raster
            while (j < n and offsets[j][0] == row_off and offsets[j][1] >= offsets[j - 1][1]
                   and area.col_off + offsets[j][1] + fw <= ds.width):
                j += 1
            first, last = col, area.col_off + offsets[j - 1][1] + fw
            span, span_valid = self._read_window(row, first, fh, last - first)
            for k in range(i, j):
                c = area.col_off + offsets[k][1] - first
                data[k] = span[:, :, c : c + fw]
                valid[k] = span_valid[:, c : c + fw]
            i = j
        return data, valid

    def _read_window(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The selected bands of a window inside the raster, as they are (float32), and its
        validity (as :meth:`read_tile`)."""
        from rasterio.windows import Window

        window = Window(col, row, width, height)
        data = self.dataset.read(self.bands, window=window, masked=False)
        data = data.astype(np.float32, copy=False)
        return data, read_validity(self.dataset, data, self.nodata, window, masked=self.masked)


def alpha_bands(dataset: Any) -> list[int]:
    """1-based indices of the raster's alpha bands (colour interpretation 'alpha')."""
    from rasterio.enums import ColorInterp

    return [i + 1 for i, interp in enumerate(dataset.colorinterp) if interp == ColorInterp.alpha]


def uses_dataset_mask(dataset: Any) -> bool:
    """True when the raster says where it holds data with an alpha band or a mask band of its own
    (GDAL's per-dataset mask: a ``.msk`` file, or the internal mask of a JPEG-compressed GeoTIFF),
    as aerial orthophotos often do, rather than with a nodata value alone."""
    from rasterio.enums import MaskFlags

    flags = dataset.mask_flag_enums[0] if dataset.count else []
    return bool(alpha_bands(dataset)) or MaskFlags.alpha in flags or MaskFlags.per_dataset in flags


def dataset_mask(dataset: Any, window: Any, out_shape: tuple[int, int] | None = None,
                 boundless: bool = False) -> np.ndarray:
    """(rows, cols) True where the raster's alpha band (any band whose colour interpretation is
    alpha: GDAL itself takes one only after 1 or 3 image bands) or its mask band marks data, in
    ``window`` (read at ``out_shape`` by nearest neighbour when given; outside the raster False)."""
    from rasterio.enums import Resampling

    alpha = alpha_bands(dataset)
    if alpha:
        shape = out_shape or ((window.height, window.width) if window is not None else dataset.shape)
        mask = dataset.read(alpha[0], window=window, out_shape=shape, boundless=boundless, fill_value=0,
                            resampling=Resampling.nearest, masked=False)
    else:
        mask = dataset.read_masks(1, window=window, out_shape=out_shape, boundless=boundless,
                                  resampling=Resampling.nearest)
    return mask > 0


def read_validity(dataset: Any, data: np.ndarray, nodata: float | None, window: Any,
                  out_shape: tuple[int, int] | None = None, boundless: bool = False,
                  masked: bool | None = None) -> np.ndarray:
    """The validity (rows, cols) of ``data`` read from ``dataset`` in ``window`` (at ``out_shape``,
    ``boundless`` as the read): :func:`valid_pixels`, and False where the raster's alpha or mask
    band hides the pixel (:func:`dataset_mask`). ``masked``: whether the raster has such a band
    (None: asked of the dataset, :func:`uses_dataset_mask`)."""
    valid = valid_pixels(data, nodata)
    if uses_dataset_mask(dataset) if masked is None else masked:
        valid &= dataset_mask(dataset, window, out_shape, boundless)
    return valid


def valid_pixels(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(rows, cols) of float32 ``data`` (bands, rows, cols): True where no band is NaN and not
    every band equals ``nodata`` (compared as float32), the validity of every tile Glassbox reads."""
    valid = ~np.any(np.isnan(data), axis=0)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~np.all(data == np.float32(nodata), axis=0)
    return valid


def upsample_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D array to ``shape`` by nearest neighbour (pixel-centre mapping)."""
    if mask.shape == tuple(shape):
        return mask
    rows = ((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(int)
    return mask[np.ix_(rows, cols)]
