#!/usr/bin/env python
"""Train Glassbox's 13-band Sentinel-2 model on an RGB trunk: a shipped EuroSAT RGB network
(trained on the 19,085-tile training split of the 27,000 EuroSAT RGB tiles) reads B04, B03,
B02 and a small spectral branch (all 13 bands plus NDVI, NDWI and NDBI computed in the
network) corrects its last feature map
(``core.models.architectures.RGBTrunkFusionNet``, card name ``rgb_fusion``), trained on the 270-patch
EuroSAT multispectral subset with an honest k-fold cross-validation.

Usage (from the repository root)::

    .venv/bin/python scripts/train_eurosat_ms_fusion.py --data ../shared/data/eurosat_ms_subset \\
        --rgb-data ../shared/data/eurosat_rgb

**Leakage.** The 270 patches are also in the 27,000-tile RGB set (same base names
``<Class>_<N>``; with ``--rgb-data`` the script checks that each twin exists and matches), and the
RGB trunk was trained on the fixed split of those 27,000 (``core.training.datasets.split_of``). A patch
whose RGB twin was in the trunk's *training* split has been seen by the trunk. So every accuracy
is reported over all patches and over subsets by the twin's split: ``clean`` = twins in the RGB
test split (never seen by the trunk; the leak-free figure), ``unseen`` = test or validation
split (the validation split was never trained on, but chose the trunk's epoch), ``trunk_train``.

**Protocol** (all settings fixed in :data:`VARIANTS` before any run; no test fold influences a
choice):

1. k-fold stratified CV (``--folds``, seed ``--seed``; the same folds as
   ``scripts/train_eurosat_ms.py``): per fold and per variant (``--variants``), train on the
   other folds with ``core.training.loop.train_classifier`` (fixed epochs, no early stopping, last
   epoch kept) and predict the held-out fold. Every variant's figures are reported (winners and
   losers).
2. The shipped variant is the FIRST of ``--variants`` (default ``frozen_w32``, fixed before any
   run), whatever the others score. With ``--nested`` it is chosen instead inside the data:
   in each outer training fold a stratified 20 % inner hold-out
   (``core.training.loop.stratified_split``, seed ``--seed``) picks the variant with the best inner
   accuracy (ties: the earlier variant); the outer fold is predicted by that choice (the
   "nested" figure estimates the whole procedure, selection included), and the same hold-out
   on all patches picks the final variant.
3. Final model: the variant trained on all patches, written as ``<out>.onnx`` (card in the
   metadata), ``<out>.pt`` + ``<out>.json`` and ``<out>.metrics.json`` (every figure above).

``--corruptions``: in step 1, each fold's held-out patches are also scored under every corruption
of ``glassbox.core.radiometry.CORRUPTIONS`` (applied to the L1C digital numbers, full scale
10000, seed 0, before the model's scaling); each variant's ``corruptions`` in the metrics holds the
accuracy clean and per corruption (pooled over the folds and per fold) and the corrupted mean,
over all patches and over the leak-free ``clean`` twins (``core.training.corruption_cv``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

import numpy as np

from glassbox.core.models.backends import load_state_dict
from glassbox.core.models.card import EUROSAT_CLASSES, ClassInfo, ModelCard, Scaling
from glassbox.core.errors import TrainingDataError
from glassbox.core.training.datasets import EUROSAT_MS_BANDS, decode_tile, load_eurosat_ms, split_of, split_rule_text
from glassbox.core.training.metrics import compute_metrics
from glassbox.core.training.data import TrainingData
from glassbox.core.training.corruption_cv import corrupted_copies, corruption_summary, protocol_text
from glassbox.core.training.loop import TrainOptions, module_model, stratified_folds, stratified_split, train_classifier
from glassbox.core.training.evaluation import evaluate
from glassbox.core.training.saving import save_model_files
from glassbox.core.training.scaling import scale_batch

#: band order inside the EuroSAT MS tifs (B8A last)
RGB_BANDS = ["B04", "B03", "B02"]
#: the card scaling: digital numbers -> top-of-atmosphere reflectance, clipped to 0..1
REFLECTANCE = Scaling(scale=1e-4, offset=0.0, clip=[0.0, 1.0])
#: L1C digital number of reflectance 1 (the corruptions' full scale)
L1C_FULL_SCALE = 10000.0
MODELS = REPO_ROOT / "resources" / "models"

#: The variants, fixed before any run. trunk: the RGB network file (state dict + card);
#: freeze: trunk convolutions frozen (only the branch, the fusion and the trunk's last linear
#: layer learn); indices: NDVI/NDWI/NDBI in the branch. Order = preference on ties.
VARIANTS: dict[str, dict] = {
    "frozen_w32": {"trunk": "eurosat_rgb_resnet18_64_w32.pt", "freeze": True, "indices": True, "lr": 2e-3},
    "frozen_w32_96px": {"trunk": "eurosat_rgb_resnet18_64_w32_96px.pt", "freeze": True, "indices": True, "lr": 2e-3},
    "finetune_w32": {"trunk": "eurosat_rgb_resnet18_64_w32.pt", "freeze": False, "indices": True, "lr": 3e-4},
    "frozen_w32_noindices": {"trunk": "eurosat_rgb_resnet18_64_w32.pt", "freeze": True, "indices": False, "lr": 2e-3},
}
#: what runs by default, the first being the shipped one (frozen_w32_96px costs 2.25 times as much)
DEFAULT_VARIANTS = ["frozen_w32", "frozen_w32_noindices", "finetune_w32"]
COMMON = {"epochs": 30, "batch_size": 32, "weight_decay": 5e-4, "label_smoothing": 0.1, "branch_width": 32,
          "dropout": 0.2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="eurosat_ms_subset (one sub-folder per class)")
    p.add_argument("--rgb-data", help="eurosat_rgb (to check each patch's RGB twin exists and matches)")
    p.add_argument("--models", default=str(MODELS), help="folder of the RGB trunk files (default resources/models)")
    p.add_argument("--out", default=str(MODELS / "eurosat_ms_fusion_resnet18"),
                   help="output path without suffix (default: resources/models/eurosat_ms_fusion_resnet18)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated variants, the first is shipped (default {','.join(DEFAULT_VARIANTS)}; "
                        f"known: {', '.join(VARIANTS)})")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=COMMON["epochs"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nested", action="store_true", help="choose the variant by inner hold-outs (see step 2)")
    p.add_argument("--no-export", action="store_true", help="cross-validate only")
    p.add_argument("--metrics-out", help="where to write the metrics JSON (default <out>.metrics.json)")
    p.add_argument("--corruptions", action="store_true",
                   help="also score each fold's held-out patches under every radiometric corruption")
    p.add_argument("--adapt", action="store_true",
                   help="with --corruptions: also score them after scene adaptation (core.adaptation: the "
                        "model's batch-norm statistics re-estimated from that fold's held-out patches, clean "
                        "or under one corruption, as classify's ADAPT_TO_SCENE does from a raster)")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.adapt and not args.corruptions:
        p.error("--adapt scores the corruptions after scene adaptation: give --corruptions too")
    return args


def trunk_of(models: Path, file_name: str) -> tuple[dict, ModelCard]:
    """(state dict, card) of an RGB trunk file."""
    path = models / file_name
    card = ModelCard.from_json(path.with_suffix(".json").read_text(encoding="utf-8"), source=path.name)
    if card.bands != RGB_BANDS or card.architecture.get("name") != "resnet18_64":
        raise SystemExit(f"{path.name}: expected a resnet18_64 reading {RGB_BANDS}, "
                         f"got {card.architecture} {card.bands}")
    return load_state_dict(path), card


def architecture_kwargs(variant: dict, trunk_card: ModelCard) -> dict:
    s = trunk_card.scaling
    if np.asarray(s.scale).size != 1 or np.asarray(s.offset).size != 1 or float(np.asarray(s.offset)) != 0.0:
        raise SystemExit(f"{trunk_card.name}: expected one scale factor and no offset")
    kw = trunk_card.architecture.get("kwargs") or {}
    return {
        "trunk_width": int(kw.get("width", 64)), "trunk_input_scale": float(kw.get("input_scale", 1.0)),
        "rgb_bands": [EUROSAT_MS_BANDS.index(b) for b in RGB_BANDS],
        "rgb_scale": float(np.asarray(s.scale)) / REFLECTANCE.scale,  # reflectance -> the trunk's DN scaling
        "rgb_clip": float(s.clip[1]), "rgb_mean": [float(v) for v in s.mean], "rgb_std": [float(v) for v in s.std],
        "indices": [[EUROSAT_MS_BANDS.index(a), EUROSAT_MS_BANDS.index(b)]
                    for a, b in (("B08", "B04"), ("B03", "B08"), ("B11", "B08"))] if variant["indices"] else [],
        "branch_width": COMMON["branch_width"], "dropout": COMMON["dropout"], "freeze_trunk": bool(variant["freeze"]),
    }


def train_variant(train: TrainingData, name: str, args, trunks: dict, label: str):
    variant = VARIANTS[name]
    state, trunk_card = trunks[variant["trunk"]]
    options = TrainOptions(
        epochs=args.epochs, batch_size=COMMON["batch_size"], lr=variant["lr"], weight_decay=COMMON["weight_decay"],
        label_smoothing=COMMON["label_smoothing"], seed=args.seed, val_fraction=0.0, patience=0,
        threads=args.threads, augment=True, gsd=10.0, name=label, colours={c.name: c.color for c in EUROSAT_CLASSES},
        architecture_kwargs=architecture_kwargs(variant, trunk_card), scaling=REFLECTANCE,
        initial_state={f"rgb.{k}": v for k, v in state.items()}, initial_state_name=variant["trunk"],
    )
    t0 = time.time()
    result = train_classifier(train, "rgb_fusion", options)
    return result, time.time() - t0


def predict(result, test: TrainingData) -> np.ndarray:
    return evaluate(module_model(result.module, result.card), test).probabilities


def predict_adapted(result, test: TrainingData) -> np.ndarray:
    """Probabilities of ``result``'s model on ``test`` after scene adaptation on ``test`` itself
    (:func:`glassbox.core.adaptation.adapt_batchnorm`, seed 0, on a copy; no labels used)."""
    import copy

    from glassbox.core.adaptation import adapt_batchnorm

    module = copy.deepcopy(result.module)
    adapt_batchnorm(module, scale_batch(test.tiles, result.card.scaling).astype(np.float32), seed=0)
    return evaluate(module_model(module, result.card), test).probabilities


def figures(labels: np.ndarray, predicted: np.ndarray, twin: np.ndarray, class_names: list[str],
            folds: np.ndarray | None = None) -> dict:
    """Accuracy over all patches and by the RGB twin's split, per-class F1, confusion matrix."""
    m = compute_metrics(labels, predicted, class_names)
    out = {"accuracy": round(m.overall_accuracy, 4), "n": int(labels.size), "macro_f1": round(m.macro_f1, 4),
           "per_class_f1": {n: round(float(f), 4) for n, f in zip(class_names, m.f1)},
           "confusion_matrix": m.confusion.tolist()}
    if folds is not None:
        per_fold = [float(np.mean(predicted[folds == f] == labels[folds == f])) for f in np.unique(folds)]
        out.update(per_fold=[round(a, 4) for a in per_fold], fold_mean=round(float(np.mean(per_fold)), 4),
                   fold_std=round(float(np.std(per_fold)), 4))
    for key, splits in (("clean", ("test",)), ("unseen", ("test", "val")), ("trunk_train", ("train",))):
        sel = np.isin(twin, splits)
        if sel.any():
            mk = compute_metrics(labels[sel], predicted[sel], class_names)
            out[key] = {"accuracy": round(mk.overall_accuracy, 4), "n": int(sel.sum()),
                        "correct": int(np.trace(mk.confusion)), "macro_f1": round(mk.macro_f1, 4)}
            if key == "clean":
                out[key]["per_class_f1"] = {n: round(float(f), 4) for n, f in zip(class_names, mk.f1)}
                out[key]["support"] = {n: int(s) for n, s in zip(class_names, mk.support)}
    return out


