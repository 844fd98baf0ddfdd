"""Explain a raster classification tile by tile: heatmap raster, band relevance table, peaks;
and measure explanation quality against ground truth.

Entry points: :func:`explain_raster` (mirrors :func:`.classify.classify_raster`: windows, tiles,
batches, tent-weighted blending, staged outputs, progress and cancel per batch) and
:func:`evaluate_explanation_quality`. The attribution itself is :mod:`.xai`, the metrics
:mod:`.xai_metrics`.

**Heatmap raster.** Every tile's attributions (Guided Grad-CAM by default) become a per-pixel
heatmap, ``sum over bands of |attribution|`` (:func:`.xai.pixel_heatmap`), at the model's
resolution; it is resampled to the tile's footprint on the input grid when the raster's pixel
size differs from the model's (bilinear when enlarging, area mean when shrinking), and
overlapping tiles are blended per pixel with the same pyramid weights as the classification
(:mod:`.blending`). Pixels that are nodata in the input get no weight and stay nodata (-1).

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
band's share of the tile's total ``|attribution|`` (:func:`.xai.band_shares`), averaged over
those tiles (each tile counts once; a tile without any attribution, e.g. where Grad-CAM finds
no evidence for a named target class, has no shares and is left out). Shares of a row sum to 1. This is the spectral
explanation paper 1 asks for. Grad-CAM has no band dimension: its band columns are empty.

**Peaks** (optional GeoPackage points, the Segment Anything seeds): per tile, up to
``peaks_per_tile`` local maxima of the tile's heatmap smoothed by a Gaussian of sigma = 1 model
pixel (which removes single-pixel speckle), at least ``peak_min_distance`` model pixels apart
(default tile size / 8), strongest first. Fields ``score`` (the smoothed heatmap at the peak on
the raster's normalisation scale), ``class``, ``class_id`` (the explained class), ``rank``
(1 = strongest in its tile), ``tile_row``, ``tile_col``. Points lie at the centre of the input
pixel that holds the peak, in the raster CRS.
"""

from __future__ import annotations

import csv
import html
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .blending import RowBandAccumulator, tent_window
from .card import ModelCard
from .errors import Cancelled, OutputError, RasterInputError
from .raster import Area, MaskPolygons, RasterSource, area_from_bounds, upsample_nearest
from .tiling import Tile, TileGrid
from .writers import FLOAT_NODATA, StagedOutputs, _GTIFF_OPTIONS
from .xai import METHOD_LABELS, ExplainError, Explainer, band_shares, check_method, load_explainer, pixel_heatmap, resolve_target
from . import xai_metrics

NORMALIZATIONS = ("global", "tile", "none")
ALL_CLASSES = "(all)"
PEAK_SMOOTH = 1.0

ProgressCallback = Callable[[float], None]


@dataclass
class ExplainOptions:
    """``method``: ``guided_gradcam`` (default), ``gradcam`` or ``guided_backprop``.
    ``target``: ``None``/"predicted" = each tile's predicted class, or a class name / index.
    ``stride``: model pixels between tile starts (default half a tile). ``normalization``:
    ``global``, ``tile`` or ``none`` (module docstring). ``peaks_per_tile`` and
    ``peak_min_distance`` (model pixels; default tile/8): the peak layer. ``bands``, ``nodata``,
    ``min_valid_fraction``, ``extent``, ``mask``: as for classification. ``engine``: ``fused``
    or ``captum`` (:mod:`.xai`)."""

    method: str = "guided_gradcam"
    target: str | int | None = None
    stride: int | None = None
    batch_size: int = 16
    normalization: str = "global"
    peaks_per_tile: int = 3
    peak_min_distance: int | None = None
    bands: Sequence[int] | None = None
    nodata: float | None = None
    min_valid_fraction: float = 0.5
    extent: tuple[float, float, float, float] | None = None
    mask: Sequence[dict] | None = None
    device: str = "cpu"
    engine: str = "fused"


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


# -- shared tile machinery ----------------------------------------------------------------------
@dataclass
class _Layout:
    area: Area
    footprint: tuple[int, int]
    scale: tuple[float, float]
    grid: TileGrid
    area_transform: Any


