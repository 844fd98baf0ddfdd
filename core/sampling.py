"""Stratified random reference points for assessing a class map.

The estimators of :mod:`.map_accuracy` (Olofsson et al. 2014) are unbiased for a probability
sample; the usual design is *stratified random* sampling with the map classes as strata: a
fixed number of pixels drawn at random within each class, so that rare classes get enough
points, plus optionally more in proportion to each class's area. :func:`stratified_sample`
draws such pixels from a class raster in two passes over windows of whole block rows (memory
bounded by one window, whatever the raster's size): first the pixels of every class are
counted, then the drawn pixels (chosen by their rank among the pixels of their class) are
located. Points are pixel centres in the raster's CRS, returned in random order so that
neither their order nor their ids tell the interpreter which class the map gives them.
QGIS-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection

import numpy as np

from .errors import RasterInputError, TrainingDataError
from .feedback import WARNING_PREFIX, IsCancelled, Log, Progress, ignore, never
from .io.writers import CLOUD, UNCLASSIFIED


@dataclass
class StratifiedSample:
    """``points``: (x, y) pixel centres in the raster's CRS, in random order; ``strata``: the
    map value under each point; ``allocation``: map value -> points drawn; ``mapped_pixels``:
    map value -> pixels of that value in the raster (strata only)."""

    points: list[tuple[float, float]]
    strata: list[int]
    allocation: dict[int, int]
    mapped_pixels: dict[int, int]


def allocate(mapped_pixels: dict[int, int], per_class: int, total: int = 0) -> dict[int, int]:
    """Points per stratum: ``per_class`` in each (all its pixels if it has fewer), then, when
    ``total`` is larger than that sum, the rest in proportion to the strata's pixels (largest
    remainders first; no stratum gets more points than it has pixels). ``total`` 0 means no
    proportional part. Raises :class:`ValueError` when ``total`` is positive but below the
    per-class part."""
    if per_class < 1:
        raise ValueError(f"the points per class must be at least 1, got {per_class}")
    allocation = {value: min(per_class, pixels) for value, pixels in mapped_pixels.items() if pixels > 0}
    fixed = sum(allocation.values())
    if total <= 0:
        return allocation
    if total < fixed:
        raise ValueError(f"{total} points in all are fewer than the {fixed} the {len(allocation)} classes get at "
                         f"{per_class} each: raise the total or lower the points per class")
    rest = min(total, sum(mapped_pixels.values())) - fixed
    while rest > 0:
        room = {v: mapped_pixels[v] - n for v, n in allocation.items() if mapped_pixels[v] > n}
        if not room:
            break
        weight = sum(mapped_pixels[v] for v in room)
        shares = {v: rest * mapped_pixels[v] / weight for v in room}
        extra = {v: min(int(shares[v]), room[v]) for v in room}
        left = rest - sum(extra.values())
        for v in sorted(room, key=lambda v: (-(shares[v] - int(shares[v])), v)):
            if left <= 0:
                break
            if extra[v] < room[v]:
                extra[v] += 1
                left -= 1
        if not any(extra.values()):
            break
        for v, n in extra.items():
            allocation[v] += n
        rest -= sum(extra.values())
    return allocation


def sample_strata(dataset: Any, classes: Collection[int] | None = None) -> tuple[set[int], int | None]:
    """Which values of an open class raster are strata: ``classes`` if given (e.g. the values its
    legend names), else every value; never the nodata value, nor 255 on an 8-bit raster (the
    nodata of Glassbox's maps and a usual fill) unless ``classes`` names it. The Cloud (253) and
    Unclassified (254) pixels of an 8-bit Glassbox map are strata of their own, as in
    :func:`.map_accuracy.assess_map`. Returns (the allowed values or an empty set for "any",
    the value never sampled)."""
    eight_bit = np.dtype(dataset.dtypes[0]) == np.uint8
    allowed = set(int(v) for v in classes) if classes else set()
    if allowed and eight_bit:
        allowed |= {CLOUD, UNCLASSIFIED}
    fill = 255 if eight_bit and 255 not in allowed else None
    return allowed, fill


def stratified_sample(raster_path: str, per_class: int = 50, total: int = 0, seed: int = 0,
                      class_names: dict[int, str] | None = None, progress: Progress | None = None,
                      is_cancelled: IsCancelled | None = None, log: Log | None = None) -> StratifiedSample:
    """Stratified random pixels of the class raster ``raster_path`` (band 1, integer values).
    ``per_class``, ``total``: see :func:`allocate`. ``class_names``: map value -> class name, from
    the raster's legend; when given, only these values (and Cloud and Unclassified) are sampled,
    else every value but nodata (see :func:`sample_strata`). ``seed``: the same seed and raster
    give the same points. ``log`` gets the points per class. Raises :class:`RasterInputError` for a
    raster that is not a class map, :class:`TrainingDataError` when no pixel can be sampled,
    :class:`ValueError` for a bad allocation."""
    from .io.raster import open_raster
    from .map_accuracy import MAX_UNNAMED_CLASSES, band_rows, check_class_raster, pixel_counts

    progress, is_cancelled, log = progress or ignore, is_cancelled or never, log or ignore
    with open_raster(raster_path, "the class raster") as ds:
        check_class_raster(ds, raster_path)
        allowed, fill = sample_strata(ds, class_names)
        eight_bit = np.dtype(ds.dtypes[0]) == np.uint8
        # without a legend, counting stops a little past the limit (room for nodata and 253-255)
        counts = pixel_counts(ds, lambda p: progress(p / 2), is_cancelled,
                              max_values=None if allowed else MAX_UNNAMED_CLASSES + 3)
        mapped = {v: n for v, n in sorted(counts.items())
                  if v != ds.nodata and v != fill and (not allowed or v in allowed)}
        if not allowed and len(mapped) > MAX_UNNAMED_CLASSES:
            raise RasterInputError(f"{raster_path} holds more than {MAX_UNNAMED_CLASSES} different values and no "
                                   "legend: it looks like an image, not a class map; give the class raster of "
                                   "Classify raster")
        if not mapped:
            raise TrainingDataError(f"{raster_path} has no pixels of a map class to sample (only nodata"
                                    + (" or values its legend does not name" if allowed else "") + ")")
        allocation = allocate(mapped, per_class, total)
        names = {**({CLOUD: "Cloud", UNCLASSIFIED: "Unclassified"} if eight_bit else {}), **(class_names or {})}
        log("points per map class: " + "; ".join(
            f"{names.get(v, v)}: {n} of {mapped[v]:,} px" for v, n in allocation.items()))
        short = [str(names.get(v, v)) for v, n in allocation.items() if n < per_class]
        if short:
            log(f"{WARNING_PREFIX}{', '.join(short)}: fewer pixels than the points per class, so every pixel of "
                f"{'it' if len(short) == 1 else 'them'} is a point")
        rng = np.random.default_rng(seed)
        wanted = {v: np.sort(rng.choice(mapped[v], size=n, replace=False)) for v, n in allocation.items()}
        found: dict[int, list[tuple[int, int]]] = {v: [] for v in allocation}
        seen = dict.fromkeys(allocation, 0)
        for row, block, done in band_rows(ds, is_cancelled):
            values, number = np.unique(block, return_counts=True)
            for value, count in zip(values.tolist(), number.tolist()):
                if value not in wanted:
                    continue
                ranks = wanted[value]
                start, stop = np.searchsorted(ranks, [seen[value], seen[value] + count])
                if stop > start:
                    flat = np.flatnonzero(block.ravel() == value)[ranks[start:stop] - seen[value]]
                    rows, cols = np.divmod(flat, ds.width)
                    found[value].extend(zip((rows + row).tolist(), cols.tolist()))
                seen[value] += count
            progress(50 + 50 * done)
        transform = ds.transform
    cells = [(r, c, v) for v, pixels in found.items() for r, c in pixels]
    order = rng.permutation(len(cells))
    points, strata = [], []
    for index in order.tolist():
        r, c, v = cells[index]
        points.append(tuple(transform * (c + 0.5, r + 0.5)))
        strata.append(v)
    return StratifiedSample(points=points, strata=strata, allocation=allocation, mapped_pixels=mapped)
