"""Segment a raster from explanation seed points: polygons of the objects the seeds sit on.

Entry points: :func:`segment_raster` (seeds -> polygon GeoPackage) and the seed sources
:func:`seeds_from_heatmap` (peaks of a heatmap raster) and :func:`seeds_from_model` (Grad-CAM
peaks of a model, computed in memory); a point layer (e.g. ``OUTPUT_PEAKS`` of
``glassbox:explain``) is turned into :class:`Seed` objects by the caller.

**Seeds.** A :class:`Seed` is a point ``x, y`` in the raster CRS with a ``score`` (relevance;
1 when unknown), a ``cls`` (class name), an ``id`` and ``positive`` (False: a background point).
Positive seeds below ``SegmentOptions.min_score`` are skipped ("weak"); seeds outside the raster
or on a nodata pixel are skipped too; all are counted in :class:`SegmentResult` and in the log,
never an error, unless no usable positive seed remains (:class:`.errors.SegmentationError`,
nothing written). *Negative points* are the explicit negative seeds plus, per window, up to
``negative_points`` of the lowest-relevance candidates inside it (local minima of the heatmap,
found per heatmap tile by the same peak finder on the inverted heatmap, at least
``peak_min_distance`` pixels from every positive seed of the window).

**Windows.** The raster is never read whole. Its grid is cut into square *cells* of
``window_size - 2 * margin`` pixels (``margin = window_size // 8``); each positive seed belongs
to the cell holding it, and every cell with seeds is read as one window of up to
``window_size`` x ``window_size`` pixels: the cell plus ``margin`` pixels of context on each
side (clipped to the raster). Every seed is segmented exactly once, in its cell's window, so
memory is bounded by one window (plus the polygons found so far) whatever the raster's size.
An object that runs across a cell border is segmented in each window that has a seed on it;
the pieces overlap in the margins and are merged (below). An object is followed at most
``margin`` pixels beyond the cell of its seeds: large objects need seeds in every cell they
cover (explanation peaks give one or more per model tile).

**Bands and stretch.** The bands are ``SegmentOptions.bands`` (1-based) or, when empty, the
raster's true-colour bands found by name (``B04, B03, B02`` or ``red, green, blue``), else the
first three (fewer when the raster has fewer). Segment Anything sees at most 3 bands. Each band
is stretched linearly from its 2nd to its 98th percentile to 0..1 (8-bit 0..255 for SAM),
percentiles computed once for the whole raster on a read decimated to at most 1024 pixels on
its long side, so all windows look alike. A pixel is nodata when every selected band equals the
nodata value or any is NaN; nodata pixels never belong to a segment.

**Methods.**

* ``"watershed"`` -- *Seeded watershed (scikit-image)*, the default, needs no model file:
  ``skimage.segmentation.watershed`` flooding from markers at the positive seeds of the window
  (seeds of neighbouring cells inside the window too, so neighbouring objects compete) and at
  background pixels (the negative points, and pixels whose colour and texture are far from every
  seed's, by Otsu's threshold). The relief is that colour/texture distance plus the image's
  gradient, so a seed's segment grows over pixels that look like it and stops at edges (details:
  :func:`watershed_window`; scale ``smoothing`` pixels).
* ``"sam"`` -- Segment Anything (:mod:`.sam`): samgeo's ``SamGeoPredictor`` with the model
  loaded from ``sam_checkpoint`` (``sam_model_type`` vit_b/vit_l/vit_h, or vit_t = MobileSAM when
  its package is installed). Each window is embedded once as an 8-bit RGB image; each seed is
  prompted on its own (the seed as a positive point, the window's negative points as negative
  points) and the best of SAM's three masks (by its predicted IoU) is kept, restricted to valid
  pixels and to its connected part holding the seed (the whole mask when the seed is outside
  it). ``"mobile_sam"`` is ``"sam"`` with model type vit_t.

**Polygons.** Masks are vectorised per window with ``rasterio.features.shapes`` (as samgeo's
``raster_to_vector`` does, but in memory and per window) in *global pixel coordinates*, so
pieces from neighbouring windows share exact vertices; all pieces of a class are merged with
OGR's union (GDAL's GEOS: the one QGIS links, see :mod:`.vectors`) and split into connected
polygons, then mapped to the raster CRS,
simplified with ``simplify_tolerance`` (CRS units, topology preserved; 0 = pixel edges kept)
and dropped below ``min_area`` (CRS units squared). Fields: ``class``, ``score`` (the highest
score of its seeds), ``seed_ids`` (comma-separated, ascending), ``n_seeds``, ``area`` (CRS
units squared: m^2 for a metric CRS, square degrees for a geographic one), ``method``. Where
windows or seeds of different classes disagree, polygons of different classes may overlap.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import Cancelled, RasterInputError, SegmentationError
from .vectors import VectorLayer, _InMemory, is_file_target, points_layer, write_gpkg

METHODS = ("watershed", "sam")
METHOD_LABELS = {"watershed": "Seeded watershed (scikit-image)", "sam": "Segment Anything (samgeo)"}
DEFAULT_CLASS = "segment"
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_SIDE = 1024
#: default colours for classes without a model card, in order of first appearance
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#469990", "#9a6324", "#800000", "#808000", "#000075", "#a9a9a9"]
STATUS_USED = "used"
STATUS_OUTSIDE = "outside the raster"
STATUS_NODATA = "on nodata"
STATUS_WEAK = "below the minimum score"
STATUS_EMPTY = "no segment"
STATUS_NEGATIVE = "negative point"
STATUS_UNUSED_NEGATIVE = "negative point, not used"

Progress = Callable[[float], None]


def _noop(*_a: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class Seed:
    """A seed point: ``x, y`` in the raster CRS; ``score`` its relevance (1 when unknown);
    ``cls`` its class name; ``id`` reported in the polygons' ``seed_ids``; ``positive`` False
    for a background (negative) point."""

    x: float
    y: float
    score: float = 1.0
    cls: str = DEFAULT_CLASS
    id: int = 0
    positive: bool = True


@dataclass
class SeedSet:
    """Seeds for :func:`segment_raster`: ``seeds`` (positive and explicit negative points, all
    used), ``negative_candidates`` (low-relevance points, up to ``negative_points`` per window
    used, lowest score first), ``class_colours`` (class -> ``#rrggbb`` when a model card gives
    them) and ``source`` (a description for the log)."""

    seeds: list[Seed]
    negative_candidates: list[Seed] = field(default_factory=list)
    class_colours: dict[str, str] = field(default_factory=dict)
    source: str = "seed points"


@dataclass
class SegmentOptions:
    """``method``: ``watershed`` (default), ``sam`` or ``mobile_sam``. ``sam_checkpoint`` and
    ``sam_model_type`` for SAM. ``negative_points``: negative candidates used per window.
    ``window_size``: window side in pixels. ``simplify_tolerance``: CRS units (0 = none).
    ``min_area``: CRS units squared. ``min_score``: positive seeds scoring less are skipped.
    ``bands``: 1-based raster bands (empty: true colour by name, else the first three).
    ``nodata``: overrides the raster's. ``smoothing``: Gaussian sigma (pixels) before the
    watershed gradient. ``device``: for SAM."""

    method: str = "watershed"
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    negative_points: int = 0
    window_size: int = 1024
    simplify_tolerance: float = 0.0
    min_area: float = 0.0
    min_score: float = 0.0
    bands: Sequence[int] | None = None
    nodata: float | None = None
    smoothing: float = 2.0
    device: str = "cpu"


@dataclass
class SegmentResult:
    outputs: dict[str, str]
    method: str
    seeds_total: int
    seeds_used: int
    seeds_outside: int
    seeds_nodata: int
    seeds_weak: int
    seeds_without_segment: int
    negatives_used: int
    windows: int
    polygons: int
    bands: list[int]
    stretch: list[tuple[float, float]]
    seconds: float
    class_colours: dict[str, str] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    #: vector outputs built by the run (``"polygons"``, ``"seeds"``), whether written to a file or not
    layers: dict[str, VectorLayer] = field(default_factory=dict)


def check_method(method: str) -> tuple[str, str | None]:
    """(method, forced model type): ``mobile_sam`` is ``sam`` with model type ``vit_t``."""
    text = (method or "watershed").strip().lower().replace("-", "_").replace(" ", "_")
    if text in ("mobile_sam", "mobilesam"):
        return "sam", "vit_t"
    if text in ("segment_anything", "samgeo"):
        text = "sam"
    if text not in METHODS:
        raise SegmentationError(f"unknown segmentation method '{method}'; "
                                f"use one of {', '.join(METHODS)} or mobile_sam")
    return text, None


# -- seeds from a heatmap raster or a model -------------------------------------------------
def _negatives_in_tile(heat: np.ndarray, valid: np.ndarray, count: int, min_distance: int
                       ) -> list[tuple[int, int, float]]:
    """Up to ``count`` local minima (row, col, smoothed relevance) of a tile's heatmap: the
    peaks of the inverted heatmap, by :func:`.explain.local_peaks`."""
    from .explain import local_peaks

    if count <= 0 or not valid.any():
        return []
    top = float(np.max(np.where(valid, heat, -np.inf)))
    inverted = np.where(valid, top - heat, 0.0) + 1e-6
    return [(r, c, top + 1e-6 - v) for r, c, v in local_peaks(inverted, count, min_distance, valid)]


def seeds_from_heatmap(heatmap_path: str, raster_crs: Any, peaks_per_tile: int = 3, tile_size: int = 64,
                       min_distance: int | None = None, negatives_per_tile: int = 0,
                       class_name: str = DEFAULT_CLASS, is_cancelled: Callable[[], bool] | None = None,
                       progress: Progress | None = None) -> SeedSet:
    """Seeds at the peaks of a heatmap raster (band 1, e.g. ``OUTPUT_HEATMAP`` of
    ``glassbox:explain``; its nodata and NaN are ignored), found as explain finds its peaks:
    per tile of ``tile_size`` heatmap pixels (side by side), up to ``peaks_per_tile`` local
    maxima of the heatmap smoothed by a Gaussian of 1 pixel, at least ``min_distance`` pixels
    apart (default tile/8) (:func:`.explain.local_peaks`). Scores are the smoothed value divided
    by the heatmap's largest value (0..1). Seeds lie at heatmap pixel centres, transformed to
    ``raster_crs`` (anything ``rasterio.crs.CRS.from_user_input`` takes) when the heatmap's CRS
    differs. ``negatives_per_tile`` local minima per tile become negative candidates. The
    heatmap is read tile by tile."""
    import rasterio
    from rasterio.windows import Window

    from .explain import local_peaks

    is_cancelled = is_cancelled or _never
    progress = progress or _noop
    if peaks_per_tile < 1:
        raise SegmentationError("peaks per tile must be at least 1")
    tile_size = max(4, int(tile_size))
    distance = int(min_distance or max(1, tile_size // 8))
    try:
        ds = rasterio.open(heatmap_path)
    except Exception as exc:
        raise RasterInputError(f"cannot open heatmap raster {heatmap_path}: {exc}") from exc
    with ds:
        if ds.crs is None:
            from .raster import no_crs_error

            raise no_crs_error(heatmap_path)
        nodata = ds.nodata
        found: list[tuple[float, float, float, bool]] = []  # x, y, raw value, positive
        top = 0.0
        rows = range(0, ds.height, tile_size)
        cols = range(0, ds.width, tile_size)
        total, done = len(rows) * len(cols), 0
        for r0 in rows:
            if is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            for c0 in cols:
                window = Window(c0, r0, min(tile_size, ds.width - c0), min(tile_size, ds.height - r0))
                heat = ds.read(1, window=window).astype(np.float64)
                valid = np.isfinite(heat)
                if nodata is not None and not np.isnan(nodata):
                    valid &= heat != nodata
                heat = np.where(valid, heat, 0.0)
                done += 1
                if not valid.any():
                    continue
                top = max(top, float(heat.max()))
                transform = ds.window_transform(window)
                for r, c, value in local_peaks(heat, peaks_per_tile, distance, valid):
                    x, y = transform * (c + 0.5, r + 0.5)
                    found.append((x, y, value, True))
                for r, c, value in _negatives_in_tile(heat, valid, negatives_per_tile, distance):
                    x, y = transform * (c + 0.5, r + 0.5)
                    found.append((x, y, value, False))
            progress(100.0 * done / max(1, total))
        heat_crs = ds.crs
    xs, ys = _to_crs([f[0] for f in found], [f[1] for f in found], heat_crs, raster_crs)
    norm = top if top > 0 else 1.0
    positives, negatives = [], []
    for (x, y), (_x, _y, value, positive) in zip(zip(xs, ys), found):
        seed = Seed(float(x), float(y), float(value / norm), class_name, 0, positive)
        (positives if positive else negatives).append(seed)
    _number(positives, negatives)
    return SeedSet(positives, negatives, {}, f"{len(positives)} heatmap peaks")


def seeds_from_model(input_path: str, model: Any, peaks_per_tile: int = 3, method: str = "gradcam",
                     target: str | int | None = None, negatives_per_tile: int = 0, batch_size: int = 16,
                     device: str = "cpu", nodata: float | None = None, min_valid_fraction: float = 0.5,
                     is_cancelled: Callable[[], bool] | None = None, progress: Progress | None = None,
                     log: Callable[[str], None] | None = None) -> SeedSet:
    """Seeds at the explanation peaks of ``model`` (a model path or an :class:`.xai.Explainer`)
    on ``input_path``, computed in memory: the raster is cut into the model's tiles side by side
    (:func:`.tiled.plan_tiles`, stride = one tile; the model's bands found from its card), each
    batch is explained (:meth:`.xai.Explainer.explain`, Grad-CAM by default as in paper 2, for
    each tile's predicted class or ``target``), and each tile's heatmap
    (:func:`.xai.pixel_heatmap`) gives up to ``peaks_per_tile`` peaks exactly as
    ``glassbox:explain`` finds them (:func:`.explain.local_peaks`, tile/8 apart), with the
    explained class as the seed's class and the card's colours. Scores are divided by the largest
    relevance of any tile (explain's one-scale normalisation). ``negatives_per_tile`` local
    minima per tile become negative candidates. No heatmap is kept or written."""
    from .explain import _peak_xy, local_peaks
    from .raster import RasterSource
    from .tiled import iter_batches, plan_tiles
    from .xai import Explainer, load_explainer, pixel_heatmap, resolve_target

    is_cancelled = is_cancelled or _never
    progress = progress or _noop
    log = log or _noop
    if peaks_per_tile < 1:
        raise SegmentationError("peaks per tile must be at least 1")
    explainer = model if isinstance(model, Explainer) else load_explainer(model, device)
    card = explainer.card
    wanted = resolve_target(card, target)
    distance = max(1, card.tile_size // 8)
    found: list[tuple[float, float, float, int, bool]] = []  # x, y, raw, class, positive
    top = 0.0
    with RasterSource(input_path, None, card.bands, nodata) as source:
        plan = plan_tiles(source, card, card.tile_size)
        log(f"seeds: {method} of '{card.name}' on {len(plan.grid)} tiles, {peaks_per_tile} peak(s) per tile")
        for batch in iter_batches(plan, card, batch_size, min_valid_fraction, is_cancelled):
            if batch.tiles:
                expl = explainer.explain(batch.inputs, method, wanted)
                heat = pixel_heatmap(expl.attributions)
                heat[~batch.valid] = 0.0
                top = max(top, float(heat.max()))
                for tile, h, v, t in zip(batch.tiles, heat, batch.valid, expl.targets):
                    for r, c, value in local_peaks(h, peaks_per_tile, distance, v):
                        found.append((*_peak_xy(plan, tile, r, c), value, int(t), True))
                    for r, c, value in _negatives_in_tile(h, v, negatives_per_tile, distance):
                        found.append((*_peak_xy(plan, tile, r, c), value, int(t), False))
            progress(100.0 * batch.done / max(1, batch.total))
    norm = top if top > 0 else 1.0
    positives, negatives = [], []
    for x, y, value, cls, positive in found:
        seed = Seed(x, y, float(value / norm), card.class_names[cls], 0, positive)
        (positives if positive else negatives).append(seed)
    _number(positives, negatives)
    colours = {c.name: c.color for c in card.classes}
    return SeedSet(positives, negatives, colours, f"{len(positives)} {method} peaks of '{card.name}'")


def _number(positives: list[Seed], negatives: list[Seed]) -> None:
    for i, seed in enumerate(positives + negatives, start=1):
        seed.id = i


def _to_crs(xs: Sequence[float], ys: Sequence[float], src: Any, dst: Any) -> tuple[list[float], list[float]]:
    from rasterio.crs import CRS
    from rasterio.warp import transform

    if not xs:
        return [], []
    src_crs, dst_crs = CRS.from_user_input(src), CRS.from_user_input(dst)
    if src_crs == dst_crs:
        return list(xs), list(ys)
    out_x, out_y = transform(src_crs, dst_crs, list(xs), list(ys))
    return list(out_x), list(out_y)


# -- bands, stretch, windows ----------------------------------------------------------------
_TRUE_COLOUR = (("B04", "B03", "B02"), ("RED", "GREEN", "BLUE"))


def choose_bands(dataset: Any, requested: Sequence[int] | None, method: str) -> list[int]:
    """1-based bands to segment (module docstring). SAM takes at most 3."""
    from .raster import normalise_band_name

    count = dataset.count
    if requested:
        bands = [int(b) for b in requested]
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise RasterInputError(f"band(s) {bad} do not exist: the raster has bands 1..{count}")
        if method == "sam" and len(bands) > 3:
            raise SegmentationError(f"Segment Anything sees an RGB image: choose 1 to 3 bands, not {len(bands)}")
        return bands
    names = [normalise_band_name(d or "") for d in dataset.descriptions]
    for wanted in _TRUE_COLOUR:
        if all(w in names for w in wanted):
            return [names.index(w) + 1 for w in wanted]
    return list(range(1, min(3, count) + 1))


def _valid_pixels(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(rows, cols) True where no band is NaN and not every band equals ``nodata``."""
    valid = ~np.any(np.isnan(data), axis=0)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~np.all(data == np.float32(nodata), axis=0)
    return valid


def stretch_limits(dataset: Any, bands: Sequence[int], nodata: float | None) -> list[tuple[float, float]]:
    """Per band (2nd, 98th) percentile of the valid pixels, from a read decimated to at most
    :data:`STRETCH_SAMPLE_SIDE` pixels on the long side."""
    from rasterio.enums import Resampling

    factor = max(1.0, max(dataset.height, dataset.width) / STRETCH_SAMPLE_SIDE)
    shape = (len(bands), max(1, round(dataset.height / factor)), max(1, round(dataset.width / factor)))
    data = dataset.read(list(bands), out_shape=shape, resampling=Resampling.nearest).astype(np.float32)
    valid = _valid_pixels(data, nodata)
    if not valid.any():
        raise RasterInputError("the raster holds no valid pixel in the chosen bands")
    limits = []
    for band in data:
        lo, hi = np.percentile(band[valid], STRETCH_PERCENTILES)
        if not hi > lo:
            hi = lo + 1.0
        limits.append((float(lo), float(hi)))
    return limits


def _stretch(data: np.ndarray, valid: np.ndarray, limits: Sequence[tuple[float, float]]) -> np.ndarray:
    """(bands, rows, cols) raw -> (rows, cols, bands) float32 in 0..1; nodata pixels 0."""
    out = np.empty(data.shape[1:] + (data.shape[0],), dtype=np.float32)
    for i, (band, (lo, hi)) in enumerate(zip(data, limits)):
        out[..., i] = np.clip((band - lo) / (hi - lo), 0.0, 1.0)
    out[~valid] = 0.0
    return out


@dataclass(frozen=True)
class WindowGrid:
    """Cells of ``step`` pixels with ``margin`` pixels of context: see the module docstring."""

    height: int
    width: int
    window_size: int

    @property
    def margin(self) -> int:
        return max(1, self.window_size // 8)

    @property
    def step(self) -> int:
        return max(1, self.window_size - 2 * self.margin)

    def cell(self, row: int, col: int) -> tuple[int, int]:
        return row // self.step, col // self.step

    def window(self, cell: tuple[int, int]) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1), end exclusive, clipped to the raster."""
        i, j = cell
        s, m = self.step, self.margin
        return (max(0, i * s - m), max(0, j * s - m), min(self.height, (i + 1) * s + m),
                min(self.width, (j + 1) * s + m))


# -- the methods on one window --------------------------------------------------------------
def _disc(shape: tuple[int, int], row: int, col: int, radius: int) -> tuple[slice, slice, np.ndarray]:
    r0, r1 = max(0, row - radius), min(shape[0], row + radius + 1)
    c0, c1 = max(0, col - radius), min(shape[1], col + radius + 1)
    rr, cc = np.ogrid[r0:r1, c0:c1]
    return slice(r0, r1), slice(c0, c1), (rr - row) ** 2 + (cc - col) ** 2 <= radius * radius


def _local_features(image: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """(rows, cols, 2 x bands): the local mean and local standard deviation (texture) of every
    band in a Gaussian window of ``sigma`` pixels, over valid pixels only (normalised
    convolution, so nodata does not bleed in)."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return np.concatenate([image, np.zeros_like(image)], axis=-1)
    weight = gaussian_filter(valid.astype(np.float32), sigma, mode="nearest")
    weight = np.maximum(weight, 1e-6)[..., None]
    v = valid[..., None].astype(np.float32)
    spatial = (sigma, sigma, 0)
    mean = gaussian_filter(image * v, spatial, mode="nearest") / weight
    square = gaussian_filter(image * image * v, spatial, mode="nearest") / weight
    return np.concatenate([mean, np.sqrt(np.clip(square - mean * mean, 0.0, None))], axis=-1)


def watershed_window(image: np.ndarray, valid: np.ndarray, seeds: Sequence[tuple[int, int]],
                     negatives: Sequence[tuple[int, int]] = (), smoothing: float = 2.0) -> np.ndarray:
    """Seeded watershed on one window. ``image`` (rows, cols, bands) in 0..1, ``valid``
    (rows, cols), ``seeds`` and ``negatives`` (row, col) window pixels, ``smoothing`` the
    Gaussian scale (pixels) of the colour and texture features.

    * Features: per band the local mean and local standard deviation (texture) at
      ``smoothing`` (:func:`_local_features`); each seed's colour is the median of the features
      within 2 px of it; ``distance`` = root-mean-square feature difference of every pixel to the
      nearest seed colour.
    * Background markers: valid pixels with ``distance`` above Otsu's threshold ``t`` of the
      window's distances, more than 3 px from every seed, plus discs of 2 px at the negative
      points. Seed markers: a disc of 1 px per seed (the seed pixel itself always keeps its own).
    * Relief flooded by ``skimage.segmentation.watershed``: ``distance / t`` plus half the
      gradient magnitude (``skimage.filters.sobel`` per band of the image smoothed by a
      Gaussian of 1 px, root of the sum of squares) divided by its 90th percentile: basins grow
      over pixels that look like their seed and stop at edges.

    Returns int32 labels (rows, cols): ``i + 1`` for the basin of ``seeds[i]`` (of seeds on the
    same pixel, the last one's), 0 for background and nodata."""
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, sobel, threshold_otsu
    from skimage.segmentation import watershed

    shape = valid.shape
    features = _local_features(image, valid, smoothing)
    distance = np.full(shape, np.inf, dtype=np.float32)
    for row, col in seeds:
        rs, cs, disc = _disc(shape, row, col, 2)
        around = features[rs, cs][disc & valid[rs, cs]]
        colour = np.median(around, axis=0) if len(around) else features[row, col]
        d = np.sqrt(((features - colour) ** 2).mean(axis=-1))
        np.minimum(distance, d, out=distance)
    fine = gaussian(image, sigma=1.0, channel_axis=-1, preserve_range=True)
    gradient = np.sqrt(sum(sobel(fine[..., b], mask=valid) ** 2 for b in range(fine.shape[-1])))
    values = distance[valid]
    threshold = float(threshold_otsu(values)) if values.size > 1 and values.max() > values.min() else np.inf
    g_scale = float(np.percentile(gradient[valid], 90)) if valid.any() else 0.0
    relief = distance / (threshold if np.isfinite(threshold) and threshold > 0 else max(float(values.max()), 1e-6))
    if g_scale > 0:
        relief = relief + 0.5 * gradient / g_scale
    markers = np.zeros(shape, dtype=np.int32)
    background = len(seeds) + 1
    if np.isfinite(threshold):
        near_seed = np.zeros(shape, dtype=bool)
        for row, col in seeds:
            near_seed[row, col] = True
        near_seed = ndi.binary_dilation(near_seed, iterations=3)
        markers[valid & (distance > threshold) & ~near_seed] = background
    for row, col in negatives:
        rs, cs, disc = _disc(shape, row, col, 2)
        markers[rs, cs][disc & valid[rs, cs]] = background
    for label, (row, col) in enumerate(seeds, start=1):
        rs, cs, disc = _disc(shape, row, col, 1)
        markers[rs, cs][disc & valid[rs, cs]] = label
    for label, (row, col) in enumerate(seeds, start=1):
        markers[row, col] = label
    labels = watershed(relief, markers, mask=valid)
    labels[labels == background] = 0
    return labels.astype(np.int32)


def _component_with(mask: np.ndarray, row: int, col: int) -> np.ndarray:
    from scipy import ndimage as ndi

    if not mask[row, col]:
        return mask
    parts, _n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    return parts == parts[row, col]


def _pieces(mask: np.ndarray, row_off: int, col_off: int) -> list[Any]:
    """Polygons (OGR, global pixel coordinates) of a boolean window mask."""
    from affine import Affine
    from rasterio.features import shapes

    from .vectors import geojson_geometry

    if not mask.any():
        return []
    out = []
    for geometry, _value in shapes(mask.astype(np.uint8), mask=mask, connectivity=4,
                                   transform=Affine.translation(col_off, row_off)):
        polygon = geojson_geometry(geometry)
        if not polygon.IsEmpty():
            out.append(polygon)
    return out


# -- segment_raster ---------------------------------------------------------------------------
def segment_raster(input_path: str, seeds: SeedSet | Sequence[Seed], polygons_path: str | _InMemory,
                   options: SegmentOptions | None = None, progress: Progress | None = None,
                   is_cancelled: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None,
                   seeds_path: str | _InMemory | None = None) -> SegmentResult:
    """Segment ``input_path`` around ``seeds`` (raster CRS) and write the polygons to the
    GeoPackage ``polygons_path`` (layer ``segments``, the raster's CRS); optionally every seed
    with its fate to ``seeds_path`` (points: ``id``, ``score``, ``class``, ``label`` 1/0,
    ``status``). Either path may be :data:`.vectors.IN_MEMORY`: the layer is then only in
    ``result.layers`` (``"polygons"``, ``"seeds"``). ``progress`` gets a percentage after every
    window; ``is_cancelled`` is checked before every window. Outputs are staged: a failed or cancelled run writes nothing."""
    import rasterio
    from rasterio.windows import Window

    from .writers import StagedOutputs

    options = options or SegmentOptions()
    progress = progress or _noop
    is_cancelled = is_cancelled or _never
    log = log or _noop
    started = time.perf_counter()
    seed_set = seeds if isinstance(seeds, SeedSet) else SeedSet(list(seeds))
    method, forced_type = check_method(options.method)
    model_type = forced_type or options.sam_model_type
    if options.window_size < 16:
        raise SegmentationError("the window size must be at least 16 pixels")
    if options.negative_points < 0 or options.min_area < 0 or options.simplify_tolerance < 0:
        raise SegmentationError("negative points, minimum area and simplify tolerance must not be negative")
    predictor = None
    if method == "sam":
        from .sam import WindowPredictor, check_checkpoint, load_sam

        check_checkpoint(options.sam_checkpoint)  # before any work: says where checkpoints come from
    try:
        ds = rasterio.open(input_path)
    except Exception as exc:
        raise RasterInputError(f"cannot open raster {input_path}: {exc}") from exc
    with ds:
        if ds.crs is None:
            from .raster import no_crs_error

            raise no_crs_error(input_path)
        nodata = options.nodata if options.nodata is not None else ds.nodata
        bands = choose_bands(ds, options.bands, method)
        inverse = ~ds.transform
        grid = WindowGrid(ds.height, ds.width, int(options.window_size))

        statuses: dict[int, str] = {}
        positions: list[tuple[int, int] | None] = []  # global (row, col) per seed
        all_seeds = list(seed_set.seeds)
        candidates = sorted(seed_set.negative_candidates, key=lambda s: s.score)
        for seed in all_seeds + candidates:
            col_f, row_f = inverse * (seed.x, seed.y)
            inside = math.isfinite(row_f) and math.isfinite(col_f) and 0 <= row_f < ds.height and 0 <= col_f < ds.width
            positions.append((int(math.floor(row_f)), int(math.floor(col_f))) if inside else None)
        n_fixed = len(all_seeds)
        outside = weak = 0
        cells: dict[tuple[int, int], list[int]] = {}
        for i, seed in enumerate(all_seeds):
            if positions[i] is None:
                statuses[i] = STATUS_OUTSIDE
                outside += seed.positive
            elif not seed.positive:
                statuses[i] = STATUS_UNUSED_NEGATIVE
            elif seed.score < options.min_score:
                statuses[i] = STATUS_WEAK
                weak += 1
            else:
                cells.setdefault(grid.cell(*positions[i]), []).append(i)
        n_positive = sum(1 for s in all_seeds if s.positive)
        if outside:
            log(f"{outside} seed point(s) lie outside the raster and were skipped")
        if weak:
            log(f"{weak} seed point(s) score below {options.min_score:g} and were skipped")
        if not cells:
            raise SegmentationError(_no_seed_message(n_positive, outside, weak, 0))
        negatives_all = [i for i, s in enumerate(all_seeds) if not s.positive and positions[i] is not None]
        candidates_idx = [n_fixed + k for k in range(len(candidates)) if positions[n_fixed + k] is not None]
        limits = stretch_limits(ds, bands, nodata)
        log(f"{METHOD_LABELS[method]} on bands {bands} of {ds.width}x{ds.height} px: {len(cells)} window(s) of "
            f"up to {grid.window_size} px ({grid.margin} px context); {seed_set.source}")
        if method == "sam":
            log(f"loading Segment Anything ({model_type}) from {options.sam_checkpoint}")
            predictor = WindowPredictor(load_sam(model_type, options.sam_checkpoint, options.device))

        pieces: dict[str, list[tuple[Any, int]]] = {}
        nodata_count = empty = negatives_used = 0
        exclusion = max(3, grid.window_size // 64)
        for done, cell in enumerate(sorted(cells), start=1):
            if is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            r0, c0, r1, c1 = grid.window(cell)
            data = ds.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)
            valid = _valid_pixels(data, nodata)
            own = []
            for i in cells[cell]:
                r, c = positions[i]
                if valid[r - r0, c - c0]:
                    own.append(i)
                else:
                    statuses[i] = STATUS_NODATA
                    nodata_count += 1
            if own:
                image = _stretch(data, valid, limits)
                local = lambda i: (positions[i][0] - r0, positions[i][1] - c0)  # noqa: E731
                negs = _window_negatives(negatives_all, candidates_idx, positions, own, valid, (r0, c0, r1, c1),
                                         options.negative_points, exclusion, statuses, n_fixed)
                negatives_used += len(negs)
                neg_px = [local(i) for i in negs]
                if method == "watershed":
                    others = [i for cl in _neighbour_cells(cell) for i in cells.get(cl, [])
                              if r0 <= positions[i][0] < r1 and c0 <= positions[i][1] < c1
                              and valid[positions[i][0] - r0, positions[i][1] - c0]]
                    markers = own + [i for i in others if i not in own]
                    labels = watershed_window(image, valid, [local(i) for i in markers], neg_px, options.smoothing)
                    masks = {i: (labels == labels[local(i)]) & (labels > 0) for i in own}
                else:
                    predictor.set_window(np.round(image * 255.0).astype(np.uint8))
                    masks = {}
                    for i in own:
                        r, c = local(i)
                        mask, _iou = predictor.predict((c + 0.5, r + 0.5), [(nc + 0.5, nr + 0.5) for nr, nc in neg_px])
                        masks[i] = _component_with(mask & valid, r, c)
                for i in own:
                    found = _pieces(masks[i], r0, c0)
                    statuses[i] = STATUS_USED if found else STATUS_EMPTY
                    empty += not found
                    for polygon in found:
                        pieces.setdefault(all_seeds[i].cls, []).append((polygon, i))
            progress(95.0 * done / len(cells))
        if nodata_count:
            log(f"{nodata_count} seed point(s) lie on nodata pixels and were skipped")
        used = sum(1 for s in statuses.values() if s in (STATUS_USED, STATUS_EMPTY))
        if used == 0:
            raise SegmentationError(_no_seed_message(n_positive, outside, weak, nodata_count))
        if empty:
            log(f"{empty} seed point(s) gave no segment")
        records = _merge(pieces, all_seeds, ds.transform, options, method)
        colours = dict(seed_set.class_colours)
        for name in sorted({s.cls for s in all_seeds if s.positive}):
            colours.setdefault(name, PALETTE[len(colours) % len(PALETTE)])
        crs_wkt = ds.crs.to_wkt()
        fields = [("class", "str"), ("score", "real"), ("seed_ids", "str"), ("n_seeds", "int"),
                  ("area", "real"), ("method", "str")]
        layers = {"polygons": VectorLayer("segments", crs_wkt, "Polygon", fields, records)}
        if seeds_path:
            rows = []
            for i, seed in enumerate(all_seeds + candidates):
                status = statuses.get(i)
                if i >= n_fixed and status is None:
                    continue  # a negative candidate that was not chosen
                rows.append(((seed.x, seed.y), {"id": int(seed.id), "score": float(seed.score), "class": seed.cls,
                                                "label": int(seed.positive), "status": status or STATUS_EMPTY}))
            layers["seeds"] = points_layer(
                "seeds", crs_wkt, [("id", "int"), ("score", "real"), ("class", "str"), ("label", "int"),
                                   ("status", "str")], rows)
        with StagedOutputs() as staged:
            for key, path in (("polygons", polygons_path), ("seeds", seeds_path)):
                if is_file_target(path):
                    write_gpkg(layers[key], staged.stage(path))
            staged.commit()
        progress(100.0)
    outputs = {key: str(path) for key, path in (("polygons", polygons_path), ("seeds", seeds_path))
               if is_file_target(path)}
    return SegmentResult(
        outputs=outputs, method=method, seeds_total=n_positive, seeds_used=used, seeds_outside=outside,
        seeds_nodata=nodata_count, seeds_weak=weak, seeds_without_segment=empty, negatives_used=negatives_used,
        windows=len(cells), polygons=len(records), bands=bands, stretch=limits,
        seconds=time.perf_counter() - started, class_colours=colours,
        statuses={all_seeds[i].id: s for i, s in statuses.items() if i < n_fixed},
        layers=layers,
    )


def _no_seed_message(total: int, outside: int, weak: int, nodata: int) -> str:
    if total == 0:
        return "no positive seed point was given, so there is nothing to segment"
    return (f"none of the {total} seed point(s) can be used: {outside} outside the raster, {nodata} on nodata "
            f"pixels, {weak} below the minimum score. Check that the seeds overlap the raster (and its CRS), "
            "or lower the minimum score.")


def _neighbour_cells(cell: tuple[int, int]) -> list[tuple[int, int]]:
    i, j = cell
    return [(i + di, j + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


def _window_negatives(explicit: list[int], candidates: list[int], positions: list, own: list[int],
                      valid: np.ndarray, bounds: tuple[int, int, int, int], count: int, exclusion: int,
                      statuses: dict[int, str], n_fixed: int) -> list[int]:
    """Negative points of a window: every explicit negative seed inside it, then up to ``count``
    candidates (lowest relevance first) inside it, on valid pixels, farther than
    ``exclusion`` pixels from the window's own seeds and from each other."""
    r0, c0, r1, c1 = bounds

    def usable(i: int) -> bool:
        r, c = positions[i]
        return r0 <= r < r1 and c0 <= c < c1 and bool(valid[r - r0, c - c0])

    chosen = [i for i in explicit if usable(i)]
    for i in chosen:
        statuses[i] = STATUS_NEGATIVE
    picked = 0
    own_px = [positions[i] for i in own]
    for i in candidates:
        if picked >= count:
            break
        if not usable(i):
            continue
        r, c = positions[i]
        if any(max(abs(r - a), abs(c - b)) <= exclusion for a, b in own_px + [positions[k] for k in chosen]):
            continue
        chosen.append(i)
        statuses[i] = STATUS_NEGATIVE
        picked += 1
    return chosen


def _merge(pieces: dict[str, list[tuple[Any, int]]], seeds: list[Seed], transform: Any,
           options: SegmentOptions, method: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Per class: union of all pieces, split into polygons, to CRS, simplified, filtered by area;
    records ``(wkb, values)`` for :class:`.vectors.VectorLayer`."""
    from osgeo import ogr

    label = "sam" if method == "sam" else "watershed"
    records = []
    for cls in sorted(pieces):
        items = pieces[cls]
        collection = ogr.Geometry(ogr.wkbMultiPolygon)
        for polygon, _i in items:
            collection.AddGeometry(polygon)
        parts = _polygons(collection.UnionCascaded())
        envelopes = [part.GetEnvelope() for part in parts]  # (xmin, xmax, ymin, ymax)
        members: list[set[int]] = [set() for _ in parts]
        for polygon, i in items:
            inside = polygon.PointOnSurface()
            x, y = inside.GetX(), inside.GetY()
            for k, (part, (x0, x1, y0, y1)) in enumerate(zip(parts, envelopes)):
                if x0 <= x <= x1 and y0 <= y <= y1 and part.Intersects(inside):
                    members[k].add(i)
                    break
        for part, who in zip(parts, members):
            geometry = _pixel_to_crs(part, transform)
            if options.simplify_tolerance > 0:
                geometry = geometry.SimplifyPreserveTopology(options.simplify_tolerance)
            if not geometry.IsValid():
                geometry = geometry.MakeValid()
            for polygon in _polygons(geometry):
                area = float(polygon.GetArea())
                if area <= 0 or area < options.min_area:
                    continue
                ids = sorted({seeds[i].id for i in who})
                records.append((bytes(polygon.ExportToIsoWkb()), {
                    "class": cls, "score": float(max((seeds[i].score for i in who), default=0.0)),
                    "seed_ids": ",".join(str(k) for k in ids), "n_seeds": len(ids), "area": area, "method": label,
                }))
    records.sort(key=lambda r: (r[1]["class"], -r[1]["score"]))
    return records


def _polygons(geometry: Any) -> list[Any]:
    """The non-empty polygons of an OGR geometry (a polygon, multipolygon or collection)."""
    from osgeo import ogr

    if geometry is None or geometry.IsEmpty():
        return []
    kind = ogr.GT_Flatten(geometry.GetGeometryType())
    if kind == ogr.wkbPolygon:
        return [geometry.Clone()]
    return [p for k in range(geometry.GetGeometryCount()) for p in _polygons(geometry.GetGeometryRef(k))]


def _pixel_to_crs(geometry: Any, transform: Any) -> Any:
    """A copy of an OGR geometry in global pixel coordinates (x = column, y = row) mapped by the
    raster's affine ``transform`` to its CRS."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    out = geometry.Clone()

    def apply(part: Any) -> None:
        for k in range(part.GetGeometryCount()):
            apply(part.GetGeometryRef(k))
        for j in range(part.GetPointCount()):
            x, y = part.GetX(j), part.GetY(j)
            part.SetPoint_2D(j, a * x + b * y + c, d * x + e * y + f)

    apply(out)
    return out
