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

from typing import Iterator, Sequence

import numpy as np

EDGE_WEIGHT = 0.05


def tent_window(height: int, width: int) -> np.ndarray:
    """The blending weights of one tile, shape ``(height, width)``, float32 in (0, 1]."""

    def tent(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        return np.maximum(1.0 - np.abs(2.0 * (i + 0.5) / n - 1.0), EDGE_WEIGHT)

    return np.outer(tent(height), tent(width)).astype(np.float32)


class _HeldRows:
    """Rows ``[base, base + held)`` of an area ``width`` pixels wide and ``height`` rows high, held in
    buffers that grow to the largest band needed (subclasses: :meth:`_capacity`, :meth:`_grow`)."""

    #: pixels per piece handed out by ``pop_rows``
    POP_PIXELS = 2**18

    def __init__(self, width: int, height: int):
        self.width = width
        self.height = height
        self.base = 0
        self.held = 0

    def _capacity(self) -> int:
        raise NotImplementedError

    def _grow(self, capacity: int) -> None:
        """Replace the buffers by ones of ``capacity`` rows that keep the ``held`` rows."""
        raise NotImplementedError

    def _ensure(self, stop_row: int) -> None:
        need = min(stop_row, self.height) - self.base
        if need <= self.held:
            return
        if need > self._capacity():
            self._grow(min(self.height - self.base, max(need, 2 * self._capacity())))
        self.held = need

    def _pieces(self, rows: int) -> Iterator[tuple[int, int]]:
        """``(first, stop)`` of the pieces of about :data:`POP_PIXELS` pixels of ``rows`` held rows."""
        step = max(1, self.POP_PIXELS // max(1, self.width))
        for r0 in range(0, rows, step):
            yield r0, min(rows, r0 + step)


class RowBandAccumulator(_HeldRows):
    """Accumulates weighted probabilities for rows ``[base, base + held)`` of an area of
    ``width`` pixels and hands finished rows out via :meth:`pop_rows`.

    The rows are held in buffers that grow to the largest band needed and are reused (finished
    rows are shifted out in place), so a long run allocates no new arrays per tile or per row."""

    #: tiles weighted at once by :meth:`add_batch` (bounds its temporary arrays)
    BATCH_CHUNK = 32
    def __init__(self, width: int, num_classes: int, height: int):
        super().__init__(width, height)
        self.num_classes = num_classes
        self._sums = np.zeros((num_classes, 0, width), dtype=np.float32)
        self._weights = np.zeros((0, width), dtype=np.float32)
        # columns [_lo, _hi) hold all the weight of the rows held: the rest is zero, never touched
        self._lo, self._hi = width, 0

    @property
    def sums(self) -> np.ndarray:
        """Weighted sums ``(classes, held, width)`` of the rows held (a view)."""
        return self._sums[:, : self.held]

    @property
    def weights(self) -> np.ndarray:
        """Summed weights ``(held, width)`` of the rows held (a view)."""
        return self._weights[: self.held]

    def _capacity(self) -> int:
        return self._weights.shape[0]

    def _grow(self, capacity: int) -> None:
        sums = np.zeros((self.num_classes, capacity, self.width), np.float32)
        weights = np.zeros((capacity, self.width), np.float32)
        sums[:, : self.held] = self._sums[:, : self.held]
        weights[: self.held] = self._weights[: self.held]
        self._sums, self._weights = sums, weights

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
        self._lo, self._hi = min(self._lo, col_off), max(self._hi, col_off + cols)
        self._weights[r0 : r0 + rows, col_off : col_off + cols] += w
        values = probabilities.astype(np.float32)
        values = values[:, None, None] if values.ndim == 1 else values[:, :rows, :cols]
        self._sums[:, r0 : r0 + rows, col_off : col_off + cols] += values * w[None]

    def add_batch(self, row_offs: Sequence[int], col_offs: Sequence[int], probabilities: np.ndarray,
                  weight: np.ndarray, valid: np.ndarray | Sequence[np.ndarray | None] | None = None) -> None:
        """Add N tiles in order, with the same result, bit for bit, as N calls of :meth:`add`
        with ``weight * valid[i]``: ``probabilities`` ``(N, classes)`` or ``(N, classes, rows,
        cols)``; ``weight`` ``(rows, cols)`` the window shared by all tiles; ``valid``: per tile
        a boolean mask of the window's shape, or None for a tile whose pixels are all valid (or an
        array ``(N, rows, cols)``, or None for all). The weighting is done for the whole batch at
        once; only the two in-place additions per tile remain."""
        n = len(row_offs)
        if n == 0:
            return
        if len(col_offs) != n or len(probabilities) != n:
            raise ValueError("add_batch needs as many column offsets and probabilities as row offsets")
        if min(row_offs) < self.base:
            raise ValueError("tile added above rows that were already written")
        weight = np.asarray(weight, dtype=np.float32)
        self._ensure(max(row_offs) + weight.shape[0])
        for start in range(0, n, self.BATCH_CHUNK):  # bounded temporaries for large batches
            stop = min(n, start + self.BATCH_CHUNK)
            if valid is None:
                weights: Sequence[np.ndarray] = [weight] * (stop - start)
            elif isinstance(valid, np.ndarray):
                weights = weight * valid[start:stop]
            else:
                weights = [weight if v is None else weight * v for v in valid[start:stop]]
            values = np.asarray(probabilities[start:stop]).astype(np.float32)
            per_pixel = values.ndim == 4
            if per_pixel:  # one multiplication for the chunk; per-tile values are weighted per tile below
                weighted = values * (weights[:, None] if isinstance(weights, np.ndarray) else np.stack(weights)[:, None])
            for i in range(stop - start):
                row_off, col_off = int(row_offs[start + i]), int(col_offs[start + i])
                rows = min(weight.shape[0], self.height - row_off)
                cols = min(weight.shape[1], self.width - col_off)
                if rows <= 0 or cols <= 0:
                    continue
                r0 = row_off - self.base
                self._lo, self._hi = min(self._lo, col_off), max(self._hi, col_off + cols)
                w = weights[i][:rows, :cols]
                self._weights[r0 : r0 + rows, col_off : col_off + cols] += w
                self._sums[:, r0 : r0 + rows, col_off : col_off + cols] += (
                    weighted[i, :, :rows, :cols] if per_pixel else values[i][:, None, None] * w[None])

    def pop_rows(self, stop_row: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(first_row, probabilities (classes, rows, width), covered (rows, width))``
        for the finished rows ``[base, stop_row)`` and forget them. ``probabilities`` is the
        weighted mean; where ``covered`` is False no tile contributed (nodata). The rows come in
        pieces of about :data:`POP_PIXELS` pixels (top to bottom), so what the caller derives from
        them (class maps, masked copies) stays small however wide the area."""
        stop_row = min(stop_row, self.height)
        if stop_row <= self.base:
            return
        self._ensure(stop_row)
        n = stop_row - self.base
        lo, hi = self._lo, self._hi
        try:
            allocate = np.empty if lo == 0 and hi == self.width else np.zeros  # zeros where no weight
            for r0, r1 in self._pieces(n):
                weights = self._weights[r0:r1]
                covered = weights > 0
                probs = allocate((self.num_classes, r1 - r0, self.width), np.float32)
                if hi > lo:  # only the columns that have weight: at stride = tile, often a narrow strip
                    np.divide(self._sums[:, r0:r1, lo:hi], np.where(covered[:, lo:hi], weights[:, lo:hi], 1.0)[None],
                              out=probs[:, :, lo:hi])
                yield self.base + r0, probs, covered
        finally:  # also when the caller stops early: the rows are forgotten either way
            rest = self.held - n
            if hi > lo:
                if rest > 0:  # shift the unfinished rows to the top (copies: the ranges may overlap)
                    self._sums[:, :rest, lo:hi] = self._sums[:, n : self.held, lo:hi].copy()
                    self._weights[:rest, lo:hi] = self._weights[n : self.held, lo:hi].copy()
                self._sums[:, rest : self.held, lo:hi] = 0.0
                self._weights[rest : self.held, lo:hi] = 0.0
            if rest == 0:
                self._lo, self._hi = self.width, 0
            self.held = rest
            self.base = stop_row


def lone_offsets(offsets: Sequence[int], footprint: int) -> np.ndarray:
    """Which of a grid axis's tile ``offsets`` (pixels) start a tile that overlaps none of its
    neighbours' (``footprint`` pixels long), bool per offset. At stride = tile size all but the
    last two are lone (the last tile is flush with the area's edge and overlaps its neighbour);
    at smaller strides none is."""
    starts = np.asarray(offsets, dtype=np.int64)
    lone = np.ones(len(starts), dtype=bool)
    if len(starts) > 1:
        touching = starts[1:] < starts[:-1] + footprint
        lone[1:] &= ~touching
        lone[:-1] &= ~touching
    return lone


class PaintedTiles(_HeldRows):
    """Tiles that overlap no other tile, stored as one tile number per pixel instead of weighted
    class sums. Their pixels take the tile's class probabilities as they are (which is what the
    weighted mean of a single tile gives, without its rounding) and the tile's most probable
    class, so they need no per-pixel blending and no per-pixel argmax. Rows are handed out with
    :meth:`pop_rows` in the same pieces as :meth:`RowBandAccumulator.pop_rows` when both are
    popped with the same stop rows, so the two can be zipped (tiles that overlap others go to a
    :class:`RowBandAccumulator`; no pixel is in both)."""

    def __init__(self, width: int, num_classes: int, height: int):
        super().__init__(width, height)
        self.num_classes = num_classes
        self._ids = np.full((0, width), -1, dtype=np.int32)
        self._table = np.zeros((0, num_classes), dtype=np.float32)
        self._labels = np.zeros(0, dtype=np.intp)
        self._count = 0

    @property
    def table(self) -> np.ndarray:
        """Class probabilities ``(tiles, classes)`` of the tiles added so far, by tile number."""
        return self._table[: self._count]

    @property
    def labels(self) -> np.ndarray:
        """The most probable class ``(tiles,)`` of the tiles added so far, by tile number."""
        return self._labels[: self._count]

    def _capacity(self) -> int:
        return self._ids.shape[0]

    def _grow(self, capacity: int) -> None:
        ids = np.full((capacity, self.width), -1, dtype=np.int32)
        ids[: self.held] = self._ids[: self.held]
        self._ids = ids

    def add_batch(self, row_offs: Sequence[int], col_offs: Sequence[int], probabilities: np.ndarray,
                  footprint: tuple[int, int], valid: Sequence[np.ndarray | None] | None = None) -> None:
        """Paint N tiles of ``footprint`` (rows, cols) pixels: ``probabilities`` ``(N, classes)``;
        ``valid`` per tile a boolean mask of the footprint's shape (False = nodata, left
        uncovered) or None for all valid."""
        n = len(row_offs)
        if n == 0:
            return
        if min(row_offs) < self.base:
            raise ValueError("tile added above rows that were already written")
        if self._count + n > len(self._table):
            size = max(self._count + n, 2 * len(self._table))
            table, labels = np.zeros((size, self.num_classes), np.float32), np.zeros(size, np.intp)
            table[: self._count], labels[: self._count] = self._table[: self._count], self._labels[: self._count]
            self._table, self._labels = table, labels
        self._table[self._count : self._count + n] = probabilities
        self._labels[self._count : self._count + n] = np.argmax(probabilities, axis=1)
        self._ensure(max(row_offs) + footprint[0])
        for i in range(n):
            row_off, col_off = int(row_offs[i]), int(col_offs[i])
            rows, cols = min(footprint[0], self.height - row_off), min(footprint[1], self.width - col_off)
            if rows <= 0 or cols <= 0:
                continue
            window = self._ids[row_off - self.base : row_off - self.base + rows, col_off : col_off + cols]
            mask = None if valid is None else valid[i]
            if mask is None:
                window[...] = self._count + i
            else:
                window[mask[:rows, :cols]] = self._count + i
        self._count += n

    def pop_rows(self, stop_row: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, tile numbers (rows, width))`` (-1 where no tile is painted) for the
        finished rows ``[base, stop_row)`` in pieces of :data:`POP_PIXELS`
        pixels, and forget them."""
        stop_row = min(stop_row, self.height)
        if stop_row <= self.base:
            return
        self._ensure(stop_row)
        n = stop_row - self.base
        try:
            for r0, r1 in self._pieces(n):
                yield self.base + r0, self._ids[r0:r1]
        finally:
            rest = self.held - n
            if rest > 0:
                self._ids[:rest] = self._ids[n : self.held].copy()
            self._ids[rest : self.held] = -1
            self.held = rest
            self.base = stop_row
