"""Classify a raster tile by tile: read windows, scale, predict in batches, blend, write.

Entry point: :func:`classify_raster`. See :mod:`.tiling` for the tile grid and its edges,
:mod:`.blending` for how overlapping tiles are blended, :mod:`.writers` for the outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backends import ClassifierModel, load_model
from .card import ModelCard
from .blending import RowBandAccumulator, tent_window
from .errors import Cancelled, RasterInputError
from .raster import Area, MaskPolygons, RasterSource, area_from_bounds, upsample_nearest
from .tiling import TileGrid
from .writers import ClassificationWriter, StagedOutputs, write_tile_grid


@dataclass
class ClassifyOptions:
    """``stride``: model pixels between tile starts (default: half a tile, 50 % overlap).
    ``bands``: 1-based raster bands in the card's order (default: matched by name).
    ``nodata``: overrides the raster's nodata value. ``min_valid_fraction``: tiles with fewer
    valid pixels are skipped and written as nodata. ``extent``: (xmin, ymin, xmax, ymax) in the
    raster CRS. ``mask``: GeoJSON-like polygons in the raster CRS; outside them is nodata."""

    stride: int | None = None
    batch_size: int = 32
    bands: Sequence[int] | None = None
    nodata: float | None = None
    min_valid_fraction: float = 0.5
    extent: tuple[float, float, float, float] | None = None
    mask: Sequence[dict] | None = None
    device: str = "cpu"


@dataclass
class ClassifyResult:
    outputs: dict[str, str]
    tiles_total: int
    tiles_classified: int
    tiles_skipped: int
    seconds: float
    bands: list[int]
    footprint: tuple[int, int]
    class_pixel_counts: dict[str, int] = field(default_factory=dict)
    card: ModelCard | None = None


ProgressCallback = Callable[[float], None]


def classify_raster(
    input_path: str,
    model: ClassifierModel | str | Path,
    classes_path: str | None,
    probabilities_path: str | None = None,
    confidence_path: str | None = None,
    tiles_path: str | None = None,
    options: ClassifyOptions | None = None,
    progress: ProgressCallback | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> ClassifyResult:
    """Classify ``input_path`` with ``model`` and write the requested outputs (paths or None).

    ``progress`` gets a percentage after every batch; ``is_cancelled`` is checked before every
    batch and raises :class:`Cancelled` (nothing is written). Returns counts and timings.
    """
    options = options or ClassifyOptions()
    progress = progress or (lambda _p: None)
    is_cancelled = is_cancelled or (lambda: False)
    log = log or (lambda _m: None)
    if not any([classes_path, probabilities_path, confidence_path, tiles_path]):
        raise RasterInputError("no output requested")
    if not isinstance(model, ClassifierModel):
        model = load_model(model, options.device)
    card = model.card
    started = time.perf_counter()
    stride_model = options.stride or max(1, card.tile_size // 2)
    if not 1 <= stride_model <= card.tile_size:
        raise RasterInputError(f"tile stride must be 1..{card.tile_size} model pixels, got {stride_model}")
    if options.batch_size < 1:
        raise RasterInputError("batch size must be at least 1")

    with RasterSource(input_path, options.bands, card.bands, options.nodata) as source, StagedOutputs() as staged:
        ds = source.dataset
        mask = MaskPolygons(options.mask) if options.mask is not None else None
        bounds = options.extent
        if mask is not None:
            mb = mask.total_bounds()
            bounds = mb if bounds is None else (max(bounds[0], mb[0]), max(bounds[1], mb[1]),
                                                min(bounds[2], mb[2]), min(bounds[3], mb[3]))
            if bounds[2] <= bounds[0] or bounds[3] <= bounds[1]:
                raise RasterInputError("the mask polygons do not overlap the extent")
        area = area_from_bounds(ds, bounds)
        footprint = source.footprint_for(card.tile_size, card.gsd)
        scale = (footprint[0] / card.tile_size, footprint[1] / card.tile_size)
        stride = (max(1, round(stride_model * scale[0])), max(1, round(stride_model * scale[1])))
        stride = (min(stride[0], footprint[0]), min(stride[1], footprint[1]))
        grid = TileGrid(area.height, area.width, footprint, stride)
        area_transform = ds.window_transform(_window(area))
        log(
            f"{len(grid)} tiles of {card.tile_size} model px = {footprint[1]}x{footprint[0]} raster px, "
            f"stride {stride[1]}x{stride[0]} px, bands {source.bands}, area {area.width}x{area.height} px"
        )
        writer = ClassificationWriter(staged, card, ds.crs, area_transform, area.height, area.width,
                                      classes_path, probabilities_path, confidence_path)
        accumulator = RowBandAccumulator(area.width, card.num_classes, area.height)
        weight = tent_window(*footprint)
        records: list = []
        counts = np.zeros(card.num_classes, dtype=np.int64)
        tiles = list(grid)
        row_offsets = grid.row_offsets
        classified = skipped = 0
        try:
            for start in range(0, len(tiles), options.batch_size):
                if is_cancelled():
                    raise Cancelled("cancelled by the user; no output was written")
                batch = tiles[start : start + options.batch_size]
                inputs, keep, masks = [], [], []
                for tile in batch:
                    data, valid = source.read_tile(area, tile.row_off, tile.col_off, footprint, card.tile_size)
                    if mask is not None:
                        tile_transform = ds.window_transform(_window(Area(
                            area.row_off + tile.row_off, area.col_off + tile.col_off, footprint[0], footprint[1])))
                        inside = mask.inside(tile_transform * tile_transform.scale(scale[1], scale[0]),
                                             (card.tile_size, card.tile_size))
                        valid &= inside
                    if valid.mean() < options.min_valid_fraction:
                        skipped += 1
                        continue
                    scaled = card.scaling.apply(data)
                    scaled[:, ~valid] = 0.0  # the training mean after standardisation
                    inputs.append(scaled)
                    keep.append(tile)
                    masks.append(valid)
                if inputs:
                    probs = model.predict_proba(np.stack(inputs))
                    for tile, p, valid in zip(keep, probs, masks):
                        w = weight * upsample_nearest(valid, footprint)
                        accumulator.add(tile.row_off, tile.col_off, p, w)
                        if tiles_path:
                            records.append((tile.grid_row, tile.grid_col, _tile_bounds(area_transform, tile), p))
                    classified += len(inputs)
                last = batch[-1]
                finished_until = (row_offsets[last.grid_row + 1] if last.grid_row + 1 < len(row_offsets)
                                  else area.height)
                if last.grid_col != len(grid.col_offsets) - 1:
                    finished_until = last.row_off
                for first, p, covered in accumulator.pop_rows(finished_until):
                    counts += _write(writer, first, p, covered, card.num_classes)
                progress(100.0 * min(start + len(batch), len(tiles)) / max(1, len(tiles)))
            for first, p, covered in accumulator.pop_rows(area.height):
                counts += _write(writer, first, p, covered, card.num_classes)
        finally:
            writer.close()
        if tiles_path:
            write_tile_grid(staged, tiles_path, ds.crs.to_wkt(), card, records)
        staged.commit()

    outputs = {k: v for k, v in dict(classes=classes_path, probabilities=probabilities_path,
                                       confidence=confidence_path, tiles=tiles_path).items() if v}
    return ClassifyResult(
        outputs=outputs,
        tiles_total=len(tiles),
        tiles_classified=classified,
        tiles_skipped=skipped,
        seconds=time.perf_counter() - started,
        bands=list(source.bands),
        footprint=footprint,
        class_pixel_counts={n: int(c) for n, c in zip(card.class_names, counts)},
        card=card,
    )


def _write(writer: ClassificationWriter, first: int, probs: np.ndarray, covered: np.ndarray, k: int) -> np.ndarray:
    writer.write_rows(first, probs, covered)
    labels = np.argmax(probs, axis=0)[covered]
    return np.bincount(labels, minlength=k)


def _window(area: Area):
    from rasterio.windows import Window

    return Window(area.col_off, area.row_off, area.width, area.height)


def _tile_bounds(area_transform, tile) -> tuple[float, float, float, float]:
    x0, y0 = area_transform * (tile.col_off, tile.row_off)
    x1, y1 = area_transform * (tile.col_off + tile.width, tile.row_off + tile.height)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
