"""Radiometric corruptions and augmentation of image tiles: what other seasons, sensors and
atmospheres do to the same land cover.

Tiles are ``(N, bands, H, W)`` arrays in the data's own units: 8-bit digital numbers
(``full_scale`` 255, e.g. the EuroSAT RGB jpgs) or Sentinel-2 L1C digital numbers
(``full_scale`` 10000 = reflectance 1). Results keep the input's dtype, clipped to
0..``full_scale`` (uint8) or at 0 (floats and other integers).

* :data:`CORRUPTIONS`: fixed, named corruptions for the robustness benchmark
  (``bench/bench_corruptions.py``): brightness x0.6 and x1.4, haze, gamma 0.7 and 1.4, Gaussian
  noise, Gaussian blur.
* :func:`random_radiometry`: a random mix of per-band gain and offset, brightness, contrast,
  gamma, haze, noise and sun-glint-like speckle per tile, for training.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Corruption = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _finish(x: np.ndarray, like: np.ndarray, full_scale: float) -> np.ndarray:
    if like.dtype == np.uint8:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if np.issubdtype(like.dtype, np.integer):
        info = np.iinfo(like.dtype)
        return np.clip(np.rint(x), 0, info.max).astype(like.dtype)
    return np.maximum(x, 0).astype(like.dtype)


def brightness(factor: float) -> Corruption:
    """Every value times ``factor`` (an over- or under-exposed scene)."""
    def apply(tiles: np.ndarray, full_scale: float, rng: np.random.Generator) -> np.ndarray:
        return _finish(tiles.astype(np.float32) * factor, tiles, full_scale)
    return apply


def gamma(exponent: float) -> Corruption:
    """``full * (x / full) ** exponent``: < 1 brightens the shadows, > 1 darkens them."""
    def apply(tiles: np.ndarray, full_scale: float, rng: np.random.Generator) -> np.ndarray:
        x = np.clip(tiles.astype(np.float32) / full_scale, 0, None)
        return _finish(full_scale * x ** exponent, tiles, full_scale)
    return apply


def haze(amount: float = 0.3, airlight: float = 0.5) -> Corruption:
    """Thin haze: ``x * (1 - amount) + amount * airlight * full`` (less contrast, brighter)."""
    def apply(tiles: np.ndarray, full_scale: float, rng: np.random.Generator) -> np.ndarray:
        x = tiles.astype(np.float32)
        return _finish(x * (1 - amount) + amount * airlight * full_scale, tiles, full_scale)
    return apply


def gaussian_noise(sigma: float = 0.03) -> Corruption:
    """Additive Gaussian noise of ``sigma * full_scale`` per value (seeded by ``rng``)."""
    def apply(tiles: np.ndarray, full_scale: float, rng: np.random.Generator) -> np.ndarray:
        x = tiles.astype(np.float32)
        return _finish(x + rng.normal(0, sigma * full_scale, x.shape).astype(np.float32), tiles, full_scale)
    return apply


def gaussian_blur(sigma: float = 1.0) -> Corruption:
    """Gaussian blur of ``sigma`` pixels per band (a softer sensor or resampling)."""
    def apply(tiles: np.ndarray, full_scale: float, rng: np.random.Generator) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(tiles.astype(np.float32), sigma=(0, 0, sigma, sigma), mode="reflect")
        return _finish(x, tiles, full_scale)
    return apply


#: the robustness benchmark's corruptions, by name
CORRUPTIONS: dict[str, Corruption] = {
    "brightness_x0.6": brightness(0.6),
    "brightness_x1.4": brightness(1.4),
    "haze_0.3": haze(0.3),
    "gamma_0.7": gamma(0.7),
    "gamma_1.4": gamma(1.4),
    "noise_0.03": gaussian_noise(0.03),
    "blur_1px": gaussian_blur(1.0),
}


def corrupt(tiles: np.ndarray, name: str, full_scale: float, seed: int = 0) -> np.ndarray:
    """``tiles`` with the corruption ``name`` of :data:`CORRUPTIONS` (seeded where random)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption '{name}'; choose one of {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name](np.asarray(tiles), float(full_scale), np.random.default_rng(seed))


def random_radiometry(tiles: np.ndarray, full_scale: float, rng: np.random.Generator,
                      strength: float = 1.0) -> np.ndarray:
    """A random radiometric change per tile, for training (``strength`` 0 = none, 1 = the
    ranges below): per-band gain 1 +- 0.1 and offset +- 0.03 full; brightness x0.6..1.4;
    contrast about the tile mean x0.75..1.25; gamma 0.7..1.4; haze 0..0.3 (airlight 0.4..0.7
    full); Gaussian noise 0..0.04 full; in one tile of ten, sun-glint-like speckle (0.5 % of
    pixels set bright); in three tiles of ten, a Gaussian blur of 0.3..1.3 px (a softer sensor).
    The order of the changes is fixed."""
    x = np.asarray(tiles).astype(np.float32) / full_scale
    n, bands = x.shape[:2]
    s = float(strength)

    def factor(low: float, high: float, shape=(n,)) -> np.ndarray:
        """A random factor in low..high, pulled towards 1 (no change) by ``strength``."""
        return (1 + (rng.uniform(low, high, shape) - 1) * s).astype(np.float32)

    x = x * factor(0.9, 1.1, (n, bands))[:, :, None, None] + (rng.uniform(-0.03, 0.03, (n, bands)) * s
                                                                ).astype(np.float32)[:, :, None, None]
    x = x * factor(0.6, 1.4)[:, None, None, None]
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = mean + (x - mean) * factor(0.75, 1.25)[:, None, None, None]
    x = np.clip(x, 0, None) ** factor(0.7, 1.4)[:, None, None, None]
    amount = (rng.uniform(0, 0.3, n) * s).astype(np.float32)[:, None, None, None]
    airlight = rng.uniform(0.4, 0.7, n).astype(np.float32)[:, None, None, None]
    x = x * (1 - amount) + amount * airlight
    x = x + rng.normal(0, 1, x.shape).astype(np.float32) * (rng.uniform(0, 0.04, n) * s
                                                             ).astype(np.float32)[:, None, None, None]
    glint = (rng.random(n) < 0.1 * s)[:, None, None, None] & (rng.random((n, 1, *x.shape[2:])) < 0.005)
    x = np.where(glint, np.maximum(x, 0.9), x)
    blurred = np.nonzero(rng.random(n) < 0.3 * s)[0]
    if blurred.size:
        from scipy.ndimage import gaussian_filter

        for i, sigma in zip(blurred, rng.uniform(0.3, 1.3, blurred.size) * s):
            x[i] = gaussian_filter(x[i], sigma=(0, sigma, sigma), mode="reflect")
    return _finish(x * full_scale, np.asarray(tiles), full_scale)
