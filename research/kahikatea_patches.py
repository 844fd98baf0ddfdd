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
threshold, ready to mix with the raw model's logits like any other model's. After the optional
whole-photo fine-tune (:func:`photo_finetune`), ``photo_logit`` scores a photo by the smooth
maximum that fine-tune trains instead, with the threshold at 0 (no calibration photos needed).

Its explanation is the patch map itself (what the product's classify writes as a probability
raster): per pixel, the mean positive probability of the patches covering it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from glassbox.core.training.data import TrainingData
from glassbox.core.training.loop import (TrainOptions, freeze_batchnorm_statistics, stratified_folds, stratified_split,
                                         train_classifier)
from glassbox.core.training.saving import save_model_files
from glassbox.core.training.scaling import scale_batch
from glassbox.core.explain.metrics import heatmap_iou

POSITIVE_SHARE = 0.5  # a positive patch lies at least this much inside the expert mask
PHOTO_SHARPNESS = 4.0  # of the smooth maximum that pools patch margins into a photo margin


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
    (:func:`glassbox.core.dihedral.dihedral_views`, as the product's test-time augmentation)."""
    import torch

    from glassbox.core.dihedral import dihedral_views

    if len(images) == 0:
        return np.zeros((0, len(origins)), dtype=np.float32)
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
    patch (:func:`window_margins`): a patch's features see the photo around it (the receptive
    field reaches past the patch's edges) where a cropped patch sees zero padding."""
    import torch

    if len(images) == 0:
        return np.zeros((0, len(origins)), dtype=np.float32)
    module.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(scale_batch(images[start : start + batch], scaling))
            out.append(window_margins(module, x, origins, patch).float().numpy())
    return np.concatenate(out)


def window_margins(module: Any, x: Any, origins: list[tuple[int, int]], patch: int) -> Any:
    """Margins ``(B, len(origins))`` (torch, differentiable) of the patches at ``origins`` of the
    scaled photos ``x`` ``(B, C, H, W)``: the class layer applied to the mean of the trunk's last
    feature cells under each patch. ``module``: a torchvision ResNet (:mod:`core.models.architectures`'
    ``resnet18_64`` and ``resnet18``; its ``input_scale`` is applied to the whole photo). A
    patch's cells start at its origin divided by the trunk's stride (rounded; moved in at the
    photo's far edges), so origins that are not a multiple of the stride get the nearest cells."""
    import torch

    def trunk(t: torch.Tensor) -> torch.Tensor:
        if hasattr(module, "resize_input"):  # core.architectures' resnet18_64 with its input_scale
            t = module.resize_input(t)
        t = module.maxpool(module.relu(module.bn1(module.conv1(t))))
        return module.layer4(module.layer3(module.layer2(module.layer1(t))))

    features = trunk(x)
    rows, cols = features.shape[2:]
    # cells per patch: the trunk's output side for one patch (shape arithmetic only, no weights)
    cells = max(1, int(round(patch * rows / x.shape[2])))
    stride = patch / cells
    starts = [(min(int(round(r / stride)), rows - cells), min(int(round(c / stride)), cols - cells)) for r, c in origins]
    pooled = torch.stack([features[:, :, r0 : r0 + cells, c0 : c0 + cells].mean(dim=(2, 3)) for r0, c0 in starts], dim=1)
    logits = module.fc(pooled)
    return logits[..., 1] - logits[..., 0]


def photo_finetune(module: Any, scaling: Any, data: dict[str, Any], fit: np.ndarray, origins: list[tuple[int, int]],
                   patch: int, epochs: int, seed: int, lr: float = 1e-4, batch_size: int = 8,
                   sharpness: float = PHOTO_SHARPNESS, patch_loss: bool = True,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune a trained patch classifier in place on whole photos (multiple-instance
    learning): per photo, the patch margins in context (:func:`window_margins`) are pooled by a
    smooth maximum (:func:`smooth_max`) into a photo margin trained
    with the photo's label (binary cross-entropy), plus the binary cross-entropy of every patch
    margin with its mask label (:func:`patch_labels`; unused patches skipped), so the patch map
    stays tied to the expert masks. AdamW (weight decay 0.05), one-cycle to ``lr``, batch norm
    statistics frozen (a few photos per batch), left-right mirror augmentation (these oblique
    photos have an up and a down). ``patch_loss`` False drops the patch term: the photo labels
    alone train it (the masks are not used). Returns the training figures."""
    import torch
    import torch.nn.functional as F

    images, masks, labels = data["images"], data["masks"], data["labels"]
    per_patch = patch_labels(labels[fit], mask_shares(masks[fit], origins, patch))
    per_patch_mirrored = patch_labels(labels[fit], mask_shares(masks[fit][:, :, ::-1], origins, patch))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * int(np.ceil(fit.size / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(1, steps), pct_start=0.2)
    history = []
    started = time.perf_counter()
    for epoch in range(epochs):
        module.train()
        freeze_batchnorm_statistics(module)
        order, total = rng.permutation(fit.size), 0.0
        for start in range(0, fit.size, batch_size):
            chosen = np.sort(order[start : start + batch_size])
            x = torch.from_numpy(scale_batch(images[fit[chosen]], scaling))
            known = torch.from_numpy(per_patch[chosen])
            if rng.random() < 0.5:
                x, known = x.flip(3), torch.from_numpy(per_patch_mirrored[chosen])
            margins = window_margins(module, x, origins, patch)
            photo = smooth_max(margins, sharpness)
            loss = F.binary_cross_entropy_with_logits(photo, torch.from_numpy(labels[fit[chosen]]).float())
            if patch_loss and (known >= 0).any():
                loss = loss + F.binary_cross_entropy_with_logits(margins[known >= 0], known[known >= 0].float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * chosen.size
        history.append(round(total / fit.size, 4))
        log(f"photo-level fine-tune: epoch {epoch + 1}/{epochs} loss {history[-1]:.4f}")
    module.eval()
    return {"epochs": epochs, "lr": lr, "sharpness": sharpness, "patch_loss": patch_loss, "photos": int(fit.size),
            "loss": history,
            "seconds": round(time.perf_counter() - started, 1)}


def smooth_max(margins: Any, sharpness: float = PHOTO_SHARPNESS) -> Any:
    """The photo margin :func:`photo_finetune` trains: ``log(mean(exp(sharpness * m))) / sharpness``
    over each photo's patch margins ``(N, P)`` -> ``(N,)``; a torch tensor or a numpy array
    (returned as such). Between the mean and the maximum of the margins, nearer the maximum as
    ``sharpness`` grows."""
    import torch

    values = torch.as_tensor(margins)
    pooled = (torch.logsumexp(sharpness * values, dim=1) - np.log(values.shape[1])) / sharpness
    return pooled if isinstance(margins, torch.Tensor) else pooled.numpy()


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
    (:func:`core.training.loop.stratified_folds`); its seed is offset so that the groups are not
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
                   photo_epochs: int = 0, photo_logit: bool = False, mirror: bool = False,
                   photo_patch_loss: bool = True,
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

    ``photo_epochs`` > 0: each trained classifier is then fine-tuned that many epochs on its
    whole training photos (:func:`photo_finetune`; saved as ``<stem>_photo<E>.pt`` + card and
    ``.train.json``, reused when present) and scored in context; the result file's name gains
    ``_photo<E>``.

    ``photo_logit`` (needs ``photo_epochs`` > 0): a photo's score is the photo margin the
    fine-tune trains (:func:`smooth_max` of its patch margins) and the decision is at 0, where
    that margin says 50 % (no threshold from calibration photos; ``top_k`` unused); the result
    file's name gains ``_logit``.

    ``mirror`` (needs ``context``): every photo is also scored left-right mirrored; its score and
    patch map are the means of both (``_mirror`` in the result file's name).

    ``photo_patch_loss`` False: the whole-photo fine-tune trains on the photo labels only
    (:func:`photo_finetune` without its patch term; ``_photo<E>nopatch`` in the file names).

    ``calibration_fraction`` 0: no calibration photos are held out (all of ``train`` trains the
    classifier); only meaningful with ``photo_logit``, which needs no threshold.

    ``data``: images ``(N, 3, H, W)`` uint8, masks ``(N, H, W)`` bool, labels (1 = positive).
    ``architecture``: (name, kwargs) of ``init_model`` (a Torch model whose weights start the
    network; its class layer is replaced).
    """
    context = context or photo_epochs > 0
    if context and dihedral_tta:
        raise ValueError("context scoring has no test-time augmentation: use one of them")
    if photo_logit and photo_epochs <= 0:
        raise ValueError("photo_logit is the photo-level fine-tune's own score: needs photo_epochs > 0")
    if mirror and not context:
        raise ValueError("mirror scoring is for context scoring (cropped patches have dihedral_tta)")
    if calibration_fraction <= 0 and not photo_logit and cross_fit < 2:
        raise ValueError("without calibration photos only photo_logit scoring has a threshold (0)")
    tuned = f"_photo{photo_epochs}" + ("" if photo_patch_loss else "nopatch") if photo_epochs > 0 else ""
    scoring = (tuned
               + (f"_top{top_k}" if top_k != 1 and not photo_logit else "") + ("_logit" if photo_logit else "")
               + ("_tta" if dihedral_tta else "") + ("_ctx" if context else "") + ("_mirror" if mirror else ""))
    result_file = folder / f"patch{scoring}.result.json"
    stems = [f"patch_cf{j}" for j in range(cross_fit)] if cross_fit >= 2 else ["patch"]
    finetuned = [f"{stem}{tuned}" for stem in stems] if photo_epochs > 0 else []
    if result_file.exists() and all((folder / f"{stem}.pt").exists() for stem in stems + finetuned):
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

    def score(margins: np.ndarray) -> np.ndarray:
        return smooth_max(margins) if photo_logit else photo_scores(margins, top_k)

    for stem, fit, calibration in zip(stems, fits, held):
        finetuned_stem = folder / f"{stem}{tuned}"
        saved = _load_saved(finetuned_stem) if photo_epochs > 0 else None
        if saved is None:
            saved = _load_saved(folder / stem)
            if saved is None:
                module, card, info = _train(data, fit, origins, folder, init_model, architecture, classes, seed,
                                            patch, stride, epochs, negatives_per_positive, batch_size, lr, log, stem)
                info["calibration_photos"] = int(calibration.size)
                (folder / f"{stem}.train.json").write_text(json.dumps(info))
                saved = module, card, info
            if photo_epochs > 0:
                saved = _photo_stage(*saved, data, fit, origins, patch, photo_epochs, seed, finetuned_stem, log,
                                     patch_loss=photo_patch_loss)
        module, card, info = saved
        infos.append(info)

        def margins(photos: np.ndarray, mirrored: bool = False) -> np.ndarray:
            if context:
                photo = images[photos][..., ::-1] if mirrored else images[photos]
                return context_margins(module, card.scaling, np.ascontiguousarray(photo), origins, patch)
            return patch_margins(module, card.scaling, images[photos], origins, patch, dihedral_tta=dihedral_tta)

        views = [False, True] if mirror else [False]
        held_scores.append(np.mean([score(margins(calibration, m)) for m in views], axis=0))
        test_margins.append([margins(test, m) for m in views])
    calibration_photos = np.concatenate(held)
    calibration_scores = np.concatenate(held_scores)
    threshold = 0.0 if photo_logit else best_threshold(calibration_scores, labels[calibration_photos])
    view_margins = np.mean(test_margins, axis=0)  # (views, test photos, patches): the mean over models
    difference = np.mean([score(m) for m in view_margins], axis=0) - threshold

    def map_of(k: int) -> np.ndarray:
        maps = [patch_map(m[k], origins, patch, height, width) for m in view_margins]
        return np.mean([maps[0]] + [m[:, ::-1] for m in maps[1:]], axis=0)  # a mirrored view's map, mirrored back

    info = {
        **(infos[0] if len(infos) == 1 else {"cross_fit": cross_fit, "models": infos,
                                               "calibration_photos": int(calibration_photos.size)}),
        "threshold": threshold, "top_k": None if photo_logit else top_k, "photo_logit": photo_logit,
        "dihedral_tta": dihedral_tta, "context": context, "mirror": mirror,
        "calibration_accuracy": (float(((calibration_scores > threshold) == labels[calibration_photos]).mean())
                                 if calibration_photos.size else None),
        "test_logits": np.stack([-difference / 2, difference / 2], axis=1).tolist(),
        "jaccard": [heatmap_iou(map_of(k), masks[i], threshold=0.5, smooth=0.0)
                    for k, i in enumerate(test) if labels[i] == 1],
    }
    result_file.write_text(json.dumps(info))
    return info


def _photo_stage(module: Any, card: Any, info: dict[str, Any], data: dict[str, Any], fit: np.ndarray,
                 origins: list[tuple[int, int]], patch: int, epochs: int, seed: int, stem: Path,
                 log: Callable[[str], None], patch_loss: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """The photo-level fine-tune of a trained patch classifier (:func:`photo_finetune`), saved
    as ``stem.pt`` + card and ``stem.train.json``: (module, card, training figures of the patch
    stage with ``photo_finetune`` added)."""
    import dataclasses

    figures = photo_finetune(module, card.scaling, data, fit, origins, patch, epochs, seed, patch_loss=patch_loss,
                             log=log)
    card = dataclasses.replace(card, name=f"{card.name} + photo-level fine-tune ({epochs} epochs"
                                          + ("" if patch_loss else ", photo labels only") + ")",
                               training={**card.training, "photo_finetune": figures})
    save_model_files(module, card, stem.with_suffix(".pt"))
    info = {**info, "photo_finetune": figures}
    stem.with_suffix(".train.json").write_text(json.dumps(info))
    return module, card, info


def _load_saved(stem: Path) -> tuple[Any, Any, dict[str, Any]] | None:
    """(module, card, training figures) of the model saved as ``stem.pt`` + card and
    ``stem.train.json``; None unless both exist."""
    from glassbox.core.models.backends import TorchModel

    model_file, train_file = stem.with_suffix(".pt"), stem.with_suffix(".train.json")
    if not (model_file.exists() and train_file.exists()):
        return None
    trained = TorchModel(model_file, "cpu")
    return trained.module, trained.card, json.loads(train_file.read_text())


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
