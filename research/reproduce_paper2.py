#!/usr/bin/env python
"""Reproduce paper 2's Table I on the Kahikatea dataset: ResNet18 baseline, four masked
fine-tunes, alpha ensembles evaluated on raw test images, and Grad-CAM Jaccard against the
expert masks. Writes JSON and a Markdown table.

Usage (from the repository root)::

    .venv/bin/python -m glassbox.research.reproduce_paper2 --kahikatea ../shared/data/kahikatea \\
        --eurosat-rgb ../shared/data/eurosat_rgb --workdir ~/paper2_work \\
        --out-json paper2.json --out-md paper2.md [--folds 5] [--seeds 0] [--image-size 128]
    .venv/bin/python -m glassbox.research.reproduce_paper2 --kahikatea ../shared/data/kahikatea --workdir /tmp/p2 --smoke

**Protocol.** Binary task (``positive``: kahikatea in the photo, 232 images; ``negative``: 287).
Images (368x246 .. 552x369 px) are resized to ``--image-size`` squared (bilinear; masks
nearest), 8-bit RGB. Stratified ``--folds``-fold cross-validation per seed (``--seeds``): per
class, the images are shuffled with ``numpy.random.default_rng(seed)`` and dealt to the folds in
turn. For every (init, seed, fold):

1. **baseline** (raw model): torchvision ResNet18 (``core.architectures``: ``resnet18``)
   trained with :func:`core.training.loop.train_classifier` on the raw training images (scaling
   ``(x - mean) / std`` from them, AdamW + one-cycle, label smoothing 0.1, dihedral
   augmentation, 15 % of each class held out for early stopping), from the init below;
2. **masked** fine-tunes, one per mask type (white, black, median, blur; :mod:`core.masking`):
   the baseline's weights and scaling, trained ``--finetune-epochs`` more on the training
   images whose background is masked. Background = outside the expert mask for positives.
   Negatives have no mask; by default (``--negative-masks borrowed``) each negative gets the
   mask of a randomly chosen positive training image (seeded), so that masked images of both
   classes show the same distribution of mask shapes and the presence of a mask reveals nothing
   about the class (a negative left unmasked would make "is there a mask?" the label).
   ``--negative-masks none`` keeps negatives whole instead. White = 255, black = 0 (8-bit),
   median = per-band median of the fold's raw training images (the analogue of the paper's
   ImageNet median, which is unavailable here), blur = Gaussian of sigma image-size / 16 px;
3. **evaluation on the raw test images of the fold**: accuracy of the baseline (alpha = 1.0),
   of each masked model alone (alpha = 0) and of the ensembles ``L = a * L_raw + (1 - a) *
   L_masked`` for ``--alphas`` (default 0.8, 0.9), argmax of the mixed logits;
4. **Grad-CAM Jaccard** on the positive test images: Grad-CAM of the class ``positive`` at
   ResNet18's ``layer4`` output, upsampled bilinearly (:class:`core.explain.attribution.Explainer`),
   thresholded at half its maximum, Jaccard (IoU) with the expert mask
   (:func:`core.explain.metrics.heatmap_iou`, no smoothing). For an ensemble, Grad-CAM is taken on
   the concatenation of both models' ``layer4`` outputs with the gradient of the mixed logit,
   i.e. ``ReLU(a * cam_raw + (1 - a) * cam_masked)`` before rectification (the ensemble's own
   Grad-CAM on its joint feature layer).

**Inits** (``--inits``). ImageNet weights are not available on this machine (no internet), so
the paper's ImageNet-pretrained ResNet18 cannot be used. ``eurosat``: ResNet18 first trained on
EuroSAT RGB (27,000 Sentinel-2 patches of 64 px, 10 classes; ``--eurosat-rgb``), a separate
stage with its own checkpoint (``<workdir>/pretrain/eurosat_resnet18.pt`` + card), then its
weights (except the class layer) start every baseline. ``scratch``: random start. Both are
reported; neither is the paper's setting. ``--init-model PATH`` adds the init ``model``: a
Torch model with its card (e.g. Glassbox's shipped EuroSAT RGB default,
``resources/models/eurosat_rgb_resnet18_64_w32.pt``) whose architecture (name and kwargs from
its card) is trained instead of ResNet18, starting from its weights (except the class layer).

**Resuming.** Every trained model is saved in ``<workdir>/<init>/seed<s>/fold<k>/`` (for the
init ``model``: ``<workdir>/model_<file stem>/...``) with its card, and its test logits and
Jaccards in ``<name>.result.json`` beside it; a rerun skips what exists (a stage interrupted
mid-training restarts that model). The pretraining checkpoint is reused likewise.

**Output.** JSON: per init, per (seed, fold) results, then mean and sample standard deviation
over all (seed, fold) runs of every accuracy and Jaccard, the best ensemble, whether the goal
(best ensemble >= 90 % and >= baseline + 3 points) is met, timings and settings. Markdown: Table
I's layout (rows alpha, columns mask type, then the baseline) per init, next to the paper's
numbers, and a Grad-CAM Jaccard table.

``--smoke``: 2 folds, 1 seed, 1 epoch each, 64 px, 40 images (20 + 20), a 300-tile EuroSAT
pretraining of 1 epoch when ``--eurosat-rgb`` is given: proves the pipeline end to end in a few
minutes; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

import numpy as np

from glassbox.core.masking.masks import apply_background_masks, default_blur_sigma, mask_spec
from glassbox.core.training.data import TrainingData
from glassbox.core.training.loop import TrainOptions, stratified_folds, train_classifier
from glassbox.core.training.saving import save_model_files
from glassbox.core.training.scaling import scale_batch
from glassbox.core.explain.metrics import heatmap_iou

CLASSES = ["negative", "positive"]
MASK_TYPES = ["blur", "white", "median", "black"]  # Table I's column order
PAPER_TABLE = {  # paper 2, Table I, Kahikatea (accuracy %)
    "0.8": {"blur": 76.53, "white": 73.34, "median": 73.43, "black": 74.23},
    "0.9": {"blur": 78.31, "white": 78.69, "median": 82.14, "black": 78.95},
    "baseline": 76.91,
}
ARCH = "resnet18"
CAM_LAYER = "layer4"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kahikatea", required=True, help="Kahikatea folder (images/{positive,negative}, masks/positive)")
    p.add_argument("--eurosat-rgb", help="EuroSAT RGB folder for the pretraining stage (init 'eurosat')")
    p.add_argument("--workdir", required=True, help="checkpoints and per-model results (resumable)")
    p.add_argument("--out-json", help="write the results as JSON here (also printed)")
    p.add_argument("--out-md", help="write the Markdown tables here (also printed)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the fold assignment and training")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=20, help="baseline epochs (at most; early stopping)")
    p.add_argument("--finetune-epochs", type=int, default=8, help="masked fine-tuning epochs (at most)")
    p.add_argument("--pretrain-epochs", type=int, default=8, help="EuroSAT pretraining epochs (at most)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the baseline")
    p.add_argument("--finetune-lr", type=float, default=3e-4, help="peak learning rate of the masked fine-tunes")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--inits", default="eurosat,scratch",
                   help="eurosat, scratch and/or model (comma-separated; model needs --init-model)")
    p.add_argument("--init-model", help="Torch model (.pt with card) that starts the baselines of the init 'model': "
                                        "its architecture is trained, from its weights")
    p.add_argument("--alphas", default="0.8,0.9", help="ensemble weights of the raw model (1.0 = baseline)")
    p.add_argument("--mask-types", default=",".join(MASK_TYPES))
    p.add_argument("--negative-masks", choices=["borrowed", "none"], default="borrowed")
    p.add_argument("--max-images", type=int, default=0, help="use at most this many images per class (0 = all)")
    p.add_argument("--pretrain-tiles", type=int, default=0, help="EuroSAT tiles for pretraining (0 = all 27,000)")
    p.add_argument("--patch-model", help="also train the mask-labelled patch classifier (kahikatea_patches.py) "
                                         "from this Torch model with its card, e.g. the shipped "
                                         "resources/models/eurosat_rgb_resnet18_64_w32.pt")
    p.add_argument("--patch-photo-size", default="368x246",
                   help="WIDTHxHEIGHT the photos are resized to for the patch classifier (most photos' own size)")
    p.add_argument("--patch-size", type=int, default=64, help="patch side (px)")
    p.add_argument("--patch-stride", type=int, default=32, help="step of the patch grid (px)")
    p.add_argument("--patch-epochs", type=int, default=6)
    p.add_argument("--patch-top-k", type=int, default=1, help="a photo's score: mean of its k largest patch margins")
    p.add_argument("--patch-tta", action="store_true",
                   help="score each patch as the mean over its 8 rotations and mirror images")
    p.add_argument("--patch-context", action="store_true",
                   help="score the patches from one pass over the whole photo (features see past each patch's "
                        "edges) instead of one pass per cropped patch")
    p.add_argument("--patch-photo-epochs", type=int, default=0,
                   help="then fine-tune each patch classifier this many epochs on whole photos (photo label on a "
                        "smooth maximum of its in-context patch margins, plus the patches' mask labels); "
                        "implies --patch-context")
    p.add_argument("--patch-photo-logit", action="store_true",
                   help="with --patch-photo-epochs: a photo's score is the photo margin that fine-tune trains (the "
                        "smooth maximum of its patch margins), positive above 0: no threshold from calibration "
                        "photos, --patch-top-k unused")
    p.add_argument("--patch-mirror", action="store_true",
                   help="with --patch-context: also score every photo left-right mirrored and average both")
    p.add_argument("--patch-negatives", type=float, default=2.0, help="negative patches used per positive patch")
    p.add_argument("--patch-cross-fit", type=int, default=0,
                   help="k >= 2: k patch classifiers, each trained without one group of the training photos, "
                        "threshold from every training photo's out-of-group score, test score their mean "
                        "(0: one classifier, threshold from 15 %% calibration photos)")
    p.add_argument("--patch-alphas", default="0.3,0.5,0.8,0.9",
                   help="ensemble weights of the raw model with the patch classifier")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny configuration that proves the pipeline runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.folds, args.seeds, args.image_size = 2, "0", 64
        args.epochs = args.finetune_epochs = args.pretrain_epochs = 1
        args.max_images, args.pretrain_tiles, args.batch_size = 20, 300, 16
        args.patch_photo_size, args.patch_size, args.patch_stride, args.patch_epochs = "96x64", 32, 16, 1
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.alphas = [float(a) for a in str(args.alphas).split(",") if a.strip()]
    args.patch_alphas = [float(a) for a in str(args.patch_alphas).split(",") if a.strip()]
    try:
        args.patch_photo_size = tuple(int(v) for v in str(args.patch_photo_size).lower().split("x"))
        assert len(args.patch_photo_size) == 2 and min(args.patch_photo_size) >= args.patch_size
    except (ValueError, AssertionError):
        p.error(f"--patch-photo-size: need WIDTHxHEIGHT, both at least --patch-size ({args.patch_size})")
    args.patch_context = args.patch_context or args.patch_photo_epochs > 0  # the fine-tune is scored in context
    if args.patch_context and args.patch_tta:
        p.error("--patch-context (or --patch-photo-epochs) and --patch-tta: use one of them")
    if args.patch_photo_epochs < 0:
        p.error("--patch-photo-epochs: 0 (no whole-photo fine-tune) or more")
    if args.patch_photo_logit and args.patch_photo_epochs == 0:
        p.error("--patch-photo-logit is the whole-photo fine-tune's own score: needs --patch-photo-epochs")
    if args.patch_mirror and not args.patch_context:
        p.error("--patch-mirror mirrors whole photos: needs --patch-context (or --patch-photo-epochs)")
    if args.patch_cross_fit == 1 or args.patch_cross_fit < 0:
        p.error("--patch-cross-fit: 0 (calibration photos) or at least 2 groups")
    args.mask_types = [m.strip() for m in args.mask_types.split(",") if m.strip()]
    args.inits = [i.strip() for i in args.inits.split(",") if i.strip()]
    if args.init_model and "model" not in args.inits:
        args.inits.append("model")
    unknown = set(args.inits) - {"eurosat", "scratch", "model"}
    if unknown:
        p.error(f"unknown init(s) {sorted(unknown)}")
    if "eurosat" in args.inits and not args.eurosat_rgb:
        print("note: no --eurosat-rgb given; the 'eurosat' init is skipped", file=sys.stderr)
        args.inits = [i for i in args.inits if i != "eurosat"]
    if "model" in args.inits and not args.init_model:
        p.error("the init 'model' needs --init-model")
    if not args.inits:
        p.error("nothing to run: give --eurosat-rgb or --init-model, or include 'scratch' in --inits")
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- data -----------------------------------------------------------------------------------
def load_kahikatea(root: Path, size: int | tuple[int, int], max_images: int, cache: Path) -> dict[str, Any]:
    """Images ``(N, 3, height, width)`` uint8, labels (1 = positive), masks ``(N, height, width)``
    bool (all False for negatives, which have none), file names; negatives first, each class
    sorted by name. ``size``: side of the square the photos are resized to, or (width,
    height). Cached as .npz."""
    from PIL import Image

    width, height = (size, size) if isinstance(size, int) else size

    positives = sorted((root / "images" / "positive").glob("*.jpg"))
    negatives = sorted((root / "images" / "negative").glob("*.jpg"))
    if not positives or not negatives:
        raise SystemExit(f"no images under {root}/images/positive and .../negative")
    if max_images:
        rng = np.random.default_rng(12345)
        positives = sorted(rng.choice(positives, min(max_images, len(positives)), replace=False).tolist())
        negatives = sorted(rng.choice(negatives, min(max_images, len(negatives)), replace=False).tolist())
    import hashlib

    digest = hashlib.sha256("\n".join(p.name for p in positives + negatives).encode("utf-8")).hexdigest()[:12]
    key = f"kahikatea_{width if width == height else f'{width}x{height}'}_{len(positives)}_{len(negatives)}_{digest}"
    cache_file = cache / f"{key}.npz"
    if cache_file.exists():
        data = np.load(cache_file, allow_pickle=False)
        return {k: data[k] for k in data.files}
    images, masks, labels, names = [], [], [], []
    for label, paths in ((0, negatives), (1, positives)):
        for path in paths:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR)).transpose(2, 0, 1))
            if label:
                mask_path = root / "masks" / "positive" / (path.stem + ".png")
                with Image.open(mask_path) as m:
                    masks.append(np.asarray(m.convert("L").resize((width, height), Image.NEAREST)) > 127)
            else:
                masks.append(np.zeros((height, width), dtype=bool))
            labels.append(label)
            names.append(path.name)
    out = {"images": np.stack(images).astype(np.uint8), "masks": np.stack(masks), "labels": np.asarray(labels),
           "names": np.asarray(names)}
    cache.mkdir(parents=True, exist_ok=True)
    # written under a temporary name, then renamed: a second run reading the cache never sees half a file
    partial = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.partial.npz")
    np.savez(partial, **out)
    os.replace(partial, cache_file)
    return out


# -- models ---------------------------------------------------------------------------------
def pretrain_eurosat(args: argparse.Namespace, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """Stage 0: ResNet18 on EuroSAT RGB (64 px), saved with its card; reused when present."""
    from glassbox.core.training.datasets import load_tiles, scan_tile_folder

    target = workdir / "pretrain" / ("eurosat_resnet18_smoke.pt" if args.smoke else "eurosat_resnet18.pt")
    info_file = target.with_suffix(".result.json")
    if target.exists() and info_file.exists():
        log(f"pretraining: reusing {target}")
        return target, json.loads(info_file.read_text())
    paths, labels, class_names = scan_tile_folder(args.eurosat_rgb)
    if args.pretrain_tiles and args.pretrain_tiles < len(paths):
        keep = np.sort(np.random.default_rng(0).choice(len(paths), args.pretrain_tiles, replace=False))
        paths, labels = [paths[i] for i in keep], labels[keep]
    log(f"pretraining ResNet18 on {len(paths)} EuroSAT RGB tiles ({len(class_names)} classes)")
    tiles = load_tiles(paths, 64, cache_dir=workdir / "cache")
    data = TrainingData(tiles, labels, list(class_names), ["red", "green", "blue"], [p.name for p in paths],
                        gsd=10.0, description=f"EuroSAT RGB, {len(paths)} tiles")
    started = time.perf_counter()
    result = train_classifier(data, ARCH, TrainOptions(
        epochs=args.pretrain_epochs, batch_size=max(args.batch_size, 64), lr=2e-3, seed=0, val_fraction=0.1,
        patience=3, name="ResNet18 pretrained on EuroSAT RGB"), log=log)
    seconds = time.perf_counter() - started
    save_model_files(result.module, result.card, target)
    info = {"seconds": round(seconds, 1), "tiles": len(paths), "epochs_run": len(result.history),
            "val_overall": result.card.accuracy.get("val_overall"),
            "train_images_per_second": round(len(result.train_index) * len(result.history) / seconds, 2)}
    info_file.write_text(json.dumps(info, indent=2))
    return target, info


def predict_logits(module: Any, images: np.ndarray, scaling: Any, batch: int = 32) -> np.ndarray:
    import torch

    module.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            out.append(module(torch.from_numpy(scale_batch(images[start : start + batch], scaling))).float().numpy())
    return np.concatenate(out)


def joint_ensemble(raw: Any, masked: Any, alpha: float) -> Any:
    """ResNet18 ensemble whose two ``layer4`` outputs meet in one layer (``joint``), so that
    Grad-CAM on ``joint`` is the ensemble's Grad-CAM (see the module docstring)."""
    import torch
    from torch import nn

    def trunk(m):
        return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)

    class Joint(nn.Module):
        def __init__(self):
            super().__init__()
            self.raw_trunk, self.masked_trunk = trunk(raw), trunk(masked)
            self.joint = nn.Identity()
            self.raw_fc, self.masked_fc = raw.fc, masked.fc
            self.alpha = float(alpha)
            self.width = raw.fc.in_features

        def forward(self, x):
            j = self.joint(torch.cat([self.raw_trunk(x), self.masked_trunk(x)], dim=1))
            a = torch.flatten(nn.functional.adaptive_avg_pool2d(j[:, : self.width], 1), 1)
            b = torch.flatten(nn.functional.adaptive_avg_pool2d(j[:, self.width :], 1), 1)
            return self.alpha * self.raw_fc(a) + (1.0 - self.alpha) * self.masked_fc(b)

    return Joint().eval()


