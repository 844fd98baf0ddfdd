"""Mask-labelled patch classifier for the Kahikatea photos (a stage of reproduce_paper2.py).

Paper 2 uses the expert masks only to blank the background of training photos. Here the masks
label the photos' 64 px patches instead, which is how Glassbox trains from polygons on a map
(tiles sampled inside the polygons of a class): a patch is ``positive`` when at least half of it
lies inside a positive photo's expert mask; ``negative`` when it is a patch of a negative photo
or lies wholly outside the mask of a positive photo; other patches are not used. A tile
classifier (by default Glassbox's shipped EuroSAT RGB network, started from its weights) learns
them, and a photo's score is the mean of its ``top_k`` largest patch margins
``logit(positive) - logit(negative)`` over a regular grid of patches. The decision threshold on
that score is chosen on calibration photos held out from training (15 % per class), so the
photo-level logits are ``[-(s - t) / 2, (s - t) / 2]``: their difference is the score minus the
threshold, ready to mix with the raw model's logits like any other model's.

Its explanation is the patch map itself (what the product's classify writes as a probability
raster): per pixel, the mean positive probability of the patches covering it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.training import (TrainingData, TrainOptions, save_model_files, scale_batch, stratified_folds,
                           stratified_split, train_classifier)
from core.xai_metrics import heatmap_iou

POSITIVE_SHARE = 0.5  # a positive patch lies at least this much inside the expert mask


def patch_origins(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int]]:
    """Top-left (row, col) of a regular grid of ``patch`` px squares covering a
    ``height`` x ``width`` image with step ``stride``; the last row and column are moved in to
    end at the image's edge."""
    if patch > min(height, width):
        raise ValueError(f"patch {patch} px is larger than the image ({height} x {width} px)")
    rows = list(range(0, height - patch + 1, stride))
    cols = list(range(0, width - patch + 1, stride))
    if rows[-1] != height - patch:
        rows.append(height - patch)
    if cols[-1] != width - patch:
        cols.append(width - patch)
    return [(r, c) for r in rows for c in cols]


def crop(images: np.ndarray, pairs: np.ndarray, origins: list[tuple[int, int]], patch: int) -> np.ndarray:
    """Patches ``(len(pairs), C, patch, patch)`` of ``images`` ``(N, C, H, W)``; ``pairs``:
    rows of (image index, origin index)."""
    return np.stack([images[i, :, origins[k][0] : origins[k][0] + patch, origins[k][1] : origins[k][1] + patch]
                     for i, k in pairs])


def mask_shares(masks: np.ndarray, origins: list[tuple[int, int]], patch: int) -> np.ndarray:
    """Share (0..1) of every patch inside the mask: ``(N, len(origins))``."""
    return np.stack([[m[r : r + patch, c : c + patch].mean() for r, c in origins] for m in masks])


