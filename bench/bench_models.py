#!/usr/bin/env python
"""Benchmark the shipped models: test accuracy, per-class F1 and speed, printed as JSON.

Usage (from the repository root)::

    .venv/bin/python bench/bench_models.py --eurosat-rgb ../shared/data/eurosat_rgb \\
        [--eurosat-ms ../shared/data/eurosat_ms_subset] [--models resources/models] [--threads 2] [--tta]

For every ``resources/models/*.onnx`` the card decides the data set: a model reading 3 bands
that are Sentinel-2 B04, B03, B02 (any order) is measured on ``--eurosat-rgb`` (the EuroSAT RGB
jpgs), any other Sentinel-2 model on ``--eurosat-ms`` (EuroSAT multispectral GeoTIFFs, 13 bands
in the order B01, B02, ..., B12, B8A; the model's bands are picked from them by name). A model
whose data path is not given, or whose bands cannot be found in it, is skipped (a note goes to
stderr, nothing into the JSON).

Test tiles: the fixed held-out split of :func:`core.training.datasets.split_of` (``sha256(file base
name) % 100 < 20``), the same one the training scripts hold out.

Scaling: the GeoTIFFs hold raw Sentinel-2 L1C digital numbers, so the card's whole scaling is
applied. The EuroSAT RGB jpgs hold those digital numbers already scaled by about 255/2750 and
clipped to 0..255; for a card that scales raw digital numbers (``scale`` != 1) only its
``mean``/``std`` are applied to the jpgs (``prescaled``), for a card trained on 8-bit tiles
(``scale`` == 1) the whole scaling.

Speed: ``tiles_per_second`` counts model calls only (ONNX Runtime, CPU, batches of
``--batch-size`` = 64 scaled tiles), after two warm-up batches; reading and scaling are not
included.

``--tta`` also measures every held-out split with test-time augmentation (each tile's outputs
averaged over its 8 rotations and flips, classify's ``TEST_TIME_AUGMENTATION``):
``test_accuracy_tta8``, ``macro_f1_tta8`` and ``tiles_per_second_tta8`` (tiles, not model calls).

A model trained on every tile of its data set (its card's ``accuracy`` holds a cross-validated
``cv_mean``, as the 13-band model's does) has no held-out tiles left: its ``test_accuracy`` is the
card's cross-validated accuracy (``accuracy_source`` says so) and ``per_class_f1`` comes from the
reference run on the source's ``split.csv`` in ``<model>.metrics.json``; the accuracy measured
here on the (training) tiles is printed as ``training_tiles_accuracy``, a pipeline check only.
Output::

    {"<model file name>": {"test_accuracy": 0.97, "per_class_f1": {"AnnualCrop": 0.96, ...},
                           "tiles_per_second": 850.0, "n_test": 5400, "macro_f1": 0.97,
                           "dataset": "eurosat_rgb", "batch_size": 64, "threads": 2}}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

import numpy as np

from glassbox.core.models.backends import OnnxModel
from glassbox.core.training.datasets import EUROSAT_MS_BANDS, scan_tile_folder, split_of
from glassbox.core.errors import GlassboxError
from glassbox.core.io.raster import normalise_band_name
from glassbox.core.training.data import TrainingData, read_tile_file
from glassbox.core.training.evaluation import evaluate
from glassbox.core.training.scaling import scales_raw_values

RGB_BANDS = {"B04", "B03", "B02"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eurosat-rgb", help="EuroSAT RGB folder (<Class>/<Class>_N.jpg)")
    p.add_argument("--eurosat-ms", help="EuroSAT multispectral folder (<Class>/<Class>_N.tif, 13 bands)")
    p.add_argument("--models", default=str(REPO_ROOT / "resources" / "models"), help="folder of .onnx models")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for ONNX Runtime")
    p.add_argument("--tta", action="store_true",
                   help="also measure each held-out split with test-time augmentation (the outputs averaged "
                        "over the 8 rotations and flips of every tile, as classify's TEST_TIME_AUGMENTATION)")
    return p.parse_args(argv)


def test_tiles(root: str | Path, band_index: list[int] | None) -> TrainingData:
    """The held-out test tiles of a EuroSAT folder, bands picked by ``band_index`` (0-based)."""
    paths, labels, class_names = scan_tile_folder(root)
    keep = [i for i, p in enumerate(paths) if split_of(p.name) == "test"]
    first = read_tile_file(paths[keep[0]])[0]
    bands = len(band_index) if band_index else first.shape[0]
    tiles = np.empty((len(keep), bands, *first.shape[1:]), dtype=first.dtype)
    for j, i in enumerate(keep):
        data = read_tile_file(paths[i])[0]
        tiles[j] = data[band_index] if band_index else data
    return TrainingData(tiles, labels[keep], class_names, [f"band_{b + 1}" for b in range(bands)],
                        [str(paths[i]) for i in keep], description=f"{Path(root).name} test split")


def dataset_for(card, args) -> tuple[str, str | None, list[int] | None, str | None]:
    """(dataset name, path, band indices into the files, reason to skip)."""
    bands = [normalise_band_name(b) for b in card.bands]
    if len(bands) == 3 and set(bands) == RGB_BANDS:
        # jpg order is R, G, B = B04, B03, B02
        order = [["B04", "B03", "B02"].index(b) for b in bands]
        return "eurosat_rgb", args.eurosat_rgb, order, None if args.eurosat_rgb else "no --eurosat-rgb given"
    if all(b in EUROSAT_MS_BANDS for b in bands):
        order = [EUROSAT_MS_BANDS.index(b) for b in bands]
        return "eurosat_ms", args.eurosat_ms, order, None if args.eurosat_ms else "no --eurosat-ms given"
    if len(bands) == 13:
        return "eurosat_ms", args.eurosat_ms, None, None if args.eurosat_ms else "no --eurosat-ms given"
    return "unknown", None, None, f"bands {card.bands} are not EuroSAT bands"


def bench_model(path: Path, args: argparse.Namespace) -> dict | None:
    model = OnnxModel(path, "cpu", threads=args.threads)
    card = model.card
    dataset, root, order, skip = dataset_for(card, args)
    if skip:
        print(f"{path.name}: skipped ({skip})", file=sys.stderr)
        return None
    data = test_tiles(root, order)
    prescaled = dataset == "eurosat_rgb" and data.tiles.dtype == np.uint8 and scales_raw_values(card.scaling)
    warm = card.scaling.apply(data.tiles[: args.batch_size])
    for _ in range(2):
        model.predict_proba(warm)
    started = time.perf_counter()
    result = evaluate(model, data, args.batch_size, prescaled=prescaled)
    m = result.metrics
    print(f"{path.name}: {m.total} test tiles of {dataset} in {time.perf_counter() - started:.1f} s, "
          f"accuracy {m.overall_accuracy:.4f}", file=sys.stderr)
    entry = {
        "test_accuracy": round(m.overall_accuracy, 4),
        "per_class_f1": {n: round(float(f), 4) for n, f, s in zip(m.class_names, m.f1, m.support) if s},
        "accuracy_source": "held-out test split (core.training.datasets.split_of)",
        "tiles_per_second": round(m.total / max(result.model_seconds, 1e-9), 1),
        "n_test": m.total,
        "macro_f1": round(m.macro_f1, 4),
        "dataset": dataset,
        "prescaled": bool(prescaled),
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    if args.tta and "cv_mean" not in card.accuracy:
        tta = evaluate(model, data, args.batch_size, prescaled=prescaled, test_time_augmentation=True)
        entry["test_accuracy_tta8"] = round(tta.metrics.overall_accuracy, 4)
        entry["macro_f1_tta8"] = round(tta.metrics.macro_f1, 4)
        entry["tiles_per_second_tta8"] = round(tta.metrics.total / max(tta.model_seconds, 1e-9), 1)
        print(f"{path.name}: with test-time augmentation, accuracy {tta.metrics.overall_accuracy:.4f}", file=sys.stderr)
    if "cv_mean" in card.accuracy:
        entry.update(cross_validated(path, card, m))
    return entry


def cross_validated(path: Path, card, measured) -> dict:
    """Honest figures for a model trained on all its tiles (see the module docstring)."""
    out = {
        "test_accuracy": card.accuracy["cv_mean"],
        "test_accuracy_std": card.accuracy.get("cv_std"),
        "accuracy_source": f"{card.accuracy.get('cv_folds')}-fold cross-validation (model card); the model "
                           "was trained on every tile, so none is held out",
        "training_tiles_accuracy": round(measured.overall_accuracy, 4),
        "n_test": card.accuracy.get("n_patches"),
        "per_class_f1": None,
        "macro_f1": None,
    }
    metrics_file = path.with_suffix(".metrics.json")
    split = json.loads(metrics_file.read_text()).get("split_csv") if metrics_file.exists() else None
    if split and split.get("confusion_matrix"):
        cm = np.asarray(split["confusion_matrix"], dtype=float)
        tp, predicted, actual = np.diag(cm), cm.sum(0), cm.sum(1)
        f1 = np.divide(2 * tp, predicted + actual, out=np.zeros_like(tp), where=(predicted + actual) > 0)
        out["per_class_f1"] = {n: round(float(f), 4) for n, f in zip(card.class_names, f1)}
        out["macro_f1"] = round(float(f1.mean()), 4)
        out["per_class_f1_source"] = (f"a model with the same settings trained on split.csv's {split['n_train']} "
                                      f"train patches, tested on its {split['n_test']} test patches "
                                      f"(accuracy {split['test_overall']:.4f})")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = sorted(Path(args.models).glob("*.onnx"))
    if not models:
        print(f"no .onnx models in {args.models}", file=sys.stderr)
    out = {}
    for path in models:
        try:
            entry = bench_model(path, args)
        except GlassboxError as exc:
            print(f"{path.name}: skipped ({exc})", file=sys.stderr)
            continue
        if entry is not None:
            out[path.name] = entry
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