def _layout(source: RasterSource, card: ModelCard, stride_model: int, extent: Any, mask: MaskPolygons | None,
            mask_name: str = "mask") -> _Layout:
    ds = source.dataset
    bounds = extent
    if mask is not None:
        mb = mask.total_bounds()
        bounds = mb if bounds is None else (max(bounds[0], mb[0]), max(bounds[1], mb[1]),
                                            min(bounds[2], mb[2]), min(bounds[3], mb[3]))
        if bounds[2] <= bounds[0] or bounds[3] <= bounds[1]:
            raise RasterInputError(f"the {mask_name} polygons do not overlap the extent")
    area = area_from_bounds(ds, bounds)
    footprint = source.footprint_for(card.tile_size, card.gsd)
    scale = (footprint[0] / card.tile_size, footprint[1] / card.tile_size)
    stride = (max(1, round(stride_model * scale[0])), max(1, round(stride_model * scale[1])))
    stride = (min(stride[0], footprint[0]), min(stride[1], footprint[1]))
    grid = TileGrid(area.height, area.width, footprint, stride)
    return _Layout(area, footprint, scale, grid, ds.window_transform(_window(area)))


def _tile_transform(ds: Any, layout: _Layout, tile: Tile) -> Any:
    """Affine transform of the tile's model pixels."""
    t = ds.window_transform(_window(Area(layout.area.row_off + tile.row_off, layout.area.col_off + tile.col_off,
                                         layout.footprint[0], layout.footprint[1])))
    return t * t.scale(layout.scale[1], layout.scale[0])


def _check_common(card: ModelCard, stride_model: int, batch_size: int) -> None:
    if not 1 <= stride_model <= card.tile_size:
        raise RasterInputError(f"tile stride must be 1..{card.tile_size} model pixels, got {stride_model}")
    if batch_size < 1:
        raise RasterInputError("batch size must be at least 1")


class _MapAccumulator(RowBandAccumulator):
    """:class:`RowBandAccumulator` with one channel that blends a *per-pixel* map of each tile
    (the classification blends one value per tile)."""

    def __init__(self, width: int, height: int):
        super().__init__(width, 1, height)

    def add_map(self, row_off: int, col_off: int, values: np.ndarray, weight: np.ndarray) -> None:
        if row_off < self.base:
            raise ValueError("tile added above rows that were already written")
        rows = min(weight.shape[0], self.height - row_off)
        cols = min(weight.shape[1], self.width - col_off)
        if rows <= 0 or cols <= 0:
            return
        self._ensure(row_off + rows)
        w = weight[:rows, :cols]
        r0 = row_off - self.base
        self.weights[r0 : r0 + rows, col_off : col_off + cols] += w
        self.sums[0, r0 : r0 + rows, col_off : col_off + cols] += values[:rows, :cols].astype(np.float32) * w


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


