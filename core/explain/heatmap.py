"""Explain a raster classification tile by tile: heatmap raster, band relevance table, peaks.

Entry point: :func:`explain_raster` (mirrors :func:`core.classify.classify_raster`: the tiles and
batches of :mod:`core.tiles.loop`, tent-weighted blending, staged outputs, progress and cancel per
batch). The attribution itself is :mod:`core.explain.attribution`; explanation quality against ground truth is
:mod:`core.explain.quality`.

**Heatmap raster.** Every tile's attributions (Guided Grad-CAM by default) become a per-pixel
heatmap, ``sum over bands of |attribution|`` (:func:`core.explain.attribution.pixel_heatmap`), at the model's
resolution; it is resampled to the tile's footprint on the input grid when the raster's pixel
size differs from the model's (bilinear when enlarging, area mean when shrinking), and
overlapping tiles are blended per pixel with the same pyramid weights as the classification
(:mod:`core.tiles.blending`). Pixels that are nodata in the input get no weight and stay nodata (-1).

**Normalisation** (``ExplainOptions.normalization``):

* ``"global"`` (default): one scale for the whole raster. Every value is divided by the largest
  value any tile's heatmap reaches anywhere in the raster, so heatmaps of different tiles are
  comparable and identical tiles give identical values wherever they lie. The maximum is only
  known at the end, so the blended raw heatmap is first written to an uncompressed temporary
  GeoTIFF beside the output while the maximum is tracked, then a second windowed pass divides
  and writes the compressed output: memory stays bounded by a band of rows. Values are in
  0..1 (exactly 1 somewhere when tiles do not overlap; blending may keep the maximum below 1).
* ``"tile"``: each tile's heatmap is divided by its own maximum before blending: every tile
  shows its own most relevant pixels at 1, whatever the strength of its evidence.
* ``"none"``: raw attribution magnitudes (units of the model's logit per scaled input unit).

**Band relevance** (CSV, loads in QGIS as a table; a ``.csvt`` beside it gives QGIS the column
types): one row per class, plus a row ``(all)`` (class_id -1) for all tiles: ``class``,
``class_id``, ``n_tiles`` (tiles explained for that class) and one column per card band: the
band's share of the tile's total ``|attribution|`` (:func:`core.explain.attribution.band_shares`), averaged over
those tiles (each tile counts once; a tile without any attribution, e.g. where Grad-CAM finds
no evidence for a named target class, has no shares and is left out). Shares of a row sum to 1. This is the spectral
explanation paper 1 asks for. Grad-CAM has no band dimension: its band columns are empty.

**Peaks** (optional GeoPackage points, the Segment Anything seeds): per tile, up to
``peaks_per_tile`` local maxima of the tile's heatmap smoothed by a Gaussian of sigma = 1 model
pixel (which removes single-pixel speckle), at least ``peak_min_distance`` model pixels apart
(default tile size / 8), strongest first. Fields ``score`` (the smoothed heatmap at the peak on
the raster's normalisation scale), ``class``, ``class_id`` (the explained class), ``rank``
(1 = strongest in its tile), ``tile_row``, ``tile_col``. Points lie at the centre of the input
pixel that holds the peak, in the raster CRS. Peaks and scores are those of each tile's own
heatmap, before overlapping tiles are blended into the written raster: with overlapping tiles
(the default half-tile stride) a peak need not be a maximum of the written heatmap, nor its score
the written value (with tiles side by side the places agree; the score is still the smoothed value). A point found by two overlapping tiles
for the same class is kept once, with the higher score.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..tiles.blending import RowBandAccumulator, tent_window
from ..models.card import ModelCard
from ..errors import Cancelled, OutputError, RasterInputError
from ..io.mosaic import raster_or_mosaic
from ..io.raster import RasterSource, upsample_nearest
from ..tiles.loop import NativeValidity, TilePlan, TileRunOptions, iter_batches, plan_tiles, prefetched
from ..tiles.grid import Tile
from ..io.vectors import VectorLayer, InMemory, is_file_target, points_layer, write_gpkg
from ..io.writers import FLOAT_NODATA, STAGED_BLOCK_ROWS, BlockRowWriter, StagedOutputs, provenance_tags, staged_options
from .attribution import METHOD_LABELS, ExplainError, Explainer, band_shares, check_method, load_explainer, pixel_heatmap, resolve_target
from ..feedback import Progress

NORMALIZATIONS = ("global", "tile", "none")
ALL_CLASSES = "(all)"
PEAK_SMOOTH = 1.0



@dataclass
class ExplainOptions(TileRunOptions):
    """``method``: ``guided_gradcam`` (default), ``gradcam`` or ``guided_backprop``.
    ``target``: ``None``/"predicted" = each tile's predicted class, or a class name / index.
    ``normalization``: ``global``, ``tile`` or ``none`` (module docstring). ``peaks_per_tile``
    and ``peak_min_distance`` (model pixels; default tile/8): the peak layer. ``engine``:
    ``fused`` or ``captum`` (:mod:`core.explain.attribution`). The rest (stride, bands, nodata, extent, mask, ...):
    :class:`core.tiles.loop.TileRunOptions`; batches default to 16 tiles (gradients need more memory).
    ``adapt_to_scene``: explain the model adapted to this raster as ``glassbox:classify`` does with
    the same option and mode (:data:`core.adaptation.ADAPTATION_MODES`; the Torch weights when
    there are, else the ONNX model converted with its batch-norm layers), so the heatmap explains
    the map that option made. ``check_radiometry``: as classify, log how far the scene's
    radiometry is from the model's training tiles when a reference lies beside the model file
    (:func:`core.scene_radiometry.check_scene`; a model given as a path only). ``cloud_mask``:
    Sentinel-2 L1C pixels that s2cloudless finds cloudy (probability above ``cloud_threshold``;
    :mod:`core.clouds`) count as nodata, as in ``glassbox:classify``'s map: no relevance, no peak,
    and no share of the global normaliser or the band relevance."""

    method: str = "guided_gradcam"
    adapt_to_scene: bool | str = False
    check_radiometry: bool = True
    target: str | int | None = None
    batch_size: int = 16
    normalization: str = "global"
    peaks_per_tile: int = 3
    peak_min_distance: int | None = None
    engine: str = "fused"
    cloud_mask: bool = False
    cloud_threshold: float = 0.6


@dataclass
class ExplainResult:
    outputs: dict[str, str]
    tiles_total: int
    tiles_explained: int
    tiles_skipped: int
    seconds: float
    method: str
    target: str
    layer: str
    normaliser: float
    raw_max: float
    bands: list[int]
    footprint: tuple[int, int]
    band_relevance: dict[str, tuple[int, list[float]]] = field(default_factory=dict)
    target_counts: dict[str, int] = field(default_factory=dict)
    peaks: int = 0
    card: ModelCard | None = None
    #: vector outputs built by the run (``"peaks"``), whether written to a file or not
    layers: dict[str, VectorLayer] = field(default_factory=dict)


# -- heatmap blending and peaks -----------------------------------------------------------------
def _resize(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize ``(n, h, w)`` maps to ``shape``: bilinear when enlarging, area mean when shrinking."""
    if maps.shape[1:] == tuple(shape):
        return maps
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    if shape[0] < maps.shape[1] and shape[1] < maps.shape[2]:
        out = F.interpolate(t, size=shape, mode="area")
    else:
        out = F.interpolate(t, size=shape, mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def local_peaks(heatmap: np.ndarray, count: int, min_distance: int, valid: np.ndarray | None = None,
                smooth: float = PEAK_SMOOTH) -> list[tuple[int, int, float]]:
    """Up to ``count`` local maxima ``(row, col, smoothed value)`` of ``heatmap`` ``(H, W)``,
    strongest first, at least ``min_distance`` pixels apart (Chebyshev), with value > 0. The
    heatmap is smoothed by a Gaussian of ``smooth`` pixels first; ``valid`` limits the search."""
    from scipy.ndimage import gaussian_filter, maximum_filter

    if count <= 0:
        return []
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    if smooth > 0:
        h = gaussian_filter(h, sigma=smooth, mode="nearest")
    if valid is not None:
        h = np.where(valid, h, 0.0)
    d = max(1, int(min_distance))
    peaks_mask = (h == maximum_filter(h, size=2 * d + 1, mode="constant", cval=0.0)) & (h > 0)
    rows, cols = np.nonzero(peaks_mask)
    order = np.argsort(-h[rows, cols], kind="stable")
    chosen: list[tuple[int, int, float]] = []
    for i in order:
        r, c = int(rows[i]), int(cols[i])
        if all(max(abs(r - pr), abs(c - pc)) >= d for pr, pc, _v in chosen):
            chosen.append((r, c, float(h[r, c])))
            if len(chosen) == count:
                break
    return chosen


# -- explain_raster -----------------------------------------------------------------------------
def explain_raster(
    input_path: str | Path | Sequence[str | Path],
    model: Explainer | str | Path,
    heatmap_path: str | None,
    band_relevance_path: str | None = None,
    peaks_path: str | Path | InMemory | None = None,
    options: ExplainOptions | None = None,
    progress: Progress | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> ExplainResult:
    """Explain ``input_path`` with ``model`` (an :class:`core.explain.attribution.Explainer` or a model path) and
    write the requested outputs (paths or None): the heatmap GeoTIFF (float32 on the input grid,
    nodata -1), the band relevance CSV and the peak GeoPackage (module docstring);
    ``peaks_path`` :data:`core.io.vectors.IN_MEMORY` gives the peaks only in ``result.layers``.
    ``input_path``: a raster, or a list of rasters explained as one mosaic
    (:func:`core.io.mosaic.build_mosaic`, as classify reads them).

    ``progress`` gets a percentage after every batch; ``is_cancelled`` is checked before every
    batch (and in the normalisation pass) and raises :class:`core.errors.Cancelled`; a failed or
    cancelled run leaves no output."""
    options = options or ExplainOptions()
    progress = progress or (lambda _p: None)
    is_cancelled = is_cancelled or (lambda: False)
    log = log or (lambda _m: None)
    if not any([heatmap_path, band_relevance_path, peaks_path]):
        raise RasterInputError("no output requested")
    method = check_method(options.method)
    if options.normalization not in NORMALIZATIONS:
        raise ExplainError(f"unknown normalisation '{options.normalization}'; use one of {', '.join(NORMALIZATIONS)}")
    if options.peaks_per_tile < 0:
        raise ExplainError("peaks per tile must be 0 or more")
    from ..adaptation import AdaptationError, adaptable_weights_for, adaptation_mode, skipped_note

    mode = adaptation_mode(options.adapt_to_scene)
    if isinstance(model, Explainer):
        explainer = model
    elif mode != "off":
        try:
            weights = adaptable_weights_for(model)
        except AdaptationError as exc:
            if mode == "always":
                raise
            log(skipped_note(exc))
            weights, mode = model, "off"
        explainer = load_explainer(weights, options.device)
    else:
        explainer = load_explainer(model, options.device)
    card = explainer.card
    target = resolve_target(card, options.target)
    started = time.perf_counter()
    min_distance = options.peak_min_distance or max(1, card.tile_size // 8)
    has_bands = method != "gradcam"

    with raster_or_mosaic(input_path, log) as path, \
            RasterSource(path, options.bands, card.bands, options.nodata, card) as source, StagedOutputs() as staged:
        ds = source.dataset
        plan = plan_tiles(source, card, options.stride, options.extent, options.mask)
        native = NativeValidity(plan)
        area, footprint, grid = plan.area, plan.footprint, plan.grid
        clouds = None
        if options.cloud_mask:
            from ..clouds import mask_plan_clouds

            plan, clouds = mask_plan_clouds(plan, options.cloud_threshold, options.nodata,
                                            "no relevance, no peak", is_cancelled, log)
            log(f"cloud: {clouds.pixels} pixels ({100 * clouds.pixels / max(1, area.width * area.height):.1f} %)")
        if options.check_radiometry and not isinstance(model, Explainer):
            from ..adaptation import ADAPTATION_TILES
            from ..scene_radiometry import check_scene

            check_scene(model, card, plan, ADAPTATION_TILES, options.min_valid_fraction, is_cancelled, log)
        if mode != "off":
            from ..adaptation import adapt_module_to_scene

            try:
                log(adapt_module_to_scene(explainer.module, card, plan, explainer.source,
                                          min_valid_fraction=options.min_valid_fraction,
                                          is_cancelled=is_cancelled, guard=mode == "auto").message())
            except (AdaptationError, RasterInputError) as exc:
                if mode == "always":
                    raise
                log(skipped_note(exc))
        log(f"{METHOD_LABELS[method]} of {'the predicted class' if target is None else card.class_names[target]} "
            f"on {len(grid)} tiles of {card.tile_size} model px = {footprint[1]}x{footprint[0]} raster px, "
            f"Grad-CAM layer '{explainer.layer_name}', {options.normalization} normalisation")
        log(source.band_note)
        if source.nodata_note:
            log(source.nodata_note)
        profile = dict(driver="GTiff", height=area.height, width=area.width, count=1, dtype="float32",
                       nodata=FLOAT_NODATA, crs=ds.crs, transform=plan.area_transform)
        tags = provenance_tags(Path(explainer.source) if isinstance(model, Explainer) else Path(model), card,
                               input_path if isinstance(input_path, (list, tuple)) else [input_path], dict(
            algorithm="explain", method=method, target=options.target or "predicted", normalization=options.normalization,
            layer=explainer.layer_name, bands=list(source.bands), nodata=options.nodata, tile_stride=options.stride,
            extent=options.extent, mask=options.mask is not None, adapt_to_scene=options.adapt_to_scene))
        raw_path: Path | None = None
        out_ds = raw_ds = None
        heat_tmp = staged.stage(heatmap_path) if heatmap_path else None
        two_pass = heat_tmp is not None and options.normalization == "global"
        import rasterio

        try:
            if heat_tmp is not None:
                if two_pass:
                    # named like a staged temporary of the heatmap (``.<stem>.<pid>-<8>.partial<suffix>...``),
                    # so the next run writing this heatmap removes it when a killed run left it behind
                    final = Path(heatmap_path)
                    fd, name = tempfile.mkstemp(prefix=f".{final.stem}.{os.getpid()}-",
                                                suffix=f".partial{final.suffix}.raw.tif", dir=final.parent)
                    os.close(fd)
                    raw_path = Path(name)
                    raw_ds = rasterio.open(raw_path, "w", tiled=True, blockxsize=256, blockysize=STAGED_BLOCK_ROWS,
                                           BIGTIFF="IF_SAFER", **profile)
                else:
                    out_ds = _open_heatmap(heat_tmp, profile, method, options.normalization, tags)
            sink_ds = raw_ds if two_pass else out_ds
            sink = BlockRowWriter(sink_ds) if sink_ds is not None else None
            accumulator = RowBandAccumulator(area.width, 1, area.height)
            weight = tent_window(*footprint)
            explained = skipped = 0
            global_max = 0.0
            share_sums = np.zeros((card.num_classes, card.num_bands), dtype=np.float64)
            share_counts = np.zeros(card.num_classes, dtype=np.int64)
            tile_counts = np.zeros(card.num_classes, dtype=np.int64)
            peaks: list[tuple[float, float, float, int, int, int, int]] = []  # x, y, raw, cls, rank, row, col
            batches = prefetched(iter_batches(plan, card, options.batch_size, options.min_valid_fraction,
                                              is_cancelled), is_cancelled=is_cancelled)
            for batch in batches:
                skipped += batch.skipped
                if batch.tiles:
                    expl = explainer.explain(batch.inputs, method, target, options.engine)
                    valid = batch.valid
                    if clouds is not None:
                        valid = valid & ~np.stack([clouds.tile_mask(t, card.tile_size) for t in batch.tiles])
                    heat = pixel_heatmap(expl.attributions)
                    heat[~valid] = 0.0
                    maxima = heat.reshape(len(heat), -1).max(axis=1)
                    global_max = max(global_max, float(maxima.max()))
                    np.add.at(tile_counts, expl.targets, 1)
                    if has_bands:
                        shares = band_shares(expl.attributions, valid)
                        for t, s in zip(expl.targets, shares):
                            if np.all(np.isfinite(s)):  # NaN: no attribution at all in the tile
                                share_sums[t] += s
                                share_counts[t] += 1
                    if peaks_path and options.peaks_per_tile:
                        for tile, h, v, t, m in zip(batch.tiles, heat, valid, expl.targets, maxima):
                            for rank, (r, c, value) in enumerate(
                                    local_peaks(h, options.peaks_per_tile, min_distance, v), start=1):
                                x, y = _peak_xy(plan, tile, r, c)
                                norm = float(m) if options.normalization == "tile" else 1.0
                                peaks.append((x, y, value / norm if norm > 0 else 0.0, int(t), rank,
                                              tile.grid_row, tile.grid_col))
                    if options.normalization == "tile":
                        heat = heat / np.where(maxima > 0, maxima, 1.0)[:, None, None]
                    if sink is not None:
                        masks = valid if footprint == (card.tile_size, card.tile_size) else \
                            np.stack([upsample_nearest(v, footprint) for v in valid])
                        accumulator.add_batch([t.row_off for t in batch.tiles], [t.col_off for t in batch.tiles],
                                              _resize(heat, footprint)[:, None], weight, masks)
                    explained += len(batch.tiles)
                if sink is not None:
                    for first, values, covered in accumulator.pop_rows(batch.finished_rows):
                        _write_rows(sink, first, values[0], native.restrict(first, covered))
                progress((95.0 if two_pass else 100.0) * batch.done / max(1, batch.total))
            if sink is not None:
                for first, values, covered in accumulator.pop_rows(area.height):
                    _write_rows(sink, first, values[0], native.restrict(first, covered))
                sink.flush()
            normaliser = global_max if options.normalization == "global" and global_max > 0 else 1.0
            if two_pass:
                raw_ds.close()
                raw_ds = None
                # raw relevance = value x normaliser: heatmaps of other runs can be put on one scale
                out_ds = _open_heatmap(heat_tmp, profile, method, options.normalization,
                                       dict(tags, GLASSBOX_HEATMAP_NORMALISER=repr(float(normaliser))))
                _normalise_pass(raw_path, out_ds, normaliser, is_cancelled)
            if out_ds is not None:
                out_ds.close()
                out_ds = None
        finally:
            for handle in (raw_ds, out_ds):
                if handle is not None:
                    handle.close()
            if raw_path is not None:
                for leftover in Path(raw_path).parent.glob(Path(raw_path).name + "*"):
                    leftover.unlink()
        if explained == 0:
            log("no tile had enough valid pixels: the heatmap is all nodata")
        relevance = _relevance_table(card, share_sums, share_counts, tile_counts, has_bands)
        if band_relevance_path:
            _write_relevance_csv(staged, band_relevance_path, card, relevance, has_bands)
        layers = {}
        if peaks_path:
            fields = [("score", "real"), ("class", "str"), ("class_id", "int"), ("rank", "int"),
                      ("tile_row", "int"), ("tile_col", "int"), ("colour", "str")]
            scale = normaliser if options.normalization == "global" else 1.0
            strongest: dict[tuple[float, float, int], tuple] = {}  # one point per place and class
            for peak in peaks:
                key = (peak[0], peak[1], peak[3])
                if key not in strongest or peak[2] > strongest[key][2]:
                    strongest[key] = peak
            peaks = list(strongest.values())
            records = [((x, y), {"score": float(raw / scale), "class": card.class_names[cls], "class_id": int(cls),
                               "rank": int(rank), "tile_row": int(row), "tile_col": int(col),
                               "colour": card.classes[cls].color})
                       for x, y, raw, cls, rank, row, col in peaks]
            layers["peaks"] = points_layer("peaks", ds.crs.to_wkt(), fields, records)
            if is_file_target(peaks_path):
                write_gpkg(layers["peaks"], staged.stage(peaks_path))
        staged.commit()
        progress(100.0)

    outputs = {k: str(v) for k, v in dict(heatmap=heatmap_path, band_relevance=band_relevance_path,
                                            peaks=peaks_path).items() if v and is_file_target(v)}
    return ExplainResult(
        outputs=outputs,
        tiles_total=len(grid),
        tiles_explained=explained,
        tiles_skipped=skipped,
        seconds=time.perf_counter() - started,
        method=method,
        target="predicted" if target is None else card.class_names[target],
        layer=explainer.layer_name,
        normaliser=float(normaliser),
        raw_max=float(global_max),
        bands=list(source.bands),
        footprint=footprint,
        band_relevance=relevance,
        target_counts={n: int(c) for n, c in zip(card.class_names, tile_counts)},
        peaks=len(peaks) if peaks_path else 0,
        card=card,
        layers=layers,
    )


def _peak_xy(plan: TilePlan, tile: Tile, r: int, c: int) -> tuple[float, float]:
    """CRS position of the centre of the input pixel that holds model pixel (r, c) of ``tile``."""
    row = tile.row_off + min(tile.height - 1, int((r + 0.5) * tile.height / plan.tile_size))
    col = tile.col_off + min(tile.width - 1, int((c + 0.5) * tile.width / plan.tile_size))
    x, y = plan.area_transform * (col + 0.5, row + 0.5)
    return float(x), float(y)


def _open_heatmap(path: Path, profile: dict, method: str, normalization: str,
                  tags: dict[str, str] | None = None) -> Any:
    import rasterio

    try:
        out = rasterio.open(path, "w", **profile, **staged_options(profile["width"], profile["height"], profile["dtype"]))
    except Exception as exc:
        raise OutputError(f"cannot create output raster: {exc}") from exc
    scale = {"global": "0-1, one scale for the whole raster", "tile": "0-1, per tile",
             "none": "raw attribution magnitude"}[normalization]
    out.set_band_description(1, f"{METHOD_LABELS[method]} relevance ({scale})")
    out.update_tags(**(tags or {}))
    return out


def _write_rows(rows: BlockRowWriter, first: int, values: np.ndarray, covered: np.ndarray) -> None:
    rows.write(first, np.where(covered, values, FLOAT_NODATA).astype(np.float32, copy=False))


def _normalise_pass(raw_path: Path, out_ds: Any, normaliser: float, is_cancelled: Callable[[], bool],
                    rows_per_window: int = 256) -> None:
    """Second pass of global normalisation: raw / normaliser, window by window."""
    import rasterio
    from rasterio.windows import Window

    rows = BlockRowWriter(out_ds)
    with rasterio.open(raw_path) as raw:
        for first in range(0, raw.height, rows_per_window):
            if is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            window = Window(0, first, raw.width, min(rows_per_window, raw.height - first))
            values = raw.read(1, window=window)
            nodata = values == FLOAT_NODATA
            out = np.where(nodata, FLOAT_NODATA, values / np.float32(normaliser)).astype(np.float32, copy=False)
            rows.write(first, out)
    rows.flush()


def _relevance_table(card: ModelCard, sums: np.ndarray, counts: np.ndarray, tiles: np.ndarray, has_bands: bool
                     ) -> dict[str, tuple[int, list[float]]]:
    """class -> (tiles explained for it, mean band shares over its tiles that had attribution)."""
    table: dict[str, tuple[int, list[float]]] = {}
    for i, name in enumerate(card.class_names):
        n = int(counts[i])
        table[name] = (int(tiles[i]), list(sums[i] / n) if has_bands and n else [math.nan] * card.num_bands)
    total = int(counts.sum())
    shares = list(sums.sum(axis=0) / total) if has_bands and total else [math.nan] * card.num_bands
    table[ALL_CLASSES] = (int(tiles.sum()), shares)
    return table


def _band_columns(card: ModelCard, taken: Sequence[str]) -> list[str]:
    columns: list[str] = []
    for band in card.bands:
        name = band
        while name in taken or name in columns:
            name += "_band"
        columns.append(name)
    return columns


def _write_relevance_csv(staged: StagedOutputs, target: str, card: ModelCard,
                         table: dict[str, tuple[int, list[float]]], has_bands: bool) -> None:
    head = ["class", "class_id", "n_tiles"]
    columns = head + _band_columns(card, head)
    ids = {name: i for i, name in enumerate(card.class_names)}
    ids[ALL_CLASSES] = -1
    rows = [[name, ids[name], n, *[format_value(v) for v in shares]] for name, (n, shares) in table.items()]
    write_csv(staged, target, columns, rows, ["String", "Integer", "Integer"] + ["Real"] * card.num_bands)


def format_value(value: Any) -> Any:
    """A CSV cell: floats with 6 significant digits, non-finite floats empty, others as they are."""
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(float(value)) else f"{float(value):.6g}"
    return value


def write_csv(staged: StagedOutputs, target: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
               types: Sequence[str]) -> None:
    """A CSV with a ``.csvt`` beside it (OGR/QGIS read column types from it)."""
    tmp = staged.stage(target)
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    csvt = staged.stage(Path(target).with_suffix(".csvt"))
    csvt.write_text(",".join(f'"{t}"' for t in types) + "\n", encoding="utf-8")
