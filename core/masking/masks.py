"""Masked fine-tuning (paper 2): replace the background of each training tile, i.e. everything
outside the polygons of the tile's class, by a mask, and fine-tune a model on those tiles.

QGIS-free; torch is imported inside the functions that train.

**Inside and outside.** A tile's *inside* is the union of the polygons whose (mapped) class
equals the tile's label, rasterised on the tile's model pixels: a pixel is inside when its
centre lies inside such a polygon (``rasterio.features.geometry_mask``; holes are outside).
Everything else is *background*. Pixels inside are never changed (:func:`apply_background_mask`
copies them bit for bit).

**Mask types** (:data:`MASK_TYPES`), all in the model's *raw* value space (values as read from
the raster, before the card's scaling), so that the masked tile goes through the same scaling
as any other tile:

* ``white`` -- the brightest value the model distinguishes, per band: where the card's scaling
  clips (``clip [lo, hi]`` after ``x * scale + offset``), the raw value that maps to ``hi``
  (``(hi - offset) / scale``; for a model trained on 16-bit data by Glassbox that is the
  training data's 99th percentile); without a clip, 255 for 8-bit tiles, else the training
  tiles' per-band maximum.
* ``black`` -- likewise the darkest: the raw value that maps to the clip's ``lo``; without a
  clip, 0 for 8-bit tiles, else the training tiles' per-band minimum.
* ``median`` -- the per-band median of the raw values of the training tiles (all their pixels,
  a seeded sample of at most 2 million per band). Paper 2 filled with the median colour of
  ImageNet because its ResNet18 was pretrained on ImageNet: the neutral colour *of the data the
  network knows*. ImageNet's statistics describe 8-bit photographs and mean nothing for
  Sentinel-2 reflectances or other rasters, so the analogue here is the median of the data the
  model is trained on. (For 8-bit RGB photographs the two are similar greys; ImageNet's own
  median is not available offline and is not used.)
* ``blur`` -- the tile blurred by a Gaussian of ``blur_sigma`` model pixels (default
  :func:`default_blur_sigma`: tile size / 16, at least 1; e.g. 4 px for 64 px tiles), per band,
  ``scipy.ndimage.gaussian_filter`` with ``mode="nearest"``; the blurred values replace the
  background only (the blur is of the whole tile, so near the polygon's edge the background
  takes a little colour from the inside, as in the paper's "Gaussian blur added on the
  background").
* ``none`` -- no masking (raw tiles): fine-tunes a model to the mapped classes with the same
  tile sampling, e.g. the raw model of an ensemble.

**Tiles** (:func:`sample_masked_tiles`): candidates on the raster's pixel grid every
``stride`` model pixels (default one tile), over each polygon's bounding box widened by half a
tile; a tile is taken when its centre pixel lies inside the polygon and at least ``min_inside``
(default 50 %) of its pixel centres do (:func:`core.training.data.tiles_from_polygons` with
``beyond_polygon=True``), so tiles reach over the polygon's edge and have background to mask.
Tiles with nodata are dropped; ``tiles_per_polygon`` keeps a seeded random sample per polygon.
Its label is the polygon's mapped class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..models.card import Scaling
from ..errors import MaskingError
from ..feedback import IsCancelled, never

MASK_TYPES = ("white", "black", "median", "blur", "none")
MASK_LABELS = {
    "white": "white (brightest value)",
    "black": "black (darkest value)",
    "median": "median of the training data",
    "blur": "Gaussian blur of the tile",
    "none": "none (raw tiles)",
}
DEFAULT_MIN_INSIDE = 0.5
MEDIAN_SAMPLE_PIXELS = 2_000_000



def check_mask_type(mask_type: str) -> str:
    mask_type = (mask_type or "").strip().lower()
    if mask_type not in MASK_TYPES:
        raise MaskingError(f"unknown mask type '{mask_type}'; use one of {', '.join(MASK_TYPES)}")
    return mask_type


def default_blur_sigma(tile_size: int) -> float:
    """The blur mask's Gaussian sigma in model pixels: tile size / 16, at least 1."""
    return max(1.0, float(tile_size) / 16.0)