def _finished_rows(grid: TileGrid, last: Tile, height: int) -> int:
    row_offsets = grid.row_offsets
    until = row_offsets[last.grid_row + 1] if last.grid_row + 1 < len(row_offsets) else height
    if last.grid_col != len(grid.col_offsets) - 1:
        until = last.row_off
    return until


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
    input_path: str,
    model: Explainer | str | Path,
    heatmap_path: str | None,
    band_relevance_path: str | None = None,
    peaks_path: str | None = None,
    options: ExplainOptions | None = None,
    progress: ProgressCallback | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> ExplainResult:
    """Explain ``input_path`` with ``model`` (an :class:`.xai.Explainer` or a model path) and
    write the requested outputs (paths or None): the heatmap GeoTIFF (float32 on the input grid,
    nodata -1), the band relevance CSV and the peak GeoPackage (module docstring).

    ``progress`` gets a percentage after every batch; ``is_cancelled`` is checked before every
    batch (and in the normalisation pass) and raises :class:`.errors.Cancelled`; a failed or
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
    explainer = model if isinstance(model, Explainer) else load_explainer(model, options.device)
    card = explainer.card
    target = resolve_target(card, options.target)
    started = time.perf_counter()
    stride_model = options.stride or max(1, card.tile_size // 2)
    _check_common(card, stride_model, options.batch_size)
    min_distance = options.peak_min_distance or max(1, card.tile_size // 8)
    has_bands = method != "gradcam"

    with RasterSource(input_path, options.bands, card.bands, options.nodata) as source, StagedOutputs() as staged:
        ds = source.dataset
        mask = MaskPolygons(options.mask) if options.mask is not None else None
        lay = _layout(source, card, stride_model, options.extent, mask)
        area, footprint, grid = lay.area, lay.footprint, lay.grid
        log(f"{METHOD_LABELS[method]} of {'the predicted class' if target is None else card.class_names[target]} "
            f"on {len(grid)} tiles of {card.tile_size} model px = {footprint[1]}x{footprint[0]} raster px, "
            f"Grad-CAM layer '{explainer.layer_name}', {options.normalization} normalisation")
        profile = dict(driver="GTiff", height=area.height, width=area.width, count=1, dtype="float32",
                       nodata=FLOAT_NODATA, crs=ds.crs, transform=lay.area_transform)
        raw_path: Path | None = None
        out_ds = raw_ds = None
        heat_tmp = staged.stage(heatmap_path) if heatmap_path else None
        two_pass = heat_tmp is not None and options.normalization == "global"
        import rasterio

        try:
            if heat_tmp is not None:
                if two_pass:
                    fd, name = tempfile.mkstemp(prefix=f".{Path(heatmap_path).stem}.raw.", suffix=".tif",
                                                dir=Path(heatmap_path).parent)
                    os.close(fd)
                    raw_path = Path(name)
                    raw_ds = rasterio.open(raw_path, "w", tiled=True, blockxsize=256, blockysize=256,
                                           BIGTIFF="IF_SAFER", **profile)
                else:
                    out_ds = _open_heatmap(heat_tmp, profile, method, options.normalization)
            sink = raw_ds if two_pass else out_ds
            accumulator = _MapAccumulator(area.width, area.height)
            weight = tent_window(*footprint)
            tiles = list(grid)
            explained = skipped = 0
            global_max = 0.0
            share_sums = np.zeros((card.num_classes, card.num_bands), dtype=np.float64)
            share_counts = np.zeros(card.num_classes, dtype=np.int64)
            tile_counts = np.zeros(card.num_classes, dtype=np.int64)
            peaks: list[tuple[float, float, float, int, int, int, int]] = []  # x, y, raw, cls, rank, row, col
            tile_norms: list[float] = []
            for start in range(0, len(tiles), options.batch_size):
                if is_cancelled():
                    raise Cancelled("cancelled by the user; no output was written")
                batch = tiles[start : start + options.batch_size]
                inputs, keep, masks = _read_batch(source, ds, lay, card, batch, mask, options.min_valid_fraction)
                skipped += len(batch) - len(keep)
                if inputs:
                    expl = explainer.explain(np.stack(inputs), method, target, options.engine)
                    valid = np.stack(masks)
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
                        for tile, h, v, t, m in zip(keep, heat, valid, expl.targets, maxima):
                            for rank, (r, c, value) in enumerate(
                                    local_peaks(h, options.peaks_per_tile, min_distance, v), start=1):
                                x, y = _peak_xy(lay, tile, r, c, card.tile_size)
                                norm = float(m) if options.normalization == "tile" else 1.0
                                peaks.append((x, y, value / norm if norm > 0 else 0.0, int(t), rank,
                                              tile.grid_row, tile.grid_col))
                    if options.normalization == "tile":
                        heat = heat / np.where(maxima > 0, maxima, 1.0)[:, None, None]
                    if sink is not None:
                        heat_fp = _resize(heat, footprint)
                        for tile, h, v in zip(keep, heat_fp, masks):
                            accumulator.add_map(tile.row_off, tile.col_off, h, weight * upsample_nearest(v, footprint))
                    explained += len(inputs)
                if sink is not None:
                    for first, values, covered in accumulator.pop_rows(_finished_rows(grid, batch[-1], area.height)):
                        _write_rows(sink, first, values[0], covered)
                progress((95.0 if two_pass else 100.0) * min(start + len(batch), len(tiles)) / max(1, len(tiles)))
            if sink is not None:
                for first, values, covered in accumulator.pop_rows(area.height):
                    _write_rows(sink, first, values[0], covered)
            normaliser = global_max if options.normalization == "global" and global_max > 0 else 1.0
            if two_pass:
                raw_ds.close()
                raw_ds = None
                out_ds = _open_heatmap(heat_tmp, profile, method, options.normalization)
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
        if peaks_path:
            from .points import write_points

            fields = [("score", "real"), ("class", "str"), ("class_id", "int"), ("rank", "int"),
                      ("tile_row", "int"), ("tile_col", "int")]
            scale = normaliser if options.normalization == "global" else 1.0
            records = [(x, y, {"score": float(raw / scale), "class": card.class_names[cls], "class_id": int(cls),
                               "rank": int(rank), "tile_row": int(row), "tile_col": int(col)})
                       for x, y, raw, cls, rank, row, col in peaks]
            write_points(staged, peaks_path, ds.crs.to_wkt(), fields, records, layer_name="peaks")
        staged.commit()
        progress(100.0)

    outputs = {k: v for k, v in dict(heatmap=heatmap_path, band_relevance=band_relevance_path,
                                       peaks=peaks_path).items() if v}
    return ExplainResult(
        outputs=outputs,
        tiles_total=len(tiles),
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
    )


def _read_batch(source: RasterSource, ds: Any, lay: _Layout, card: ModelCard, batch: Sequence[Tile],
                mask: MaskPolygons | None, min_valid: float) -> tuple[list, list, list]:
    inputs, keep, masks = [], [], []
    for tile in batch:
        data, valid = source.read_tile(lay.area, tile.row_off, tile.col_off, lay.footprint, card.tile_size)
        if mask is not None:
            valid &= mask.inside(_tile_transform(ds, lay, tile), (card.tile_size, card.tile_size))
        if valid.mean() < min_valid:
            continue
        scaled = card.scaling.apply(data)
        scaled[:, ~valid] = 0.0  # the training mean after standardisation
        inputs.append(scaled)
        keep.append(tile)
        masks.append(valid)
    return inputs, keep, masks


def _peak_xy(lay: _Layout, tile: Tile, r: int, c: int, tile_size: int) -> tuple[float, float]:
    row = tile.row_off + min(tile.height - 1, int((r + 0.5) * tile.height / tile_size))
    col = tile.col_off + min(tile.width - 1, int((c + 0.5) * tile.width / tile_size))
    x, y = lay.area_transform * (col + 0.5, row + 0.5)
    return float(x), float(y)


def _open_heatmap(path: Path, profile: dict, method: str, normalization: str) -> Any:
    import rasterio

    try:
        out = rasterio.open(path, "w", **profile, **_GTIFF_OPTIONS)
    except Exception as exc:
        raise OutputError(f"cannot create output raster: {exc}") from exc
    scale = {"global": "0-1, one scale for the whole raster", "tile": "0-1, per tile",
             "none": "raw attribution magnitude"}[normalization]
    out.set_band_description(1, f"{METHOD_LABELS[method]} relevance ({scale})")
    return out


def _write_rows(dataset: Any, first: int, values: np.ndarray, covered: np.ndarray) -> None:
    from rasterio.windows import Window

    rows, width = covered.shape
    out = np.where(covered, values, FLOAT_NODATA).astype(np.float32)
    dataset.write(out, 1, window=Window(0, first, width, rows))


def _normalise_pass(raw_path: Path, out_ds: Any, normaliser: float, is_cancelled: Callable[[], bool],
                    rows_per_window: int = 256) -> None:
    """Second pass of global normalisation: raw / normaliser, window by window."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(raw_path) as raw:
        for first in range(0, raw.height, rows_per_window):
            if is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            window = Window(0, first, raw.width, min(rows_per_window, raw.height - first))
            values = raw.read(1, window=window)
            nodata = values == FLOAT_NODATA
            out = np.where(nodata, FLOAT_NODATA, values / np.float32(normaliser)).astype(np.float32)
            out_ds.write(out, 1, window=window)


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
    rows = [[name, ids[name], n, *[_fmt(v) for v in shares]] for name, (n, shares) in table.items()]
    _write_csv(staged, target, columns, rows, ["String", "Integer", "Integer"] + ["Real"] * card.num_bands)