def gradcam_jaccards(module: Any, card: Any, images: np.ndarray, masks: np.ndarray, layer: str) -> list[float]:
    """Grad-CAM of class 'positive' at ``layer`` per image, Jaccard with its mask (threshold
    0.5 x max, no smoothing)."""
    from glassbox.core.explain.attribution import Explainer

    explainer = Explainer(module, card, "bench", "cpu", layer=layer)
    target = CLASSES.index("positive")
    out = []
    for start in range(0, len(images), 16):
        x = scale_batch(images[start : start + 16], card.scaling)
        cams = explainer.explain(x, "gradcam", target=target).attributions[:, 0]
        out += [heatmap_iou(c, m, threshold=0.5, smooth=0.0) for c, m in zip(cams, masks[start : start + 16])]
    return [float(v) for v in out]


def init_architecture(init_model: Path) -> tuple[str, dict[str, Any]]:
    """(architecture name, kwargs) from the card of the Torch model ``init_model``."""
    from glassbox.core.models.backends import card_path_for
    from glassbox.core.models.card import ModelCard

    card_file = card_path_for(init_model)
    if not init_model.is_file() or not card_file.is_file():
        raise SystemExit(f"--init-model: need {init_model} and its card {card_file.name} beside it")
    card = ModelCard.from_json(card_file.read_text(encoding="utf-8"), source=card_file.name)
    if not card.architecture or not card.architecture.get("name"):
        raise SystemExit(f"--init-model: {card_file.name} names no architecture")
    return card.architecture["name"], dict(card.architecture.get("kwargs") or {})


