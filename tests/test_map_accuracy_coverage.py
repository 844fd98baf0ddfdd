"""sample_points + assess_map, end to end, are statistically right: on a generated map with known
truth, 200 stratified random samples (bench/bench_map_accuracy_coverage.py) give unbiased
area-adjusted estimates whose 95 % intervals hold the truth about 95 % of the time; the sampled
pixels are uniform within each map class. A few seconds; deterministic (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import load_script, write_raster

#: a design that behaves at this sample size: 4 classes, 8-45 % of the area, 10-25 % errors (clustered)
CLASSES = {1: ("Forest", 0.45, 0.10), 2: ("Crop", 0.30, 0.15), 3: ("Grass", 0.17, 0.25), 4: ("Water", 0.08, 0.15)}
ERRORS_TO = {1: [0, .5, .4, .1], 2: [.4, 0, .5, .1], 3: [.4, .5, 0, .1], 4: [.3, .2, .5, 0]}
RUNS, SIZE, PER_CLASS, TOTAL = 200, 128, 30, 320


def load_bench():
    return load_script("bench/bench_map_accuracy_coverage.py")


def problems(report: dict) -> list[str]:
    """What is off in a simulation report: bias beyond Monte Carlo error, or coverage out of
    bounds that 200 runs at 30-100 points per class allow (Monte Carlo SE of a coverage ~0.015)."""
    found = []
    for name, e in report["estimators"].items():
        kind = name.split(":")[0]
        low = {"area": 0.88, "overall": 0.88, "users": 0.86, "producers": 0.84}[kind]
        if not low <= e["coverage"] <= 0.99:
            found.append(f"{name}: coverage {e['coverage']:.3f} outside [{low}, 0.99]")
        # the producer's accuracy is a ratio (biased by O(1/n)): a bound on its relative bias only
        if kind == "producers":
            if abs(e["relative_bias"]) > 0.04:
                found.append(f"{name}: relative bias {e['relative_bias']:+.4f}")
        elif abs(e["bias_z"]) > 4 or abs(e["relative_bias"]) > 0.03:
            found.append(f"{name}: bias {e['bias']:+.4g} ({e['relative_bias']:+.2%}, {e['bias_z']:+.1f} MC SE)")
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return load_bench().simulate(RUNS, 0, SIZE, PER_CLASS, TOTAL, CLASSES, ERRORS_TO,
                                 workdir=str(tmp_path_factory.mktemp("coverage")))


def test_estimates_unbiased_and_intervals_calibrated(report):
    assert len(report["estimators"]) == 4 * 3 + 1
    assert problems(report) == []


def test_stratified_sample_uniform_within_strata(tmp_path):
    """Pooled over 200 samples, the points of each map class fall in the 8 x 8 blocks (and the 16
    row bands, across the 256-row reading windows) in proportion to the class's pixels there."""
    from scipy.stats import chisquare

    from glassbox.core.sampling import stratified_sample

    _, mapped = load_bench().make_scene(320, 3, CLASSES, ERRORS_TO)
    raster = write_raster(tmp_path / "map.tif", mapped[None])
    rows, cols, strata = [], [], []
    for seed in range(200):
        sample = stratified_sample(raster, per_class=20, seed=seed)
        xy = np.asarray(sample.points)
        cols.append(((xy[:, 0] - 500000.0) // 10).astype(int))
        rows.append(((6000000.0 - xy[:, 1]) // 10).astype(int))
        strata.append(sample.strata)
    rows, cols, strata = map(np.concatenate, (rows, cols, strata))
    assert np.array_equal(mapped[rows, cols], strata)
    for value in CLASSES:
        r, c = np.nonzero(mapped == value)
        on = strata == value
        for cells, drawn in (((r // 40) * 8 + c // 40, (rows[on] // 40) * 8 + cols[on] // 40),
                             (r // 20, rows[on] // 20)):
            expected = np.bincount(cells, minlength=cells.max() + 1).astype(float)
            observed = np.bincount(drawn, minlength=len(expected))
            assert observed[expected == 0].sum() == 0
            keep = expected > 0
            p = chisquare(observed[keep], expected[keep] / expected.sum() * on.sum()).pvalue
            assert p > 1e-3, (value, p)
