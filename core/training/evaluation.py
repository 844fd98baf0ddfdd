"""Evaluating a model on labelled tiles."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
import numpy as np
from ..models.card import ModelCard
from ..errors import Cancelled, TrainingDataError
from .metrics import Metrics, compute_metrics
from ..feedback import IsCancelled, Progress, ignore, never
from .data import TrainingData
from .scaling import prescaled_scaling, scale_batch


# -- evaluation -----------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Metrics over the model's classes (rows/columns of the confusion matrix in the card's
    class order), each tile's true and predicted model class index, and timings."""

    metrics: Metrics
    true: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    seconds: float
    model_seconds: float


def accuracy_interval(correct: np.ndarray, groups: Any, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of the overall accuracy of tiles whose
    correctness is ``correct`` (bool, one per tile), resampling whole ``groups`` (one label per
    tile, e.g. its polygon) with replacement: tiles of one polygon are alike and not independent,
    so the interval reflects how many polygons were checked, not how many tiles were cut from them.
    With one group per tile it is the ordinary bootstrap."""
    correct = np.asarray(correct, dtype=np.float64)
    _names, group_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    hits = np.bincount(group_of, weights=correct)
    sizes = np.bincount(group_of).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, sizes.size, size=(resamples, sizes.size))
    accuracy = hits[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(accuracy, tail)), float(np.quantile(accuracy, 1.0 - tail))


def check_data_fits_model(card: ModelCard, data: TrainingData) -> np.ndarray:
    """The data's labels as the model's class indices; errors name what does not fit."""
    if data.num_bands != card.num_bands:
        raise TrainingDataError(
            f"the model reads {card.num_bands} band(s) ({', '.join(card.bands)}) but the tiles have {data.num_bands}"
        )
    if data.tile_size != card.tile_size:
        raise TrainingDataError(
            f"the model reads tiles of {card.tile_size}x{card.tile_size} pixels but the tiles are "
            f"{data.tile_size}x{data.tile_size}"
        )
    index = {n: i for i, n in enumerate(card.class_names)}
    unknown = [n for n, c in data.class_counts().items() if c and n not in index]
    if unknown:
        used = (card.training or {}).get("class_mapping") or {}
        hint = (f" (the model was trained with the class mapping '{used.get('name')}'"
                + (f" of the field '{card.training.get('class_field')}'" if card.training.get("class_field") else "")
                + ", its card says: choose the same)") if used.get("name") not in (None, "none") else ""
        raise TrainingDataError(
            f"class(es) {', '.join(unknown)} of the labelled tiles are not classes of the model "
            f"({', '.join(card.class_names)}); name the folders or class values like the model's classes, or map "
            "the polygons' values (codes) to them with a class mapping" + hint
        )
    mapping = np.array([index.get(n, -1) for n in data.class_names], dtype=np.int64)
    return mapping[data.labels]


def evaluate(
    model: Any,
    data: TrainingData,
    batch_size: int = 64,
    prescaled: bool = False,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    test_time_augmentation: bool = False,
) -> Evaluation:
    """Run ``model`` (a :class:`core.models.backends.ClassifierModel`) on every tile of ``data`` and
    compare with the labels. Tiles are scaled with the card's scaling; with ``prescaled`` only
    its ``mean``/``std`` are applied (for tiles that already hold the scaled values, e.g. the
    EuroSAT RGB jpgs for a model reading Sentinel-2 digital numbers). Classes are matched by
    name; every labelled class must be a model class. ``progress``/``is_cancelled`` per batch.
    ``test_time_augmentation``: each tile's outputs averaged over its 8 rotations and flips.
    """
    progress = progress or ignore
    is_cancelled = is_cancelled or never
    card = model.card
    true = check_data_fits_model(card, data)
    scaling = prescaled_scaling(card.scaling) if prescaled else card.scaling
    started = time.perf_counter()
    model_seconds = 0.0
    probabilities = np.zeros((data.num_tiles, card.num_classes), dtype=np.float32)
    for start in range(0, data.num_tiles, batch_size):
        if is_cancelled():
            raise Cancelled("evaluation cancelled; nothing was written")
        x = scale_batch(data.tiles[start : start + batch_size], scaling)
        t0 = time.perf_counter()
        probabilities[start : start + x.shape[0]] = model.predict_proba(x, dihedral_tta=test_time_augmentation)
        model_seconds += time.perf_counter() - t0
        progress(100.0 * min(data.num_tiles, start + batch_size) / data.num_tiles)
    predicted = probabilities.argmax(axis=1)
    metrics = compute_metrics(true, predicted, card.class_names)
    return Evaluation(metrics, true, predicted, probabilities, time.perf_counter() - started, model_seconds)


