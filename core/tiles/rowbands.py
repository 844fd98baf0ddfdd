"""Row bands: the unit of work of a tiled job split across threads, processes or machines.

A *row band* is a fixed number of consecutive grid rows of a :class:`~.loop.TilePlan`. The split
depends on the plan only (never on the number of workers), so every way of running the bands
(in this process, in worker processes, on a Dask cluster, resumed from saved bands) runs
exactly the same batches through the model and, blended in grid order by one client, writes
byte-identical outputs.

A band is computed by :func:`run_band` from a :class:`BandSpec`, which holds everything needed
to redo the plan in another process (the raster's path or a VRT's XML, the model's path, the
options), so a worker reads its tiles and runs the model itself and sends back only
:class:`BandResult`: per classified tile its grid index, its class probabilities and, when some
of its pixels are nodata, its validity mask packed to bits.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import RasterInputError
from .grid import Tile, TileGrid
from .loop import TileBatch, iter_batches, plan_tiles, prefetched

#: a row band holds about this many tiles (whole grid rows, at least one)
BAND_TILES = 256


@dataclass(frozen=True)
class RowBand:
    """Grid rows ``[first_row, stop_row)`` of a plan; ``index`` counts bands from the top."""

    index: int
    first_row: int
    stop_row: int


def band_rows_for(grid: TileGrid, band_rows: int | None = None) -> int:
    """Grid rows per band: ``band_rows`` if given, else about :data:`BAND_TILES` tiles' worth."""
    if band_rows is not None:
        if int(band_rows) < 1:
            raise RasterInputError(f"a row band must hold at least one grid row, got {band_rows}")
        return int(band_rows)
    return max(1, round(BAND_TILES / len(grid.col_offsets)))


def split_rows(grid: TileGrid, band_rows: int | None = None) -> list[RowBand]:
    """The grid's rows cut into bands of :func:`band_rows_for` rows (the last may hold fewer)."""
    rows = len(grid.row_offsets)
    step = band_rows_for(grid, band_rows)
    return [RowBand(i, start, min(rows, start + step)) for i, start in enumerate(range(0, rows, step))]


def band_tiles(grid: TileGrid, band: RowBand) -> list[Tile]:
    """The tiles of ``band`` in grid order."""
    rows, cols = grid.row_offsets, grid.col_offsets
    fh, fw = grid.footprint
    return [Tile(r, c, rows[r], col, fh, fw) for r in range(band.first_row, band.stop_row)
            for c, col in enumerate(cols)]


@dataclass(frozen=True)
class BandSpec:
    """What a worker needs to compute any row band of one job (picklable, QGIS-free).

    ``input_path``: the raster as the worker opens it (path or GDAL URL); ``vrt_xml``: when set,
    the raster is this VRT (a mosaic built by the client; its sources are absolute paths) and
    ``input_path`` only names it. ``bands``: the 1-based raster bands, already resolved.
    ``threads``: CPU threads of the model in a worker process (None: the library's default).
    ``key`` tells specs apart in a worker's cache of open rasters and loaded models."""

    key: str
    input_path: str
    model_path: str
    device: str
    bands: tuple[int, ...]
    nodata: float | None
    stride: int | None
    extent: tuple[float, float, float, float] | None
    mask: Sequence[dict] | None
    batch_size: int
    min_valid_fraction: float
    test_time_augmentation: bool
    threads: int | None = None
    vrt_xml: str | None = None


@dataclass
class BandResult:
    """The model's results for one row band: ``tiles`` (int64 grid indices, row-major, in grid
    order) of the classified tiles, their ``probabilities`` ``(n, classes)`` float32, and for the
    tiles with nodata pixels (positions ``partial`` into ``tiles``) their validity masks
    (tile x tile model pixels) packed with ``np.packbits`` in ``masks`` ``(len(partial), bytes)``.
    ``read``: tiles read; ``skipped``: read but with too few valid pixels."""

    index: int
    tiles: np.ndarray
    probabilities: np.ndarray
    partial: np.ndarray
    masks: np.ndarray
    read: int
    skipped: int
    #: True when the band came from a resume folder rather than from the model
    resumed: bool = field(default=False, compare=False)

    def valid_masks(self, tile_size: int) -> list[np.ndarray | None]:
        """Per tile its validity mask ``(tile_size, tile_size)`` bool, or None when all valid."""
        out: list[np.ndarray | None] = [None] * len(self.tiles)
        for position, packed in zip(self.partial, self.masks):
            out[int(position)] = np.unpackbits(packed, count=tile_size * tile_size).reshape(
                tile_size, tile_size).astype(bool)
        return out

    def save(self, path: Path) -> None:
        """Write to ``path`` (.npz) atomically: a file that exists is complete."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, index=self.index, tiles=self.tiles, probabilities=self.probabilities,
                     partial=self.partial, masks=self.masks, counts=np.array([self.read, self.skipped]))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "BandResult":
        with np.load(path, allow_pickle=False) as data:
            read, skipped = (int(v) for v in data["counts"])
            return cls(int(data["index"]), data["tiles"], data["probabilities"], data["partial"], data["masks"],
                       read, skipped, resumed=True)


def pack_batch(batch: TileBatch, columns: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Grid indices of a batch's tiles, and the positions and packed masks of the partial ones."""
    indices = np.array([t.grid_row * columns + t.grid_col for t in batch.tiles], dtype=np.int64)
    flat = batch.valid.reshape(len(batch.tiles), -1)
    partial = np.flatnonzero(~flat.all(axis=1))
    return indices, partial, [np.packbits(flat[i]) for i in partial]


