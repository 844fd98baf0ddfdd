"""Explanation metrics (core.xai_metrics) and the small pure helpers of core.xai / core.explain,
on hand-made heatmaps whose right answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glassbox.core.explain.heatmap import local_peaks
from glassbox.core.explain.attribution import ExplainError, band_shares, pixel_heatmap, resolve_target
from glassbox.core.explain.metrics import deletion_curve, heatmap_iou, pointing_game, random_deletion_auc, relevant_pixels


def box(shape, r0, r1, c0, c1, value=1.0):
    out = np.zeros(shape, dtype=np.float32)
    out[r0:r1, c0:c1] = value
    return out


def test_iou_counts_intersection_over_union():
    mask = box((20, 20), 0, 10, 0, 10).astype(bool)  # 100 px
    assert heatmap_iou(box((20, 20), 0, 10, 0, 10), mask, smooth=0) == 1.0
    assert heatmap_iou(box((20, 20), 10, 20, 10, 20), mask, smooth=0) == 0.0
    # heatmap covers rows 0-9, cols 5-14: intersection 50, union 150
    assert heatmap_iou(box((20, 20), 0, 10, 5, 15), mask, smooth=0) == pytest.approx(1 / 3)
    assert math.isnan(heatmap_iou(np.zeros((20, 20)), np.zeros((20, 20), bool)))
    assert heatmap_iou(np.zeros((20, 20)), mask) == 0.0


def test_iou_threshold_is_relative_to_the_maximum():
    mask = box((20, 20), 0, 10, 0, 10).astype(bool)
    heat = box((20, 20), 0, 10, 0, 10, 1.0) + box((20, 20), 10, 20, 0, 10, 0.4)  # a weaker region below
    assert heatmap_iou(heat, mask, threshold=0.5, smooth=0) == 1.0  # 0.4 < half the maximum
    assert heatmap_iou(heat, mask, threshold=0.3, smooth=0) == pytest.approx(0.5)  # both regions
    # units do not matter
    assert heatmap_iou(heat * 1e-6, mask, threshold=0.3, smooth=0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        relevant_pixels(heat, threshold=0)


def test_smoothing_turns_speckled_edges_into_a_region():
    mask = box((32, 32), 8, 16, 8, 16).astype(bool)
    edges = np.zeros((32, 32))
    edges[8, 8:16] = edges[15, 8:16] = edges[8:16, 8] = edges[8:16, 15] = 1.0  # only the outline
    assert heatmap_iou(edges, mask, smooth=0) == pytest.approx(28 / 64)
    assert heatmap_iou(edges, mask, smooth=1.0) > 0.5  # the smoothed outline fills the square


def test_pointing_game():
    mask = box((20, 20), 5, 10, 5, 10).astype(bool)
    inside = np.zeros((20, 20))
    inside[7, 7] = 1.0
    outside = np.zeros((20, 20))
    outside[12, 12] = 1.0
    assert pointing_game(inside, mask)
    assert not pointing_game(outside, mask)
    assert pointing_game(outside, mask, tolerance=3)  # (12, 12) is 3 px from (9, 9)
    assert not pointing_game(outside, mask, tolerance=2)
    assert not pointing_game(np.zeros((20, 20)), mask)  # no evidence is a miss
    valid = np.ones((20, 20), bool)
    valid[12, 12] = False
    both = inside * 0.5 + outside
    assert not pointing_game(both, mask, smooth=0)
    assert pointing_game(both, mask, smooth=0, valid=valid)  # the strongest pixel is nodata


class SquareModel:
    """A transparent model: p(class 1) = sigmoid of the mean of band 0 inside rows/cols 4..8."""

    def __call__(self, batch):
        score = batch[:, 0, 4:8, 4:8].mean(axis=(1, 2)) * 4 - 2
        p1 = 1 / (1 + np.exp(-score))
        return np.stack([1 - p1, p1], axis=1)


def test_deletion_curve_rewards_faithful_heatmaps():
    model = SquareModel()
    tile = np.zeros((2, 12, 12), dtype=np.float32)
    tile[0, 4:8, 4:8] = 2.0
    right = box((12, 12), 4, 8, 4, 8)
    wrong = 1.0 - right
    good = deletion_curve(model, tile, right, target=1, steps=12)
    bad = deletion_curve(model, tile, wrong, target=1, steps=12)
    np.testing.assert_allclose(good.fractions, np.linspace(0, 1, 13))
    assert good.probabilities[0] == pytest.approx(model(tile[None])[0, 1])
    assert good.probabilities[-1] == pytest.approx(1 / (1 + np.exp(2)))  # everything deleted
    # deleting the 16 square pixels first (16/144 of the tile) kills the class at once
    assert good.probabilities[2] == pytest.approx(1 / (1 + np.exp(2)))
    assert np.all(np.diff(good.probabilities) <= 1e-12)
    assert good.auc < random_deletion_auc(model, tile, 1, steps=12) < bad.auc
    trapezoids = np.sum((good.probabilities[1:] + good.probabilities[:-1]) / 2 * np.diff(good.fractions))
    assert good.auc == pytest.approx(trapezoids)


def test_pixel_heatmap_and_band_shares():
    attr = np.zeros((1, 3, 4, 4), dtype=np.float32)
    attr[0, 0, 0, 0] = -3.0  # a negative attribution is relevance too
    attr[0, 1, 0, 0] = 1.0
    attr[0, 2, 3, 3] = 4.0
    heat = pixel_heatmap(attr)
    assert heat.shape == (1, 4, 4) and heat[0, 0, 0] == 4.0 and heat[0, 3, 3] == 4.0 and heat.sum() == 8.0
    np.testing.assert_allclose(band_shares(attr), [[3 / 8, 1 / 8, 4 / 8]])
    valid = np.ones((1, 4, 4), bool)
    valid[0, 3, 3] = False
    np.testing.assert_allclose(band_shares(attr, valid), [[3 / 4, 1 / 4, 0.0]])
    assert np.isnan(band_shares(np.zeros((1, 3, 4, 4)))).all()


def test_local_peaks_are_ordered_and_apart():
    yy, xx = np.mgrid[0:32, 0:32]
    heat = 1.0 * np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 8) + 0.6 * np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / 8)
    heat += 0.55 * np.exp(-((yy - 9) ** 2 + (xx - 10) ** 2) / 2)  # a shoulder next to the strongest peak
    peaks = local_peaks(heat, count=3, min_distance=4)
    assert len(peaks) == 2  # the shoulder is no local maximum of its own 9 x 9 neighbourhood
    assert abs(peaks[0][0] - 8) <= 1 and abs(peaks[0][1] - 9) <= 1
    assert (peaks[1][0], peaks[1][1]) == (24, 20)
    values = [v for _r, _c, v in peaks]
    assert values == sorted(values, reverse=True)
    for i, a in enumerate(peaks):
        for b in peaks[i + 1:]:
            assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 4
    twins = np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 2) + 0.9 * np.exp(-((yy - 8) ** 2 + (xx - 13) ** 2) / 2)
    assert [(r, c) for r, c, _v in local_peaks(twins, 3, 2)] == [(8, 8), (8, 13)]
    assert [(r, c) for r, c, _v in local_peaks(twins, 3, 6)] == [(8, 8)]  # closer than 6 px
    assert local_peaks(np.zeros((8, 8)), 3, 2) == []
    valid = np.ones((32, 32), bool)
    valid[:16] = False
    only = local_peaks(heat, 1, 4, valid)
    assert only[0][0] >= 16


def test_resolve_target():
    from glassbox.core.models.card import ClassInfo, ModelCard, Scaling

    card = ModelCard(classes=[ClassInfo("Forest", "#00ff00"), ClassInfo("River", "#0000ff")], bands=["B04"],
                     scaling=Scaling(), tile_size=16, gsd=10)
    assert resolve_target(card, None) is None
    assert resolve_target(card, "") is None
    assert resolve_target(card, "Predicted") is None
    assert resolve_target(card, "River") == 1
    assert resolve_target(card, "forest") == 0
    assert resolve_target(card, 1) == 1
    with pytest.raises(ExplainError, match="unknown target class 'Lake'.*Forest, River"):
        resolve_target(card, "Lake")
    with pytest.raises(ExplainError):
        resolve_target(card, 2)


def test_least_relevant_first_deletes_in_the_heatmaps_reverse_order():
    """The deletion curve's reference order: the same heatmap reversed. A model that sees only
    the mean of the tile's top-left quarter: a heatmap on that quarter falls fast most relevant
    first and late least relevant first."""
    from glassbox.core.explain.metrics import deletion_curve

    def model(batch):
        score = batch[:, 0, :4, :4].mean(axis=(1, 2))
        return np.stack([1 - score, score], axis=1)

    tile = np.ones((1, 8, 8), np.float32)
    heat = np.zeros((8, 8))
    heat[:4, :4] = 1.0 + np.arange(16).reshape(4, 4)
    most = deletion_curve(model, tile, heat, target=1, steps=4)
    least = deletion_curve(model, tile, heat, target=1, steps=4, least_relevant_first=True)
    assert most.probabilities.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert least.probabilities.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert most.auc < least.auc
