"""Bands, stretch and windows of the raster; the segmentation methods on one window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence
import numpy as np
from ..errors import RasterInputError, SegmentationError
from ..io.raster import read_validity
from .seeds import STRETCH_PERCENTILES, STRETCH_SAMPLE_SIDE


# -- bands, stretch, windows ----------------------------------------------------------------
_TRUE_COLOUR = (("B04", "B03", "B02"), ("RED", "GREEN", "BLUE"))


def choose_bands(dataset: Any, requested: Sequence[int] | None, method: str) -> list[int]:
    """1-based bands to segment (module docstring). SAM takes at most 3."""
    from ..io.raster import band_descriptions, normalise_band_name

    count = dataset.count
    if requested:
        bands = [int(b) for b in requested]
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise RasterInputError(f"band(s) {bad} do not exist: the raster has bands 1..{count}")
        if method == "sam" and len(bands) > 3:
            raise SegmentationError(f"Segment Anything sees an RGB image: choose 1 to 3 bands, not {len(bands)}")
        return bands
    names = [normalise_band_name(d or "") for d in band_descriptions(dataset)]
    for wanted in _TRUE_COLOUR:
        if all(w in names for w in wanted):
            return [names.index(w) + 1 for w in wanted]
    return list(range(1, min(3, count) + 1))


def stretch_limits(dataset: Any, bands: Sequence[int], nodata: float | None) -> list[tuple[float, float]]:
    """Per band (2nd, 98th) percentile of the valid pixels, from a read decimated to at most
    :data:`STRETCH_SAMPLE_SIDE` pixels on the long side."""
    from rasterio.enums import Resampling

    factor = max(1.0, max(dataset.height, dataset.width) / STRETCH_SAMPLE_SIDE)
    shape = (len(bands), max(1, round(dataset.height / factor)), max(1, round(dataset.width / factor)))
    data = dataset.read(list(bands), out_shape=shape, resampling=Resampling.nearest).astype(np.float32)
    valid = read_validity(dataset, data, nodata, None, shape[1:])
    if not valid.any():
        raise RasterInputError("the raster holds no valid pixel in the chosen bands (every pixel is nodata or NaN); "
                               "check the raster's nodata value (or the Nodata parameter), the bands chosen and "
                               "the mask")
    limits = []
    for band in data:
        lo, hi = np.percentile(band[valid], STRETCH_PERCENTILES)
        if not hi > lo:
            hi = lo + 1.0
        limits.append((float(lo), float(hi)))
    return limits


def _stretch(data: np.ndarray, valid: np.ndarray, limits: Sequence[tuple[float, float]]) -> np.ndarray:
    """(bands, rows, cols) raw -> (rows, cols, bands) float32 in 0..1; nodata pixels 0."""
    out = np.empty(data.shape[1:] + (data.shape[0],), dtype=np.float32)
    for i, (band, (lo, hi)) in enumerate(zip(data, limits)):
        out[..., i] = np.clip((band - lo) / (hi - lo), 0.0, 1.0)
    out[~valid] = 0.0
    return out


@dataclass(frozen=True)
class WindowGrid:
    """Cells of ``step`` pixels with ``margin`` pixels of context: see the module docstring."""

    height: int
    width: int
    window_size: int

    @property
    def margin(self) -> int:
        return max(1, self.window_size // 8)

    @property
    def step(self) -> int:
        return max(1, self.window_size - 2 * self.margin)

    def cell(self, row: int, col: int) -> tuple[int, int]:
        return row // self.step, col // self.step

    def window(self, cell: tuple[int, int]) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1), end exclusive, clipped to the raster."""
        i, j = cell
        s, m = self.step, self.margin
        return (max(0, i * s - m), max(0, j * s - m), min(self.height, (i + 1) * s + m),
                min(self.width, (j + 1) * s + m))


