"""Classify a raster tile by tile: read windows, scale, predict in batches, blend, write.

Entry point: :func:`classify_raster`. See :mod:`core.tiles.grid` for the tile grid and its edges,
:mod:`core.tiles.blending` for how overlapping tiles are blended, :mod:`core.io.writers` for the outputs.

The grid is cut into row bands (:mod:`core.tiles.rowbands`) that are computed in this process, in
worker processes or on a Dask cluster (:mod:`core.parallel`), or taken from an interrupted run
(:mod:`core.tiles.checkpoints`); this process blends their tiles in grid order and writes the
outputs, so they are byte-identical however the bands were computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .adaptation import (ADAPTATION_TILES, MIN_ADAPTATION_TILES, Adaptation, AdaptationError, adapt_model_to_scene,
                         adaptation_mode)
from .scene_radiometry import SceneRadiometry, check_scene
from .models.backends import ClassifierModel, load_model
from .models.card import ModelCard
from .clouds import DEFAULT_THRESHOLD, CloudBits, mask_plan_clouds
from .tiles.blending import PaintedTiles, RowBandAccumulator, lone_offsets, tent_window
from .errors import Cancelled, OutputError, RasterInputError
from .io.mosaic import is_mosaic, raster_or_mosaic
from .io.raster import RasterSource, upsample_nearest
from .parallel import (DaskCluster, InProcess, ProcessPool, check_workers, cpu_count, ordered_results,
                       python_executable)
from .tiles.checkpoints import Checkpoints, inputs_identity, model_identity
from .tiles.grid import Tile
from .tiles.loop import NativeValidity, TilePlan, TileRunOptions, no_valid_tile_error, plan_tiles
from .tiles.rowbands import BandSpec, RowBand, band_rows_for, finished_row, split_rows, tiles_in
from .io.vectors import VectorLayer, InMemory, is_file_target, write_gpkg
from .io.writers import CLOUD, UNCLASSIFIED, ClassificationWriter, StagedOutputs, provenance_tags, tile_grid_layer
from .feedback import Progress


@dataclass
class ClassifyOptions(TileRunOptions):
    """Options of :func:`classify_raster`: those of :class:`core.tiles.loop.TileRunOptions`, and
    ``test_time_augmentation``: classify each tile as the mean of the model's outputs over its
    8 rotations and flips (:func:`.dihedral.dihedral_views`; 8 times the model time);
    ``min_confidence``: pixels whose highest blended class probability is below it are written
    as class ``Unclassified`` (:data:`core.io.writers.UNCLASSIFIED`; 0 = off); ``cloud_mask``: pixels
    s2cloudless finds cloudy (probability above ``cloud_threshold``; :mod:`.clouds`, needs the
    Sentinel-2 L1C bands by name) are written as class ``Cloud`` (:data:`core.io.writers.CLOUD`).
    Probability and confidence rasters are not changed by either. ``adapt_to_scene`` (one of
    :data:`.adaptation.ADAPTATION_MODES`; True = "always", False = "off"): before classifying,
    re-estimate the network's batch-norm statistics from up to ``adaptation_tiles`` tiles of this
    raster (:mod:`.adaptation`; an ONNX model with batch-norm nodes with ONNX Runtime alone, else
    its Torch weights); the adapted model is written to a temporary ONNX file that the bands are
    computed with. "auto" does not use it when it is much less sure of the sampled tiles
    (:func:`.adaptation.keep_adaptation`), and skips adaptation (logged) on a raster with too few
    tiles for it; "always" keeps it and refuses such a raster. ``check_radiometry``: when the
    model has a radiometry reference beside it (``<stem>.radiometry.json``,
    :mod:`.scene_radiometry`), measure how far the scene's radiometry is from the model's
    training tiles on up to ``adaptation_tiles`` sampled tiles and log it, with a warning when
    the scene looks unlike the training data (nothing in the outputs changes).

    Scale (:mod:`.parallel`, :mod:`.tiles.rowbands`): the tiles are computed in row bands of
    ``band_rows`` grid rows (default: about :data:`.tiles.rowbands.BAND_TILES` tiles). ``workers``:
    1 = in this process; N > 1 = N worker processes; 0 = all cores when at least
    :data:`AUTO_MIN_TILES` tiles are to be computed, else in this process. ``dask_scheduler``: the
    address of a Dask distributed scheduler (e.g. ``tcp://host:8786``) whose workers compute the
    bands instead (``workers`` is then unused). The outputs are byte-identical whichever runs
    the bands. ``resume``: save finished bands once the run has lasted ``checkpoint_after``
    seconds in a folder beside the first output (:mod:`.tiles.checkpoints`), and continue from
    saved bands of an interrupted run with the same input, model and options."""

    test_time_augmentation: bool = False
    adapt_to_scene: bool | str = False
    adaptation_tiles: int = ADAPTATION_TILES
    check_radiometry: bool = True
    min_confidence: float = 0.0
    cloud_mask: bool = False
    cloud_threshold: float = DEFAULT_THRESHOLD
    workers: int = 1
    dask_scheduler: str | None = None
    band_rows: int | None = None
    resume: bool = True
    checkpoint_after: float = 5.0


#: with ``workers=0``, worker processes are started for at least this many tiles to compute
#: (fewer finish in about the time the processes take to start)
AUTO_MIN_TILES = 1000


#: a tile's highest class probability from which it counts as certain (``ClassifyResult.tiles_certain``)
CERTAIN_PROBABILITY = 0.9999


@dataclass
class ClassifyResult:
    outputs: dict[str, str]
    tiles_total: int
    tiles_classified: int
    tiles_skipped: int
    seconds: float
    bands: list[int]
    footprint: tuple[int, int]
    #: pixels per model class, not counting Unclassified and Cloud pixels
    class_pixel_counts: dict[str, int] = field(default_factory=dict)
    #: classified tiles whose highest class probability is at least CERTAIN_PROBABILITY
    tiles_certain: int = 0
    #: pixels written as Unclassified (below ``min_confidence``) and as Cloud
    unclassified_pixels: int = 0
    cloud_pixels: int = 0
    card: ModelCard | None = None
    #: vector outputs built by the run (``"tiles"``), whether written to a file or not
    layers: dict[str, VectorLayer] = field(default_factory=dict)
    #: row bands of the run, and how many came from an interrupted run's saved bands
    row_bands: int = 0
    row_bands_resumed: int = 0
    #: classified tiles taken from saved bands (not computed by this run)
    tiles_resumed: int = 0
    #: where the bands were computed (in this process, N worker processes, a Dask cluster)
    ran: str = ""
    #: what scene adaptation did (None: not asked for)
    adaptation: Adaptation | None = None
    #: how far the scene's radiometry is from the model's training tiles (None: the model has no
    #: radiometry reference, the check is off, or the raster has too few valid tiles for it)
    radiometry: SceneRadiometry | None = None


def classify_raster(
    input_path: str | Sequence[str],
    model: ClassifierModel | str | Path,
    classes_path: str | None,
    probabilities_path: str | None = None,
    confidence_path: str | None = None,
    tiles_path: str | Path | InMemory | None = None,
    options: ClassifyOptions | None = None,
    progress: Progress | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> ClassifyResult:
    """Classify ``input_path`` with ``model`` and write the requested outputs (paths or None).

    ``input_path``: a raster (file, VRT or GDAL URL), or a list of rasters classified as one
    mosaic (:func:`core.io.mosaic.build_mosaic`: same CRS and band count).
    ``tiles_path``: a GeoPackage of the tile footprints (raster CRS) with their class and
    probabilities, or :data:`core.io.vectors.IN_MEMORY` to get that layer only in ``result.layers``.

    ``progress`` gets a percentage after every row band; ``is_cancelled`` is checked while bands
    are computed and raises :class:`Cancelled` (no output is written; saved bands stay for a
    rerun). Returns counts and timings.
    """
    options = options or ClassifyOptions()
    progress = progress or (lambda _p: None)
    is_cancelled = is_cancelled or (lambda: False)
    log = log or (lambda _m: None)
    if not any([classes_path, probabilities_path, confidence_path, tiles_path]):
        raise RasterInputError("no output requested")
    if not 0.0 <= options.min_confidence <= 1.0:
        raise RasterInputError(f"the minimum confidence must be 0..1, got {options.min_confidence}")
    if options.batch_size < 1:
        raise RasterInputError("batch size must be at least 1")
    check_workers(options.workers)
    if not isinstance(model, ClassifierModel):
        model = load_model(model, options.device)
    card = model.card
    started = time.perf_counter()
    mosaic = [str(p) for p in input_path] if is_mosaic(input_path) else None

    with ExitStack() as stack:
        path = stack.enter_context(raster_or_mosaic(input_path, log))
        vrt_xml = Path(path).read_text(encoding="utf-8") if mosaic is not None else None
        source = stack.enter_context(RasterSource(path, options.bands, card.bands, options.nodata, card))
        staged = stack.enter_context(StagedOutputs())
        plan = plan_tiles(source, card, options.stride, options.extent, options.mask)
        from rasterio.transform import array_bounds

        area, footprint = plan.area, plan.footprint
        log(
            f"{len(plan.grid)} tiles of {card.tile_size} model px = {footprint[1]}x{footprint[0]} raster px, "
            f"stride {plan.stride[1]}x{plan.stride[0]} px, area {area.width}x{area.height} px"
            + (f" ({_bounds_text(array_bounds(area.height, area.width, plan.area_transform))} in the raster's CRS, "
               "on its pixel grid)"
               if options.extent is not None or options.mask is not None else "")
        )
        if min(footprint) < 0.67 * card.tile_size:
            log(f"WARNING: the raster's pixels are coarser than the model's {card.gsd:g} m: each tile of "
                f"{card.tile_size} model pixels is upsampled from {footprint[1]}x{footprint[0]} raster pixels, so the "
                "model sees less detail than it was trained on; expect a less accurate map"
                + (". A virtual raster stacking bands of several resolutions (e.g. Sentinel-2's 10, 20 and 60 m "
                   "bands with gdalbuildvrt -separate) takes their average pixel size unless it is built at the "
                   "finest, best with bilinear resampling (nearest neighbour turns the 60 m bands into blocks of 6x6 "
                   "pixels, which the scene radiometry check reads as unusual fine detail): gdalbuildvrt -separate "
                   "-resolution highest -r bilinear (Build Virtual Raster: Resolution 'Highest', Resampling "
                   "'Bilinear')"
                   if str(input_path).lower().endswith(".vrt") else ""))
        log(source.band_note)
        if source.nodata_note:
            log(source.nodata_note)
        clouds = None
        if options.cloud_mask:  # before the scene is judged: cloudy tiles are left out of its sample
            plan, clouds = mask_plan_clouds(plan, options.cloud_threshold, options.nodata, "class Cloud",
                                            is_cancelled, log)
        radiometry = (check_scene(model.path, card, plan, options.adaptation_tiles, options.min_valid_fraction,
                                  is_cancelled, log) if options.check_radiometry else None)
        trained_model_path = model.path  # the adapted model below lives in a temporary folder
        adaptation = None
        if adaptation_mode(options.adapt_to_scene) != "off":
            adaptation, model = _adapt(model, plan, options, stack, (classes_path, probabilities_path,
                                                                      confidence_path, tiles_path), is_cancelled, log)
            card = model.card
        if options.test_time_augmentation:
            log("test-time augmentation: each tile is classified as the mean over its 8 rotations and flips")
        if options.min_confidence > 0:
            log(f"pixels whose highest class probability is below {options.min_confidence:g} are Unclassified")

        bands = split_rows(plan.grid, options.band_rows)
        spec = BandSpec(uuid.uuid4().hex, _absolute(path), _absolute(str(model.path)), model.device,
                        tuple(source.bands), options.nodata, options.stride, tuple(options.extent) if options.extent is not None else None,
                        options.mask, options.batch_size, options.min_valid_fraction,
                        options.test_time_augmentation, vrt_xml=vrt_xml)
        anchor = next((p for p in (classes_path, probabilities_path, confidence_path, tiles_path)
                       if p and is_file_target(p)), None)
        checkpoints = None
        if options.resume and anchor is not None:
            checkpoints = Checkpoints(anchor, _manifest(mosaic or [path], model, source, plan, spec,
                                                        band_rows_for(plan.grid, options.band_rows)), log)
            done = {i for i in checkpoints.done if i < len(bands) and checkpoints.load(i) is not None}
            checkpoints.done = done
            if done:
                log(f"resuming: {len(done)} of {len(bands)} row bands were saved by an interrupted run with the same "
                    f"input, model and options ({checkpoints.folder})")
        done = checkpoints.done if checkpoints is not None else set()
        todo = [b for b in bands if b.index not in done]
        total = len(plan.grid)
        columns = len(plan.grid.col_offsets)
        lock, reported = threading.Lock(), [0.0]

        def report(tiles: int) -> None:  # progress from this thread and the in-process band thread
            with lock:
                value = 100.0 * tiles / max(1, total)
                if value > reported[0]:
                    reported[0] = value
                    progress(value)

        backend = _backend(spec, model, options, tiles_in(plan.grid, todo), len(todo), is_cancelled, log,
                           lambda band, done: report(band.first_row * columns + done))
        stack.callback(lambda: backend.close(abort=True) if backend is not None else None)
        ran = backend.name if backend is not None else ""
        grid_rows = len(plan.grid.row_offsets)
        log(f"{grid_rows} tile row(s) in {len(bands)} row band(s) of up to "
            f"{min(grid_rows, band_rows_for(plan.grid, options.band_rows))}; computing "
            f"{len(todo)} of them {backend.name if backend is not None else ''}".rstrip())

        extra = [v for v, on in ((UNCLASSIFIED, options.min_confidence > 0), (CLOUD, clouds is not None)) if on]
        native = NativeValidity(plan)
        provenance = provenance_tags(trained_model_path, card, mosaic or [path], dict(
            algorithm="classify", bands=list(source.bands), nodata=options.nodata, tile_stride=options.stride,
            extent=options.extent, mask=options.mask is not None, batch_size=options.batch_size,
            test_time_augmentation=options.test_time_augmentation, adapt_to_scene=options.adapt_to_scene,
            scene_adapted=bool(adaptation is not None and adaptation.kept), min_confidence=options.min_confidence,
            cloud_mask=options.cloud_mask, cloud_threshold=options.cloud_threshold if options.cloud_mask else None))
        writer = ClassificationWriter(staged, card, source.dataset.crs, plan.area_transform, area.height,
                                      area.width, classes_path, probabilities_path, confidence_path, extra, provenance)
        accumulator = RowBandAccumulator(area.width, card.num_classes, area.height)
        painted = PaintedTiles(area.width, card.num_classes, area.height)
        weight = tent_window(*footprint)
        rows, cols = plan.grid.row_offsets, plan.grid.col_offsets
        lone_rows, lone_cols = lone_offsets(rows, footprint[0]), lone_offsets(cols, footprint[1])
        need_probabilities = bool(probabilities_path or confidence_path or options.min_confidence > 0)
        records: list = []
        tile_clouds = (TileCloudShares(rows, cols, footprint, area.width) if tiles_path and clouds is not None
                       else None)
        counts = np.zeros(card.num_classes + 2, dtype=np.int64)  # the classes, Unclassified, Cloud
        classified = skipped = read = resumed_tiles = resumed_bands = certain = 0
        computed = ordered_results(backend, todo, 2 * backend.capacity, is_cancelled) if todo else iter(())
        try:
            for band in bands:
                if is_cancelled():
                    raise Cancelled("cancelled by the user; no output was written")
                result = checkpoints.load(band.index) if band.index in done else next(computed)
                if result is None:
                    raise OutputError(f"a saved row band of {checkpoints.folder} cannot be read any more; run again")
                masks = [None if v is None else upsample_nearest(v, footprint)
                         for v in result.valid_masks(card.tile_size)]
                grid_rows, grid_cols = np.divmod(np.asarray(result.tiles, dtype=np.int64), len(cols))
                _add_tiles(accumulator, painted, np.asarray(rows)[grid_rows], np.asarray(cols)[grid_cols],
                           result.probabilities, weight, masks, lone_rows[grid_rows] & lone_cols[grid_cols])
                if tiles_path:
                    records += [(int(r), int(c), plan.tile_bounds(Tile(int(r), int(c), rows[r], cols[c], *footprint)), p)
                                for r, c, p in zip(grid_rows, grid_cols, result.probabilities)]
                classified += len(result.tiles)
                if len(result.tiles):
                    certain += int(np.sum(np.max(result.probabilities, axis=1) >= CERTAIN_PROBABILITY))
                skipped += result.skipped
                read += result.read
                if result.resumed:
                    resumed_tiles += len(result.tiles)
                    resumed_bands += 1
                elif checkpoints is not None and time.perf_counter() - started >= options.checkpoint_after:
                    checkpoints.save(result)
                for first, p, covered, labels in _finished_rows(accumulator, painted,
                                                                finished_row(plan.grid, band, area.height),
                                                                need_probabilities):
                    counts += _write(writer, first, p, native.restrict(first, covered), card.num_classes,
                                     options.min_confidence, clouds, labels, tile_clouds)
                report(band.stop_row * columns)
            if is_cancelled():  # asked for while the last band was blended
                raise Cancelled("cancelled by the user; no output was written")
            if read and not classified:
                raise no_valid_tile_error(plan, card, options.min_valid_fraction)
            for first, p, covered, labels in _finished_rows(accumulator, painted, area.height, need_probabilities):
                counts += _write(writer, first, p, native.restrict(first, covered), card.num_classes,
                                 options.min_confidence, clouds, labels, tile_clouds)
        finally:
            if hasattr(computed, "close"):
                computed.close()
            writer.close()
        if backend is not None:
            backend.close()
            backend = None
        layers = {}
        if tiles_path:
            shares = None if tile_clouds is None else [tile_clouds.fraction(r, c) for r, c, _b, _p in records]
            layers["tiles"] = tile_grid_layer(source.dataset.crs.to_wkt(), card, records, options.min_confidence,
                                              shares)
            if is_file_target(tiles_path):
                write_gpkg(layers["tiles"], staged.stage(tiles_path))
        staged.commit()
        if checkpoints is not None:
            checkpoints.remove()

    outputs = {k: str(v) for k, v in dict(classes=classes_path, probabilities=probabilities_path,
                                            confidence=confidence_path, tiles=tiles_path).items()
               if v and is_file_target(v)}
    return ClassifyResult(
        outputs=outputs,
        tiles_total=len(plan.grid),
        tiles_classified=classified,
        tiles_skipped=skipped,
        seconds=time.perf_counter() - started,
        bands=list(source.bands),
        footprint=footprint,
        class_pixel_counts={n: int(c) for n, c in zip(card.class_names, counts)},
        tiles_certain=certain,
        unclassified_pixels=int(counts[-2]),
        cloud_pixels=int(counts[-1]),
        card=card,
        layers=layers,
        row_bands=len(bands),
        row_bands_resumed=resumed_bands,
        tiles_resumed=resumed_tiles,
        ran=ran,
        adaptation=adaptation,
        radiometry=radiometry,
    )


def _adapt(model: ClassifierModel, plan: TilePlan, options: ClassifyOptions, stack: ExitStack,
           outputs: Sequence[Any], is_cancelled: Callable[[], bool],
           log: Callable[[str], None]) -> tuple[Adaptation | None, ClassifierModel]:
    """The model adapted to the planned raster (:func:`.adaptation.adapt_model_to_scene`), written
    in a temporary folder that ``stack`` removes: beside the first file output when a Dask cluster
    computes the bands (its workers must be able to read it, as they read the input). In mode
    "auto" the model itself when the adaptation is not kept, and (adaptation None) when the
    raster has too few valid tiles for it."""
    mode = adaptation_mode(options.adapt_to_scene)
    if options.adaptation_tiles < MIN_ADAPTATION_TILES:
        raise RasterInputError(f"scene adaptation needs at least {MIN_ADAPTATION_TILES} tiles, "
                               f"got {options.adaptation_tiles}")
    parent = None
    if options.dask_scheduler and options.dask_scheduler.strip():
        anchor = next((p for p in outputs if p and is_file_target(p)), None)
        parent = str(Path(anchor).resolve().parent) if anchor is not None else None
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="glassbox-adapted-", dir=parent))
    try:
        adaptation = adapt_model_to_scene(model.path, plan, folder, options.adaptation_tiles,
                                          min_valid_fraction=options.min_valid_fraction, is_cancelled=is_cancelled,
                                          guard=mode == "auto", model=model)
    except (RasterInputError, AdaptationError) as exc:
        if mode != "auto":
            raise
        from .adaptation import skipped_note

        log(skipped_note(exc, "; the model as trained classifies the raster"))
        return None, model
    log(adaptation.message())
    if not adaptation.kept:
        return adaptation, model
    return adaptation, load_model(adaptation.model_path, model.device)


def _add_tiles(accumulator: RowBandAccumulator, painted: PaintedTiles, row_offs: np.ndarray, col_offs: np.ndarray,
               probabilities: np.ndarray, weight: np.ndarray, masks: Sequence[np.ndarray | None],
               lone: np.ndarray) -> None:
    """Blend a band's tiles; those that overlap no other tile (``lone``) and have one probability
    per class are painted instead (same values, no per-pixel work)."""
    if probabilities.ndim != 2:
        lone = np.zeros(len(row_offs), dtype=bool)
    if lone.any():
        idx = np.flatnonzero(lone)
        painted.add_batch(row_offs[idx], col_offs[idx], probabilities[idx], weight.shape, [masks[i] for i in idx])
    if not lone.all():
        idx = np.flatnonzero(~lone)
        accumulator.add_batch(row_offs[idx], col_offs[idx], probabilities[idx], weight, [masks[i] for i in idx])


def _finished_rows(accumulator: RowBandAccumulator, painted: PaintedTiles, stop_row: int, need_probabilities: bool
                   ) -> Iterator[tuple[int, np.ndarray | None, np.ndarray, np.ndarray]]:
    """Finished rows ``[.., stop_row)`` of blended and painted tiles together, in pieces:
    ``(first_row, probabilities (classes, rows, width) or None when not needed, covered, classes)``."""
    pieces = painted.pop_rows(stop_row)
    try:
        for first, probs, covered in accumulator.pop_rows(stop_row):
            first_painted, ids = next(pieces)
            if first_painted != first:
                raise RuntimeError("blended and painted rows out of step")
            on = ids >= 0
            if not on.any():
                yield first, probs, covered, np.argmax(probs, axis=0)
                continue
            labels = painted.labels[ids]
            if covered.any():
                labels[covered] = np.argmax(probs[:, covered], axis=0)
            if need_probabilities:
                probs = np.where(covered[None], probs, np.moveaxis(painted.table[ids], -1, 0))
            yield first, probs if need_probabilities else None, covered | on, labels
    finally:
        for _ in pieces:  # forget the painted rows however the loop ended
            pass


def _write(writer: ClassificationWriter, first: int, probs: np.ndarray | None, covered: np.ndarray, k: int,
           min_confidence: float = 0.0, clouds: CloudBits | None = None,
           labels: np.ndarray | None = None, tile_clouds: "TileCloudShares | None" = None) -> np.ndarray:
    """Write rows of blended probabilities (None when only the class raster is written and
    ``labels`` are given); returns pixel counts of the ``k`` classes, then Unclassified, then
    Cloud. ``tile_clouds`` counts the rows' cloud pixels per tile."""
    labels = np.argmax(probs, axis=0) if labels is None else labels
    unsure = covered & (probs.max(axis=0) < min_confidence) if min_confidence > 0 else np.zeros_like(covered)
    cloud = covered & clouds.rows(first, covered.shape[0]) if clouds is not None else np.zeros_like(covered)
    labels[unsure] = UNCLASSIFIED
    labels[cloud] = CLOUD
    if tile_clouds is not None:
        tile_clouds.add(first, cloud, covered)
    writer.write_rows(first, probs, covered, labels)
    counts = np.bincount(labels[covered & ~unsure & ~cloud], minlength=k)
    return np.concatenate([counts, [np.count_nonzero(unsure & ~cloud), np.count_nonzero(cloud)]])


class TileCloudShares:
    """Per tile of the grid, how many of its footprint's mapped pixels the cloud mask marked
    (for the tile grid output, so a tile over cloud is Cloud as in the class raster). Rows
    arrive in chunks in area order; tile offsets are area pixels (edge tiles may reach outside)."""

    def __init__(self, row_offsets: Sequence[int], col_offsets: Sequence[int], footprint: tuple[int, int],
                 width: int) -> None:
        self.rows = np.asarray(row_offsets, dtype=np.int64)
        self.footprint = footprint
        cols = np.asarray(col_offsets, dtype=np.int64)
        self.col_start = np.clip(cols, 0, width)
        self.col_stop = np.clip(cols + footprint[1], 0, width)
        self.cloud = np.zeros((len(self.rows), len(cols)), dtype=np.int64)
        self.covered = np.zeros_like(self.cloud)

    def add(self, first: int, cloud: np.ndarray, covered: np.ndarray) -> None:
        """Count rows ``first .. first + len(cloud)`` (bool ``(rows, width)`` each)."""
        last = first + cloud.shape[0]
        overlapping = np.nonzero((self.rows < last) & (self.rows + self.footprint[0] > first))[0]
        for r in overlapping:
            start, stop = max(int(self.rows[r]), first) - first, min(int(self.rows[r]) + self.footprint[0], last) - first
            for counts, mask in ((self.cloud, cloud), (self.covered, covered)):
                running = np.concatenate([[0], np.cumsum(mask[start:stop].sum(axis=0))])
                counts[r] += running[self.col_stop] - running[self.col_start]

    def fraction(self, grid_row: int, grid_col: int) -> float:
        """Share of the tile's mapped pixels that are cloud (0 when none is mapped)."""
        covered = self.covered[grid_row, grid_col]
        return float(self.cloud[grid_row, grid_col] / covered) if covered else 0.0


def _absolute(path: str) -> str:
    """A local file's absolute path (worker processes may run in another folder); URLs as given."""
    return os.path.abspath(path) if os.path.exists(path) else path


def _backend(spec: BandSpec, model: ClassifierModel, options: ClassifyOptions, tiles: int, bands: int,
             is_cancelled: Callable[[], bool], log: Callable[[str], None],
             on_batch: Callable[[RowBand, int], None]) -> Any:
    """Where the ``bands`` row bands (``tiles`` tiles) still to compute run (None: nothing to run)."""
    if bands == 0:
        return None
    if options.dask_scheduler and options.dask_scheduler.strip():
        return DaskCluster(replace(spec, threads=1), options.dask_scheduler)
    workers = options.workers
    if workers == 0:
        workers = cpu_count() if tiles >= AUTO_MIN_TILES and model.device == "cpu" else 1
    workers = min(workers, bands)
    if workers > 1 and not Path(spec.model_path).is_file():
        log("the model is no file that worker processes could load: computing in this process")
        workers = 1
    if workers <= 1:
        return InProcess(spec, model, is_cancelled, on_batch)
    pool = ProcessPool(replace(spec, threads=max(1, cpu_count() // workers)), workers)
    log(f"worker processes started with {python_executable()}")
    return pool


def _manifest(inputs: Sequence[str], model: ClassifierModel, source: RasterSource, plan: TilePlan, spec: BandSpec,
              band_rows: int) -> dict[str, Any]:
    """What decides the model's results for each row band (see :mod:`.tiles.checkpoints`)."""
    mask = None
    if spec.mask is not None:
        mask = hashlib.sha256(json.dumps(list(spec.mask), sort_keys=True, default=str).encode("utf-8")).hexdigest()
    a = plan.area
    return dict(inputs=inputs_identity(inputs), model=model_identity(model.path), device=model.device,
                bands=list(source.bands), nodata=source.nodata, stride=spec.stride, extent=spec.extent, mask=mask,
                batch_size=spec.batch_size, min_valid_fraction=spec.min_valid_fraction,
                test_time_augmentation=spec.test_time_augmentation,
                area=[a.row_off, a.col_off, a.height, a.width], footprint=list(plan.footprint),
                grid_stride=list(plan.stride), band_rows=band_rows)


def _bounds_text(bounds: Sequence[float]) -> str:
    """``xmin, ymin - xmax, ymax`` of (left, bottom, right, top), in two decimals."""
    left, bottom, right, top = bounds
    return f"{left:.2f}, {bottom:.2f} - {right:.2f}, {top:.2f}"
