"""Classify a raster tile by tile: read windows, scale, predict in batches, blend, write.

Entry point: :func:`classify_raster`. See :mod:`core.tiles.grid` for the tile grid and its edges,
:mod:`core.tiles.blending` for how overlapping tiles are blended, :mod:`core.io.writers` for the outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .models.backends import ClassifierModel, load_model
from .models.card import ModelCard
from .clouds import CLOUD_BANDS, DEFAULT_THRESHOLD, CloudMasker
from .tiles.blending import RowBandAccumulator, tent_window
from .errors import RasterInputError
from .io.raster import RasterSource, upsample_nearest
from .tiles.loop import TileRunOptions, iter_batches, plan_tiles, prefetched
from .io.vectors import VectorLayer, InMemory, is_file_target, write_gpkg
from .io.writers import CLOUD, UNCLASSIFIED, ClassificationWriter, StagedOutputs, tile_grid_layer
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
    Probability and confidence rasters are not changed by either."""

    test_time_augmentation: bool = False
    min_confidence: float = 0.0
    cloud_mask: bool = False
    cloud_threshold: float = DEFAULT_THRESHOLD


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
    #: pixels written as Unclassified (below ``min_confidence``) and as Cloud
    unclassified_pixels: int = 0
    cloud_pixels: int = 0
    card: ModelCard | None = None
    #: vector outputs built by the run (``"tiles"``), whether written to a file or not
    layers: dict[str, VectorLayer] = field(default_factory=dict)




def classify_raster(
    input_path: str,
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

    ``tiles_path``: a GeoPackage of the tile footprints (raster CRS) with their class and
    probabilities, or :data:`core.io.vectors.IN_MEMORY` to get that layer only in ``result.layers``.

    ``progress`` gets a percentage after every batch; ``is_cancelled`` is checked before every
    batch and raises :class:`Cancelled` (nothing is written). Returns counts and timings.
    """
    options = options or ClassifyOptions()
    progress = progress or (lambda _p: None)
    is_cancelled = is_cancelled or (lambda: False)
    log = log or (lambda _m: None)
    if not any([classes_path, probabilities_path, confidence_path, tiles_path]):
        raise RasterInputError("no output requested")
    if not 0.0 <= options.min_confidence <= 1.0:
        raise RasterInputError(f"the minimum confidence must be 0..1, got {options.min_confidence}")
    if not isinstance(model, ClassifierModel):
        model = load_model(model, options.device)
    card = model.card
    started = time.perf_counter()

    with RasterSource(input_path, options.bands, card.bands, options.nodata) as source, StagedOutputs() as staged:
        plan = plan_tiles(source, card, options.stride, options.extent, options.mask)
        area, footprint = plan.area, plan.footprint
        log(
            f"{len(plan.grid)} tiles of {card.tile_size} model px = {footprint[1]}x{footprint[0]} raster px, "
            f"stride {plan.stride[1]}x{plan.stride[0]} px, area {area.width}x{area.height} px"
        )
        log(source.band_note)
        if options.test_time_augmentation:
            log("test-time augmentation: each tile is classified as the mean over its 8 rotations and flips")
        clouds = None
        if options.cloud_mask:
            clouds = CloudMasker(source.dataset, area, options.cloud_threshold, options.nodata)
            pairs = ", ".join(f"{n}<-band {b}" for n, b in zip(CLOUD_BANDS, clouds.bands))
            log(f"cloud masking with s2cloudless: {pairs}, read as reflectance (digital number / 10000); "
                f"cloud probability above {options.cloud_threshold:g} = Cloud")
        if options.min_confidence > 0:
            log(f"pixels whose highest class probability is below {options.min_confidence:g} are Unclassified")
        extra = [v for v, on in ((UNCLASSIFIED, options.min_confidence > 0), (CLOUD, clouds is not None)) if on]
        writer = ClassificationWriter(staged, card, source.dataset.crs, plan.area_transform, area.height,
                                      area.width, classes_path, probabilities_path, confidence_path, extra)
        accumulator = RowBandAccumulator(area.width, card.num_classes, area.height)
        weight = tent_window(*footprint)
        records: list = []
        counts = np.zeros(card.num_classes + 2, dtype=np.int64)  # the classes, Unclassified, Cloud
        classified = skipped = 0
        try:
            batches = iter_batches(plan, card, options.batch_size, options.min_valid_fraction, is_cancelled)
            if clouds is None:  # the cloud mask reads the same dataset handle, which is not thread-safe
                batches = prefetched(batches, is_cancelled=is_cancelled)
            for batch in batches:
                skipped += batch.skipped
                if batch.tiles:
                    probs = model.predict_proba(batch.inputs, dihedral_tta=options.test_time_augmentation)
                    for tile, p, valid in zip(batch.tiles, probs, batch.valid):
                        accumulator.add(tile.row_off, tile.col_off, p, weight * upsample_nearest(valid, footprint))
                        if tiles_path:
                            records.append((tile.grid_row, tile.grid_col, plan.tile_bounds(tile), p))
                    classified += len(batch.tiles)
                for first, p, covered in accumulator.pop_rows(batch.finished_rows):
                    counts += _write(writer, first, p, covered, card.num_classes, options.min_confidence, clouds)
                progress(100.0 * batch.done / max(1, batch.total))
            for first, p, covered in accumulator.pop_rows(area.height):
                counts += _write(writer, first, p, covered, card.num_classes, options.min_confidence, clouds)
        finally:
            writer.close()
        layers = {}
        if tiles_path:
            layers["tiles"] = tile_grid_layer(source.dataset.crs.to_wkt(), card, records)
            if is_file_target(tiles_path):
                write_gpkg(layers["tiles"], staged.stage(tiles_path))
        staged.commit()

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
        unclassified_pixels=int(counts[-2]),
        cloud_pixels=int(counts[-1]),
        card=card,
        layers=layers,
    )


def _write(writer: ClassificationWriter, first: int, probs: np.ndarray, covered: np.ndarray, k: int,
           min_confidence: float = 0.0, clouds: CloudMasker | None = None) -> np.ndarray:
    """Write rows of blended probabilities; returns pixel counts of the ``k`` classes, then
    Unclassified, then Cloud."""
    labels = np.argmax(probs, axis=0)
    unsure = covered & (probs.max(axis=0) < min_confidence) if min_confidence > 0 else np.zeros_like(covered)
    cloud = covered & clouds.rows(first, covered.shape[0]) if clouds is not None else np.zeros_like(covered)
    labels[unsure] = UNCLASSIFIED
    labels[cloud] = CLOUD
    writer.write_rows(first, probs, covered, labels)
    counts = np.bincount(labels[covered & ~unsure & ~cloud], minlength=k)
    return np.concatenate([counts, [np.count_nonzero(unsure & ~cloud), np.count_nonzero(cloud)]])
