#!/usr/bin/env python
"""Train Glassbox's 13-band Sentinel-2 model (paper 1's spatial-spectral network) on the
270-patch EuroSAT multispectral subset, with an honest k-fold cross-validated accuracy.

Usage (from the repository root)::

    .venv/bin/python scripts/train_eurosat_ms.py --data ../shared/data/eurosat_ms_subset

Data: ``<data>/<Class>/<Class>_N.tif`` (64x64, 13 bands, uint16 Sentinel-2 L1C digital numbers,
band order B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A -- B8A is LAST) and
``<data>/split.csv`` (the source's train/test split).

Steps, all with the same settings (core.training.loop.train_classifier, no internal validation split,
no early stopping: the last epoch is kept, so no test tile ever influences a choice):

1. k-fold stratified cross-validation (``--folds``, seeded): per fold, train on the other folds
   (card scaling computed from those training tiles only) and evaluate on the held-out fold
   (core.training.evaluation.evaluate). Reports mean +- std (population std over folds) and per fold.
2. Reference: train on the ``split.csv`` train rows, evaluate on its test rows.
3. Final model: train on all patches; write ``<out>.onnx`` (card in the metadata), ``<out>.pt``
   + ``<out>.json`` and ``<out>.metrics.json``; the card's ``accuracy`` holds the CV result.

``--no-export`` stops after steps 1 and 2 (``--skip-split``: after step 1) and writes nothing under
``resources/models``: the metrics JSON is printed, and written to ``--metrics-out`` if given.
``--corruptions``: in step 1, each fold's held-out patches are also scored under every corruption
of ``glassbox.core.radiometry.CORRUPTIONS`` (applied to the L1C digital numbers, full scale 10000,
seed 0, before the model's scaling); the metrics' ``corruptions`` holds the accuracy clean and per
corruption (pooled over the folds and per fold) and the corrupted mean (``core.training.corruption_cv``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

import numpy as np

from glassbox.core.models.card import EUROSAT_CLASSES, ClassInfo
from glassbox.core.training.loop import TrainOptions, module_model, stratified_folds, train_classifier
from glassbox.core.errors import TrainingDataError
from glassbox.core.training.data import TrainingData
from glassbox.core.training.corruption_cv import corrupted_copies, corruption_summary, protocol_text
from glassbox.core.training.datasets import EUROSAT_MS_BANDS, load_eurosat_ms
from glassbox.core.training.evaluation import evaluate
from glassbox.core.training.saving import save_model_files

# band order inside the EuroSAT MS tifs (B8A last)
#: L1C digital number of reflectance 1 (the corruptions' full scale)
L1C_FULL_SCALE = 10000.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="path to eurosat_ms_subset (one sub-folder per class + split.csv)")
    p.add_argument("--out", default=str(REPO_ROOT / "resources/models/eurosat_ms_spatial_spectral"),
                   help="output path without suffix (default: resources/models/eurosat_ms_spatial_spectral)")
    p.add_argument("--arch", default="spatial_spectral", help="architecture name (core.architectures)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-split", action="store_true", help="skip the split.csv reference run")
    p.add_argument("--no-export", action="store_true", help="cross-validate only (nothing written but --metrics-out)")
    p.add_argument("--metrics-out", help="where to write the metrics JSON (default <out>.metrics.json when "
                                         "exporting; with --no-export only if given)")
    p.add_argument("--corruptions", action="store_true",
                   help="also score each fold's held-out patches under every radiometric corruption")
    return p.parse_args(argv)


def train_and_test(train: TrainingData, test: TrainingData | None, args, name: str):
    options = TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed, val_fraction=0.0, patience=0,
        threads=args.threads, augment=True, gsd=10.0, name=name,
        colours={c.name: c.color for c in EUROSAT_CLASSES},
    )
    t0 = time.time()
    result = train_classifier(train, args.arch, options)
    seconds = time.time() - t0
    if test is None:
        return result, None, seconds
    ev = evaluate(module_model(result.module, result.card), test)
    return result, ev, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    try:
        data = load_eurosat_ms(args.data)
    except TrainingDataError as exc:
        raise SystemExit(str(exc))
    n = data.num_tiles
    print(f"{n} tiles, {data.num_bands} bands, dtype {data.tiles.dtype}, gsd {data.gsd}; "
          f"per class {data.class_counts()}", flush=True)

    # -- 1. k-fold stratified CV ----------------------------------------------------------
    folds = stratified_folds(data.labels, args.folds, args.seed, rotate=True)
    per_fold, fold_rows = [], []
    true, clean, corrupted = np.full(n, -1), np.full(n, -1), {}  # held-out predictions (model class indices)
    for f in range(args.folds):
        tr, te = np.nonzero(folds != f)[0], np.nonzero(folds == f)[0]
        result, ev, sec = train_and_test(data.subset(tr), data.subset(te), args, f"cv fold {f + 1}")
        acc = ev.metrics.overall_accuracy
        per_fold.append(acc)
        fold_rows.append({"fold": f + 1, "n_train": int(tr.size), "n_test": int(te.size),
                          "accuracy": acc, "seconds": round(sec, 1)})
        print(f"fold {f + 1}/{args.folds}: train {tr.size} test {te.size} accuracy {acc:.4f} ({sec:.0f} s)",
              flush=True)
        if args.corruptions:
            t0 = time.time()
            true[te], clean[te] = ev.true, ev.predicted
            model = module_model(result.module, result.card)
            for cname, cdata in corrupted_copies(data.subset(te), L1C_FULL_SCALE, seed=0).items():
                corrupted.setdefault(cname, np.full(n, -1))[te] = evaluate(model, cdata).predicted
            cmean = np.mean([np.mean(p[te] == true[te]) for p in corrupted.values()])
            print(f"fold {f + 1}/{args.folds}: corrupted mean {cmean:.4f} ({time.time() - t0:.0f} s)", flush=True)
    cv_mean, cv_std = float(np.mean(per_fold)), float(np.std(per_fold))
    print(f"CV accuracy {cv_mean:.4f} +- {cv_std:.4f} (per fold {[round(a, 4) for a in per_fold]})", flush=True)

    # -- 2. split.csv reference ---------------------------------------------------------------
    split_result = None
    split_csv = Path(args.data) / "split.csv"
    if not args.skip_split and split_csv.exists():
        with open(split_csv, newline="", encoding="utf-8") as fh:
            split_of = {Path(r["path"]).name: r["split"] for r in csv.DictReader(fh)}
        splits = np.array([split_of[Path(s).name] for s in data.sources])
        tr, te = np.nonzero(splits == "train")[0], np.nonzero(splits == "test")[0]
        _, ev, sec = train_and_test(data.subset(tr), data.subset(te), args, "split.csv train")
        split_result = {"n_train": int(tr.size), "n_test": int(te.size),
                        "test_overall": ev.metrics.overall_accuracy, "test_macro_f1": ev.metrics.macro_f1,
                        "confusion_matrix": ev.metrics.confusion.tolist(), "seconds": round(sec, 1)}
        print(f"split.csv: train {tr.size} test {te.size} accuracy {ev.metrics.overall_accuracy:.4f} ({sec:.0f} s)",
              flush=True)

    metrics = {
        "architecture": args.arch, "n_patches": n, "cv_folds": args.folds, "cv_mean": cv_mean, "cv_std": cv_std,
        "per_fold": fold_rows, "split_csv": split_result,
        "settings": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay",
                                                    "label_smoothing", "seed")},
    }
    if args.corruptions:
        metrics["corruptions"] = {"protocol": protocol_text(L1C_FULL_SCALE, 0),
                                  "all_patches": corruption_summary(true, clean, corrupted, folds)}
        c = metrics["corruptions"]["all_patches"]
        print(f"corruptions: clean {c['clean']['accuracy']:.4f}, corrupted mean {c['corrupted_mean']:.4f}", flush=True)
    if args.no_export:
        print(json.dumps(metrics, indent=2))
        if args.metrics_out:
            Path(args.metrics_out).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.metrics_out} ({time.time() - started:.0f} s)", flush=True)
        return 0

    # -- 3. final model on all patches ----------------------------------------------------------
    result, _, sec = train_and_test(data, None, args, "EuroSAT 13-band spatial-spectral (paper 1)")
    card = result.card
    card.classes = [ClassInfo(c.name, c.color) for c in EUROSAT_CLASSES]
    card.bands = list(EUROSAT_MS_BANDS)
    card.tile_size = 64
    card.gsd = 10.0
    card.accuracy = {
        "cv_folds": args.folds, "cv_mean": round(cv_mean, 4), "cv_std": round(cv_std, 4),
        "per_fold": [round(a, 4) for a in per_fold], "n_patches": n,
        "note": f"{args.folds}-fold CV on a {n}-patch subset; expect lower accuracy on new scenes",
    }
    if split_result:
        card.accuracy["split_csv_test"] = round(split_result["test_overall"], 4)
        card.accuracy["split_csv_n_test"] = split_result["n_test"]
    card.description = (
        "Land-cover classifier for 13-band Sentinel-2 Level-1C rasters (digital numbers = TOA reflectance "
        "x 10000). Reads the bands by name (B01..B12, B8A; any band order in the raster), stretches each band "
        "with fixed percentiles learnt from the training tiles, and classifies every 64 x 64-pixel tile "
        "(640 m at 10 m) into one of the 10 EuroSAT classes: " + ", ".join(data.class_names) + ". "
        f"Paper 1's spatial-spectral network trained on only {n} EuroSAT multispectral patches; "
        f"{args.folds}-fold cross-validated accuracy {cv_mean:.1%} +- {cv_std:.1%}. Expect lower accuracy on new scenes."
    )
    card.training.update({
        "dataset": f"EuroSAT multispectral subset ({n} patches 64x64x13, uint16 L1C DN; Helber et al. 2019, MIT)",
        "band_order_in_files": ",".join(EUROSAT_MS_BANDS),
        "split": "none for the final model: trained on all patches for the last epoch of a fixed schedule "
                 "(no validation, no early stopping); accuracy from k-fold CV with identical settings",
        "cv": f"{args.folds}-fold stratified, seed {args.seed} (scripts/train_eurosat_ms.py stratified_folds)",
        "script": "scripts/train_eurosat_ms.py",
        "date": datetime.date.today().isoformat(),
    })
    card.validate("eurosat_ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model_files(result.module, card, f"{out}.pt", onnx_path=f"{out}.onnx")
    metrics["final_training_seconds"] = round(sec, 1)
    Path(args.metrics_out or f"{out}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}.onnx, .pt, .json, metrics in {time.time() - started:.0f} s total", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
