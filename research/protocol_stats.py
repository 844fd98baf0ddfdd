"""Paired comparisons of two classifiers on the same photos (numpy only): McNemar's exact test
and a paired bootstrap confidence interval of the accuracy difference; mean and sample standard
deviation. Used by ``kahikatea_protocol.py``; the rules are fixed in
``bench/kahikatea_protocol/PROTOCOL.md``.

Inputs are per-photo correctness vectors (True = the photo was classified right) of two
methods on the same photos, in the same order.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def _paired(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison of {a.size} and {b.size} photos: need the same photos")
    if a.size == 0:
        raise ValueError("paired comparison of no photos")
    return a, b


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of two methods on the same photos: ``b`` = photos only A got right,
    ``c`` = photos only B got right; under the null hypothesis (equal accuracy) each of the
    ``b + c`` discordant photos goes either way with probability 1/2, so the two-sided p-value
    is ``min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))`` (1 when there is no discordant
    photo). Returns ``{"a_only": b, "b_only": c, "discordant": b + c, "n": photos, "p_value"}``."""
    a, b = _paired(correct_a, correct_b)
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    n = only_a + only_b
    if n == 0:
        p = 1.0
    else:
        k = min(only_a, only_b)
        # exact tail with integers, then one division: no underflow for a few thousand photos
        p = min(1.0, 2.0 * float(sum(math.comb(n, i) for i in range(k + 1))) / float(2 ** n))
    return {"a_only": only_a, "b_only": only_b, "discordant": n, "n": int(a.size), "p_value": p}


def paired_bootstrap_ci(correct_a: Sequence[bool], correct_b: Sequence[bool], level: float = 0.95,
                        resamples: int = 10000, seed: int = 0,
                        groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same photos, with a percentile bootstrap
    confidence interval at ``level``: the photos are resampled with replacement ``resamples``
    times (``numpy.random.default_rng(seed)``), the same photos for both methods. With
    ``groups`` (one name per photo, e.g. its group of aerial frames) whole groups are resampled
    instead (cluster bootstrap): photos of one group are not independent, so this interval is
    the wider, honest one when groups are large. Correctness may also be fractional (e.g. the
    share of seeds that got a photo right). Returns ``{"difference", "low", "high", "level",
    "resamples", "unit"}``."""
    a = np.asarray(correct_a, dtype=np.float64).reshape(-1)
    b = np.asarray(correct_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired comparison of {a.size} and {b.size} photos: need the same photos")
    if not 0 < level < 1:
        raise ValueError("the confidence level must lie between 0 and 1")
    diff = a - b
    rng = np.random.default_rng(seed)
    if groups is None:
        picks = rng.integers(0, diff.size, (resamples, diff.size))
        stats = diff[picks].mean(axis=1)
        unit = "photo"
    else:
        groups = np.asarray(groups)
        if groups.shape != diff.shape:
            raise ValueError(f"{groups.size} group names for {diff.size} photos")
        names, index = np.unique(groups, return_inverse=True)
        sums = np.bincount(index, weights=diff, minlength=names.size)
        sizes = np.bincount(index, minlength=names.size).astype(np.float64)
        picks = rng.integers(0, names.size, (resamples, names.size))
        stats = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
        unit = "group"
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high), "level": level,
            "resamples": int(resamples), "unit": unit}


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of ``values``, and n."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}
