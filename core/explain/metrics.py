"""How good is an explanation? Localisation against ground truth, and faithfulness to the model.

All functions take a per-pixel heatmap ``(H, W)`` (e.g. :func:`core.explain.attribution.pixel_heatmap` of one
tile; larger = more relevant) and, for localisation, a boolean ground-truth mask ``(H, W)`` on
the same grid.

* :func:`heatmap_iou` -- Jaccard index (intersection over union) of the thresholded heatmap and
  the mask. **Threshold rule**: a pixel is "relevant" when its heatmap value is at least
  ``threshold`` times the tile's largest value (default 0.5, i.e. half the maximum) and above 0.
  Relative to the maximum, so the rule is independent of the attribution's units and of how the
  raster was normalised. Guided (Grad-CAM) heatmaps are sharp at edges and speckled inside
  objects; ``smooth`` (a Gaussian sigma in pixels, default 1) is applied before thresholding so
  that the relevant *region*, not single speckles, is compared with the mask.
* :func:`pointing_game` -- a hit when the heatmap's maximum (after the same smoothing) lies in
  the mask, optionally within ``tolerance`` pixels of it (Zhang et al. 2018 use 15 px at 224 px).
* :func:`deletion_curve` -- faithfulness (Petsiuk et al. 2018): pixels are deleted (every band
  set to ``baseline``; 0 in the scaled input is the training mean of a standardised model, zero
  reflectance of one without mean/std) from the most to the least relevant, and the target class
  probability is recorded after each step. The area under the curve over the deleted fraction
  (0..1) is the **deletion AUC**: lower means the heatmap found the pixels the model really relies
  on. The reference is the same heatmap's order reversed (``least_relevant_first``): both delete
  pixels of the same spatial structure, so the difference measures the ranking, not how
  out-of-distribution the deleted pixels look. Deleting scattered random pixels
  (:func:`random_deletion_auc`) destroys a tile far faster than deleting compact regions (Hooker
  et al. 2019 on the deletion's distribution shift), so a heatmap order rarely reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

DEFAULT_THRESHOLD = 0.5
DEFAULT_SMOOTH = 1.0
DEFAULT_STEPS = 20


def _smoothed(heatmap: np.ndarray, smooth: float) -> np.ndarray:
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0)
    if smooth and smooth > 0:
        from scipy.ndimage import gaussian_filter

        heatmap = gaussian_filter(heatmap, sigma=float(smooth), mode="nearest")
    return heatmap


def relevant_pixels(heatmap: np.ndarray, threshold: float = DEFAULT_THRESHOLD, smooth: float = DEFAULT_SMOOTH,
                    valid: np.ndarray | None = None) -> np.ndarray:
    """The thresholded heatmap (bool ``(H, W)``): smoothed value ``>= threshold * max`` and
    ``> 0``, over ``valid`` pixels only when given (see the module docstring)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1], a fraction of the heatmap's maximum")
    h = _smoothed(heatmap, smooth)
    if valid is not None:
        h = np.where(valid, h, 0.0)
    top = float(h.max()) if h.size else 0.0
    if not top > 0:
        return np.zeros(h.shape, dtype=bool)
    return (h >= threshold * top) & (h > 0)


def heatmap_iou(heatmap: np.ndarray, mask: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                smooth: float = DEFAULT_SMOOTH, valid: np.ndarray | None = None) -> float:
    """Jaccard index of the thresholded heatmap and the ground-truth ``mask`` (0..1). NaN when
    both are empty; 0 when only one is."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(heatmap):
        raise ValueError(f"heatmap {np.shape(heatmap)} and mask {mask.shape} differ in shape")
    if valid is not None:
        mask = mask & valid
    relevant = relevant_pixels(heatmap, threshold, smooth, valid)
    union = np.count_nonzero(relevant | mask)
    if union == 0:
        return float("nan")
    return np.count_nonzero(relevant & mask) / union


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance: int = 0, smooth: float = DEFAULT_SMOOTH,
                  valid: np.ndarray | None = None) -> bool:
    """True when the heatmap's (smoothed) maximum lies inside ``mask`` or within ``tolerance``
    pixels of it (Chebyshev distance). A heatmap without any positive value misses."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(heatmap):
        raise ValueError(f"heatmap {np.shape(heatmap)} and mask {mask.shape} differ in shape")
    h = _smoothed(heatmap, smooth)
    if valid is not None:
        h = np.where(valid, h, 0.0)
    if not h.size or not h.max() > 0:
        return False
    row, col = np.unravel_index(int(np.argmax(h)), h.shape)
    if tolerance > 0:
        r0, c0 = max(0, row - tolerance), max(0, col - tolerance)
        return bool(mask[r0 : row + tolerance + 1, c0 : col + tolerance + 1].any())
    return bool(mask[row, col])


@dataclass
class DeletionCurve:
    """``fractions`` (steps + 1,) of deleted pixels, from 0 to 1; ``probabilities`` of the
    target class after each step; ``auc`` the area under that curve (trapezoids)."""

    fractions: np.ndarray
    probabilities: np.ndarray
    auc: float


def _auc(fractions: np.ndarray, values: np.ndarray) -> float:
    return float(np.sum((values[1:] + values[:-1]) * np.diff(fractions)) / 2.0)


def deletion_curve(model_fn: Callable[[np.ndarray], np.ndarray], tile: np.ndarray, heatmap: np.ndarray,
                   target: int, steps: int = DEFAULT_STEPS, baseline: float = 0.0,
                   order: np.ndarray | None = None, least_relevant_first: bool = False) -> DeletionCurve:
    """Delete pixels of ``tile`` (scaled model input ``(bands, H, W)``) from the most to the
    least relevant by ``heatmap`` (ties: row-major order) and record the probability of class
    ``target`` after each of ``steps`` equal steps. ``model_fn`` maps ``(N, bands, H, W)`` to
    probabilities ``(N, classes)``; all steps go to it as one batch. ``order`` (flat pixel
    indices) replaces the heatmap order, e.g. a random one; ``least_relevant_first`` deletes in
    the heatmap's reverse order (ties: row-major order too)."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    tile = np.asarray(tile, dtype=np.float32)
    bands, rows, cols = tile.shape
    n = rows * cols
    if order is None:
        flat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64).reshape(-1), nan=-np.inf)
        order = np.argsort(flat if least_relevant_first else -flat, kind="stable")
    order = np.asarray(order).reshape(-1)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * n).astype(int)
    batch = np.repeat(tile[None], steps + 1, axis=0).reshape(steps + 1, bands, n)
    for i, k in enumerate(counts):
        batch[i][:, order[:k]] = baseline
    probs = np.asarray(model_fn(batch.reshape(steps + 1, bands, rows, cols)))[:, target].astype(np.float64)
    return DeletionCurve(fractions, probs, _auc(fractions, probs))


def random_deletion_auc(model_fn: Callable[[np.ndarray], np.ndarray], tile: np.ndarray, target: int,
                        steps: int = DEFAULT_STEPS, baseline: float = 0.0, seed: int = 0) -> float:
    """Deletion AUC for scattered pixels deleted in a random order: a floor (see the module notes)."""
    rows, cols = np.shape(tile)[-2:]
    order = np.random.default_rng(seed).permutation(rows * cols)
    return deletion_curve(model_fn, tile, np.zeros((rows, cols)), target, steps, baseline, order).auc