def init_folder(init: str, pretrained: Path | None) -> str:
    """Workdir sub-folder of an init; the init 'model' is named after its file, so that
    another --init-model never reuses its results."""
    return f"model_{pretrained.stem}" if init == "model" and pretrained else init


def run_fold(args: argparse.Namespace, data: dict[str, Any], init: str, pretrained: Path | None,
             architecture: tuple[str, dict[str, Any]], seed: int, fold: int, folds: np.ndarray,
             folder: Path) -> dict[str, Any]:
    """Baseline, masked fine-tunes, test logits and Jaccards of one (init, seed, fold);
    ``architecture``: (name, kwargs) of the network trained."""
    from glassbox.core.models.backends import TorchModel

    folder.mkdir(parents=True, exist_ok=True)
    train = np.flatnonzero(folds != fold)
    test = np.flatnonzero(folds == fold)
    images, labels, masks = data["images"], data["labels"], data["masks"]
    test_pos = test[labels[test] == 1]
    results: dict[str, Any] = {"n_train": int(train.size), "n_test": int(test.size), "test_labels": labels[test].tolist()}

    def train_model(name: str, tiles: np.ndarray, options: TrainOptions) -> tuple[Any, Any, dict[str, Any]]:
        path = folder / f"{name}.pt"
        result_file = folder / f"{name}.result.json"
        if path.exists() and result_file.exists():
            model = TorchModel(path, "cpu")
            return model.module, model.card, json.loads(result_file.read_text())
        log(f"{init} seed {seed} fold {fold}: training {name} on {train.size} images")
        started = time.perf_counter()
        td = TrainingData(tiles, labels[train], CLASSES, ["red", "green", "blue"],
                          [str(n) for n in data["names"][train]], description=f"kahikatea fold {fold} train")
        result = train_classifier(td, arch_name, options, log=log)
        seconds = time.perf_counter() - started
        save_model_files(result.module, result.card, path)
        info = {"seconds": round(seconds, 1), "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                "val_overall": result.card.accuracy.get("val_overall"),
                "train_images_per_second": round(len(result.train_index) * len(result.history) / seconds, 2),
                "test_logits": predict_logits(result.module, images[test], result.card.scaling).tolist()}
        if test_pos.size:
            info["jaccard"] = gradcam_jaccards(result.module, result.card, images[test_pos], masks[test_pos], CAM_LAYER)
        result_file.write_text(json.dumps(info))
        return result.module, result.card, info

    arch_name, arch_kwargs = architecture
    base_options = TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, val_fraction=args.val_fraction,
        patience=args.patience, weights_path=str(pretrained) if pretrained else None,
        architecture_kwargs=arch_kwargs, name=f"{arch_name} kahikatea baseline ({init}, seed {seed}, fold {fold})")
    raw_module, raw_card, raw_info = train_model("baseline", images[train], base_options)
    results["baseline"] = raw_info

    # inside masks of the training images: the expert mask; negatives borrow a positive's
    inside = masks[train].copy()
    negatives = np.flatnonzero(labels[train] == 0)
    positives = np.flatnonzero(labels[train] == 1)
    if args.negative_masks == "borrowed":
        donors = np.random.default_rng(seed * 1000 + fold).choice(positives, size=negatives.size, replace=True)
        inside[negatives] = masks[train][donors]
    else:
        inside[negatives] = True
    results["masked"] = {}
    for mask_type in args.mask_types:
        spec = mask_spec(mask_type, images[train], raw_card.scaling, default_blur_sigma(args.image_size), seed)
        masked_images = apply_background_masks(images[train], inside, spec)
        state = {k: v.detach().clone() for k, v in raw_module.state_dict().items()}
        options = TrainOptions(
            epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.finetune_lr, seed=seed,
            val_fraction=args.val_fraction, patience=args.patience, scaling=raw_card.scaling, initial_state=state,
            initial_state_name="baseline.pt", architecture_kwargs=arch_kwargs,
            name=f"{arch_name} kahikatea masked ({mask_type})")
        masked_module, masked_card, info = train_model(f"masked_{mask_type}", masked_images, options)
        info["fill"] = spec.fill
        if test_pos.size and "ensemble_jaccard" not in info:
            info["ensemble_jaccard"] = {}
            for alpha in args.alphas:
                if alpha >= 1.0:
                    continue
                joint = joint_ensemble(raw_module, masked_module, alpha)
                info["ensemble_jaccard"][f"{alpha:g}"] = gradcam_jaccards(joint, raw_card, images[test_pos],
                                                                          masks[test_pos], "joint")
            (folder / f"masked_{mask_type}.result.json").write_text(json.dumps(info))
        results["masked"][mask_type] = info
        del masked_module
    return results


