"""research/protocol_stats.py against hand-computed and scipy values."""

from __future__ import annotations

import numpy as np
import pytest

from glassbox.research.protocol_stats import mcnemar_exact, mean_sd, paired_bootstrap_ci


def pairs(only_a: int, only_b: int, both: int = 5, neither: int = 3):
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def test_mcnemar_exact_known_values():
    # b = 1, c = 6: 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128 = 0.125
    result = mcnemar_exact(*pairs(1, 6))
    assert (result["a_only"], result["b_only"], result["discordant"], result["n"]) == (1, 6, 7, 15)
    assert result["p_value"] == pytest.approx(0.125)
    # symmetric in the two methods
    assert mcnemar_exact(*pairs(6, 1))["p_value"] == pytest.approx(0.125)
    # b = 0, c = 5: 2 / 32
    assert mcnemar_exact(*pairs(0, 5))["p_value"] == pytest.approx(0.0625)
    # equal discordant counts and no discordant photos: 1
    assert mcnemar_exact(*pairs(4, 4))["p_value"] == 1.0
    assert mcnemar_exact(*pairs(0, 0))["p_value"] == 1.0


def test_mcnemar_exact_matches_scipy_binomtest_for_larger_counts():
    from scipy.stats import binomtest

    for only_a, only_b in ((12, 30), (40, 61), (150, 190)):
        expected = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
        assert mcnemar_exact(*pairs(only_a, only_b))["p_value"] == pytest.approx(expected, rel=1e-9)


def test_mcnemar_refuses_unpaired_input():
    with pytest.raises(ValueError, match="same photos"):
        mcnemar_exact([True, False], [True])


def test_paired_bootstrap_ci():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.85
    b = rng.random(400) < 0.75
    ci = paired_bootstrap_ci(a, b, resamples=4000, seed=1)
    assert ci["difference"] == pytest.approx(a.mean() - b.mean())
    assert ci["low"] < ci["difference"] < ci["high"]
    # about the normal approximation's width: 1.96 * sd(diff) / sqrt(n)
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert (ci["high"] - ci["low"]) / 2 == pytest.approx(half, rel=0.1)
    # deterministic by seed
    assert paired_bootstrap_ci(a, b, resamples=4000, seed=1) == ci
    # identical methods: a degenerate interval at 0
    same = paired_bootstrap_ci(a, a, resamples=500)
    assert same["difference"] == same["low"] == same["high"] == 0.0


def test_group_bootstrap_is_wider_when_groups_move_together():
    # 20 groups of 20 photos; within a group both methods' difference is shared
    rng = np.random.default_rng(3)
    group = np.repeat(np.arange(20), 20)
    shift = rng.random(20) < 0.5
    a = np.where(shift[group], True, rng.random(400) < 0.7)
    b = rng.random(400) < 0.7
    by_photo = paired_bootstrap_ci(a, b, resamples=3000, seed=0)
    by_group = paired_bootstrap_ci(a, b, resamples=3000, seed=0, groups=group)
    assert by_group["unit"] == "group" and by_photo["unit"] == "photo"
    assert by_group["difference"] == pytest.approx(by_photo["difference"])
    assert by_group["high"] - by_group["low"] > 1.3 * (by_photo["high"] - by_photo["low"])
    with pytest.raises(ValueError, match="group names"):
        paired_bootstrap_ci(a, b, groups=group[:10])


def test_mean_sd():
    assert mean_sd([0.8, 0.9, 1.0]) == {"mean": pytest.approx(0.9), "sd": pytest.approx(0.1), "n": 3}
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": 0.0, "n": 1}
    assert mean_sd([])["n"] == 0