# -- fills ----------------------------------------------------------------------------------
@dataclass
class MaskSpec:
    """How to mask: ``mask_type``, ``fill`` (raw value per band, for white/black/median) and
    ``blur_sigma`` (model pixels, for blur), plus how the fill was found (``rule``)."""

    mask_type: str
    fill: list[float] | None = None
    blur_sigma: float | None = None
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.mask_type, "fill": self.fill, "blur_sigma": self.blur_sigma, "rule": self.rule}


def _cast_fill(values: np.ndarray, dtype: np.dtype) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return [float(v) for v in values]


def mask_spec(mask_type: str, train_tiles: np.ndarray, scaling: Scaling | None = None,
              blur_sigma: float | None = None, seed: int = 0) -> MaskSpec:
    """The :class:`MaskSpec` for ``mask_type`` from the raw training tiles ``(N, bands, H, W)``
    and the model's card scaling (see the module docstring for each rule)."""
    mask_type = check_mask_type(mask_type)
    tiles = np.asarray(train_tiles)
    if tiles.ndim != 4 or tiles.shape[0] == 0:
        raise MaskingError(f"masking needs training tiles (N, bands, H, W), got shape {tiles.shape}")
    bands = tiles.shape[1]
    if mask_type == "none":
        return MaskSpec("none", rule="no masking: raw tiles")
    if mask_type == "blur":
        sigma = float(blur_sigma) if blur_sigma else default_blur_sigma(tiles.shape[2])
        if not sigma > 0:
            raise MaskingError("the blur sigma must be positive (model pixels)")
        return MaskSpec("blur", blur_sigma=sigma,
                        rule=f"Gaussian blur of the tile, sigma {sigma:g} model pixels, replaces the background")
    if mask_type == "median":
        flat = tiles.reshape(tiles.shape[0], bands, -1)
        total = flat.shape[0] * flat.shape[2]
        rng = np.random.default_rng(seed)
        pick = rng.choice(total, size=MEDIAN_SAMPLE_PIXELS, replace=False) if total > MEDIAN_SAMPLE_PIXELS \
            else np.arange(total)
        tile_index, pixel_index = np.divmod(pick, flat.shape[2])
        sample = flat[tile_index, :, pixel_index].astype(np.float64)
        values = np.nanmedian(sample, axis=0)
        return MaskSpec("median", fill=_cast_fill(values, tiles.dtype),
                        rule=f"per-band median of the raw values of {tiles.shape[0]} training tiles")
    clip = scaling.clip if scaling is not None else None
    high = mask_type == "white"
    if clip is not None:
        target = clip[1] if high else clip[0]
        scale = np.broadcast_to(np.asarray(scaling.scale, dtype=np.float64).reshape(-1), (bands,))
        offset = np.broadcast_to(np.asarray(scaling.offset, dtype=np.float64).reshape(-1), (bands,))
        if np.any(scale == 0):
            raise MaskingError("the card's scaling has a zero scale; white/black cannot be found")
        values = (target - offset) / scale
        rule = f"raw value the card's scaling maps to its clip {'high' if high else 'low'} ({target:g})"
    elif tiles.dtype == np.uint8:
        values = np.full(bands, 255.0 if high else 0.0)
        rule = "8-bit tiles: " + ("255" if high else "0")
    else:
        values = (np.nanmax if high else np.nanmin)(tiles, axis=(0, 2, 3)).astype(np.float64)
        rule = f"per-band {'maximum' if high else 'minimum'} of the training tiles"
    return MaskSpec(mask_type, fill=_cast_fill(values, tiles.dtype), rule=rule)


