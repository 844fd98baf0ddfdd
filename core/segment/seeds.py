"""Segment a raster from explanation seed points: polygons of the objects the seeds sit on.

Entry points: :func:`segment_raster` (seeds -> polygon GeoPackage) and the seed sources
:func:`seeds_from_heatmap` (peaks of a heatmap raster) and :func:`seeds_from_model` (Grad-CAM
peaks of a model, computed in memory); a point layer (e.g. ``OUTPUT_PEAKS`` of
``glassbox:explain``) is turned into :class:`Seed` objects by the caller.

**Seeds.** A :class:`Seed` is a point ``x, y`` in the raster CRS with a ``score`` (relevance;
1 when unknown), a ``cls`` (class name), an ``id`` and ``positive`` (False: a background point).
Positive seeds below ``SegmentOptions.min_score`` are skipped ("weak"); seeds outside the raster
or on a nodata pixel are skipped too; all are counted in :class:`SegmentResult` and in the log,
never an error, unless no usable positive seed remains (:class:`core.errors.SegmentationError`,
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
* ``"sam"`` -- Segment Anything (:mod:`core.segment.sam`): samgeo's ``SamGeoPredictor`` with the model
  loaded from ``sam_checkpoint`` (``sam_model_type`` vit_b/vit_l/vit_h, or vit_t = MobileSAM when
  its package is installed). Each window is embedded once as an 8-bit RGB image; each seed is
  prompted on its own (the seed as a positive point, the window's negative points as negative
  points) and the best of SAM's three masks (by its predicted IoU) is kept, restricted to valid
  pixels and to its connected part holding the seed (the whole mask when the seed is outside
  it). ``"mobile_sam"`` is ``"sam"`` with model type vit_t.

**Polygons.** Masks are vectorised per window with ``rasterio.features.shapes`` (as samgeo's
``raster_to_vector`` does, but in memory and per window) in *global pixel coordinates*, so
pieces from neighbouring windows share exact vertices; all pieces of a class are merged with
OGR's union (of class ``segment``, seeds without a class: only pieces that overlap) (GDAL's GEOS: the one QGIS links, see :mod:`core.io.vectors`) and split into connected
polygons, then mapped to the raster CRS,
simplified with ``simplify_tolerance`` (CRS units, topology preserved; 0 = pixel edges kept)
and dropped below ``min_area`` (square metres on the ground). Fields: ``class``, ``score`` (the highest
score of its seeds), ``seed_ids`` (comma-separated, ascending), ``n_seeds``, ``area`` (CRS
square metres on the ground: for a geographic CRS or Web Mercator converted at the raster's centre), ``method``. Where
windows or seeds of different classes disagree, polygons of different classes may overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import DEFAULT_MIN_SCORE
from ..errors import Cancelled, SegmentationError
from ..io.vectors import VectorLayer
from ..feedback import Progress, ignore, never

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
STATUS_SMALL = "segment below the minimum area"
STATUS_NEGATIVE = "negative point"
STATUS_UNUSED_NEGATIVE = "negative point, not used"



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
    ``min_area``: square metres on the ground. ``min_score``: positive seeds scoring less are skipped (0 keeps all).
    ``bands``: 1-based raster bands (empty: true colour by name, else the first three).
    ``nodata``: overrides the raster's. ``smoothing``: Gaussian sigma (pixels) before the
    watershed gradient. ``device``: for SAM. ``mask``: GeoJSON-like polygons in the raster CRS
    (an area of interest): pixels outside them count as nodata, so segments stay inside them and
    seeds outside them are skipped as on nodata."""

    method: str = "watershed"
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    negative_points: int = 0
    window_size: int = 1024
    simplify_tolerance: float = 0.0
    min_area: float = 0.0
    min_score: float = DEFAULT_MIN_SCORE
    bands: Sequence[int] | None = None
    nodata: float | None = None
    smoothing: float = 2.0
    device: str = "cpu"
    mask: Sequence[dict] | None = None


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
    peaks of the inverted heatmap, by :func:`core.explain.heatmap.local_peaks`."""
    from ..explain.heatmap import local_peaks

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
    apart (default tile/8) (:func:`core.explain.heatmap.local_peaks`). Scores are the smoothed value divided
    by the heatmap's largest value (0..1). Seeds lie at heatmap pixel centres, transformed to
    ``raster_crs`` (anything ``rasterio.crs.CRS.from_user_input`` takes) when the heatmap's CRS
    differs. ``negatives_per_tile`` local minima per tile become negative candidates. The
    heatmap is read tile by tile."""
    from rasterio.windows import Window

    from ..io.raster import open_raster

    from ..explain.heatmap import local_peaks

    is_cancelled = is_cancelled or never
    progress = progress or ignore
    if peaks_per_tile < 1:
        raise SegmentationError("peaks per tile must be at least 1")
    tile_size = max(4, int(tile_size))
    distance = int(min_distance or max(1, tile_size // 8))
    with open_raster(heatmap_path, "heatmap raster") as ds:
        nodata = ds.nodata
        found: list[tuple[float, float, float, bool]] = []  # x, y, raw value, positive
        top, any_valid = 0.0, False
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
                any_valid = True
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
    if not any(positive for *_xyz, positive in found):
        raise SegmentationError(
            f"the heatmap {Path(heatmap_path).name} has no peak to seed from: "
            + ("it holds only nodata" if not any_valid else "it has no local maximum above zero (a flat heatmap)")
            + "; give the heatmap of glassbox:explain for this raster, or seed points")
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
    """Seeds at the explanation peaks of ``model`` (a model path or an :class:`core.explain.attribution.Explainer`)
    on ``input_path``, computed in memory: the raster is cut into the model's tiles side by side
    (:func:`core.tiles.loop.plan_tiles`, stride = one tile; the model's bands found from its card), each
    batch is explained (:meth:`core.explain.attribution.Explainer.explain`, Grad-CAM by default as in paper 2, for
    each tile's predicted class or ``target``), and each tile's heatmap
    (:func:`core.explain.attribution.pixel_heatmap`) gives up to ``peaks_per_tile`` peaks exactly as
    ``glassbox:explain`` finds them (:func:`core.explain.heatmap.local_peaks`, tile/8 apart), with the
    explained class as the seed's class and the card's colours. Scores are divided by the largest
    relevance of any tile (explain's one-scale normalisation). ``negatives_per_tile`` local
    minima per tile become negative candidates. No heatmap is kept or written."""
    from ..explain.heatmap import _peak_xy, local_peaks
    from ..io.raster import RasterSource
    from ..tiles.loop import iter_batches, plan_tiles
    from ..explain.attribution import Explainer, load_explainer, pixel_heatmap, resolve_target

    is_cancelled = is_cancelled or never
    progress = progress or ignore
    log = log or ignore
    if peaks_per_tile < 1:
        raise SegmentationError("peaks per tile must be at least 1")
    explainer = model if isinstance(model, Explainer) else load_explainer(model, device)
    card = explainer.card
    wanted = resolve_target(card, target)
    distance = max(1, card.tile_size // 8)
    found: list[tuple[float, float, float, int, bool]] = []  # x, y, raw, class, positive
    top = 0.0
    with RasterSource(input_path, None, card.bands, nodata, card) as source:
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