def patch_folder(args: argparse.Namespace, model: Path) -> str:
    """Workdir sub-folder of the patch classifiers: named after the starting model and every
    training setting that differs from the default, so that other settings never reuse them."""
    defaults = parse_args(["--kahikatea", ".", "--workdir", ".", "--inits", "scratch"])
    name = f"patch_{model.stem}"
    for key, tag in (("patch_photo_size", "photo"), ("patch_size", "size"), ("patch_stride", "stride"),
                     ("patch_epochs", "epochs"), ("patch_negatives", "neg"), ("patch_cross_fit", "cf")):
        value = getattr(args, key)
        if value != getattr(defaults, key) and not args.smoke:
            name += f"_{tag}{'x'.join(map(str, value)) if isinstance(value, tuple) else f'{value:g}'}"
    return name


def run_patch_stage(args: argparse.Namespace, data: dict[str, Any], workdir: Path
                    ) -> dict[tuple[int, int], dict[str, Any]]:
    """The mask-labelled patch classifier (:mod:`kahikatea_patches`) of every (seed, fold), on
    the same folds as the square photos ``data``; its results by (seed, fold)."""
    from glassbox.research.kahikatea_patches import run_patch_fold

    model = Path(args.patch_model).expanduser()
    architecture = init_architecture(model)
    photos = load_kahikatea(Path(args.kahikatea), args.patch_photo_size, args.max_images, workdir / "cache")
    if not np.array_equal(photos["names"], data["names"]):
        raise SystemExit("internal error: the patch stage's photos are not those of the table")
    folder = workdir / patch_folder(args, model)
    out = {}
    for seed in args.seeds:
        folds = stratified_folds(data["labels"], args.folds, seed)
        for fold in range(args.folds):
            log(f"patch classifier: seed {seed} fold {fold}")
            out[(seed, fold)] = run_patch_fold(
                photos, np.flatnonzero(folds != fold), np.flatnonzero(folds == fold),
                folder / f"seed{seed}" / f"fold{fold}", model, architecture, CLASSES, seed,
                patch=args.patch_size, stride=args.patch_stride, epochs=args.patch_epochs,
                negatives_per_positive=args.patch_negatives, top_k=args.patch_top_k,
                dihedral_tta=args.patch_tta, cross_fit=args.patch_cross_fit,
                context=args.patch_context, photo_epochs=args.patch_photo_epochs,
                photo_logit=args.patch_photo_logit, mirror=args.patch_mirror, log=log)
    return out