# -- applying -------------------------------------------------------------------------------
def apply_background_mask(tile: np.ndarray, inside: np.ndarray, mask_type: str,
                          fill: Sequence[float] | float | None = None, blur_sigma: float | None = None) -> np.ndarray:
    """A copy of ``tile`` (raw values ``(bands, H, W)``) whose pixels outside ``inside``
    (bool ``(H, W)``) are replaced: by ``fill`` (one raw value, or one per band) for white,
    black and median, by the tile blurred with a Gaussian of ``blur_sigma`` model pixels for
    blur (default :func:`default_blur_sigma`), and not at all for none. Pixels inside are
    copied unchanged. The data type is kept (fills and blurred values are rounded and clipped
    to the type's range for integer tiles)."""
    tile = np.asarray(tile)
    inside = np.asarray(inside, dtype=bool)
    if tile.ndim != 3 or inside.shape != tile.shape[1:]:
        raise MaskingError(f"a tile (bands, H, W) and an inside mask (H, W) are needed, got {tile.shape} and "
                           f"{inside.shape}")
    mask_type = check_mask_type(mask_type)
    out = tile.copy()
    if mask_type == "none":
        return out
    outside = ~inside
    if mask_type == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = float(blur_sigma) if blur_sigma else default_blur_sigma(tile.shape[-1])
        for b in range(tile.shape[0]):
            blurred = gaussian_filter(tile[b].astype(np.float64), sigma=sigma, mode="nearest")
            out[b][outside] = _to_dtype(blurred[outside], tile.dtype)
        return out
    if fill is None:
        raise MaskingError(f"a '{mask_type}' mask needs a fill value per band")
    values = np.broadcast_to(np.asarray(fill, dtype=np.float64).reshape(-1), (tile.shape[0],))
    for b in range(tile.shape[0]):
        out[b][outside] = _to_dtype(np.asarray([values[b]]), tile.dtype)[0]
    return out


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return values.astype(dtype)


def apply_background_masks(tiles: np.ndarray, inside: np.ndarray, spec: MaskSpec,
                           is_cancelled: IsCancelled | None = None) -> np.ndarray:
    """:func:`apply_background_mask` for every tile of ``tiles`` ``(N, bands, H, W)`` with its
    ``inside`` ``(N, H, W)``; a new array."""
    is_cancelled = is_cancelled or never
    tiles = np.asarray(tiles)
    inside = np.asarray(inside, dtype=bool)
    if inside.shape != (tiles.shape[0], *tiles.shape[2:]):
        raise MaskingError(f"{tiles.shape[0]} tiles of {tiles.shape[2:]} px but inside masks of shape {inside.shape}")
    if spec.mask_type == "none":
        return tiles.copy()
    out = np.empty_like(tiles)
    for i in range(tiles.shape[0]):
        if i % 256 == 0 and is_cancelled():
            from ..errors import Cancelled

            raise Cancelled("cancelled while masking tiles; nothing was written")
        out[i] = apply_background_mask(tiles[i], inside[i], spec.mask_type, spec.fill, spec.blur_sigma)
    return out


# -- inside masks ---------------------------------------------------------------------------
def _bounds(geometry: dict) -> tuple[float, float, float, float]:
    from rasterio.features import bounds

    return tuple(bounds(geometry))  # type: ignore[return-value]


def inside_masks(footprints: np.ndarray, tile_size: int, tile_classes: Sequence[str],
                 polygons: Sequence[dict], polygon_classes: Sequence[str | None]) -> np.ndarray:
    """Bool ``(N, tile_size, tile_size)``: per tile, the model pixels whose centre lies inside
    a polygon of the tile's class. ``footprints`` ``(N, 4)`` = (xmin, ymin, xmax, ymax) of
    each tile and ``polygons`` (GeoJSON-like, with their classes) in the same CRS."""
    from rasterio.features import geometry_mask
    from rasterio.transform import from_bounds

    footprints = np.asarray(footprints, dtype=np.float64)
    if len(footprints) != len(tile_classes):
        raise MaskingError(f"{len(footprints)} footprints but {len(tile_classes)} tile classes")
    boxes = np.array([_bounds(g) if g else (np.inf, np.inf, -np.inf, -np.inf) for g in polygons],
                     dtype=np.float64).reshape(-1, 4)
    classes = np.asarray([c if c is not None else "" for c in polygon_classes], dtype=object)
    out = np.zeros((len(footprints), tile_size, tile_size), dtype=bool)
    for i, ((xmin, ymin, xmax, ymax), name) in enumerate(zip(footprints, tile_classes)):
        near = np.flatnonzero((classes == name) & (boxes[:, 0] < xmax) & (boxes[:, 2] > xmin)
                              & (boxes[:, 1] < ymax) & (boxes[:, 3] > ymin))
        if near.size == 0:
            continue
        transform = from_bounds(xmin, ymin, xmax, ymax, tile_size, tile_size)
        out[i] = geometry_mask([polygons[k] for k in near], out_shape=(tile_size, tile_size),
                               transform=transform, invert=True)
    return out