def check_twins(data: TrainingData, rgb_root: Path) -> dict:
    """Every patch's RGB twin ``<rgb_root>/<Class>/<stem>.jpg`` exists and matches the patch's
    B04, B03, B02 scaled by 255/2750 (Pearson r over its pixels)."""
    r = []
    for i, source in enumerate(data.sources):
        path = Path(source)
        jpg = rgb_root / path.parent.name / f"{path.stem}.jpg"
        if not jpg.is_file():
            raise SystemExit(f"no RGB twin {jpg} for {path.name}")
        ms = np.clip(data.tiles[i, [EUROSAT_MS_BANDS.index(b) for b in RGB_BANDS]].astype(float) * 255 / 2750, 0, 255)
        r.append(np.corrcoef(ms.ravel(), decode_tile(jpg).astype(float).ravel())[0, 1])
    return {"checked": len(r), "pearson_r_min": round(float(np.min(r)), 4),
            "pearson_r_median": round(float(np.median(r)), 4)}


def select(train: TrainingData, args, trunks: dict, what: str) -> tuple[str, dict]:
    """The variant with the best accuracy on a stratified 20 % hold-out of ``train``."""
    inner_train, inner_val = stratified_split(train.labels, 0.2, args.seed)
    scores = {}
    for name in args.variants:
        result, sec = train_variant(train.subset(inner_train), name, args, trunks, f"{what} inner {name}")
        scores[name] = float(np.mean(predict(result, train.subset(inner_val)).argmax(1) == train.labels[inner_val]))
        print(f"  {what} inner {name}: {scores[name]:.4f} ({sec:.0f} s)", flush=True)
    best = max(args.variants, key=lambda v: (scores[v], -args.variants.index(v)))
    return best, {"inner_val_accuracy": {k: round(v, 4) for k, v in scores.items()}, "chosen": best,
                  "n_inner_train": int(inner_train.size), "n_inner_val": int(inner_val.size)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    import torch

    torch.set_num_threads(args.threads)
    try:
        data = load_eurosat_ms(args.data)
    except TrainingDataError as exc:
        raise SystemExit(str(exc))
    names = list(data.class_names)
    n = data.num_tiles
    twin = np.array([split_of(f"{Path(s).stem}.jpg") for s in data.sources])
    print(f"{n} patches; RGB twins in the RGB split: " + ", ".join(f"{s} {int((twin == s).sum())}"
                                                                  for s in ("train", "val", "test")), flush=True)
    twins = check_twins(data, Path(args.rgb_data)) if args.rgb_data else None
    if twins:
        print(f"RGB twins: {twins}", flush=True)
    trunks = {VARIANTS[v]["trunk"]: trunk_of(Path(args.models), VARIANTS[v]["trunk"]) for v in args.variants}
    folds = stratified_folds(data.labels, args.folds, args.seed, rotate=True)

    # -- baselines: each RGB trunk alone (no training on the 270) ------------------------------
    baselines = {}
    for file_name, (_state, card) in trunks.items():
        from glassbox.core.models.backends import load_model

        model = load_model(Path(args.models) / file_name)
        x = scale_batch(data.tiles[:, [EUROSAT_MS_BANDS.index(b) for b in RGB_BANDS]], card.scaling)
        pred = np.concatenate([model.predict_proba(x[i:i + 64]) for i in range(0, n, 64)]).argmax(1)
        baselines[file_name] = figures(data.labels, pred, twin, names, folds)
        clean = baselines[file_name].get("clean", {}).get("accuracy")
        print(f"RGB trunk alone {file_name}: {baselines[file_name]['accuracy']:.4f} (clean {clean})", flush=True)

    # -- 1 + 2. outer CV per variant, nested selection -------------------------------------------
    predicted = {v: np.full(n, -1, dtype=np.int64) for v in args.variants}
    corrupted = {v: {} for v in args.variants}  # variant -> corruption -> every patch's held-out prediction
    adapted = {v: {} for v in args.variants}  # the same after scene adaptation; "clean" included
    nested = np.full(n, -1, dtype=np.int64)
    fold_rows = []
    for f in range(args.folds):
        tr, te = np.nonzero(folds != f)[0], np.nonzero(folds == f)[0]
        row = {"fold": f + 1, "n_train": int(tr.size), "n_test": int(te.size), "seconds": {}}
        for name in args.variants:
            result, sec = train_variant(data.subset(tr), name, args, trunks, f"cv fold {f + 1} {name}")
            predicted[name][te] = predict(result, data.subset(te)).argmax(1)
            row["seconds"][name] = round(sec, 1)
            acc = float(np.mean(predicted[name][te] == data.labels[te]))
            print(f"fold {f + 1}/{args.folds} {name}: {acc:.4f} ({sec:.0f} s)", flush=True)
            if args.corruptions:
                t0 = time.time()
                held_out = data.subset(te)
                copies = corrupted_copies(held_out, L1C_FULL_SCALE, seed=0)
                for cname, cdata in copies.items():
                    corrupted[name].setdefault(cname, np.full(n, -1, dtype=np.int64))[te] = \
                        predict(result, cdata).argmax(1)
                cmean = np.mean([np.mean(p[te] == data.labels[te]) for p in corrupted[name].values()])
                print(f"fold {f + 1}/{args.folds} {name}: corrupted mean {cmean:.4f} ({time.time() - t0:.0f} s)",
                      flush=True)
                if args.adapt:
                    for cname, cdata in {"clean": held_out, **copies}.items():
                        adapted[name].setdefault(cname, np.full(n, -1, dtype=np.int64))[te] = \
                            predict_adapted(result, cdata).argmax(1)
                    amean = np.mean([np.mean(p[te] == data.labels[te]) for c, p in adapted[name].items() if c != "clean"])
                    print(f"fold {f + 1}/{args.folds} {name}: adapted clean "
                          f"{np.mean(adapted[name]['clean'][te] == data.labels[te]):.4f}, corrupted mean {amean:.4f}",
                          flush=True)
        if args.nested and len(args.variants) > 1:
            chosen, row["selection"] = select(data.subset(tr), args, trunks, f"fold {f + 1}")
        else:
            chosen = args.variants[0]
        nested[te] = predicted[chosen][te]
        row["chosen"] = chosen
        fold_rows.append(row)
        if args.nested:
            print(f"fold {f + 1}: nested choice {chosen}, accuracy {np.mean(nested[te] == data.labels[te]):.4f}",
                  flush=True)
    variants = {name: {**VARIANTS[name], **figures(data.labels, predicted[name], twin, names, folds)}
                for name in args.variants}
    if args.corruptions:
        for name in args.variants:
            variants[name]["corruptions"] = {
                "all_patches": corruption_summary(data.labels, predicted[name], corrupted[name], folds),
                "leak_free": corruption_summary(data.labels, predicted[name], corrupted[name], folds,
                                                subset=twin == "test"),
            }
            if args.adapt:
                clean_adapted = adapted[name].pop("clean")
                variants[name]["corruptions_adapted"] = {
                    "all_patches": corruption_summary(data.labels, clean_adapted, adapted[name], folds),
                    "leak_free": corruption_summary(data.labels, clean_adapted, adapted[name], folds,
                                                    subset=twin == "test"),
                }
                a = variants[name]["corruptions_adapted"]["all_patches"]
                print(f"{name} with scene adaptation: clean {a['clean']['accuracy']:.4f}, corrupted mean "
                      f"{a['corrupted_mean']:.4f}", flush=True)
            c = variants[name]["corruptions"]
            print(f"{name} corruptions: clean {c['all_patches']['clean']['accuracy']:.4f}, corrupted mean "
                  f"{c['all_patches']['corrupted_mean']:.4f}; leak-free ({c['leak_free']['n']}) clean "
                  f"{c['leak_free']['clean']['accuracy']}, corrupted mean {c['leak_free']['corrupted_mean']}",
                  flush=True)
    nested_figures = figures(data.labels, nested, twin, names, folds)
    if args.nested:
        print(f"nested CV: {nested_figures['accuracy']:.4f} (clean {nested_figures['clean']['accuracy']:.4f} "
              f"on {nested_figures['clean']['n']})", flush=True)

    metrics = {
        "architecture": "rgb_fusion", "n_patches": n, "cv_folds": args.folds, "seed": args.seed,
        "cv": f"{args.folds}-fold stratified, seed {args.seed} (the folds of scripts/train_eurosat_ms.py)",
        "rgb_twins": {"split_rule": split_rule_text(), "train": int((twin == "train").sum()),
                      "val": int((twin == "val").sum()), "test": int((twin == "test").sum()), "check": twins,
                      "subsets": "clean = twin in the RGB test split (never seen by the RGB trunk: the leak-free "
                                 "figure); unseen = test or val (val was not trained on but chose the trunk's "
                                 "epoch); trunk_train = twin in the RGB training split (leaky)"},
        "settings": {**COMMON, "epochs": args.epochs, "scaling": "DN / 10000, clip 0..1 (card); the trunk's own "
                     "DN scaling inside the network", "augmentation": "dihedral (core.training)",
                     "selection": ("nested: stratified 20 % inner hold-out of each outer training fold "
                                   "(core.training.loop.stratified_split), best inner accuracy, ties to the earlier variant")
                      if args.nested else f"none: the first variant ({args.variants[0]}) fixed before any run"},
        "baselines_rgb_trunk_alone": baselines,
        "baseline_spatial_spectral": {"cv_mean": 0.7963, "source": "eurosat_ms_spatial_spectral.metrics.json"},
        "variants": variants,
        "nested": {**nested_figures, "chosen_per_fold": [r["chosen"] for r in fold_rows]} if args.nested else None,
        "per_fold": fold_rows,
    }
    if args.corruptions:
        metrics["corruption_protocol"] = (protocol_text(L1C_FULL_SCALE, 0) + "; per variant in variants.<name>."
                                          "corruptions: all_patches, and leak_free = the patches whose RGB twin is "
                                          "in the RGB test split (rgb_twins 'clean')")
    out = Path(args.out)
    metrics_path = Path(args.metrics_out or f"{out}.metrics.json")
    if args.no_export:
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {metrics_path} ({time.time() - started:.0f} s)")
        return 0

    # -- 3. final model: choose on all patches, train on all patches --------------------------------
    if len(args.variants) > 1 and args.nested:
        chosen, metrics["final_selection"] = select(data, args, trunks, "final")
    else:
        chosen = args.variants[0]
    print(f"final model: {chosen}", flush=True)
    result, sec = train_variant(data, chosen, args, trunks, "EuroSAT 13-band, RGB ResNet trunk + spectral branch")
    card = result.card
    card.classes = [ClassInfo(c.name, c.color) for c in EUROSAT_CLASSES]
    card.bands = list(EUROSAT_MS_BANDS)
    card.tile_size, card.gsd = 64, 10.0
    v = variants[chosen]
    clean = v.get("clean", {"accuracy": float("nan"), "n": 0})
    card.accuracy = {
        "cv_folds": args.folds, "n_patches": n, "variant": chosen,
        "cv_accuracy": v["accuracy"], "cv_fold_mean": v["fold_mean"], "cv_fold_std": v["fold_std"],
        "per_fold": v["per_fold"], "per_class_f1": v["per_class_f1"], "macro_f1": v["macro_f1"],
        "clean_accuracy": clean["accuracy"], "clean_n": clean["n"],
        "note": (f"{args.folds}-fold CV on {n} EuroSAT 13-band patches whose RGB versions are in the RGB trunk's "
                 f"data; 'clean' = the {clean['n']} patches whose RGB twin is in the RGB test split (never seen "
                 "by the trunk). Expect lower accuracy on new scenes."),
    }
    card.description = (
        "Land-cover classifier for 13-band Sentinel-2 Level-1C rasters (digital numbers = TOA reflectance x 10000). "
        "Reads the bands by name (B01..B12, B8A; any band order in the raster) as reflectance (DN / 10000, clipped "
        "to 0..1). An RGB ResNet trained on EuroSAT's RGB tiles (the 19,085 of its training split) reads B04, "
        "B03, B02 (scaled as its own card says); a spectral branch reads all 13 bands plus NDVI, NDWI and NDBI and "
        f"corrects the RGB network's last feature map; trained on {n} EuroSAT multispectral patches. Classifies "
        "every 64 x 64-pixel tile (640 m at 10 m) into one of the 10 EuroSAT classes: " + ", ".join(names)
        + f". {args.folds}-fold cross-validated accuracy {v['accuracy']:.1%} over all {n} patches, "
        f"{clean['accuracy']:.1%} over the {clean['n']} whose RGB versions the RGB network never saw. "
        "Expect lower accuracy on new scenes."
    )
    card.training.update({
        "dataset": f"EuroSAT multispectral subset ({n} patches 64x64x13, uint16 L1C DN; Helber et al. 2019, MIT)",
        "band_order_in_files": ",".join(EUROSAT_MS_BANDS),
        "trunk": {"file": VARIANTS[chosen]["trunk"], "name": trunks[VARIANTS[chosen]["trunk"]][1].name,
                  "trained_on": "EuroSAT RGB training split (core.training.datasets.split_of)",
                  "frozen": VARIANTS[chosen]["freeze"]},
        "split": "none for the final model: trained on all patches for the last epoch of a fixed schedule "
                 "(no validation, no early stopping); accuracy from k-fold CV with identical settings",
        "cv": metrics["cv"], "variant_selection": metrics["settings"]["selection"],
        "script": "scripts/train_eurosat_ms_fusion.py", "date": datetime.date.today().isoformat(),
    })
    card.validate("eurosat_ms_fusion")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model_files(result.module, card, f"{out}.pt", onnx_path=f"{out}.onnx")
    metrics["final"] = {"variant": chosen, "training_seconds": round(sec, 1)}
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}.onnx, .pt, .json, {metrics_path.name} in {time.time() - started:.0f} s total", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
