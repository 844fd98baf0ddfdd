"""Blend the class probabilities of overlapping tiles into a per-pixel map, streaming.

Each tile adds its class probabilities to the pixels it covers, weighted by a pyramid ("tent")
window that is largest at the tile centre and falls linearly towards its border (never to zero):

    w(r, c) = t(r, H) * t(c, W),   t(i, n) = max(1 - |2 (i + 0.5) / n - 1|, 0.05)

so a pixel's probability is the weighted mean of all tiles covering it, dominated by the tiles
whose centre is nearest, which is where a patch classifier's label is most reliable. Pixels that
are nodata in the input receive no weight and stay nodata. With no overlap (stride = tile size)
the weights do not matter: each pixel has one tile.

Memory stays bounded: rows are written out as soon as no later tile can reach them, so only a
band of rows about one tile high (times the batch's tile rows) is held, never the whole raster.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

EDGE_WEIGHT = 0.05


def tent_window(height: int, width: int) -> np.ndarray:
    """The blending weights of one tile, shape ``(height, width)``, float32 in (0, 1]."""

    def tent(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        return np.maximum(1.0 - np.abs(2.0 * (i + 0.5) / n - 1.0), EDGE_WEIGHT)

    return np.outer(tent(height), tent(width)).astype(np.float32)


class RowBandAccumulator:
    """Accumulates weighted probabilities for rows ``[base, base + held)`` of an area of
    ``width`` pixels and hands finished rows out via :meth:`pop_rows`."""

    def __init__(self, width: int, num_classes: int, height: int):
        self.width = width
        self.height = height
        self.num_classes = num_classes
        self.base = 0
        self.sums = np.zeros((num_classes, 0, width), dtype=np.float32)
        self.weights = np.zeros((0, width), dtype=np.float32)

    def _ensure(self, stop_row: int) -> None:
        held = self.weights.shape[0]
        need = min(stop_row, self.height) - self.base
        if need > held:
            extra = need - held
            self.sums = np.concatenate(
                [self.sums, np.zeros((self.num_classes, extra, self.width), np.float32)], axis=1
            )
            self.weights = np.concatenate([self.weights, np.zeros((extra, self.width), np.float32)])

    def add(self, row_off: int, col_off: int, probabilities: np.ndarray, weight: np.ndarray) -> None:
        """Add one tile over a ``weight`` window ``(rows, cols)`` whose top-left pixel is
        (``row_off``, ``col_off``) in area pixels: ``probabilities`` ``(classes,)`` (one value
        per class for the whole tile) or ``(classes, rows, cols)`` (a value per pixel, e.g. a
        heatmap). Parts of the window outside the area are ignored."""
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
        values = probabilities.astype(np.float32)
        values = values[:, None, None] if values.ndim == 1 else values[:, :rows, :cols]
        self.sums[:, r0 : r0 + rows, col_off : col_off + cols] += values * w[None]

    def pop_rows(self, stop_row: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(first_row, probabilities (classes, rows, width), covered (rows, width))``
        for the finished rows ``[base, stop_row)`` and forget them. ``probabilities`` is the
        weighted mean; where ``covered`` is False no tile contributed (nodata)."""
        stop_row = min(stop_row, self.height)
        if stop_row <= self.base:
            return
        self._ensure(stop_row)
        n = stop_row - self.base
        weights = self.weights[:n]
        covered = weights > 0
        probs = self.sums[:, :n] / np.where(covered, weights, 1.0)[None]
        first = self.base
        self.sums = self.sums[:, n:].copy()
        self.weights = self.weights[n:].copy()
        self.base = stop_row
        yield first, probs, covered