# -- the methods on one window --------------------------------------------------------------
def _disc(shape: tuple[int, int], row: int, col: int, radius: int) -> tuple[slice, slice, np.ndarray]:
    r0, r1 = max(0, row - radius), min(shape[0], row + radius + 1)
    c0, c1 = max(0, col - radius), min(shape[1], col + radius + 1)
    rr, cc = np.ogrid[r0:r1, c0:c1]
    return slice(r0, r1), slice(c0, c1), (rr - row) ** 2 + (cc - col) ** 2 <= radius * radius


def _local_features(image: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """(rows, cols, 2 x bands): the local mean and local standard deviation (texture) of every
    band in a Gaussian window of ``sigma`` pixels, over valid pixels only (normalised
    convolution, so nodata does not bleed in)."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return np.concatenate([image, np.zeros_like(image)], axis=-1)
    weight = gaussian_filter(valid.astype(np.float32), sigma, mode="nearest")
    weight = np.maximum(weight, 1e-6)[..., None]
    v = valid[..., None].astype(np.float32)
    spatial = (sigma, sigma, 0)
    mean = gaussian_filter(image * v, spatial, mode="nearest") / weight
    square = gaussian_filter(image * image * v, spatial, mode="nearest") / weight
    return np.concatenate([mean, np.sqrt(np.clip(square - mean * mean, 0.0, None))], axis=-1)


def watershed_window(image: np.ndarray, valid: np.ndarray, seeds: Sequence[tuple[int, int]],
                     negatives: Sequence[tuple[int, int]] = (), smoothing: float = 2.0,
                     groups: Sequence[str] | None = None) -> np.ndarray:
    """Seeded watershed on one window. ``image`` (rows, cols, bands) in 0..1, ``valid``
    (rows, cols), ``seeds`` and ``negatives`` (row, col) window pixels, ``smoothing`` the
    Gaussian scale (pixels) of the colour and texture features.

    * Features: per band the local mean and local standard deviation (texture) at
      ``smoothing`` (:func:`_local_features`); each seed's colour is the median of the features
      within 2 px of it; ``distance`` = root-mean-square feature difference of every pixel to the
      nearest seed colour.
    * Background markers: valid pixels with ``distance`` above Otsu's threshold ``t`` of the
      window's distances, more than 3 px from every seed, plus discs of 2 px at the negative
      points. Seed markers: a disc of 1 px per seed (the seed pixel itself always keeps its own).
    * Relief flooded by ``skimage.segmentation.watershed``: ``distance / t`` plus half the
      gradient magnitude (``skimage.filters.sobel`` per band of the image smoothed by a
      Gaussian of 1 px, root of the sum of squares) divided by its 90th percentile: basins grow
      over pixels that look like their seed and stop at edges.
    * Alike seeds share a basin: seeds of one group (``groups``, e.g. their classes; default all
      one) whose colours differ by at most ``t / 2`` (linked in chains) flood as one, so an object
      with several seeds is one segment, not cut along the ridges between them.
    * Each basin then keeps only its pixels within ``t`` of one of its seeds' colours that are
      connected to its seeds, plus their edge ring of ``smoothing`` pixels: the relief measures
      the distance to the *nearest* seed colour, so a basin could flood a cover that looks like
      another, distant seed.

    Returns int32 labels (rows, cols): the label of ``seeds[i]``'s basin at its pixel (shared by
    alike seeds; of seeds on the same pixel, the last one's), 0 for background and nodata."""
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, sobel, threshold_otsu
    from skimage.segmentation import watershed

    shape = valid.shape
    features = _local_features(image, valid, smoothing)
    distance = np.full(shape, np.inf, dtype=np.float32)
    colours = []
    for row, col in seeds:
        rs, cs, disc = _disc(shape, row, col, 2)
        around = features[rs, cs][disc & valid[rs, cs]]
        colour = np.median(around, axis=0) if len(around) else features[row, col]
        colours.append(colour)
        d = np.sqrt(((features - colour) ** 2).mean(axis=-1))
        np.minimum(distance, d, out=distance)
    fine = gaussian(image, sigma=1.0, channel_axis=-1, preserve_range=True)
    gradient = np.sqrt(sum(sobel(fine[..., b], mask=valid) ** 2 for b in range(fine.shape[-1])))
    values = distance[valid]
    threshold = float(threshold_otsu(values)) if values.size > 1 and values.max() > values.min() else np.inf
    g_scale = float(np.percentile(gradient[valid], 90)) if valid.any() else 0.0
    relief = distance / (threshold if np.isfinite(threshold) and threshold > 0 else max(float(values.max()), 1e-6))
    if g_scale > 0:
        relief = relief + 0.5 * gradient / g_scale
    markers = np.zeros(shape, dtype=np.int32)
    background = len(seeds) + 1
    if np.isfinite(threshold):
        near_seed = np.zeros(shape, dtype=bool)
        for row, col in seeds:
            near_seed[row, col] = True
        near_seed = ndi.binary_dilation(near_seed, iterations=3)
        # the features are blurred over ``smoothing`` px, so the object's own edge pixels look
        # like background: the markers stay that far off, and the edge gradient places the border
        far = ndi.binary_erosion(distance > threshold, iterations=max(1, int(np.ceil(smoothing))), border_value=1)
        markers[valid & far & ~near_seed] = background
    for row, col in negatives:
        rs, cs, disc = _disc(shape, row, col, 2)
        markers[rs, cs][disc & valid[rs, cs]] = background
    label_of = _alike_labels(colours, groups, threshold / 2 if np.isfinite(threshold) else -1.0)
    for (row, col), label in zip(seeds, label_of):
        rs, cs, disc = _disc(shape, row, col, 1)
        markers[rs, cs][disc & valid[rs, cs]] = label
    for (row, col), label in zip(seeds, label_of):
        markers[row, col] = label
    labels = watershed(relief, markers, mask=valid)
    labels[labels == background] = 0
    if np.isfinite(threshold):
        ring = max(1, int(np.ceil(smoothing)))
        boxes = ndi.find_objects(labels)  # per basin its bounding box: the work below stays inside it
        for label in sorted(set(label_of)):
            members = [i for i, own in enumerate(label_of) if own == label and labels[seeds[i]] == label]
            if not members or boxes[label - 1] is None:
                continue
            box = boxes[label - 1]
            local = [(seeds[i][0] - box[0].start, seeds[i][1] - box[1].start) for i in members]
            window = labels[box]  # a view: trimming it trims labels
            basin = window == label
            inside = features[box][basin]
            like = np.zeros(len(inside), dtype=bool)
            for i in members:
                like |= np.sqrt(((inside - colours[i]) ** 2).mean(axis=-1)) <= threshold
            own = np.zeros(basin.shape, dtype=bool)
            own[basin] = like
            for at in local:
                own[at] = True
            parts, _n = ndi.label(own)
            core = np.isin(parts, [parts[at] for at in local])
            window[basin & ~ndi.binary_dilation(core, iterations=ring)] = 0
        negative = np.zeros(shape, dtype=bool)
        for row, col in negatives:
            negative[row, col] = True
        labels = _close_thin_gaps(labels, valid, relief, ring, image, ndi.binary_dilation(negative, iterations=2))
    return labels.astype(np.int32)


def _close_thin_gaps(labels: np.ndarray, valid: np.ndarray, relief: np.ndarray, width: int, image: np.ndarray,
                     keep: np.ndarray | None = None) -> np.ndarray:
    """Background that is only a thin band between two or more segments (no pixel more than
    ``width`` px inside it) shared out among them along the relief, where its pixels look like
    those segments: the blurred features of the boundary between two seeded covers look like
    neither seed, so their segments were parted by a band of background 1-2 px wide. A pixel is
    shared out when its colour in ``image`` (not blurred) is one of two neighbouring segments'
    colours, or a mixture of them (a mixed pixel on their border), within 1.5 times the spread (95th
    percentile) of their pixels beside the band; a road, stream or hedge of its own colour stays background, and so does
    a band that holds a negative point (``keep``) or touches one segment only (a lane beside a field)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    gap = valid & (labels == 0)
    parts, count = ndi.label(gap)
    if count == 0:
        return labels
    thick = set(np.unique(parts[ndi.binary_erosion(gap, iterations=width + 1)]).tolist())
    margin = width + 2
    shared = np.zeros_like(gap)
    for index, box in enumerate(ndi.find_objects(parts), start=1):
        if index in thick or box is None:
            continue
        grown = tuple(slice(max(0, b.start - margin), b.stop + margin) for b in box)
        component = parts[grown] == index
        if keep is not None and (keep[grown] & component).any():
            continue
        beside = ndi.binary_dilation(component, iterations=margin) & ~component
        around = labels[grown]
        touching = [t for t in np.unique(around[beside]) if t > 0]
        if len(touching) < 2:
            continue
        colours, spread = [], 0.0
        for t in touching:
            side = image[grown][beside & (around == t)]
            centre = np.median(side, axis=0)
            colours.append(centre)
            spread = max(spread, float(np.percentile(np.sqrt(((side - centre) ** 2).mean(axis=-1)), 95)))
        pixels = image[grown][component]
        like = np.zeros(len(pixels), dtype=bool)
        for a in range(len(colours)):
            for b in range(a + 1, len(colours)):
                step = colours[a] - colours[b]
                alpha = np.clip((pixels - colours[b]) @ step / max(float(step @ step), 1e-12), 0.0, 1.0)
                residual = pixels - (colours[b] + alpha[:, None] * step)
                like |= np.sqrt((residual ** 2).mean(axis=-1)) <= 1.5 * max(spread, 1e-6)
        chosen = np.zeros_like(component)
        chosen[component] = like
        shared[grown] |= chosen
    if not shared.any():
        return labels
    return watershed(relief, labels, mask=(labels > 0) | shared)


def _alike_labels(colours: Sequence[np.ndarray], groups: Sequence[str] | None, limit: float) -> list[int]:
    """Watershed labels (1, 2, ...) of seeds with these feature ``colours``: seeds of one group
    whose colours differ (root-mean-square) by at most ``limit`` share a label, in chains (a
    negative ``limit``: every seed its own)."""
    from scipy.cluster.hierarchy import DisjointSet

    count = len(colours)
    alike = DisjointSet(range(count))
    if limit >= 0 and count > 1:
        stacked = np.asarray(colours, dtype=np.float64)
        for a in range(count):
            near = np.sqrt(((stacked[a + 1:] - stacked[a]) ** 2).mean(axis=-1)) <= limit
            for b in np.flatnonzero(near) + a + 1:
                if groups is None or groups[a] == groups[b]:
                    alike.merge(a, int(b))
    label_of = [0] * count
    for members in alike.subsets():
        for k in members:
            label_of[k] = min(members) + 1
    return label_of


def _component_with(mask: np.ndarray, row: int, col: int) -> np.ndarray:
    """The connected part of ``mask`` that holds pixel (row, col); nothing when the mask misses
    it (a Segment Anything mask that does not cover its own prompt point outlines something else)."""
    from scipy import ndimage as ndi

    if not mask[row, col]:
        return np.zeros_like(mask)
    # 4-connected, as _pieces traces polygons (connectivity=4): an 8-connected part came out as
    # several polygons touching at corners, all but one without the seed
    parts, _n = ndi.label(mask)
    return parts == parts[row, col]


def _pieces(mask: np.ndarray, row_off: int, col_off: int) -> list[Any]:
    """Polygons (OGR, global pixel coordinates) of a boolean window mask."""
    from affine import Affine
    from rasterio.features import shapes

    from ..io.vectors import geojson_geometry

    if not mask.any():
        return []
    out = []
    for geometry, _value in shapes(mask.astype(np.uint8), mask=mask, connectivity=4,
                                   transform=Affine.translation(col_off, row_off)):
        polygon = geojson_geometry(geometry)
        if not polygon.IsEmpty():
            out.append(polygon)
    return out


