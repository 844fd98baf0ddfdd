"""Are the area-adjusted estimates of assess_map unbiased, and do their 95 % intervals hold the
truth 95 % of the time? A Monte Carlo run of the whole workflow on a generated map whose truth is
known: a truth raster (classes in blobs of very different areas, one of them rare) and a map made
from it with class-dependent, spatially clustered errors (patches of one wrong class, and a
one-pixel misregistration in places); then, ``--runs`` times, stratified random points
(:func:`core.sampling.stratified_sample`, ``--per-class`` each plus ``--total`` in proportion),
labelled with the truth at the point (a perfect interpreter), assessed by
:func:`core.map_accuracy.assess_map`. Prints JSON: per estimator (area, user's, producer's accuracy
per class, overall accuracy) the true value, the mean estimate, the bias (and relative bias) with
its Monte Carlo standard error, the share of runs whose interval holds the truth (coverage) with
its Monte Carlo standard error, and the share of zero-width intervals.

Usage::

    .venv/bin/python bench/bench_map_accuracy_coverage.py --runs 400 --size 400 --seed 0 [--total 600]

Expect coverage near 0.95 and biases within about 2 Monte Carlo standard errors, except where a
class's errors are rare events in a large stratum (the rare class's area and producer's accuracy
at 50 points per class): there the Wald intervals under-cover and the producer's accuracy (a ratio)
is biased upwards; both shrink with more points in the large strata (``--total``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ORIGIN = (500000.0, 6000000.0)
PIXEL = 10.0  # metres: 0.01 ha
#: class value -> (name, share of the truth, error rate of the map on it)
CLASSES = {1: ("Forest", 0.52, 0.06), 2: ("Crop", 0.27, 0.15), 3: ("Grass", 0.13, 0.30), 4: ("Water", 0.07, 0.10),
           5: ("Urban", 0.01, 0.35)}
#: where the map's errors on each truth class go (map classes 1..5, weights)
ERRORS_TO = {1: [0, .5, .3, .05, .15], 2: [.5, 0, .4, 0, .1], 3: [.4, .5, 0, .05, .05], 4: [.3, .1, .6, 0, 0],
             5: [.3, .4, .3, 0, 0]}


def _field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth Gaussian noise (periodic), standardised: blobs of about ``sigma`` pixels."""
    freq = np.fft.fftfreq(size)
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * kernel))
    return (field - field.mean()) / field.std()


def make_scene(size: int, seed: int, classes=CLASSES, errors_to=ERRORS_TO) -> tuple[np.ndarray, np.ndarray]:
    """(truth, map) uint8 class rasters of ``size`` x ``size`` pixels. The last class sits on the
    peaks of a field of its own (rare blobs), the others in bands of another field's quantiles."""
    rng = np.random.default_rng(seed)
    values = sorted(classes)
    shares = np.array([classes[v][1] for v in values])
    field = _field(rng, size, size / 25)
    truth = np.full((size, size), values[0], np.uint8)
    cuts = np.quantile(field, np.cumsum(shares[:-2]) / shares[:-1].sum())
    for value, cut in zip(values[1:-1], cuts):
        truth[field > cut] = value
    rare = _field(rng, size, size / 40)
    truth[rare > np.quantile(rare, 1 - shares[-1])] = values[-1]
    cluster = 1 / (1 + np.exp(-2.5 * _field(rng, size, size / 30)))  # (0, 1), mean 0.5, in patches
    rate = np.zeros((size, size))
    for value in values:
        rate[truth == value] = classes[value][2]
    wrong = rng.random((size, size)) < np.clip(2 * rate * cluster, 0, 1)
    pick = _field(rng, size, 3).ravel()
    pick = (np.argsort(np.argsort(pick)) / pick.size).reshape(size, size)  # uniform, in patches
    mapped = truth.copy()
    for value in values:
        cdf = np.cumsum(errors_to[value]) / np.sum(errors_to[value])
        where = wrong & (truth == value)
        mapped[where] = np.asarray(values)[np.minimum(np.searchsorted(cdf, pick[where], side="right"),
                                                      len(values) - 1)]
    mapped = np.where(cluster > 0.8, np.roll(mapped, 1, axis=1), mapped)  # misregistration in places
    return truth, mapped