def patch_labels(labels: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Label of every (photo, patch): 1 positive, 0 negative, -1 unused (see the module doc)."""
    out = np.full(shares.shape, -1, dtype=np.int64)
    out[labels == 0] = 0
    positive = labels == 1
    out[positive[:, None] & (shares >= POSITIVE_SHARE)] = 1
    out[positive[:, None] & (shares == 0)] = 0
    return out


def patch_margins(module: Any, scaling: Any, images: np.ndarray, origins: list[tuple[int, int]],
                  patch: int, batch: int = 256, dihedral_tta: bool = False) -> np.ndarray:
    """``logit(positive) - logit(negative)`` of every patch of every image: ``(N, len(origins))``;
    with ``dihedral_tta`` the logits are the mean over the patch's 8 rotations and mirror images
    (:func:`core.backends.dihedral_views`, as the product's test-time augmentation)."""
    import torch

    from core.backends import dihedral_views

    module.eval()
    pairs = np.array([(i, k) for i in range(len(images)) for k in range(len(origins))])
    out = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch):
            tiles = scale_batch(crop(images, pairs[start : start + batch], origins, patch), scaling)
            views = dihedral_views(tiles) if dihedral_tta else [tiles]
            logits = np.mean([module(torch.from_numpy(v)).float().numpy() for v in views], axis=0)
            out.append(logits[:, 1] - logits[:, 0])
    return np.concatenate(out).reshape(len(images), len(origins))


def context_margins(module: Any, scaling: Any, images: np.ndarray, origins: list[tuple[int, int]], patch: int,
                    batch: int = 8) -> np.ndarray:
    """``logit(positive) - logit(negative)`` of every patch, ``(N, len(origins))``, from one pass
    of the network's convolutional trunk over the whole photo instead of one pass per cropped
    patch: a patch's logits are the class layer applied to the mean of the last feature cells
    under it, so its features see the photo around it (the receptive field reaches past the
    patch's edges) where a cropped patch sees zero padding. ``module``: a torchvision ResNet
    (:mod:`core.architectures`' ``resnet18_64`` and ``resnet18``; its ``input_scale`` is applied
    to the whole photo). A patch's cells start at its origin divided by the trunk's stride
    (rounded; moved in at the photo's far edges), so patches whose origins are not a multiple of
    the stride are approximated by the nearest cells."""
    import torch

    def trunk(x: torch.Tensor) -> torch.Tensor:
        scale = float(getattr(module, "input_scale", 1.0))
        if scale != 1.0:
            x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        x = module.maxpool(module.relu(module.bn1(module.conv1(x))))
        return module.layer4(module.layer3(module.layer2(module.layer1(x))))

    module.eval()
    out = []
    with torch.inference_mode():
        cells = trunk(torch.zeros(1, images.shape[1], patch, patch)).shape[2]
        stride = patch / cells
        for start in range(0, len(images), batch):
            features = trunk(torch.from_numpy(scale_batch(images[start : start + batch], scaling)))
            rows, cols = features.shape[2:]
            pooled = torch.stack([features[:, :, r0 : r0 + cells, c0 : c0 + cells].mean(dim=(2, 3))
                                  for r0, c0 in ((min(int(round(r / stride)), rows - cells),
                                                  min(int(round(c / stride)), cols - cells)) for r, c in origins)],
                                 dim=1)
            logits = module.fc(pooled).float().numpy()
            out.append(logits[..., 1] - logits[..., 0])
    return np.concatenate(out)


def photo_scores(margins: np.ndarray, top_k: int) -> np.ndarray:
    """Mean of each photo's ``top_k`` largest patch margins."""
    k = max(1, min(top_k, margins.shape[1]))
    return np.sort(margins, axis=1)[:, -k:].mean(axis=1)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold on ``scores`` (positive above it) with the best accuracy on ``labels``, among
    the midpoints between sorted distinct scores and one beyond each end; when several tie, the
    median of them."""
    values = np.unique(scores)
    if values.size == 1:
        return float(values[0])
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    accuracy = np.array([((scores > t) == labels).mean() for t in candidates])
    best = candidates[accuracy == accuracy.max()]
    return float(best[len(best) // 2])


def cross_fit_groups(labels: np.ndarray, groups: int, seed: int) -> np.ndarray:
    """Group index (0..groups-1) of every training photo, class-balanced
    (:func:`core.training.stratified_folds`); its seed is offset so that the groups are not
    dealt like the folds that chose these photos."""
    return stratified_folds(labels, groups, seed + 7919)


def patch_map(margins: np.ndarray, origins: list[tuple[int, int]], patch: int, height: int, width: int) -> np.ndarray:
    """Per-pixel mean positive probability of the patches covering it, ``(height, width)``."""
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for (r, c), m in zip(origins, margins):
        total[r : r + patch, c : c + patch] += 1.0 / (1.0 + np.exp(-m))
        count[r : r + patch, c : c + patch] += 1
    return total / np.maximum(count, 1)


def run_patch_fold(data: dict[str, Any], train: np.ndarray, test: np.ndarray, folder: Path, init_model: Path,
                   architecture: tuple[str, dict[str, Any]], classes: list[str], seed: int, patch: int = 64,
                   stride: int = 32, epochs: int = 6, negatives_per_positive: float = 2.0, top_k: int = 1,
                   calibration_fraction: float = 0.15, batch_size: int = 128, lr: float = 1e-3,
                   dihedral_tta: bool = False, cross_fit: int = 0, context: bool = False,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the patch classifier on the photos ``train`` (minus the calibration photos), pick
    the threshold on the calibration photos and score the photos ``test``. Saves
    ``patch.pt`` + card, ``patch.train.json`` (training figures) and ``patch<scoring>.result.json``
    (test logits, threshold, patch-map Jaccards of the positive test photos; ``<scoring>`` names
    a ``top_k`` other than 1, ``dihedral_tta`` and ``context``) in ``folder``; returns that JSON. Each is
    reused when present: another scoring of a trained model costs no training.

    ``cross_fit`` >= 2 replaces the calibration hold-out: the training photos are dealt into
    that many class-balanced groups, one classifier per group is trained on the other groups
    (``patch_cf<j>.pt``), every training photo is scored by the classifier that did not see it
    and the threshold is picked on all those scores; a test photo's patch margins are the mean
    of the classifiers'.

    ``context``: patch margins from one pass over the whole photo (:func:`context_margins`)
    instead of one per cropped patch (:func:`patch_margins`), for the calibration and the test
    photos alike; not with ``dihedral_tta``.

    ``data``: images ``(N, 3, H, W)`` uint8, masks ``(N, H, W)`` bool, labels (1 = positive).
    ``architecture``: (name, kwargs) of ``init_model`` (a Torch model whose weights start the
    network; its class layer is replaced).
    """
    if context and dihedral_tta:
        raise ValueError("context scoring has no test-time augmentation: use one of them")
    scoring = (f"_top{top_k}" if top_k != 1 else "") + ("_tta" if dihedral_tta else "") + ("_ctx" if context else "")
    result_file = folder / f"patch{scoring}.result.json"
    stems = [f"patch_cf{j}" for j in range(cross_fit)] if cross_fit >= 2 else ["patch"]
    if result_file.exists() and all((folder / f"{stem}.pt").exists() for stem in stems):
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    images, masks, labels = data["images"], data["masks"], data["labels"]
    height, width = images.shape[2:]
    origins = patch_origins(height, width, patch, stride)
    if cross_fit >= 2:
        # every training photo is scored by the model that did not see it: the threshold comes
        # from all of them, and the test photos are scored by the mean of the k models
        group = cross_fit_groups(labels[train], cross_fit, seed)
        fits = [train[group != j] for j in range(cross_fit)]
        held = [train[group == j] for j in range(cross_fit)]
    else:
        fit_pos, calib_pos = stratified_split(labels[train], calibration_fraction, seed)
        fits, held = [train[fit_pos]], [train[calib_pos]]
    held_scores, test_margins, infos = [], [], []
    for stem, fit, calibration in zip(stems, fits, held):
        model_file, train_file = folder / f"{stem}.pt", folder / f"{stem}.train.json"
        if model_file.exists() and train_file.exists():
            from core.backends import TorchModel

            trained = TorchModel(model_file, "cpu")
            module, card, info = trained.module, trained.card, json.loads(train_file.read_text())
        else:
            module, card, info = _train(data, fit, origins, folder, init_model, architecture, classes, seed, patch,
                                        stride, epochs, negatives_per_positive, batch_size, lr, log, stem)
            info["calibration_photos"] = int(calibration.size)
            train_file.write_text(json.dumps(info))
        infos.append(info)
        def margins(photos: np.ndarray) -> np.ndarray:
            if context:
                return context_margins(module, card.scaling, images[photos], origins, patch)
            return patch_margins(module, card.scaling, images[photos], origins, patch, dihedral_tta=dihedral_tta)

        held_scores.append(photo_scores(margins(calibration), top_k))
        test_margins.append(margins(test))
    calibration_photos = np.concatenate(held)
    calibration_scores = np.concatenate(held_scores)
    threshold = best_threshold(calibration_scores, labels[calibration_photos])
    mean_margins = np.mean(test_margins, axis=0)
    difference = photo_scores(mean_margins, top_k) - threshold
    info = {
        **(infos[0] if len(infos) == 1 else {"cross_fit": cross_fit, "models": infos,
                                               "calibration_photos": int(calibration_photos.size)}),
        "threshold": threshold, "top_k": top_k, "dihedral_tta": dihedral_tta, "context": context,
        "calibration_accuracy": float(((calibration_scores > threshold) == labels[calibration_photos]).mean()),
        "test_logits": np.stack([-difference / 2, difference / 2], axis=1).tolist(),
        "jaccard": [heatmap_iou(patch_map(m, origins, patch, height, width), masks[i], threshold=0.5, smooth=0.0)
                    for i, m in zip(test, mean_margins) if labels[i] == 1],
    }
    result_file.write_text(json.dumps(info))
    return info


def _train(data: dict[str, Any], fit: np.ndarray, origins: list[tuple[int, int]], folder: Path, init_model: Path,
           architecture: tuple[str, dict[str, Any]], classes: list[str], seed: int, patch: int, stride: int,
           epochs: int, negatives_per_positive: float, batch_size: int, lr: float,
           log: Callable[[str], None], stem: str = "patch") -> tuple[Any, Any, dict[str, Any]]:
    """Train the patch classifier on the patches of the photos ``fit`` and save it as
    ``folder/<stem>.pt``: (module, card, training figures)."""
    images, masks, labels = data["images"], data["masks"], data["labels"]

    per_patch = patch_labels(labels[fit], mask_shares(masks[fit], origins, patch))
    pairs = np.argwhere(per_patch >= 0)
    pair_labels = per_patch[per_patch >= 0]
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(pair_labels == 1)
    negatives = np.flatnonzero(pair_labels == 0)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError(f"the {fit.size} training photos hold {positives.size} positive and {negatives.size} "
                         f"negative {patch} px patches: need both")
    keep = min(negatives.size, int(round(negatives_per_positive * positives.size)))
    chosen = np.sort(np.concatenate([positives, rng.choice(negatives, keep, replace=False)]))
    pairs, pair_labels = pairs[chosen], pair_labels[chosen]
    pairs[:, 0] = fit[pairs[:, 0]]
    log(f"patch classifier: {positives.size} positive and {keep} of {negatives.size} negative {patch} px patches "
        f"from {fit.size} photos")
    started = time.perf_counter()
    tiles = crop(images, pairs, origins, patch)
    td = TrainingData(tiles, pair_labels, list(classes), ["red", "green", "blue"],
                      [f"{i}:{k}" for i, k in pairs], description="kahikatea mask-labelled patches")
    name, kwargs = architecture
    result = train_classifier(td, name, TrainOptions(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_fraction=0.1, patience=3,
        weights_path=str(init_model), architecture_kwargs=kwargs,
        name=f"{name} kahikatea mask-labelled {patch} px patches (seed {seed})"), log=log)
    seconds = time.perf_counter() - started
    save_model_files(result.module, result.card, folder / f"{stem}.pt")
    return result.module, result.card, {
        "seconds": round(seconds, 1), "epochs_run": len(result.history), "best_epoch": result.best_epoch,
        "patches": {"positive": int(positives.size), "negative_used": int(keep), "negative_available": int(negatives.size),
                    "per_photo": len(origins), "size": patch, "stride": stride},
        "val_patch_accuracy": result.card.accuracy.get("val_overall")}
