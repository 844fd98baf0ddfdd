"""Scaling raw tiles to model input: the card scaling computed from training tiles."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ..models.card import Scaling


# -- scaling --------------------------------------------------------------------------------
def compute_scaling(tiles: np.ndarray, seed: int = 0, sample_pixels: int = 2_000_000,
                    low_percentile: float = 1.0, high_percentile: float = 99.0) -> Scaling:
    """The card scaling for raw tiles ``(N, bands, H, W)`` (use the training tiles only).

    * uint8 (8-bit imagery, jpg/png): ``scale`` 1, ``offset`` 0, no clip; ``mean``/``std`` per
      band over all training pixels (in 0..255 units).
    * any other type (16-bit digital numbers, reflectance floats, ...): a robust per-band linear
      stretch maps the band's ``low_percentile`` .. ``high_percentile`` (default 1st..99th,
      estimated from up to ``sample_pixels`` random pixels per band, seeded) to 0..1 through
      per-band ``scale`` = 1 / (p_high - p_low) and ``offset`` = -p_low / (p_high - p_low), then
      ``clip`` [0, 1] (so outliers such as clouds or sensor spikes cannot dominate), then
      ``mean``/``std`` per band of the stretched, clipped training pixels.

    A band whose std is 0 (constant) gets std 1.
    """
    tiles = np.asarray(tiles)
    n, bands = tiles.shape[:2]
    if tiles.dtype == np.uint8:
        scaling = Scaling(scale=1.0, offset=0.0, clip=None)
    else:
        rng = np.random.default_rng(seed)
        pixels_per_band = n * tiles.shape[2] * tiles.shape[3]
        flat = tiles.reshape(n, bands, -1)
        count = min(sample_pixels, pixels_per_band)
        pick = rng.choice(pixels_per_band, size=count, replace=False) if count < pixels_per_band \
            else np.arange(pixels_per_band)
        tile_index, pixel_index = np.divmod(pick, flat.shape[2])
        sample = flat[tile_index, :, pixel_index].astype(np.float64)  # (count, bands)
        finite = np.where(np.isfinite(sample), sample, np.nan)
        low = np.nanpercentile(finite, low_percentile, axis=0)
        high = np.nanpercentile(finite, high_percentile, axis=0)
        low = np.where(np.isfinite(low), low, 0.0)
        high = np.where(np.isfinite(high), high, low + 1.0)
        span = np.where(high - low > 0, high - low, 1.0)
        scaling = Scaling(scale=[float(v) for v in 1.0 / span], offset=[float(v) for v in -low / span],
                          clip=[0.0, 1.0])
    total = np.zeros(bands, dtype=np.float64)
    total_sq = np.zeros(bands, dtype=np.float64)
    count = 0
    for start in range(0, n, 512):
        x = scaling.apply(tiles[start : start + 512]).astype(np.float64)
        x = np.nan_to_num(x)
        total += x.sum(axis=(0, 2, 3))
        total_sq += (x * x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(1, count)
    std = np.sqrt(np.maximum(total_sq / max(1, count) - mean * mean, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    scaling.mean = [float(v) for v in mean]
    scaling.std = [float(v) for v in std]
    return scaling


def scales_raw_values(scaling: Scaling) -> bool:
    """True when ``scaling`` multiplies the raw values (``scale`` not 1 in some band), e.g. a model
    reading Sentinel-2 digital numbers: then the EuroSAT RGB jpgs already hold its scaled 0..255
    values and only :func:`prescaled_scaling` applies to them."""
    return bool(np.any(np.asarray(scaling.scale, dtype=float) != 1.0))


def prescaled_scaling(scaling: Scaling) -> Scaling:
    """What of ``scaling`` still applies to tiles that already hold its scaled values: its
    ``mean``/``std`` only."""
    return Scaling(mean=list(scaling.mean), std=list(scaling.std))


def scale_batch(tiles: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Raw tiles -> float32 model input (the card scaling; NaN becomes 0 = the training mean)."""
    x = scaling.apply(tiles)
    if np.issubdtype(tiles.dtype, np.floating):
        np.nan_to_num(x, copy=False)
    return x


#: a band whose scaled tiles' median lies further than this from 0 (in the training data's standard
#: deviations) is taken as data the model was not made for (e.g. 16-bit digital numbers given to a
#: model of 8-bit images); real seasons and scenes stay within a few units
SCALED_MEDIAN_LIMIT = 8.0


def scaling_mismatch(tiles: np.ndarray, scaling: Scaling, bands: Sequence[str] | None = None,
                     limit: float = SCALED_MEDIAN_LIMIT) -> str | None:
    """None when raw ``tiles`` ``(N, bands, H, W)`` scaled by ``scaling`` (a card's, with mean and
    std) land where the model's training data did (each band's median within ``limit`` of 0),
    else one sentence naming the band furthest off. Checks up to 256 tiles. Scalings without
    mean/std are not checked."""
    if scaling.mean is None or scaling.std is None or len(tiles) == 0:
        return None
    scaled = scaling.apply(np.asarray(tiles[:256]))
    medians = np.median(scaled, axis=(0, 2, 3))
    worst = int(np.argmax(np.abs(medians)))
    if not abs(float(medians[worst])) > limit:
        return None
    name = bands[worst] if bands and worst < len(bands) else f"band {worst + 1}"
    return (f"after the model's scaling the tiles' {name} lies {float(medians[worst]):+.0f} standard deviations from "
            f"the model's training data (within a few for data like it): the values are not what the model was made "
            f"for (e.g. 16-bit digital numbers for a model of 8-bit images, or the reverse)")
