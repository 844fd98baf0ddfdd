"""core.radiometry: the benchmark's corruptions do what their names say, and the training
augmentation is seeded, keeps dtype and range, and is no change at strength 0."""

from __future__ import annotations

import numpy as np
import pytest

from glassbox.core.radiometry import CORRUPTIONS, corrupt, random_radiometry


@pytest.fixture(scope="module")
def tiles():
    rng = np.random.default_rng(0)
    smooth = np.linspace(20, 200, 32, dtype=np.float32)[None, None, None, :].repeat(32, axis=2)
    return np.clip(smooth + rng.normal(0, 10, (4, 3, 32, 32)), 0, 255).astype(np.uint8)


def test_every_corruption_keeps_dtype_shape_and_range(tiles):
    for name in CORRUPTIONS:
        out = corrupt(tiles, name, 255)
        assert out.dtype == np.uint8 and out.shape == tiles.shape, name
        assert not np.array_equal(out, tiles), name
    floats = tiles.astype(np.float32) * 40  # L1C-like digital numbers
    assert corrupt(floats, "haze_0.3", 10000).dtype == np.float32


def test_corruptions_change_what_their_names_say(tiles):
    x = tiles.astype(np.float64)
    dark, bright = corrupt(tiles, "brightness_x0.6", 255), corrupt(tiles, "brightness_x1.4", 255)
    assert np.abs(dark - np.rint(x * 0.6)).max() <= 1
    assert np.array_equal(bright, np.clip(np.rint(x * 1.4), 0, 255))
    hazy = corrupt(tiles, "haze_0.3", 255).astype(np.float64)
    assert hazy.std() < x.std() * 0.75 and hazy.mean() > x.mean()
    assert corrupt(tiles, "gamma_0.7", 255).mean() > x.mean() > corrupt(tiles, "gamma_1.4", 255).mean()
    noisy = corrupt(tiles, "noise_0.03", 255)
    assert np.array_equal(noisy, corrupt(tiles, "noise_0.03", 255))  # seeded
    assert 5 < (noisy - x).std() < 10
    blurred = corrupt(tiles, "blur_1px", 255).astype(np.float64)
    assert np.abs(np.diff(blurred, axis=-2)).mean() < 0.6 * np.abs(np.diff(x, axis=-2)).mean()
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(tiles, "fog", 255)


def test_random_radiometry_is_seeded_bounded_and_neutral_at_zero_strength(tiles):
    a = random_radiometry(tiles, 255, np.random.default_rng(1))
    b = random_radiometry(tiles, 255, np.random.default_rng(1))
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, tiles)
    assert np.abs(random_radiometry(tiles, 255, np.random.default_rng(2), strength=0.0).astype(int)
                  - tiles).max() <= 1
    floats = random_radiometry(tiles.astype(np.float32) * 40, 10000, np.random.default_rng(3))
    assert floats.dtype == np.float32 and floats.min() >= 0
