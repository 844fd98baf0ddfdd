#!/usr/bin/env python
"""Robustness of the shipped RGB models to radiometry: EuroSAT RGB test-split accuracy, clean and
under each corruption of :data:`glassbox.core.radiometry.CORRUPTIONS` (brightness x0.6 and x1.4,
haze, gamma 0.7 and 1.4, Gaussian noise, blur), printed as JSON.

Usage (from the repository root)::

    .venv/bin/python bench/bench_corruptions.py --eurosat-rgb ../shared/data/eurosat_rgb \\
        [--models resources/models/eurosat_rgb_resnet18_64_w32_96px.onnx ...] [--limit 0] [--threads 2]

Test tiles: the held-out split of :func:`glassbox.core.training.datasets.split_of` (the one the training
scripts hold out), 8-bit jpgs (``full_scale`` 255); corruptions are applied to those digital
numbers before the model's own scaling, seeded (noise: seed 0). ``--limit N`` takes N test tiles
(every k-th, all classes) for a quick look. Output::

    {"<model>": {"clean": 0.985, "corrupted": {"haze_0.3": 0.97, ...}, "corrupted_mean": 0.96,
                 "n_test": 5354}}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from glassbox.core.models.backends import OnnxModel
from glassbox.core.radiometry import CORRUPTIONS, corrupt
from glassbox.core.training.data import TrainingData
from glassbox.core.training.evaluation import evaluate

REPO_ROOT = Path(__file__).resolve().parents[1]
RGB_MODELS = ["eurosat_rgb_resnet18_64_w32_96px.onnx", "eurosat_rgb_resnet18_64_w32.onnx",
              "eurosat_rgb_resnet18_64_w32_96px_ensemble2.onnx", "eurosat_rgb_paper1_cnn.onnx"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eurosat-rgb", required=True, help="EuroSAT RGB folder (<Class>/<Class>_N.jpg)")
    p.add_argument("--models", nargs="+", default=[str(REPO_ROOT / "resources" / "models" / m) for m in RGB_MODELS],
                   help="ONNX models reading B04, B03, B02 (default: the shipped RGB models)")
    p.add_argument("--limit", type=int, default=0, help="use only this many test tiles (0 = all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for ONNX Runtime")
    return p.parse_args(argv)


def test_split(root: str, limit: int) -> TrainingData:
    from glassbox.core.training.datasets import scan_tile_folder, split_of
    from glassbox.core.training.data import read_tile_file

    paths, labels, class_names = scan_tile_folder(root)
    keep = [i for i, p in enumerate(paths) if split_of(p.name) == "test"]
    if limit and limit < len(keep):
        keep = keep[:: max(1, len(keep) // limit)][:limit]
    tiles = np.stack([read_tile_file(paths[i])[0] for i in keep])
    return TrainingData(tiles, labels[keep], class_names, ["B04", "B03", "B02"], [str(paths[i]) for i in keep],
                        description="EuroSAT RGB test split")


def accuracy(model: OnnxModel, data: TrainingData, batch_size: int) -> float:
    # the jpgs hold B04, B03, B02 already scaled to 0..255: only the card's mean/std apply
    prescaled = bool(np.any(np.asarray(model.card.scaling.scale, dtype=float) != 1.0))
    return float(evaluate(model, data, batch_size, prescaled=prescaled).metrics.overall_accuracy)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    clean = test_split(args.eurosat_rgb, args.limit)
    print(f"{clean.num_tiles} test tiles read in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    variants = {name: corrupt(clean.tiles, name, 255.0, seed=0) for name in CORRUPTIONS}
    out = {}
    for path in args.models:
        model = OnnxModel(Path(path), "cpu", threads=args.threads)
        t0 = time.perf_counter()
        entry = {"clean": round(accuracy(model, clean, args.batch_size), 4), "corrupted": {}}
        for name, tiles in variants.items():
            data = TrainingData(tiles, clean.labels, clean.class_names, clean.band_names, clean.sources,
                                description=f"{clean.description}, {name}")
            entry["corrupted"][name] = round(accuracy(model, data, args.batch_size), 4)
        entry["corrupted_mean"] = round(float(np.mean(list(entry["corrupted"].values()))), 4)
        entry["n_test"] = clean.num_tiles
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{Path(path).name}: clean {entry['clean']:.4f}, corrupted mean {entry['corrupted_mean']:.4f}",
              file=sys.stderr)
        out[Path(path).name] = entry
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
