"""One call per Processing algorithm: train and save, evaluate and report."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence
import numpy as np
from ..errors import Cancelled, ClassMappingError, TrainingDataError
from ..feedback import IsCancelled, Log, Progress, ignore, never
from .data import TrainingData, tiles_from_folder, tiles_from_polygons
from .evaluation import Evaluation, accuracy_interval, evaluate
from .loop import TrainOptions, TrainingResult, check_training_setup, train_classifier
from .saving import save_model_files, tiles_per_class_text
from .scaling import prescaled_scaling, scales_raw_values, scaling_mismatch


# -- one call per Processing algorithm ------------------------------------------------------
@dataclass
class TileSource:
    """Where labelled tiles come from: a tile ``folder``, or a ``raster`` with ``polygons``
    (GeoJSON-like dicts in the raster CRS) and one label value per polygon in ``labels``.
    ``band_indices`` (1-based raster bands), ``max_tiles_per_polygon`` and ``stride`` (model
    pixels) apply to the raster case (see :func:`tiles_from_polygons`). ``mapping``: a
    :class:`core.masking.lcdb.ClassMapping` from label values to class names (e.g. LCDB codes to
    LCDB's 7 groups); polygons whose value it does not map are skipped, with a log line (None:
    the values are the class names). ``polygon_ids``: one per polygon, the names log lines and
    tile sources give them (e.g. the layer's feature ids)."""

    folder: str | None = None
    raster: str | None = None
    polygons: Sequence[dict] | None = None
    labels: Sequence[Any] | None = None
    band_indices: Sequence[int] | None = None
    max_tiles_per_polygon: int = 0
    stride: int | None = None
    mapping: Any = None
    polygon_ids: Sequence[Any] | None = None
    class_field: str | None = None  # the polygon layer's field the labels came from, for the card

    def load(self, tile_size: int | None, gsd: float | None = None, band_names: Sequence[str] | None = None,
             seed: int = 0, is_cancelled: IsCancelled | None = None, log: Log | None = None) -> TrainingData:
        """Read the tiles. ``tile_size`` None: the folder's tiles' size (64 for a raster).
        ``band_names``: for a raster without ``band_indices``, the bands to find by name; for a
        folder, the names the tiles will be given (else EuroSAT's tiles get EuroSAT's,
        :func:`name_eurosat_bands`)."""
        if bool(self.folder) == bool(self.raster):
            raise TrainingDataError("give either a folder of labelled tiles, or a raster with labelled polygons")
        if self.folder:
            if self.mapping is not None:
                raise ClassMappingError("a class mapping applies to polygons' class values; a folder's sub-folder "
                                        "names are its classes")
            data = tiles_from_folder(self.folder, tile_size, is_cancelled, log)
            return data if band_names else name_eurosat_bands(data, log)
        if not self.polygons:
            raise TrainingDataError("the polygon layer has no polygons")
        labels = list(self.labels or [])
        if self.mapping is not None:
            from ..masking.lcdb import mapped_classes

            labels = mapped_classes(labels, self.mapping, log)
        data = tiles_from_polygons(
            self.raster, self.polygons, labels, tile_size or 64, gsd=gsd, stride=self.stride,
            max_tiles_per_polygon=self.max_tiles_per_polygon, band_indices=self.band_indices,
            band_names=band_names, seed=seed, is_cancelled=is_cancelled, log=log, polygon_ids=self.polygon_ids,
        )
        if self.mapping is not None:  # the mapping's class order, as finetune_masked keeps it: same values, same legend
            from ..masking.finetune import order_classes

            data = order_classes(data, self.mapping.classes, log)
        return data


def name_eurosat_bands(data: TrainingData, log: Log | None = None) -> TrainingData:
    """EuroSAT's multispectral tifs do not name their bands (B01..B12 then B8A,
    :data:`.datasets.EUROSAT_MS_BANDS`). Tiles of 64 px with 13 unnamed bands whose class
    folders are all EuroSAT classes (all ten or any subset, spelt as EuroSAT spells them) get
    those names, so the model's card names its bands and classify matches a Sentinel-2 stack by
    name instead of feeding it in its own order (a stack with B8A after B08 would shift five
    bands). Other 13-band tiles without names are left unnamed, with a warning. Its RGB jpgs keep
    ``red, green, blue``: they hold 8-bit display values, not a Sentinel-2 stack's digital
    numbers, so a model trained on them must not take such a stack by name. Other data is
    returned unchanged."""
    from ..models.card import EUROSAT_CLASSES
    from .datasets import EUROSAT_MS_BANDS

    unnamed = all(name == f"band_{i + 1}" for i, name in enumerate(data.band_names))
    eurosat_classes = {c.name for c in EUROSAT_CLASSES}
    eurosat = bool(data.class_names) and set(data.class_names) <= eurosat_classes and data.tiles.shape[-1] == 64
    names = list(EUROSAT_MS_BANDS) if data.num_bands == 13 else None
    if not (unnamed and names):
        return data
    if not eurosat:
        (log or ignore)(
            "WARNING: the tiles' 13 bands have no names, so the model's card names them band_1..band_13 and "
            "classify will take a raster's bands in their order, whatever their names; if these are Sentinel-2 "
            "bands, give their names in 'Band names' (BANDS, comma-separated in the tiles' band order, e.g. "
            f"{','.join(EUROSAT_MS_BANDS)} for EuroSAT's order)")
        return data
    subset = "" if set(data.class_names) == eurosat_classes else \
        f" ({len(data.class_names)} of EuroSAT's {len(eurosat_classes)} classes)"
    (log or ignore)(f"EuroSAT tiles without band names{subset}: named as EuroSAT stores them, {', '.join(names)}")
    return data.with_band_names(names)


def train_and_save(
    source: TileSource,
    architecture: str,
    options: TrainOptions,
    weights_path: str | Path,
    onnx_path: str | Path | None = None,
    samples_path: str | Path | None = None,
    tile_size: int | None = None,
    band_names: Sequence[str] | None = None,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
) -> tuple[TrainingResult, dict[str, str]]:
    """``glassbox:train_classifier`` in one call: read the labelled tiles, rename the bands
    (``band_names``), train (:func:`train_classifier`) and write the model files
    (:func:`save_model_files`). Nothing is written when anything fails or is cancelled."""
    log = log or ignore
    is_cancelled = is_cancelled or never
    if samples_path and not source.raster:
        raise TrainingDataError("the training-tile layer can only be made for tiles cut from a raster")
    check_training_setup(architecture, options.device, tile_size or (64 if source.raster else None), None,
                         options.architecture_kwargs, options.weights_path)
    # a folder's tiles take the given band names as they are read; a raster's bands are chosen by index
    if source.mapping is not None and source.mapping.colours and not options.colours:
        options = replace(options, colours=dict(source.mapping.colours))
    data = source.load(tile_size, options.gsd, band_names if source.folder else None, options.seed, is_cancelled, log)
    if band_names:
        data = data.with_band_names(band_names)
    if options.split is None:  # a given split indexes the tiles as read, classes and all
        data = data.without_empty_classes(log)
    log(f"{data.num_tiles} tiles: {tiles_per_class_text(data)}")
    result = train_classifier(data, architecture, options, progress, is_cancelled, log)
    if is_cancelled():
        raise Cancelled("training cancelled; no model was written")
    if source.raster:  # what a later evaluation on polygons must pass again
        from ..masking.lcdb import mapping_record

        result.card.training.update({
            "class_field": source.class_field,
            "class_mapping": mapping_record(source.mapping),
        })
    written = save_model_files(result.module, result.card, weights_path, onnx_path, samples_path, data, result,
                               radiometry_tiles=data.tiles, log=log)
    return result, written


def evaluate_and_report(
    model_path: str | Path,
    source: TileSource,
    html_path: str | Path | None,
    csv_path: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    prescaled: bool = False,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
    test_time_augmentation: bool = False,
) -> tuple[Evaluation, dict[str, str]]:
    """``glassbox:evaluate`` in one call: load the model, read the labelled tiles at the
    model's tile size (a raster is read at the model's ground sample distance, bands found as
    ``glassbox:classify`` finds them unless ``source.band_indices`` is set), evaluate and write
    the HTML report and CSV (:mod:`core.io.report`), all or nothing."""
    from ..models.backends import load_model
    from ..io.report import write_report

    log = log or ignore
    model = load_model(model_path, device)
    card = model.card
    data = source.load(card.tile_size, card.gsd, card.bands, 0, is_cancelled, log)
    log(f"evaluating '{card.name}' on {data.num_tiles} tiles: {tiles_per_class_text(data)}")
    warnings: list[str] = []
    if data.tiles.dtype == np.uint8 and not prescaled and scales_raw_values(card.scaling) \
            and data.num_bands == card.num_bands:
        warnings.append("the tiles are 8-bit but the model scales raw values: if they already hold the model's "
                        "scaled 0-255 values, run again with PRESCALED=true; this accuracy may measure the wrong "
                        "scaling")
        log("WARNING: the tiles are 8-bit but the model scales raw values (scale "
            f"{card.scaling.scale}); if the tiles already hold the model's scaled 0-255 values (e.g. EuroSAT "
            "RGB jpgs for a model reading Sentinel-2 digital numbers), tick 'Tiles are already scaled' "
            "(PRESCALED=true), or the accuracy measures the wrong scaling")
    mismatch = scaling_mismatch(data.tiles, prescaled_scaling(card.scaling) if prescaled else card.scaling,
                                card.bands) if data.num_bands == card.num_bands else None  # else refused below
    if mismatch:
        warnings.append(f"{mismatch}; the accuracy will say little")
        log(f"WARNING: {mismatch}; the accuracy will say little"
            + (" (PRESCALED applies only the model's mean/std: it is for 8-bit tiles that already hold the model's "
               "0-255 values)" if prescaled else ""))
    evaluation = evaluate(model, data, batch_size, prescaled, progress, is_cancelled, test_time_augmentation)
    m = evaluation.metrics
    by_polygon = bool(source.raster)
    groups = data.sources if by_polygon else np.arange(data.num_tiles)
    low, high = accuracy_interval(evaluation.true == evaluation.predicted, groups)
    units = f"{len(set(groups))} polygons" if by_polygon else f"{data.num_tiles} tiles"
    log(f"overall accuracy {m.overall_accuracy:.4f} ({int(np.trace(m.confusion))} of {m.total} tiles; 95 % interval "
        f"{low:.4f}-{high:.4f}, bootstrap over the {units}), macro F1 {m.macro_f1:.4f}, kappa {m.kappa:.4f}")
    notes = [f"WARNING: {w}" for w in warnings] + [f"95 % interval of the overall accuracy: {low:.1%} to {high:.1%} (percentile bootstrap over the {units}, "
             "1000 resamples" + ("; tiles of one polygon are alike, so the polygons, not the tiles, are the sample"
                                 if by_polygon else "") + ")."]
    if prescaled:
        notes.append("The tiles were taken as already scaled: only the card's mean/std were applied.")
    if test_time_augmentation:
        notes.append("Test-time augmentation: each tile was classified as the mean of the model's outputs "
                     "over its 8 rotations and flips.")
    if source.raster:
        notes.append("Tiles were cut from the raster where they lie wholly inside a labelled polygon.")
    written = write_report(html_path, csv_path, m, card, str(model_path), data.description, notes)
    return evaluation, written
