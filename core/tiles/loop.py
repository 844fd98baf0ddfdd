"""The tile-by-tile loop every raster job shares (classify, explain, ...): plan the tiles of a
processing area, then read, mask, scale and batch them.

``plan_tiles`` decides the processing area (extent and/or mask polygons), the footprint of a
model tile in raster pixels (resampling to the model's ground sample distance) and the grid.
``iter_batches`` yields batches of scaled model input, skipping tiles that are mostly nodata,
checking for cancellation before each batch and telling which area rows no later tile touches
(so blended outputs can be written and forgotten).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..models.card import ModelCard
from ..errors import Cancelled, RasterInputError
from ..io.raster import (Area, MaskPolygons, RasterSource, area_from_bounds, no_overlap_error, smaller_than_tile_error,
                         read_validity)
from .grid import Tile, TileGrid


@dataclass
class TileRunOptions:
    """What every tile-by-tile raster job (classify, explain) is asked.

    ``stride``: model pixels between tile starts (default: half a tile, 50 % overlap).
    ``batch_size``: tiles per model call. ``bands``: 1-based raster bands in the card's order
    (default: matched by name). ``nodata``: overrides the raster's nodata value.
    ``min_valid_fraction``: tiles with fewer valid pixels are skipped and written as nodata.
    ``extent``: (xmin, ymin, xmax, ymax) in the raster CRS. ``mask``: GeoJSON-like polygons in
    the raster CRS; outside them is nodata. ``device``: ``cpu`` or ``cuda``."""

    stride: int | None = None
    batch_size: int = 32
    bands: Sequence[int] | None = None
    nodata: float | None = None
    min_valid_fraction: float = 0.5
    extent: tuple[float, float, float, float] | None = None
    mask: Sequence[dict] | None = None
    device: str = "cpu"


@dataclass
class TilePlan:
    """Where the tiles go. ``area`` is on the input grid; ``footprint`` and ``stride`` are
    (rows, cols) in raster pixels; ``area_transform`` maps area pixels to raster CRS."""

    source: RasterSource
    area: Area
    footprint: tuple[int, int]
    stride: tuple[int, int]
    grid: TileGrid
    area_transform: Any
    tile_size: int
    mask: MaskPolygons | None
    #: tiles the scene checks (radiometry, adaptation) may sample, e.g. not cloudy (None: all)
    sample_filter: Any = None

    def tile_transform(self, tile: Tile) -> Any:
        """Affine transform of the tile as read at the model's resolution."""
        from rasterio.windows import Window

        window = Window(self.area.col_off + tile.col_off, self.area.row_off + tile.row_off,
                        self.footprint[1], self.footprint[0])
        transform = self.source.dataset.window_transform(window)
        return transform * transform.scale(self.footprint[1] / self.tile_size, self.footprint[0] / self.tile_size)

    def tile_bounds(self, tile: Tile) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the tile's footprint in the raster CRS."""
        t = self.area_transform
        x0, y0 = t * (tile.col_off, tile.row_off)
        x1, y1 = t * (tile.col_off + tile.width, tile.row_off + tile.height)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def plan_tiles(source: RasterSource, card: ModelCard, stride: int | None,
               extent: Sequence[float] | None = None, mask: Sequence[dict] | None = None) -> TilePlan:
    """Plan tiles of ``card.tile_size`` model pixels every ``stride`` model pixels (default
    half a tile) over the extent (raster CRS) and/or the mask polygons' bounds."""
    stride_model = stride or max(1, card.tile_size // 2)
    if not 1 <= stride_model <= card.tile_size:
        raise RasterInputError(f"tile stride must be 1..{card.tile_size} model pixels, got {stride_model}")
    ds = source.dataset
    polygons = MaskPolygons(mask) if mask is not None else None
    bounds = tuple(extent) if extent is not None else None
    if polygons is not None:
        mb = polygons.total_bounds()
        rb = ds.bounds
        if mb[0] >= rb.right or mb[2] <= rb.left or mb[1] >= rb.top or mb[3] <= rb.bottom:
            raise no_overlap_error("the mask polygons", mb, ds)
        bounds = mb if bounds is None else (max(bounds[0], mb[0]), max(bounds[1], mb[1]),
                                            min(bounds[2], mb[2]), min(bounds[3], mb[3]))
        if bounds[2] <= bounds[0] or bounds[3] <= bounds[1]:
            raise RasterInputError("the mask polygons do not overlap the extent")
    footprint = source.footprint_for(card.tile_size, card.gsd)
    area = inside_the_raster(area_from_bounds(ds, bounds), footprint, ds.height, ds.width)
    step = tuple(min(f, max(1, round(stride_model * f / card.tile_size))) for f in footprint)
    grid = TileGrid(area.height, area.width, footprint, step)
    from rasterio.windows import Window

    area_transform = ds.window_transform(Window(area.col_off, area.row_off, area.width, area.height))
    return TilePlan(source, area, footprint, step, grid, area_transform, card.tile_size, polygons)


def inside_the_raster(area: Area, footprint: tuple[int, int], height: int, width: int) -> Area:
    """``area``, widened where it is narrower than one tile ``footprint`` (rows, cols) and that
    tile would reach past the raster's edge: then the area grows to one tile, moved inside the
    raster (a small extent at the right or bottom edge would otherwise be read as a tile mostly
    outside the raster, and refused for too few valid pixels)."""
    row_off, height_, col_off, width_ = area.row_off, area.height, area.col_off, area.width
    if height_ < footprint[0] <= height and row_off + footprint[0] > height:
        row_off, height_ = height - footprint[0], footprint[0]
    if width_ < footprint[1] <= width and col_off + footprint[1] > width:
        col_off, width_ = width - footprint[1], footprint[1]
    return Area(row_off, col_off, height_, width_)


class NativeValidity:
    """Which pixels of the area hold data, and lie inside the mask polygons, judged at the
    raster's own resolution, to restrict the rows an output writes.

    Tile validity is computed at the model's resolution; when tiles are resampled (a footprint
    other than the tile size) its nearest-neighbour copy back to the raster grid can be a pixel
    off along nodata and mask edges, so nodata pixels got a class and masked-out pixels a value.
    Without resampling the tile validity is exact and :meth:`restrict` returns its input. Each
    call reads through a dataset handle of its own (safe beside a thread reading tiles)."""

    def __init__(self, plan: TilePlan):
        self.plan = plan
        self.needed = plan.footprint != (plan.tile_size, plan.tile_size)

    def restrict(self, first: int, covered: np.ndarray) -> np.ndarray:
        """``covered`` (rows from area row ``first``, the area's width) where those pixels are
        valid at the raster's resolution."""
        if not self.needed:
            return covered
        import rasterio
        from rasterio.windows import Window

        area, source = self.plan.area, self.plan.source
        window = Window(area.col_off, area.row_off + first, area.width, covered.shape[0])
        with rasterio.open(source.dataset.name) as dataset:
            data = dataset.read(list(source.bands), window=window).astype(np.float32, copy=False)
            transform = dataset.window_transform(window)
            # the rule of the tiles' validity, at the raster's resolution
            valid = read_validity(dataset, data, source.nodata, window, masked=source.masked)
        if self.plan.mask is not None:
            valid &= self.plan.mask.inside(transform, covered.shape)
        return covered & valid


@dataclass
class TileBatch:
    """Scaled model input ``inputs`` (N, bands, tile, tile) float32 of ``tiles``, their
    validity masks (N, tile, tile), ``skipped`` tiles since the previous batch, and
    ``finished_rows``: area rows above this one are touched by no later tile."""

    tiles: list[Tile]
    inputs: np.ndarray
    valid: np.ndarray
    skipped: int
    finished_rows: int
    done: int
    total: int


def iter_batches(plan: TilePlan, card: ModelCard, batch_size: int, min_valid_fraction: float = 0.5,
                 is_cancelled: Callable[[], bool] | None = None, tiles: Sequence[Tile] | None = None,
                 include: Callable[[Tile], bool] | None = None) -> Iterator[TileBatch]:
    """Read the planned tiles in batches. Nodata pixels (and pixels outside the mask) are
    fed to the model as 0 after scaling, i.e. the training mean of a standardised model.

    ``tiles``: only these of the plan's tiles, in grid order (default: all; ``done`` and
    ``total`` count them). ``include``: asked about each tile of a batch before it is read;
    a tile it rejects is neither read nor counted as skipped.

    When tiles were read but none had enough valid pixels, the last batch is followed by a
    :class:`RasterInputError` saying why (raster smaller than a tile, all nodata or NaN, ...), so
    no job writes an all-nodata output for input that holds no usable tile."""
    if batch_size < 1:
        raise RasterInputError("batch size must be at least 1")
    is_cancelled = is_cancelled or (lambda: False)
    tiles = list(plan.grid) if tiles is None else list(tiles)
    rows = plan.grid.row_offsets
    last_col = len(plan.grid.col_offsets) - 1
    size = card.tile_size
    read = used = 0
    for start in range(0, len(tiles), batch_size):
        if is_cancelled():
            raise Cancelled("cancelled by the user; no output was written")
        batch = tiles[start : start + batch_size]
        wanted = [t for t in batch if include is None or include(t)]
        kept: list[Tile] = []
        inputs = np.zeros((0, card.num_bands, size, size), np.float32)
        masks = np.zeros((0, size, size), bool)
        skipped = 0
        if wanted:
            data, valid = plan.source.read_tiles(plan.area, [(t.row_off, t.col_off) for t in wanted],
                                                 plan.footprint, size)
            read += len(wanted)
            if plan.mask is not None:
                for i, tile in enumerate(wanted):
                    valid[i] &= plan.mask.inside(plan.tile_transform(tile), (size, size))
            enough = valid.reshape(len(wanted), -1).mean(axis=1) >= min_valid_fraction
            skipped = len(wanted) - int(enough.sum())
            kept = [t for t, ok in zip(wanted, enough) if ok]
            if kept:
                masks = valid if len(kept) == len(wanted) else valid[enough]
                inputs = card.scaling.apply(data if len(kept) == len(wanted) else data[enough])
                inputs.transpose(1, 0, 2, 3)[:, ~masks] = 0.0
                used += len(kept)
        last = batch[-1]
        if last.grid_col != last_col:
            finished = last.row_off
        elif last.grid_row + 1 < len(rows):
            finished = rows[last.grid_row + 1]
        else:
            finished = plan.area.height
        yield TileBatch(
            tiles=kept,
            inputs=inputs,
            valid=masks,
            skipped=skipped,
            finished_rows=finished,
            done=start + len(batch),
            total=len(tiles),
        )
    if read and not used:
        raise no_valid_tile_error(plan, card, min_valid_fraction)


def no_valid_tile_error(plan: TilePlan, card: ModelCard, min_valid_fraction: float) -> RasterInputError:
    """Why none of the planned tiles has ``min_valid_fraction`` valid pixels."""
    ds = plan.source.dataset
    fh, fw = plan.footprint
    if ds.height < fh or ds.width < fw:
        share = min(1.0, ds.height / fh) * min(1.0, ds.width / fw)
        return smaller_than_tile_error(
            ds.width, ds.height, plan.footprint, card.tile_size, card.gsd,
            f"a tile would be only {share:.0%} data, and it needs {min_valid_fraction:.0%}")
    why = plan.source.describe_invalid(plan.area, min_valid_fraction, plan.mask is not None)
    return RasterInputError(
        f"no tile has enough valid pixels ({min_valid_fraction:.0%} of a tile): {why}. Check the raster's "
        "nodata value (classify, explain and segment take a Nodata parameter that overrides it), the bands chosen "
        "and the extent or mask; nothing was written"
    )


def prefetched(batches: Iterator[TileBatch], depth: int = 2,
               is_cancelled: Callable[[], bool] | None = None) -> Iterator[TileBatch]:
    """``batches`` read ahead by up to ``depth`` batches in a background thread, so reading,
    resampling and scaling the next tiles overlaps the model's work on the current ones (ONNX
    Runtime and torch release the GIL). Same batches, same order; an error in the reader is
    raised here; closing this generator stops the reader. ``is_cancelled`` is also checked
    before each batch is handed out, so a cancel stops the work within one batch although
    batches were read ahead."""
    import queue
    import threading

    done = object()
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def read() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # handed to the consumer
            slots.put(exc)

    reader = threading.Thread(target=read, name="glassbox-tile-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            yield item
    finally:
        stop.set()
        while reader.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.1)