def _fmt(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(float(value)) else f"{float(value):.6g}"
    return value


def _write_csv(staged: StagedOutputs, target: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
               types: Sequence[str]) -> None:
    """A CSV with a ``.csvt`` beside it (OGR/QGIS read column types from it)."""
    tmp = staged.stage(target)
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    csvt = staged.stage(Path(target).with_suffix(".csvt"))
    csvt.write_text(",".join(f'"{t}"' for t in types) + "\n", encoding="utf-8")


def _window(area: Area):
    from rasterio.windows import Window

    return Window(area.col_off, area.row_off, area.width, area.height)


def _tile_bounds(area_transform: Any, tile: Tile) -> tuple[float, float, float, float]:
    x0, y0 = area_transform * (tile.col_off, tile.row_off)
    x1, y1 = area_transform * (tile.col_off + tile.width, tile.row_off + tile.height)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


# -- explanation quality ------------------------------------------------------------------------
@dataclass
class QualityOptions:
    """``stride`` defaults to the tile size (tiles side by side, each evaluated once).
    ``threshold``/``smooth``: the IoU rule of :func:`.xai_metrics.heatmap_iou`; ``tolerance``
    (model pixels): the pointing game's; ``deletion_steps``: points of the deletion curve."""

    method: str = "guided_gradcam"
    target: str | int | None = None
    stride: int | None = None
    batch_size: int = 16
    threshold: float = xai_metrics.DEFAULT_THRESHOLD
    smooth: float = xai_metrics.DEFAULT_SMOOTH
    tolerance: int = 0
    deletion_steps: int = xai_metrics.DEFAULT_STEPS
    bands: Sequence[int] | None = None
    nodata: float | None = None
    min_valid_fraction: float = 0.5
    device: str = "cpu"
    engine: str = "fused"


@dataclass
class TileQuality:
    tile_row: int
    tile_col: int
    bounds: tuple[float, float, float, float]
    class_name: str
    class_id: int
    probability: float
    gt_fraction: float
    iou: float
    pointing_hit: bool
    deletion_auc: float
    random_deletion_auc: float


@dataclass
class QualityResult:
    outputs: dict[str, str]
    tiles: list[TileQuality]
    mean_iou: float
    pointing_game: float
    deletion_auc: float
    random_deletion_auc: float
    deletion_curve: list[float]
    random_curve: list[float]
    seconds: float
    method: str
    target: str
    layer: str
    card: ModelCard | None = None


def evaluate_explanation_quality(
    input_path: str,
    model: Explainer | str | Path,
    ground_truth: Sequence[dict],
    csv_path: str | None,
    report_path: str | None = None,
    options: QualityOptions | None = None,
    progress: ProgressCallback | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> QualityResult:
    """Explain every tile that intersects the ``ground_truth`` polygons (GeoJSON-like, in the
    raster CRS) and score each explanation: IoU of the thresholded heatmap with the polygons
    (rasterised on the tile's model pixels), pointing game, deletion AUC and the deletion AUC
    of a random pixel order as reference (:mod:`.xai_metrics`). Writes a per-tile CSV with a
    final ``mean`` row and an HTML report. Tiles are those of the raster-wide grid (the same
    tiles :func:`explain_raster` uses with the same stride)."""
    options = options or QualityOptions()
    progress = progress or (lambda _p: None)
    is_cancelled = is_cancelled or (lambda: False)
    log = log or (lambda _m: None)
    if not (csv_path or report_path):
        raise RasterInputError("no output requested")
    method = check_method(options.method)
    if not 0 < options.threshold <= 1:
        raise ExplainError("the IoU threshold must be in (0, 1], a fraction of each heatmap's maximum")
    if options.deletion_steps < 1:
        raise ExplainError("deletion steps must be at least 1")
    explainer = model if isinstance(model, Explainer) else load_explainer(model, options.device)
    card = explainer.card
    target = resolve_target(card, options.target)
    stride_model = options.stride or card.tile_size
    _check_common(card, stride_model, options.batch_size)
    started = time.perf_counter()
    truth = MaskPolygons(ground_truth)

    with RasterSource(input_path, options.bands, card.bands, options.nodata) as source, StagedOutputs() as staged:
        ds = source.dataset
        gb = truth.total_bounds()
        rb = ds.bounds
        if gb[0] >= rb.right or gb[2] <= rb.left or gb[1] >= rb.top or gb[3] <= rb.bottom:
            raise RasterInputError("the ground truth polygons do not overlap the raster")
        lay = _layout(source, card, stride_model, None, None)
        candidates = []
        for tile in lay.grid:
            x0, y0, x1, y1 = _tile_bounds(lay.area_transform, tile)
            if gb[0] < x1 and gb[2] > x0 and gb[1] < y1 and gb[3] > y0:
                candidates.append(tile)
        rows: list[TileQuality] = []
        curves, random_curves = [], []
        for start in range(0, len(candidates), options.batch_size):
            if is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            batch = candidates[start : start + options.batch_size]
            truth_masks = {}
            selected = []
            for tile in batch:
                inside = truth.inside(_tile_transform(ds, lay, tile), (card.tile_size, card.tile_size))
                if inside.any():
                    truth_masks[tile] = inside
                    selected.append(tile)
            inputs, keep, masks = _read_batch(source, ds, lay, card, selected, None, options.min_valid_fraction)
            if inputs:
                x = np.stack(inputs)
                expl = explainer.explain(x, method, target, options.engine)
                heat = pixel_heatmap(expl.attributions)
                for i, (tile, valid) in enumerate(zip(keep, masks)):
                    h = np.where(valid, heat[i], 0.0)
                    gt = truth_masks[tile] & valid
                    t = int(expl.targets[i])
                    curve = xai_metrics.deletion_curve(explainer.predict_proba, x[i], h, t, options.deletion_steps)
                    order = np.random.default_rng(tile.grid_row * 100003 + tile.grid_col).permutation(h.size)
                    rand = xai_metrics.deletion_curve(explainer.predict_proba, x[i], h, t, options.deletion_steps,
                                                      order=order)
                    curves.append(curve.probabilities)
                    random_curves.append(rand.probabilities)
                    rows.append(TileQuality(
                        tile_row=tile.grid_row, tile_col=tile.grid_col, bounds=_tile_bounds(lay.area_transform, tile),
                        class_name=card.class_names[t], class_id=t, probability=float(expl.probabilities[i, t]),
                        gt_fraction=float(gt.sum() / max(1, valid.sum())),
                        iou=xai_metrics.heatmap_iou(h, gt, options.threshold, options.smooth, valid),
                        pointing_hit=xai_metrics.pointing_game(h, gt, options.tolerance, options.smooth, valid),
                        deletion_auc=curve.auc, random_deletion_auc=rand.auc,
                    ))
            progress(100.0 * min(start + len(batch), len(candidates)) / max(1, len(candidates)))
        if not rows:
            raise ExplainError("no tile with enough valid pixels intersects the ground truth polygons")
        ious = np.array([r.iou for r in rows], dtype=float)
        result = QualityResult(
            outputs={k: v for k, v in dict(csv=csv_path, report=report_path).items() if v},
            tiles=rows,
            mean_iou=float(np.nanmean(ious)) if np.isfinite(ious).any() else math.nan,
            pointing_game=float(np.mean([r.pointing_hit for r in rows])),
            deletion_auc=float(np.mean([r.deletion_auc for r in rows])),
            random_deletion_auc=float(np.mean([r.random_deletion_auc for r in rows])),
            deletion_curve=[float(v) for v in np.mean(curves, axis=0)],
            random_curve=[float(v) for v in np.mean(random_curves, axis=0)],
            seconds=time.perf_counter() - started,
            method=method,
            target="predicted" if target is None else card.class_names[target],
            layer=explainer.layer_name,
            card=card,
        )
        log(f"{len(rows)} tiles intersect the ground truth: mean IoU {result.mean_iou:.3f}, pointing game "
            f"{result.pointing_game:.1%}, deletion AUC {result.deletion_auc:.3f} (random order "
            f"{result.random_deletion_auc:.3f})")
        if csv_path:
            _write_quality_csv(staged, csv_path, result)
        if report_path:
            tmp = staged.stage(report_path)
            tmp.write_text(_quality_html(result, input_path, explainer.source, options), encoding="utf-8")
        staged.commit()
    return result


_QUALITY_COLUMNS = ["kind", "tile_row", "tile_col", "x_min", "y_min", "x_max", "y_max", "class", "class_id",
                    "probability", "gt_fraction", "iou", "pointing_hit", "deletion_auc", "random_deletion_auc"]
_QUALITY_TYPES = ["String", "Integer", "Integer", "Real", "Real", "Real", "Real", "String", "Integer",
                  "Real", "Real", "Real", "Real", "Real", "Real"]


def _write_quality_csv(staged: StagedOutputs, target: str, result: QualityResult) -> None:
    rows = [["tile", r.tile_row, r.tile_col, *[f"{b:.6f}" for b in r.bounds], r.class_name, r.class_id,
             _fmt(r.probability), _fmt(r.gt_fraction), _fmt(r.iou), int(r.pointing_hit), _fmt(r.deletion_auc),
             _fmt(r.random_deletion_auc)] for r in result.tiles]
    rows.append(["mean", "", "", "", "", "", "", "", "", _fmt(float(np.mean([r.probability for r in result.tiles]))),
                 _fmt(float(np.mean([r.gt_fraction for r in result.tiles]))), _fmt(result.mean_iou),
                 _fmt(result.pointing_game), _fmt(result.deletion_auc), _fmt(result.random_deletion_auc)])
    _write_csv(staged, target, _QUALITY_COLUMNS, rows, _QUALITY_TYPES)


def _svg_curves(curves: dict[str, tuple[list[float], str]], width: int = 360, height: int = 200) -> str:
    pad = 30
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{pad}" y="10" width="{width - pad - 10}" height="{height - pad - 10}" fill="none" stroke="#999"/>']
    for label, (values, colour) in curves.items():
        n = len(values) - 1
        points = " ".join(f"{pad + (width - pad - 10) * i / max(1, n):.1f},"
                          f"{10 + (height - pad - 10) * (1 - v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="11">0</text>')
    parts.append(f'<text x="{width - 60}" y="{height - 8}" font-size="11">1 (deleted)</text>')
    parts.append('<text x="2" y="20" font-size="11">p=1</text>')
    parts.append("</svg>")
    return "".join(parts)


def _quality_html(result: QualityResult, input_path: str, model_name: str, options: QualityOptions) -> str:
    esc = html.escape
    card = result.card
    summary = [
        ("Tiles evaluated", str(len(result.tiles))),
        ("Mean IoU (Jaccard) of the thresholded heatmap", f"{result.mean_iou:.3f}"),
        ("Pointing game hit rate", f"{result.pointing_game:.1%}"),
        ("Deletion AUC (lower = more faithful)", f"{result.deletion_auc:.3f}"),
        ("Deletion AUC, random pixel order (reference)", f"{result.random_deletion_auc:.3f}"),
    ]
    tile_rows = "".join(
        f"<tr><td>{r.tile_row}</td><td>{r.tile_col}</td><td>{esc(r.class_name)}</td><td>{r.probability:.3f}</td>"
        f"<td>{r.gt_fraction:.3f}</td><td>{_fmt(r.iou) or 'n/a'}</td><td>{'hit' if r.pointing_hit else 'miss'}</td>"
        f"<td>{r.deletion_auc:.3f}</td><td>{r.random_deletion_auc:.3f}</td></tr>" for r in result.tiles)
    curves = _svg_curves({"heatmap order": (result.deletion_curve, "#c0392b"),
                          "random order": (result.random_curve, "#7f8c8d")})
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Explanation quality</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}</style>
</head><body>
<h1>Explanation quality</h1>
<p>Raster <code>{esc(str(input_path))}</code>, model <code>{esc(model_name)}</code> ({esc(card.name)}),
method <b>{esc(METHOD_LABELS[result.method])}</b>, target class <b>{esc(result.target)}</b>,
Grad-CAM layer <code>{esc(result.layer)}</code>.</p>
<table>{''.join(f'<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>' for k, v in summary)}</table>
<h2>How to read it</h2>
<ul>
<li><b>IoU</b>: per tile, the pixels whose heatmap (smoothed by a Gaussian of {options.smooth:g} model px) is at
least {options.threshold:g} &times; the tile's maximum, compared with the ground-truth polygons rasterised on the
tile's model pixels: intersection / union. 1 = the relevant region is exactly the ground truth.</li>
<li><b>Pointing game</b>: a hit when the heatmap's maximum lies inside the ground truth
(tolerance {options.tolerance} model px).</li>
<li><b>Deletion</b>: pixels are deleted (set to the training mean) from the most to the least relevant and the
probability of the explained class is recorded; the area under that curve is low when the heatmap found what
the model relies on. Compare with the random order.</li>
</ul>
<h2>Mean deletion curve</h2>
<p><span style="color:#c0392b">&#9632; heatmap order</span> &nbsp; <span style="color:#7f8c8d">&#9632; random order</span></p>
{curves}
<h2>Tiles</h2>
<table><tr><th>tile row</th><th>tile col</th><th>class</th><th>probability</th><th>ground-truth share</th>
<th>IoU</th><th>pointing game</th><th>deletion AUC</th><th>random AUC</th></tr>{tile_rows}</table>
</body></html>
"""