# -- summary --------------------------------------------------------------------------------
def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == labels).mean())


def mean_std(values: list[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 4),
            "n": int(v.size)}


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    acc: dict[str, list[float]] = {"baseline": []}
    jac: dict[str, list[float]] = {"raw": []}
    for run in runs:
        labels = np.asarray(run["test_labels"])
        raw = np.asarray(run["baseline"]["test_logits"])
        acc["baseline"].append(accuracy(raw, labels))
        jac["raw"].append(float(np.nanmean(run["baseline"].get("jaccard", [np.nan]))))
        for mask_type, info in run["masked"].items():
            masked = np.asarray(info["test_logits"])
            acc.setdefault(f"{mask_type} alpha=0", []).append(accuracy(masked, labels))
            for alpha in args.alphas:
                acc.setdefault(f"{mask_type} alpha={alpha:g}", []).append(accuracy(alpha * raw + (1 - alpha) * masked,
                                                                                      labels))
            jac.setdefault(f"{mask_type} masked", []).append(float(np.nanmean(info.get("jaccard", [np.nan]))))
            for key, values in info.get("ensemble_jaccard", {}).items():
                jac.setdefault(f"{mask_type} ensemble alpha={key}", []).append(float(np.nanmean(values)))
        if "patch" in run:
            patch = np.asarray(run["patch"]["test_logits"])
            acc.setdefault("patch alpha=0", []).append(accuracy(patch, labels))
            for alpha in args.patch_alphas:
                acc.setdefault(f"patch alpha={alpha:g}", []).append(accuracy(alpha * raw + (1 - alpha) * patch, labels))
            jac.setdefault("patch map", []).append(float(np.nanmean(run["patch"].get("jaccard", [np.nan]))))
    accuracy_summary = {k: mean_std(v) for k, v in acc.items()}
    jaccard_summary = {k: mean_std(v) for k, v in jac.items()}

    def best_of(keys: list[str]) -> dict[str, Any]:
        key = max(keys, key=lambda k: accuracy_summary[k]["mean"]) if keys else None
        return {"model": key, "accuracy": accuracy_summary[key]["mean"] if key else None}

    ensembles = [k for k in accuracy_summary if "alpha=" in k and not k.endswith("alpha=0") and not k.endswith("alpha=1")]
    best_entry = best_of(ensembles)
    best = best_entry["accuracy"]
    base = accuracy_summary["baseline"]["mean"]
    return {
        "accuracy": accuracy_summary, "gradcam_jaccard": jaccard_summary,
        "best_ensemble": best_entry,
        "best_masked_ensemble": best_of([k for k in ensembles if not k.startswith("patch ")]),
        "goal": {"best_ensemble_at_least_0.90": bool(best is not None and best >= 0.90),
                 "best_ensemble_at_least_baseline_plus_0.03": bool(best is not None and base is not None
                                                                    and best >= base + 0.03)},
    }