def write_map(path: Path, classes: np.ndarray) -> str:
    """``classes`` as a one-band uint8 GeoTIFF in UTM 33N with 10 m pixels."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1,
                       dtype="uint8", crs="EPSG:32633", transform=from_origin(*ORIGIN, PIXEL, PIXEL)) as ds:
        ds.write(classes[None])
    return str(path)


def true_values(truth: np.ndarray, mapped: np.ndarray, values: list[int]) -> dict[str, np.ndarray]:
    k = len(values)
    index = np.zeros(256, np.int64)
    index[values] = np.arange(k)
    matrix = np.zeros((k, k))  # [map class, truth class], pixels
    np.add.at(matrix, (index[mapped.ravel()], index[truth.ravel()]), 1)
    return {"area": matrix.sum(axis=0) * PIXEL * PIXEL / 10_000.0, "users": np.diag(matrix) / matrix.sum(axis=1),
            "producers": np.diag(matrix) / matrix.sum(axis=0), "overall": np.array([np.trace(matrix) / matrix.sum()])}


def simulate(runs: int = 400, seed: int = 0, size: int = 400, per_class: int = 50, total: int = 0,
             classes=CLASSES, errors_to=ERRORS_TO, workdir: str | None = None) -> dict:
    from glassbox.core.map_accuracy import assess_map
    from glassbox.core.sampling import stratified_sample

    values = sorted(classes)
    names = {v: classes[v][0] for v in values}
    truth, mapped = make_scene(size, seed, classes, errors_to)
    truths = true_values(truth, mapped, values)
    estimates: dict[str, list] = {k: [] for k in truths}
    halves: dict[str, list] = {k: [] for k in truths}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        raster = write_map(Path(folder) / "map.tif", mapped)
        for run in range(runs):
            sample = stratified_sample(raster, per_class=per_class, total=total, seed=seed * 100_003 + run,
                                       class_names=names)
            xy = np.asarray(sample.points)
            cols = np.floor((xy[:, 0] - ORIGIN[0]) / PIXEL).astype(int)
            rows = np.floor((ORIGIN[1] - xy[:, 1]) / PIXEL).astype(int)
            labels = [names[int(v)] for v in truth[rows, cols]]  # the interpreter: the truth at the point
            result = assess_map(raster, sample.points, labels, class_names=names)
            assert result.class_names == [names[v] for v in values], result.class_names
            for key, estimate, half in (("area", result.estimated_area_ha, result.area_ci95_ha),
                                        ("users", result.adjusted_users, result.users_ci95),
                                        ("producers", result.adjusted_producers, result.producers_ci95),
                                        ("overall", [result.adjusted_overall], [result.overall_ci95])):
                estimates[key].append(np.asarray(estimate, np.float64))
                halves[key].append(np.asarray(half, np.float64))
    report = {}
    for key, truth_values in truths.items():
        est, half = np.array(estimates[key]), np.array(halves[key])
        labels = ["all"] if key == "overall" else [names[v] for v in values]
        for j, label in enumerate(labels):
            e, h, t = est[:, j], half[:, j], float(truth_values[j])
            ok = ~np.isnan(e)
            e_ok = e[ok]
            bias_mcse = float(e_ok.std(ddof=1) / np.sqrt(ok.sum())) if ok.sum() > 1 else float("nan")
            has_interval = ~np.isnan(h)
            covered = (np.abs(e - t) <= h)[has_interval]
            coverage = float(covered.mean()) if covered.size else float("nan")
            report[f"{key}:{label}"] = {
                "truth": t, "mean": float(e_ok.mean()), "bias": float(e_ok.mean() - t),
                "relative_bias": float((e_ok.mean() - t) / t), "bias_mcse": bias_mcse,
                "bias_z": float((e_ok.mean() - t) / bias_mcse) if bias_mcse > 0 else 0.0,
                "empirical_sd": float(e_ok.std(ddof=1)), "mean_se": float(np.nanmean(h) / 1.959964),
                "coverage": coverage,
                "coverage_mcse": float(np.sqrt(coverage * (1 - coverage) / covered.size)) if covered.size else None,
                "zero_width": float(np.mean(h[has_interval] == 0)) if has_interval.any() else None,
                "runs_with_estimate": int(ok.sum()),
            }
    return {"design": {"runs": runs, "seed": seed, "size": size, "per_class": per_class, "total": total,
                       "true_area_share": {names[v]: float(np.mean(truth == v)) for v in values},
                       "mapped_share": {names[v]: float(np.mean(mapped == v)) for v in values}},
            "seconds": round(time.perf_counter() - started, 2), "estimators": report}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400, help="samples drawn and assessed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scene and of the samples")
    parser.add_argument("--size", type=int, default=400, help="raster side in pixels (10 m)")
    parser.add_argument("--per-class", type=int, default=50, help="points per map class")
    parser.add_argument("--total", type=int, default=0, help="points in all (0: per class only)")
    args = parser.parse_args(argv)
    print(json.dumps(simulate(args.runs, args.seed, args.size, args.per_class, args.total), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
