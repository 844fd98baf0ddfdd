"""Benchmark: segments from seed points against the Kahikatea expert masks (Jaccard).

    .venv/bin/python bench/bench_segment.py --kahikatea ../shared/data/kahikatea [--limit 40]
        [--model m.pt|m.onnx] [--epochs 8] [--tile 96] [--points 3] [--sam-checkpoint sam_vit_b_01ec64.pth
        --sam-model-type vit_b] [--threads 1] [--seed 0] [--output result.json]

Paper 2 seeds Segment Anything with the top Grad-CAM points of a classifier and finds the
segments more consistent than human polygons. This script measures, on the Kahikatea photos
(``images/positive/*.jpg`` with expert masks ``masks/positive/*.png``, True/255 = kahikatea),
how well segments grown from three kinds of seed points match the expert masks:

* ``gradcam_peaks``: the ``--points`` strongest Grad-CAM peaks of the class ``kahikatea``
  (:func:`core.segment.seeds.seeds_from_model`, the code path of ``glassbox:segment`` with a model);
* ``image_centre``: one point at the centre of the image;
* ``random``: ``--points`` uniformly random points (seeded, per image).

Each seed set is segmented with the seeded watershed and, when ``--sam-checkpoint`` is given,
with Segment Anything (else those rows say ``skipped: no checkpoint``), through
:func:`core.segment.run.segment_raster`; the polygons are rasterised on the image grid and compared
with the mask: Jaccard = |segment & mask| / |segment | mask| (0 when both are empty).
``whole_image`` is the Jaccard of a segment covering the whole image, for reference, and
``seeds_in_mask`` the share of seed points that fall inside the expert mask.

**Images as rasters.** The photos are not georeferenced. Each one is written to a temporary
GeoTIFF (EPSG:3857, north-up) whose pixels are ``tile/width`` x ``tile/height`` metres, so the
whole photo is one model tile of ``--tile`` pixels at a ground sample distance of 1 m -- the way
the classifier saw whole photos resized to ``tile`` x ``tile`` in training -- and the same core
path as for real rasters is used (reading, explaining, windows, vectorising).

**Model.** ``--model``: a Glassbox model (Torch state dict + card, or ONNX) with a class named
``kahikatea`` and 3 bands. Without it, ``paper1_cnn`` is trained here on the raw photos resized
to ``--tile`` pixels (positives and negatives; not the paper's masked ensemble) for at most
``--epochs`` epochs with :func:`core.training.loop.train_classifier`. The images are split once,
per class, at random (``--seed``): 80 % for training, 20 % held out; the benchmark uses held-out
positives only (``--limit`` of them). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


POSITIVE = "kahikatea"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kahikatea", required=True,
                   help="folder with images/{positive,negative}/*.jpg and masks/positive/*.png")
    p.add_argument("--model", help="Glassbox model with a 'kahikatea' class (default: train paper1_cnn here)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs when no --model is given (default 8)")
    p.add_argument("--tile", type=int, default=96, help="model tile size in pixels when training (default 96)")
    p.add_argument("--points", type=int, default=3, help="Grad-CAM peaks and random points per image (default 3)")
    p.add_argument("--limit", type=int, default=40, help="held-out positive images to evaluate (default 40)")
    p.add_argument("--sam-checkpoint", help="Segment Anything checkpoint; without it the SAM rows are skipped")
    p.add_argument("--sam-model-type", default="vit_b", help="vit_b, vit_l, vit_h or vit_t (MobileSAM)")
    p.add_argument("--smoothing", type=float, default=2.0, help="watershed smoothing in pixels (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="also write the JSON here")
    return p.parse_args(argv)


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy()  # (3, rows, cols) uint8


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        mask = np.asarray(img)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask > 127 if mask.dtype != bool else mask


def resized(rgb: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(rgb.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)
    return np.asarray(img).transpose(2, 0, 1)


def split(files: list[Path], seed: int, held_out: float = 0.2) -> tuple[list[Path], list[Path]]:
    order = np.random.default_rng(seed).permutation(len(files))
    n_test = max(1, round(len(files) * held_out))
    test = sorted(files[i] for i in order[:n_test])
    train = sorted(files[i] for i in order[n_test:])
    return train, test


def train_model(train_pos: list[Path], train_neg: list[Path], args, log) -> tuple[object, dict]:
    from glassbox.core.training.data import TrainingData
    from glassbox.core.training.loop import TrainOptions, train_classifier
    from glassbox.core.explain.attribution import Explainer

    files = train_pos + train_neg
    tiles = np.stack([resized(read_rgb(f), args.tile) for f in files]).astype(np.uint8)
    labels = np.array([1] * len(train_pos) + [0] * len(train_neg), dtype=np.int64)
    data = TrainingData(tiles, labels, ["other", POSITIVE], ["red", "green", "blue"], [str(f) for f in files], gsd=1.0)
    started = time.perf_counter()
    result = train_classifier(data, "paper1_cnn", TrainOptions(epochs=args.epochs, batch_size=32, seed=args.seed,
                                                                gsd=1.0, patience=0, threads=args.threads,
                                                                name="kahikatea benchmark CNN"), log=log)
    info = {"trained_here": True, "architecture": "paper1_cnn", "tile": args.tile, "epochs": args.epochs,
            "train_images": len(files), "val_accuracy": (result.val_metrics.overall_accuracy
                                                         if result.val_metrics is not None else None),
            "seconds": round(time.perf_counter() - started, 1)}
    return Explainer(result.module, result.card, "kahikatea benchmark CNN"), info


def write_photo(path: Path, rgb: np.ndarray, tile: int) -> str:
    """The photo as a GeoTIFF whose whole extent is one model tile of ``tile`` px at 1 m."""
    import rasterio
    from rasterio.transform import from_origin

    _bands, rows, cols = rgb.shape
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=3, dtype="uint8", crs="EPSG:3857",
                       transform=from_origin(0.0, float(tile), tile / cols, tile / rows)) as ds:
        ds.write(rgb)
        for i, name in enumerate(("red", "green", "blue"), start=1):
            ds.set_band_description(i, name)
    return str(path)


def rasterised(gpkg: str, raster: str) -> np.ndarray:
    import rasterio
    from osgeo import ogr
    from rasterio.features import rasterize

    ds = ogr.Open(gpkg)
    shapes = [json.loads(f.GetGeometryRef().ExportToJson()) for f in ds.GetLayer(0)]
    ds = None
    with rasterio.open(raster) as src:
        if not shapes:
            return np.zeros(src.shape, dtype=bool)
        return rasterize([(s, 1) for s in shapes], out_shape=src.shape, transform=src.transform).astype(bool)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4), "n": len(values)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    from glassbox.core.segment.seeds import Seed, SegmentOptions, seeds_from_model
    from glassbox.core.segment.run import segment_raster
    from glassbox.core.explain.attribution import load_explainer

    root = Path(args.kahikatea)
    positives = sorted((root / "images" / "positive").glob("*.jpg"))
    negatives = sorted((root / "images" / "negative").glob("*.jpg"))
    if not positives or not negatives:
        raise SystemExit(f"{root}: expected images/positive/*.jpg and images/negative/*.jpg")
    train_pos, test_pos = split(positives, args.seed)
    train_neg, _test_neg = split(negatives, args.seed)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.model:
        explainer = load_explainer(args.model)
        model_info = {"trained_here": False, "path": args.model}
        if POSITIVE not in [n.lower() for n in explainer.card.class_names]:
            raise SystemExit(f"the model has no class '{POSITIVE}': {explainer.card.class_names}")
    else:
        explainer, model_info = train_model(train_pos, train_neg, args, log)
    tile = explainer.card.tile_size
    methods = ["watershed"] + (["sam"] if args.sam_checkpoint else [])
    strategies = ["gradcam_peaks", "image_centre", "random"]
    scores = {s: {m: [] for m in methods} for s in strategies}
    in_mask = {s: [] for s in strategies}
    whole = []
    failures: dict[str, int] = {}
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    evaluated = 0
    with tempfile.TemporaryDirectory(prefix="glassbox_bench_segment_") as tmp:
        tmp = Path(tmp)
        for image_path in test_pos[: args.limit]:
            mask_path = root / "masks" / "positive" / (image_path.stem + ".png")
            if not mask_path.exists():
                failures["no mask"] = failures.get("no mask", 0) + 1
                continue
            rgb, mask = read_rgb(image_path), read_mask(mask_path)
            if mask.shape != rgb.shape[1:]:
                failures["mask size differs"] = failures.get("mask size differs", 0) + 1
                continue
            raster = write_photo(tmp / f"{image_path.stem}.tif", rgb, tile)
            rows, cols = mask.shape
            px, py = tile / cols, tile / rows

            def seed_at(row: float, col: float, i: int) -> Seed:
                return Seed((col + 0.5) * px, tile - (row + 0.5) * py, 1.0, POSITIVE, i)

            peaks = seeds_from_model(raster, explainer, args.points, "gradcam", target=POSITIVE).seeds
            seed_sets = {
                "gradcam_peaks": peaks,
                "image_centre": [seed_at(rows // 2, cols // 2, 1)],
                "random": [seed_at(int(r), int(c), i) for i, (r, c) in enumerate(
                    zip(rng.integers(0, rows, args.points), rng.integers(0, cols, args.points)), start=1)],
            }
            evaluated += 1
            whole.append(jaccard(np.ones_like(mask), mask))
            for strategy, seeds in seed_sets.items():
                for seed in seeds:
                    r, c = int((tile - seed.y) / py), int(seed.x / px)
                    in_mask[strategy].append(float(mask[min(r, rows - 1), min(c, cols - 1)]))
                for method in methods:
                    out = tmp / f"{image_path.stem}_{strategy}_{method}.gpkg"
                    options = SegmentOptions(method=method, sam_checkpoint=args.sam_checkpoint,
                                             sam_model_type=args.sam_model_type, smoothing=args.smoothing,
                                             min_score=0.0)
                    try:
                        segment_raster(raster, seeds, str(out), options)
                        scores[strategy][method].append(jaccard(rasterised(str(out), raster), mask))
                    except Exception as exc:  # e.g. no Grad-CAM peak at all: counts as an empty segment
                        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                        scores[strategy][method].append(0.0)
    result = {
        "dataset": str(root),
        "images": evaluated,
        "held_out_positives": len(test_pos),
        "points_per_image": {"gradcam_peaks": args.points, "image_centre": 1, "random": args.points},
        "model": model_info,
        "smoothing_px": args.smoothing,
        "jaccard": {s: {**{m: summary(v) for m, v in scores[s].items()},
                        **({} if args.sam_checkpoint else {"sam": "skipped: no checkpoint"})} for s in strategies},
        "seeds_in_mask": {s: round(statistics.fmean(v), 4) if v else None for s, v in in_mask.items()},
        "whole_image": summary(whole),
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