def fmt(entry: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    return f"{entry['mean'] * scale:.{digits}f} ± {entry['std'] * scale:.{digits}f}"


def patch_caption(settings: dict[str, Any]) -> str:
    """How the patch classifier of the report's settings was trained and scored, in words."""
    words = [f"{settings['size']} px patches of the photos at {settings['photo_size'][0]}x{settings['photo_size'][1]} "
             f"px, started from {Path(settings['model']).name}"]
    if settings.get("photo_epochs"):
        words.append(f"fine-tuned {settings['photo_epochs']} epochs on whole photos")
    if settings.get("photo_logit"):
        words.append("photo score = that fine-tune's photo margin (smooth maximum of the patch margins), "
                     "positive above 0")
    else:
        words.append(f"photo score = mean of the top {settings['top_k']} patch margins"
                     + (" (each the mean over 8 rotations/mirrors)" if settings["dihedral_tta"] else "")
                     + ", threshold from calibration photos")
    if settings.get("context"):
        words.append("patches scored in one pass over the whole photo")
    if settings.get("mirror"):
        words.append("mean of the photo and its left-right mirror image")
    return "; ".join(words)


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "# Paper 2, Table I (Kahikatea) reproduced with Glassbox",
        "",
        f"{settings['folds']}-fold stratified cross-validation x seeds {settings['seeds']}; images at "
        f"{settings['image_size']} px; accuracy on the raw test images, mean ± sample std over "
        f"{report['runs_per_init']} runs (%). Negatives' masks: {settings['negative_masks']}."
        + (" **SMOKE RUN: tiny configuration, the numbers mean nothing.**" if settings["smoke"] else ""),
        "",
    ]
    titles = {"eurosat": "ResNet18 pretrained on EuroSAT RGB (not ImageNet: unavailable offline)",
              "scratch": "ResNet18 from scratch (random init)"}
    if report.get("init_model"):
        m = report["init_model"]
        kwargs = ", ".join(f"{k} {v}" for k, v in m["kwargs"].items())
        titles["model"] = (f"{m['architecture']}{f' ({kwargs})' if kwargs else ''} started from "
                           f"{Path(m['path']).name} (--init-model)")
    for init, summary in report["inits"].items():
        acc = summary["accuracy"]
        types = [m for m in MASK_TYPES if m in settings["mask_types"]]
        lines += [f"## {titles[init]}", "", "| alpha | " + " | ".join(t.capitalize() for t in types) + " |",
                  "|---|" + "---|" * len(types)]
        for alpha in settings["alphas"]:
            lines.append(f"| {alpha:g} | " + " | ".join(fmt(acc.get(f"{t} alpha={alpha:g}")) for t in types) + " |")
        lines.append("| 0 (masked model alone) | " + " | ".join(fmt(acc.get(f"{t} alpha=0")) for t in types) + " |")
        lines += [f"| **Baseline (alpha = 1.0)** | {fmt(acc['baseline'])} |" + " |" * (len(types) - 1), ""]
        if "patch alpha=0" in acc:
            patch_settings = settings["patch"]
            lines += [f"Mask-labelled patch classifier ({patch_caption(patch_settings)}) and its ensembles with "
                      "this baseline, L = a * L_raw + (1 - a) * L_patch:", "", "| alpha | Patch |", "|---|---|"]
            lines += [f"| {alpha:g} | {fmt(acc.get(f'patch alpha={alpha:g}'))} |" for alpha in settings["patch_alphas"]]
            lines += [f"| 0 (patch classifier alone) | {fmt(acc.get('patch alpha=0'))} |", ""]
        best = summary["best_ensemble"]
        goal = summary["goal"]
        masked_best = summary["best_masked_ensemble"]
        if masked_best["model"] and masked_best["model"] != best["model"]:
            lines.append(f"Best ensemble of Table I's masked fine-tunes: {masked_best['model']} = "
                         f"{100 * masked_best['accuracy']:.1f} %")
        lines += [f"Best ensemble: {best['model']} = {100 * best['accuracy']:.1f} %" if best["model"] else "",
                  f"Goal (best ensemble >= 90 % and >= baseline + 3 points): "
                  f"{'met' if all(goal.values()) else 'NOT met'} ({goal}).", ""]
        jac = summary["gradcam_jaccard"]
        lines += ["Grad-CAM Jaccard with the expert masks (positive test images; threshold 0.5 x max):", "",
                  "| model | " + " | ".join(t.capitalize() for t in types) + " |", "|---|" + "---|" * len(types),
                  f"| raw (baseline) | {fmt(jac['raw'], digits=3, scale=1)} |" + " |" * (len(types) - 1),
                  "| masked | " + " | ".join(fmt(jac.get(f"{t} masked"), 1, 3) for t in types) + " |"]
        for alpha in settings["alphas"]:
            if alpha < 1:
                lines.append(f"| ensemble alpha={alpha:g} | "
                             + " | ".join(fmt(jac.get(f"{t} ensemble alpha={alpha:g}"), 1, 3) for t in types) + " |")
        if "patch map" in jac:
            lines.append(f"| patch classifier's map (not Grad-CAM) | {fmt(jac['patch map'], 1, 3)} |"
                         + " |" * (len(types) - 1))
        lines.append("")
    lines += ["## Paper 2 (ImageNet-pretrained ResNet18)", "", "| alpha | Blur | White | Median | Black |",
              "|---|---|---|---|---|"]
    for alpha in ("0.8", "0.9"):
        lines.append(f"| {alpha} | " + " | ".join(f"{PAPER_TABLE[alpha][t]:.2f}" for t in MASK_TYPES) + " |")
    lines += [f"| Baseline | {PAPER_TABLE['baseline']:.2f} | | | |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    init_model = Path(args.init_model).expanduser() if "model" in args.inits else None
    model_architecture = init_architecture(init_model) if init_model else None
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir).expanduser()
    if args.smoke:
        workdir = workdir / "smoke"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = load_kahikatea(Path(args.kahikatea), args.image_size, args.max_images, workdir / "cache")
    log(f"kahikatea: {int((data['labels'] == 1).sum())} positive, {int((data['labels'] == 0).sum())} negative "
        f"images at {args.image_size} px")
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_json", "out_md") and not k.startswith("patch_")},
        "n_images": {"positive": int((data["labels"] == 1).sum()), "negative": int((data["labels"] == 0).sum())},
        "inits": {}, "runs": {}, "pretraining": None,
    }
    patch_runs: dict[tuple[int, int], dict[str, Any]] = {}
    if args.patch_model:
        report["settings"]["patch"] = {"model": args.patch_model, "photo_size": list(args.patch_photo_size),
                                       "size": args.patch_size, "stride": args.patch_stride,
                                       "epochs": args.patch_epochs, "top_k": args.patch_top_k,
                                       "dihedral_tta": args.patch_tta,
                                       "context": args.patch_context,
                                       "photo_epochs": args.patch_photo_epochs,
                                       "photo_logit": args.patch_photo_logit,
                                       "mirror": args.patch_mirror,
                                       "cross_fit": args.patch_cross_fit,
                                       "negatives_per_positive": args.patch_negatives}
        report["settings"]["patch_alphas"] = args.patch_alphas
        patch_runs = run_patch_stage(args, data, workdir)
    if init_model:
        report["init_model"] = {"path": str(init_model), "architecture": model_architecture[0],
                                "kwargs": model_architecture[1]}
    for init in args.inits:
        pretrained, architecture = None, (ARCH, {})
        if init == "eurosat":
            pretrained, info = pretrain_eurosat(args, workdir)
            report["pretraining"] = info
        elif init == "model":
            pretrained, architecture = init_model, model_architecture
        runs = []
        for seed in args.seeds:
            folds = stratified_folds(data["labels"], args.folds, seed)
            for fold in range(args.folds):
                run = run_fold(args, data, init, pretrained, architecture, seed, fold, folds,
                               workdir / init_folder(init, pretrained) / f"seed{seed}" / f"fold{fold}")
                if (seed, fold) in patch_runs:
                    run["patch"] = patch_runs[(seed, fold)]
                runs.append(run)
        report["inits"][init] = summarise(runs, args)
        report["runs"][init] = [
            {"seed": seed, "fold": fold, "n_train": r["n_train"], "n_test": r["n_test"],
             "baseline": {k: v for k, v in r["baseline"].items() if k != "test_logits" and k != "jaccard"},
             "masked": {t: {k: v for k, v in i.items() if k not in ("test_logits", "jaccard", "ensemble_jaccard")}
                        for t, i in r["masked"].items()},
             **({"patch": {k: v for k, v in r["patch"].items() if k not in ("test_logits", "jaccard")}}
                if "patch" in r else {})}
            for (seed, fold), r in zip([(s, f) for s in args.seeds for f in range(args.folds)], runs)
        ]
        report["runs_per_init"] = len(runs)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    table = markdown(report)
    print(text)
    print(table)
    if args.out_json:
        Path(args.out_json).write_text(text)
    if args.out_md:
        Path(args.out_md).write_text(table)
    return report


if __name__ == "__main__":
    main()