class BandRunner:
    """Computes row bands of one :class:`BandSpec`: opens the raster itself, plans the tiles as
    the client did, and runs ``model`` (default: loaded from the spec's path, with the spec's
    threads). Not thread-safe: one runner per thread."""

    def __init__(self, spec: BandSpec, model: Any = None):
        from ..io.raster import RasterSource

        self.spec = spec
        self._memory = None
        path = spec.input_path
        if spec.vrt_xml is not None:
            from rasterio.io import MemoryFile

            self._memory = MemoryFile(spec.vrt_xml.encode("utf-8"), ext=".vrt")
            path = self._memory.name
        self.model = model if model is not None else load_worker_model(spec.model_path, spec.device, spec.threads)
        self.card = self.model.card
        self.source = RasterSource(path, list(spec.bands), self.card.bands, spec.nodata, self.card)
        try:
            self.plan = plan_tiles(self.source, self.card, spec.stride, spec.extent, spec.mask)
        except BaseException:
            self.close()
            raise

    def run(self, band: RowBand, is_cancelled: Callable[[], bool] | None = None,
            on_batch: Callable[[RowBand, int], None] | None = None) -> BandResult:
        """The band's results; ``is_cancelled`` is checked before each batch, ``on_batch`` gets the
        band and the number of its tiles done after each batch."""
        spec, card = self.spec, self.card
        columns = len(self.plan.grid.col_offsets)
        tiles = band_tiles(self.plan.grid, band)
        indices, probabilities, partial, masks = [], [], [], []
        read = skipped = count = 0
        batches = prefetched(_until_last(iter_batches(self.plan, card, spec.batch_size, spec.min_valid_fraction,
                                                      is_cancelled, tiles=tiles)), is_cancelled=is_cancelled)
        for batch in batches:
            read += len(batch.tiles) + batch.skipped
            skipped += batch.skipped
            if not batch.tiles:
                if on_batch is not None:
                    on_batch(band, batch.done)
                continue
            probs = self.model.predict_proba(batch.inputs, dihedral_tta=spec.test_time_augmentation)
            found, where, packed = pack_batch(batch, columns)
            partial += [count + int(p) for p in where]
            masks += packed
            indices.append(found)
            count += len(found)
            probabilities.append(np.asarray(probs, dtype=np.float32))
            if on_batch is not None:
                on_batch(band, batch.done)
        k = card.num_classes
        nbytes = (card.tile_size * card.tile_size + 7) // 8
        return BandResult(
            band.index,
            np.concatenate(indices) if indices else np.zeros(0, np.int64),
            np.concatenate(probabilities) if probabilities else np.zeros((0, k), np.float32),
            np.array(partial, dtype=np.int64),
            np.stack(masks) if masks else np.zeros((0, nbytes), np.uint8),
            read, skipped,
        )

    def close(self) -> None:
        source = getattr(self, "source", None)
        if source is not None:
            source.close()
        if self._memory is not None:
            self._memory.close()
            self._memory = None


def _until_last(batches: Iterator[TileBatch]) -> Iterator[TileBatch]:
    """``batches`` up to the one that completes the tiles asked for, without resuming the
    generator after it: a band whose tiles are all nodata is no error (the client decides,
    over all bands, whether any tile held data)."""
    for batch in batches:
        yield batch
        if batch.done >= batch.total:
            return


def load_worker_model(path: str, device: str, threads: int | None) -> Any:
    """The model at ``path`` for a worker that may use ``threads`` CPU threads (None: all)."""
    from ..models.backends import ONNX_SUFFIXES, OnnxModel, load_model, resolve_device

    if Path(path).suffix.lower() in ONNX_SUFFIXES and Path(path).is_file():
        return OnnxModel(Path(path), resolve_device(device), threads=threads)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return load_model(path, device)


_local = threading.local()


def run_band(spec: BandSpec, band: RowBand) -> BandResult:
    """Compute ``band`` of ``spec`` in a worker (a process of a pool, a Dask worker thread),
    keeping the raster open and the model loaded for the next band of the same spec."""
    runner = getattr(_local, "runner", None)
    if runner is None or runner.spec.key != spec.key:
        if runner is not None:
            runner.close()
            _local.runner = None
        runner = _local.runner = BandRunner(spec)
    return runner.run(band)


def tiles_in(grid: TileGrid, bands: Sequence[RowBand]) -> int:
    """Number of tiles in ``bands``."""
    return sum(band.stop_row - band.first_row for band in bands) * len(grid.col_offsets)


def finished_row(grid: TileGrid, band: RowBand, height: int) -> int:
    """Area rows above this one are touched by no tile of a later band."""
    rows = grid.row_offsets
    return rows[band.stop_row] if band.stop_row < len(rows) else height
