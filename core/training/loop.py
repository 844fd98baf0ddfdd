"""The training loop (:func:`train_classifier`): options, splits, augmentation, checkpoints."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
import numpy as np
from ..adaptation import batchnorm_layers
from ..dihedral import random_dihedral
from ..models.card import EUROSAT_CLASSES, ClassInfo, ModelCard, Scaling, default_colour
from ..errors import Cancelled, ModelCardError, ModelLoadError, TrainingDataError
from .metrics import Metrics, compute_metrics
from ..radiometry import random_radiometry
from ..io.vectors import VectorLayer
from ..feedback import IsCancelled, Log, Progress, ignore, never
from .data import AUGMENTATION, TrainingData
from .scaling import compute_scaling, scale_batch

#: colours of class names Glassbox knows (EuroSAT's, as its shipped models draw them), for a trained
#: card whose classes carry those names and were given no colours
KNOWN_COLOURS = {c.name: c.color for c in EUROSAT_CLASSES}


# -- training -------------------------------------------------------------------------------
@dataclass
class TrainOptions:
    """Settings of :func:`train_classifier`.

    ``epochs``: at most this many passes over the training tiles. ``batch_size``: tiles per
    step. ``lr``: peak learning rate of AdamW (one-cycle schedule by default, ``schedule``
    "constant" keeps it fixed, as do runs of fewer than 8 steps). ``weight_decay``: AdamW's. ``label_smoothing``: of the
    cross-entropy loss. ``seed``: the split, initial weights, tile order and augmentation all
    follow from it. ``val_fraction``: share of each class held out for validation (stratified;
    0 = none: no early stopping, the last epoch is kept). ``patience``: stop after this many
    epochs without a better validation accuracy (0 = never stop early); the best epoch's weights
    are kept. ``weights_path``: optional state dict to start from (see
    :func:`load_initial_weights`). ``device``: cpu, cuda or auto. ``threads``: torch CPU threads
    (None: torch's default). ``augment``: dihedral augmentation (:data:`AUGMENTATION`).
    ``name``, ``gsd`` (metres; default the data's, else 10), ``colours`` (class name ->
    ``#rrggbb``) and ``architecture_kwargs`` go into the card.
    ``scaling``: a fixed card scaling to use instead of computing one from the training tiles
    (e.g. the scaling of the model being fine-tuned, whose weights expect it).
    ``initial_state``: a state dict (tensors) to start from, loaded like ``weights_path``
    (matching names and shapes only; :func:`load_matching_weights`), after it when both are
    given; ``initial_state_name`` names it in the log and the card.

    Hooks for training scripts (the defaults leave all of them off):

    * ``split``: ``(train, val)`` tile indices into the data, used instead of
      :func:`stratified_split` (``val_fraction`` is then ignored; ``val`` may be empty; tiles in
      neither are not used, e.g. a test split); ``split_description`` names the rule in the card.
    * ``shift``: augmentation: translate each training tile by a random whole-pixel offset of up
      to this many pixels along each axis (reflection padding, :func:`random_shift`), after the
      dihedral transform; 0 = off.
    * ``teacher_logits``: knowledge distillation: float logits ``(N, classes)`` of a teacher,
      one row per tile of the data (or one per training tile, in ascending index order); the
      loss becomes ``(1 - distill_weight) * label loss + distill_weight *``
      :func:`distillation_loss` at ``distill_temperature``.
    * ``checkpoint_path``: after every finished epoch a checkpoint (model, optimiser, schedule,
      random-number states, history, best weights and the settings) is written there
      atomically. When the file exists at the start, training resumes after its last finished
      epoch and ends with the same weights as an uninterrupted run; it must have been written
      with the same settings (:func:`checkpoint_config`, plus ``checkpoint_config``, the
      caller's own settings, e.g. the data's origin), else :class:`TrainingDataError`. With
      ``reschedule`` a checkpoint with another ``epochs`` is accepted: the one-cycle schedule
      is rebuilt for the new length and continues at the current step (recorded in the card's
      ``training.schedule_changes``). A cancelled run leaves the checkpoint of its last
      finished epoch (there are no mid-epoch checkpoints). The file is left in place when
      training ends: rerunning returns the same result without training again.
    * ``radiometric``: augmentation: each training tile's values changed at random, as other
      seasons, sensors and atmospheres change them (:func:`core.radiometry.random_radiometry`: gain
      and offset per band, brightness, contrast, gamma, haze, noise, glint speckle, blur), with
      this strength (0 = off, 1 = the full ranges), on the raw values before scaling;
      ``radiometric_full_scale`` is the raw value of full brightness (None: 255 for uint8 tiles,
      else 10000, Sentinel-2 L1C's reflectance 1). ``radiometric_fraction`` (0..1] is the share of
      training tiles changed (each tile drawn independently per batch); the others stay as
      they are, so the network keeps seeing the clean distribution it will mostly meet.
    * ``freeze_batchnorm``: batch-norm layers keep the running statistics they start with
      (from the initial weights) and normalise with them while training; their scale and shift
      still learn. For fine-tuning a trained model on changed (e.g. radiometrically augmented)
      tiles without moving the statistics its clean accuracy depends on.
    * ``train_only``: the name of one submodule (e.g. ``"corrector"`` of the ``corrected``
      architecture): only its parameters learn; every other part keeps its (initial) weights and
      runs in eval mode (batch norm with its running statistics, no dropout) while training.
    * ``keep``: which epoch's weights are returned: ``"best"`` (the default: the best clean
      validation accuracy, ties to the lower validation loss) or ``"last"`` (validation still
      measured and logged; for training where clean validation accuracy is not the aim, e.g. an
      input corrector that starts as the identity and would be kept at its first epoch).
    * ``stop_after_epoch`` (> 0) and ``stop_at`` (POSIX time, seconds): stop at an epoch end
      (after its checkpoint is written; both need ``checkpoint_path``) by raising
      :class:`TrainingStopped`: after that epoch, or at the first epoch end from which one more
      epoch, as long as the last, would end after ``stop_at``.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 5
    weights_path: str | None = None
    device: str = "cpu"
    threads: int | None = None
    augment: bool = True
    schedule: str = "onecycle"
    channels_last: bool = True
    name: str | None = None
    gsd: float | None = None
    colours: dict[str, str] | None = None
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    scaling: Scaling | None = None
    initial_state: dict[str, Any] | None = None
    initial_state_name: str | None = None
    split: tuple[Sequence[int], Sequence[int]] | None = None
    split_description: str | None = None
    shift: int = 0
    teacher_logits: Any = None
    distill_weight: float = 0.7
    distill_temperature: float = 2.0
    checkpoint_path: str | Path | None = None
    checkpoint_config: dict[str, Any] | None = None
    reschedule: bool = False
    stop_after_epoch: int = 0
    stop_at: float | None = None
    radiometric: float = 0.0
    radiometric_full_scale: float | None = None
    radiometric_fraction: float = 1.0
    freeze_batchnorm: bool = False
    train_only: str | None = None
    keep: str = "best"


class TrainingStopped(Cancelled):
    """Training stopped at an epoch end as asked (``stop_after_epoch`` / ``stop_at``); its
    checkpoint (``checkpoint``, after epoch ``epoch``) lets the same call resume."""

    def __init__(self, message: str, epoch: int, checkpoint: str):
        super().__init__(message)
        self.epoch = epoch
        self.checkpoint = checkpoint


@dataclass
class TrainingResult:
    """``module`` (best weights, eval mode, on the CPU), its ``card``, per-epoch ``history``
    (dicts: epoch, loss, train_acc, val_acc, val_loss, lr, seconds), the tile indices of the
    split and the validation metrics of the kept weights (None without validation). Unpacks
    as ``module, card, history``."""

    module: Any
    card: ModelCard
    history: list[dict[str, Any]]
    train_index: np.ndarray
    val_index: np.ndarray
    val_metrics: Metrics | None
    best_epoch: int
    stopped_early: bool
    #: vector outputs built when saving (``"samples"``), whether written to a file or not
    layers: dict[str, VectorLayer] = field(default_factory=dict)
    #: one-cycle schedules rebuilt on resume (``reschedule``): after_epoch, from_epochs, to_epochs
    schedule_changes: list[dict[str, int]] = field(default_factory=list)
    #: the epoch after which this call resumed from a checkpoint (0: trained from the start)
    resumed_after_epoch: int = 0

    def __iter__(self) -> Iterator[Any]:
        return iter((self.module, self.card, self.history))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) tile indices, sorted. Per class, ``round(n * val_fraction)`` tiles chosen at
    random (``seed``) go to validation, at least 1 and at most n - 1 when the class has 2 or
    more tiles and ``val_fraction`` > 0; a class with one tile stays in training."""
    if not 0 <= val_fraction < 1:
        raise TrainingDataError("the validation share must be at least 0 and below 1 (0-99 %)")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_val = int(round(idx.size * val_fraction))
        if val_fraction > 0 and idx.size >= 2:
            n_val = min(max(1, n_val), idx.size - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def validation_split(data: TrainingData, val_fraction: float, seed: int,
                     log: Log | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, val) tile indices and the rule, in words, for the model card.

    Tiles cut from polygons (``data.footprints`` set) are split **by polygon**
    (:func:`grouped_split` on ``data.sources``): all tiles of one polygon on one side, about
    ``val_fraction`` of each class's tiles to validation. Tiles of one polygon are neighbours,
    often overlapping, and alike; split one by one, validation would score the network on the
    polygons it trained on (an audit measured 83 % against 42 % split by polygon on a raster whose
    classes carry no signal). When those shares cannot be met (few polygons), whole polygons are
    still held out class by class (:func:`_polygon_per_class_split`), and only a class of a single
    polygon has its tiles split at random, with a warning naming it; when no class has 2 polygons,
    all tiles are split at random per class with a warning that validation accuracy is then
    optimistic. Tiles from a folder are split at random per class (:func:`stratified_split`)."""
    log = log or ignore
    stratified = f"stratified random, {val_fraction:.0%} of each class to validation, seed {seed}"
    if data.footprints is None or val_fraction <= 0:
        return (*stratified_split(data.labels, val_fraction, seed), stratified)
    try:
        part = grouped_split(data.labels, data.sources, [val_fraction, 1.0 - val_fraction], seed)
    except TrainingDataError:
        part = None
    if part is not None:
        val_idx, train_idx = np.flatnonzero(part == 0), np.flatnonzero(part == 1)
        complete = all(np.any(data.labels[train_idx] == c) and np.any(data.labels[val_idx] == c)
                       for c in np.unique(data.labels))
        if complete:
            polygons = len(set(data.sources[i] for i in val_idx))
            return train_idx, val_idx, (f"by polygon: {polygons} of {len(set(data.sources))} polygons (all their tiles) "
                                        f"to validation, about {val_fraction:.0%} of each class's tiles, seed {seed}")
    few = _polygon_per_class_split(data.labels, data.sources, val_fraction, seed)
    if few is not None:  # few polygons: the shares cannot come near val_fraction, whole polygons still can
        train_idx, val_idx, single = few
        polygons = len(set(data.sources[i] for i in val_idx) - {data.sources[i] for i in train_idx})
        rule = (f"by polygon: {polygons} of {len(set(data.sources))} polygons (all their tiles) to validation, per "
                f"class the polygons nearest {val_fraction:.0%} of its tiles with at least one on each side, seed "
                f"{seed}")
        split = [c for c in single if np.count_nonzero(data.labels == c) > 1]  # a lone tile is not split at all
        if not split:
            return train_idx, val_idx, rule
        named = ", ".join(data.class_names[c] for c in split)
        log(f"WARNING: class(es) {named} have one polygon each: their tiles are split at random, so their validation "
            "tiles share a polygon with training tiles and their validation accuracy is optimistic (the other classes "
            "are held out by polygon); add polygons, or evaluate on other polygons (glassbox:evaluate)")
        return train_idx, val_idx, rule + f"; class(es) {named} (one polygon each) split tile by tile at random"
    log("WARNING: too few polygons to hold whole polygons out for validation: tiles are split at random, so "
        "validation tiles share polygons with training tiles and the validation accuracy is optimistic; add "
        "polygons, or evaluate on other polygons (glassbox:evaluate)")
    return (*stratified_split(data.labels, val_fraction, seed),
            stratified + " (too few polygons to split by polygon)")


def _polygon_per_class_split(labels: np.ndarray, sources: Sequence[str], val_fraction: float,
                             seed: int) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
    """(train, val) tile indices holding whole polygons out, class by class: the class's polygons
    in a seeded random order go to validation until their tiles reach ``val_fraction`` of the
    class's tiles, at least one polygon and never all; and the classes of one polygon, whose
    tiles are split at random instead (as :func:`stratified_split`). None when no class has 2
    polygons or a polygon holds tiles of two classes."""
    sources = np.asarray(sources)
    rng = np.random.default_rng(seed)
    validation = np.zeros(labels.size, dtype=bool)
    single: list[int] = []
    for c in np.unique(labels):
        in_class = labels == c
        polygons = sorted(set(sources[in_class]))
        if np.any(np.isin(sources[~in_class], polygons)):
            return None
        if len(polygons) < 2:
            single.append(int(c))
            members = np.flatnonzero(in_class)
            count = int(round(val_fraction * members.size)) if members.size > 1 else 0
            validation[rng.permutation(members)[:count]] = True
            continue
        target = val_fraction * in_class.sum()
        taken, chosen = 0, 0
        for polygon in rng.permutation(polygons):
            if chosen == len(polygons) - 1 or taken >= target:
                break
            tiles = in_class & (sources == polygon)
            n = int(tiles.sum())
            # take a polygon only when it brings the class's validation tiles nearer the target
            if abs(taken + n - target) >= abs(taken - target):
                continue
            validation |= tiles
            taken += n
            chosen += 1
        if not chosen:  # every polygon overshoots: hold out the smallest one
            smallest = min(polygons, key=lambda p: int((in_class & (sources == p)).sum()))
            validation |= in_class & (sources == smallest)
    if len(single) == np.unique(labels).size:
        return None
    return np.flatnonzero(~validation), np.flatnonzero(validation), single


def stratified_folds(labels: np.ndarray, folds: int, seed: int, rotate: bool = False) -> np.ndarray:
    """Fold index (0..folds-1) of every sample: per class, shuffled (``seed``) and dealt to the
    folds in turn, so each fold holds about the same share of each class. With ``rotate`` the
    first fold dealt to moves on with the classes (fold sizes stay balanced when classes are
    small), as the shipped 13-band models' cross-validations were split."""
    fold = np.empty(labels.size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    offset = 0
    for c in np.unique(labels):
        if rotate:
            idx = rng.permutation(np.nonzero(labels == c)[0])
            fold[idx] = (np.arange(idx.size) + offset) % folds
            offset += idx.size
        else:
            idx = np.flatnonzero(labels == c)
            idx = idx[rng.permutation(idx.size)]
            fold[idx] = np.arange(idx.size) % folds
    return fold


def grouped_split(labels: Sequence[Any], groups: Sequence[Any], shares: Sequence[float], seed: int,
                  tries: int = 256) -> np.ndarray:
    """Part index (0..len(shares)-1) of every sample, all samples of one group in the same part
    (e.g. the tiles of one polygon, the photos of neighbouring aerial frames: near-duplicates
    never end up on both sides of a split), each part holding about ``shares[p]`` (normalised
    to sum 1) of every class.

    Groups are dealt greedily, largest first, each to the part where it brings the per-class
    counts closest to their targets (squared deviation, each class's counts divided by its
    total so small classes weigh as much as large ones); ``tries`` orders are tried (sizes
    jittered at random, ``numpy.random.default_rng(seed)``) and the best kept. Deterministic for
    the same labels, groups (as a set: the order of the samples does not matter), shares, seed
    and ``tries``. When groups are few and large, the balance can only be approximate: check it.
    Raises :class:`TrainingDataError` with fewer groups than parts or a part left empty."""
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    shares = np.asarray(shares, dtype=np.float64)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise TrainingDataError(f"{labels.size} labels but {groups.size} group names")
    if shares.ndim != 1 or shares.size < 2 or not np.all(shares > 0):
        raise TrainingDataError("a grouped split needs at least 2 parts, each with a share above 0")
    shares = shares / shares.sum()
    names, group_of = np.unique(groups, return_inverse=True)
    classes, class_of = np.unique(labels, return_inverse=True)
    if names.size < shares.size:
        raise TrainingDataError(f"{names.size} group(s) cannot fill {shares.size} parts")
    counts = np.zeros((names.size, classes.size))
    np.add.at(counts, (group_of, class_of), 1)
    totals = counts.sum(axis=0)
    target = shares[:, None] * totals[None, :]
    sizes = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    best_cost, best = np.inf, None
    for _ in range(max(1, int(tries))):
        order = np.argsort(-sizes * rng.uniform(0.5, 1.5, names.size), kind="stable")
        parts = rng.permutation(shares.size)  # ties go to the first of a random order of the parts
        held = np.zeros_like(target)
        part_of = np.empty(names.size, dtype=np.int64)
        for g in order:
            before = (((held[parts] - target[parts]) / totals) ** 2).sum(axis=1)
            after = (((held[parts] + counts[g] - target[parts]) / totals) ** 2).sum(axis=1)
            p = parts[int(np.argmin(after - before))]
            held[p] += counts[g]
            part_of[g] = p
        if np.any(held.sum(axis=1) == 0):
            continue
        cost = float((((held - target) / totals) ** 2).sum())
        if cost < best_cost - 1e-12:
            best_cost, best = cost, part_of
    if best is None:
        raise TrainingDataError(f"the {names.size} groups could not fill {shares.size} parts")
    return best[group_of]


def grouped_folds(labels: Sequence[Any], groups: Sequence[Any], folds: int, seed: int, tries: int = 256) -> np.ndarray:
    """Fold index (0..folds-1) of every sample for grouped, class-stratified cross-validation:
    :func:`grouped_split` into ``folds`` equal shares."""
    if folds < 2:
        raise TrainingDataError("cross-validation needs at least 2 folds")
    return grouped_split(labels, groups, [1.0 / folds] * folds, seed, tries)


def random_shift(x: Any, max_shift: int, generator: Any) -> Any:
    """Translate each tile of a batch ``(N, C, H, W)`` (torch) by a random whole-pixel offset
    in ``-max_shift..max_shift`` along each axis (drawn from ``generator``), filling the
    uncovered border by reflection."""
    import torch
    from torch import nn

    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def distillation_loss(student: Any, teacher: Any, temperature: float) -> Any:
    """Hinton et al.'s soft-target loss: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``,
    averaged over the batch (torch logits ``(N, classes)``)."""
    from torch import nn

    log_p = nn.functional.log_softmax(student / temperature, dim=1)
    q = nn.functional.softmax(teacher / temperature, dim=1)
    return nn.functional.kl_div(log_p, q, reduction="batchmean") * temperature**2


def load_initial_weights(module: Any, path: str | Path, log: Log | None = None) -> tuple[list[str], list[str]]:
    """Copy the weights of a state-dict file (read with ``weights_only=True``; pickles are
    refused) into ``module`` where name and shape match; keys whose shape differs (e.g. the
    first convolution for another band count, the last layer for other classes) or that the
    module lacks are skipped and logged. Returns (loaded keys, skipped keys); no matching key
    at all raises :class:`ModelLoadError`."""
    from ..models.backends import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"initial weights file not found: {path}")
    return load_matching_weights(module, load_state_dict(path), path.name, log)


def load_matching_weights(module: Any, state: dict[str, Any], source: str, log: Log | None = None
                          ) -> tuple[list[str], list[str]]:
    """Copy the tensors of ``state`` into ``module`` where name and shape match (see
    :func:`load_initial_weights`); ``source`` names the weights in the log and errors."""
    log = log or ignore
    own = module.state_dict()
    loaded, skipped = [], []
    usable = {}
    for key, value in state.items():
        if key in own and tuple(own[key].shape) == tuple(value.shape):
            usable[key] = value
            loaded.append(key)
        else:
            reason = "not in this network" if key not in own else \
                f"shape {tuple(value.shape)} != {tuple(own[key].shape)}"
            skipped.append(f"{key} ({reason})")
    if not usable:
        raise ModelLoadError(f"{source}: none of its {len(state)} weights fit this network")
    module.load_state_dict(usable, strict=False)
    untouched = [k for k in own if k not in usable]
    log(f"initial weights {source}: loaded {len(loaded)} tensors"
        + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else "")
        + (f"; {len(untouched)} tensors keep their random start: {', '.join(untouched[:12])}"
           + (" ..." if len(untouched) > 12 else "") if untouched else ""))
    return loaded, skipped


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of ``order``; a final batch of one tile joins the one before (batch
    normalisation cannot train on a single tile)."""
    parts = [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
    if len(parts) > 1 and parts[-1].size < 2:
        single = parts.pop()
        parts[-1] = np.concatenate([parts[-1], single])
    return parts


def _predict_logits(module: Any, tiles: np.ndarray, scaling: Scaling, batch_size: int, device: str,
                    is_cancelled: IsCancelled, channels_last: bool = False) -> np.ndarray:
    import torch

    module.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, tiles.shape[0], batch_size):
            if is_cancelled():
                raise Cancelled("training cancelled; no model was written")
            x = torch.from_numpy(scale_batch(tiles[start : start + batch_size], scaling)).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(module(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(labels.size), labels].mean()) if labels.size else float("nan")


def predict_logits(module: Any, tiles: np.ndarray, scaling: Scaling, batch_size: int = 256,
                   is_cancelled: IsCancelled | None = None) -> np.ndarray:
    """Logits ``(N, classes)`` of a Torch module (eval mode, CPU) on raw tiles scaled with
    ``scaling`` (e.g. a teacher's logits for :attr:`TrainOptions.teacher_logits`; wrap the
    module in :class:`core.models.architectures.DihedralTTA` for the mean over the 8 rotations/flips)."""
    return _predict_logits(module, tiles, scaling, batch_size, "cpu", is_cancelled or never)


def module_model(module: Any, card: ModelCard) -> Any:
    """A :class:`core.models.backends.ClassifierModel` around a Torch module in memory (e.g.
    :attr:`TrainingResult.module`) with ``card``, for :func:`evaluate` (test-time augmentation
    included) without writing the model to a file first."""
    from ..models.backends import ClassifierModel

    class ModuleModel(ClassifierModel):
        backend = "torch"

        def predict_logits(self, batch: np.ndarray) -> np.ndarray:
            import torch

            with torch.inference_mode():
                return self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()

    model = ModuleModel(card, Path(card.name or "model in memory"), "cpu")
    model.module = module.eval()
    return model


def _given_split(split: tuple[Sequence[int], Sequence[int]], num_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """``TrainOptions.split`` checked: sorted int64 (train, val) tile indices."""
    try:
        train, val = (np.asarray(part, dtype=np.int64).reshape(-1) for part in split)
    except (TypeError, ValueError) as exc:
        raise TrainingDataError(f"the split must be (train indices, validation indices): {exc}") from exc
    both = np.concatenate([train, val])
    if both.size and (both.min() < 0 or both.max() >= num_tiles):
        raise TrainingDataError(f"a split index is not a tile index (0..{num_tiles - 1})")
    if np.unique(both).size != both.size:
        raise TrainingDataError("the split names a tile twice (within or across training and validation)")
    if train.size < 2:
        raise TrainingDataError("the split needs at least 2 training tiles")
    return np.sort(train), np.sort(val)


def _teacher_rows(options: TrainOptions, data: TrainingData, train_idx: np.ndarray) -> np.ndarray | None:
    """The teacher logits of the training tiles (float32, in ``train_idx`` order), or None."""
    if options.teacher_logits is None:
        return None
    if not 0.0 <= options.distill_weight <= 1.0 or options.distill_temperature <= 0:
        raise TrainingDataError("the distillation weight must lie in 0..1 and its temperature be positive")
    logits = np.asarray(options.teacher_logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] != len(data.class_names):
        raise TrainingDataError(f"teacher logits must be (tiles, {len(data.class_names)} classes), not {logits.shape}")
    if logits.shape[0] == data.num_tiles:
        return np.ascontiguousarray(logits[train_idx])
    if logits.shape[0] == train_idx.size:
        return logits
    raise TrainingDataError(f"{logits.shape[0]} teacher logit rows for {data.num_tiles} tiles "
                            f"({train_idx.size} for training): give one row per tile or per training tile")


# -- checkpoints ----------------------------------------------------------------------------
CHECKPOINT_FORMAT = "glassbox.core.training checkpoint 1"


def _digest(*arrays: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        if hasattr(a, "detach"):
            a = a.detach().cpu().contiguous().numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.hexdigest()[:16]


def checkpoint_config(data: TrainingData, architecture: str, options: TrainOptions, train_index: np.ndarray,
                      val_index: np.ndarray, scaling: Scaling) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it (JSON values): the
    architecture, the optimisation settings, the tiles and labels (digests), the split, the
    scaling, the initial weights and teacher logits (as digests), and ``options.checkpoint_config``."""
    import dataclasses
    import json

    teacher = options.teacher_logits
    config = {
        "architecture": architecture, "architecture_kwargs": dict(options.architecture_kwargs),
        "epochs": options.epochs, "batch_size": options.batch_size, "lr": options.lr,
        "weight_decay": options.weight_decay, "label_smoothing": options.label_smoothing, "seed": options.seed,
        "schedule": options.schedule, "patience": options.patience, "augment": options.augment,
        "shift": options.shift, "radiometric": options.radiometric,
        "radiometric_full_scale": options.radiometric_full_scale,
        "radiometric_fraction": options.radiometric_fraction, "freeze_batchnorm": options.freeze_batchnorm,
        **({"train_only": options.train_only} if options.train_only else {}),
        **({"keep": options.keep} if options.keep != "best" else {}),
        "tiles": [*data.tiles.shape, str(data.tiles.dtype), _digest(data.tiles)], "class_names": list(data.class_names),
        "labels": _digest(data.labels), "train_index": _digest(train_index), "val_index": _digest(val_index),
        "scaling": dataclasses.asdict(scaling),
        "weights_path": Path(options.weights_path).name if options.weights_path else None,
        "initial_state": None if options.initial_state is None else
        [options.initial_state_name, _digest(*[options.initial_state[k] for k in sorted(options.initial_state)])],
        "distillation": None if teacher is None else
        {"teacher_logits": _digest(np.asarray(teacher, dtype=np.float32)), "weight": options.distill_weight,
         "temperature": options.distill_temperature},
        "caller": options.checkpoint_config or {},
    }
    return json.loads(json.dumps(config, default=str))


def _write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """torch.save to a temporary file beside ``path``, then rename it into place."""
    import os

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: settings of checkpoint_config newer than the checkpoint format, with the value that means "off"
CHECKPOINT_NEW_SETTINGS = {"radiometric": 0.0, "radiometric_full_scale": None, "radiometric_fraction": 1.0,
                           "freeze_batchnorm": False}


def _read_checkpoint(path: Path, config: dict[str, Any], reschedule: bool) -> dict[str, Any]:
    """The checkpoint at ``path`` (``weights_only=True``), checked against this run's ``config``."""
    import json

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingDataError(f"cannot read the training checkpoint {path}: {exc}; delete it to start afresh") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise TrainingDataError(f"{path} is not a checkpoint of core.training.loop.train_classifier; "
                                "delete it or choose another checkpoint path")
    # settings added after a checkpoint was written count as their defaults (off) in it
    saved = dict(CHECKPOINT_NEW_SETTINGS, **checkpoint["config"])
    ignore = {"epochs"} if reschedule else set()
    differ = sorted(k for k in set(saved) | set(config) if k not in ignore and saved.get(k) != config.get(k))
    if differ:
        def shown(value: Any) -> str:
            text = json.dumps(value)
            return text if len(text) <= 100 else text[:97] + "..."

        detail = "; ".join(f"{k}: {shown(saved.get(k))} in the checkpoint, {shown(config.get(k))} now" for k in differ)
        raise TrainingDataError(f"the training checkpoint {path} was written with other settings ({detail}); "
                                "run with the same settings to resume, or delete it to start afresh"
                                + ("" if reschedule or "epochs" not in differ else
                                   " (a different number of epochs can continue with reschedule)"))
    return checkpoint


def _changed_radiometry(raw: np.ndarray, full_scale: float, rng: np.random.Generator,
                        options: TrainOptions) -> np.ndarray:
    """A training batch ``(N, bands, H, W)`` with random radiometry on ``options.radiometric_fraction``
    of its tiles (all of them at 1, drawing nothing extra from ``rng``, as before the option existed)."""
    if options.radiometric_fraction >= 1:
        return random_radiometry(raw, full_scale, rng, options.radiometric)
    chosen = np.nonzero(rng.random(raw.shape[0]) < options.radiometric_fraction)[0]
    changed = np.array(raw, copy=True)
    if chosen.size:
        changed[chosen] = random_radiometry(raw[chosen], full_scale, rng, options.radiometric)
    return changed


def freeze_batchnorm_statistics(module: Any) -> None:
    """Put every batch-norm layer of ``module`` in eval mode (call after ``module.train()``): it
    normalises with its stored running statistics and no longer updates them; its scale and
    shift stay trainable."""
    for layer in batchnorm_layers(module):
        layer.eval()


def trainable_parameters(module: Any, train_only: str | None) -> list[Any]:
    """The parameters the optimiser updates: all of ``module``'s, or with ``train_only`` those of
    that direct submodule, the others then frozen (``requires_grad`` off)."""
    if not train_only:
        return list(module.parameters())
    children = dict(module.named_children())
    if train_only not in children:
        raise TrainingDataError(f"cannot train only '{train_only}': the network's parts are "
                                f"{', '.join(children) or 'none'}")
    for name, child in children.items():
        for parameter in child.parameters():
            parameter.requires_grad_(name == train_only)
    trained = list(children[train_only].parameters())
    if not trained:
        raise TrainingDataError(f"'{train_only}' has no parameters to train")
    return trained


def check_training_setup(architecture: str, device: str, tile_size: int | None = None, num_bands: int | None = None,
                         architecture_kwargs: dict | None = None, weights_path: str | Path | None = None) -> str:
    """What :func:`train_classifier` would refuse about the network, the device and the initial
    weights, checked before any tile is cut (minutes on a large raster): an unknown architecture,
    a tile size it cannot take (by building it once, untrained, when ``tile_size`` is known), CUDA
    asked for where torch sees none, and initial weights that cannot be read or share no layer
    with the network. Returns the device training runs on."""
    import torch

    from ..models.architectures import ARCHITECTURES, build_model
    from ..models.backends import resolve_device

    if architecture not in ARCHITECTURES:
        raise TrainingDataError(f"unknown architecture '{architecture}'; choose one of {', '.join(sorted(ARCHITECTURES))}")
    resolved = resolve_device(device)
    if resolved == "cuda" and not torch.cuda.is_available():
        raise TrainingDataError("CUDA was asked for but torch sees no CUDA device here; train on the cpu "
                                "(or 'auto', which takes CUDA where there is one)")
    trial = None
    if tile_size:
        refusals = []
        for bands in ([num_bands] if num_bands else [3, 13]):  # band count unknown: either common one will do
            try:
                trial = build_model(architecture, bands, 2, int(tile_size), **dict(architecture_kwargs or {}))
                break
            except ModelCardError as exc:
                refusals.append(exc)
        else:
            raise TrainingDataError(f"{refusals[0]}; choose another tile size or network") from refusals[0]
    if weights_path:
        if trial is not None:
            load_initial_weights(trial, weights_path)
        else:
            from ..models.backends import load_state_dict

            if not Path(weights_path).is_file():
                raise ModelLoadError(f"initial weights file not found: {weights_path}")
            load_state_dict(Path(weights_path))
    return resolved


def train_classifier(
    data: TrainingData,
    architecture: str,
    options: TrainOptions | None = None,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
) -> TrainingResult:
    """Train ``architecture`` (a name in :data:`core.models.architectures.ARCHITECTURES`) on ``data``.

    Steps: stratified seeded split (:func:`stratified_split`); card scaling from the training
    tiles (:func:`compute_scaling`); the network built for the data's band count, class count
    and tile size, optionally started from ``options.weights_path``; AdamW with a one-cycle
    learning rate, cross-entropy with label smoothing, dihedral augmentation; after every epoch
    the validation accuracy, a log line ``epoch i/n loss .. train_acc .. val_acc ..`` and early
    stopping after ``patience`` epochs without improvement; the best epoch's weights are kept
    (ties: lower validation loss). ``progress`` gets 0..100 % after every training batch and
    ``is_cancelled`` is checked before every batch (training and validation):
    :class:`Cancelled` is raised within one batch.

    The card's ``accuracy`` holds the validation metrics of the kept weights (measured on tiles
    held out from training, but from the same source, so independent test data evaluated with
    :func:`evaluate` is the better measure).

    Scripts can give the split, a random shift, teacher logits for distillation, a checkpoint
    to resume from and when to stop (see :class:`TrainOptions`); without them training is as
    described above.
    """
    import torch
    from torch import nn

    from ..models.architectures import ARCHITECTURES, build_model
    from ..models.backends import resolve_torch_device

    options = options or TrainOptions()
    progress = progress or ignore
    is_cancelled = is_cancelled or never
    log = log or ignore
    if architecture not in ARCHITECTURES:
        raise TrainingDataError(f"unknown architecture '{architecture}'; choose one of {', '.join(sorted(ARCHITECTURES))}")
    if options.epochs < 1 or options.batch_size < 2:
        raise TrainingDataError("training needs at least 1 epoch and a batch size of at least 2")
    if options.split is not None:
        train_idx, val_idx = _given_split(options.split, data.num_tiles)
        used = np.concatenate([train_idx, val_idx])
        counts = {n: int(c) for n, c in zip(data.class_names,
                                            np.bincount(data.labels[used], minlength=len(data.class_names)))}
    else:
        counts = data.class_counts()
    present = [n for n, c in counts.items() if c > 0]
    if len(present) < 2:
        raise TrainingDataError(f"training needs tiles of at least 2 classes; found {counts}")
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        raise TrainingDataError(f"class(es) {', '.join(empty)} have no tiles; remove them or add tiles")
    if options.shift < 0 or options.shift >= data.tile_size:
        raise TrainingDataError(f"the random shift must be 0..{data.tile_size - 1} pixels, not {options.shift}")
    if not 0 < options.radiometric_fraction <= 1:
        raise TrainingDataError(f"the share of tiles with random radiometry must lie in (0, 1], "
                                f"not {options.radiometric_fraction}")
    if options.keep not in ("best", "last"):
        raise TrainingDataError(f"keep must be 'best' or 'last', not '{options.keep}'")
    if (options.stop_after_epoch or options.stop_at is not None) and not options.checkpoint_path:
        raise TrainingDataError("stopping at an epoch end needs a checkpoint path to resume from")
    device = resolve_torch_device(options.device)
    if options.threads:
        torch.set_num_threads(int(options.threads))
    started = time.perf_counter()

    if options.split is None:
        train_idx, val_idx, split_rule = validation_split(data, options.val_fraction, options.seed, log)
    x_train, y_train = data.tiles[train_idx], data.labels[train_idx]
    teacher = _teacher_rows(options, data, train_idx)
    x_val, y_val = data.tiles[val_idx], data.labels[val_idx]
    scaling = options.scaling if options.scaling is not None else compute_scaling(x_train, seed=options.seed)
    log(f"training {architecture} on {train_idx.size} tiles, validating on {val_idx.size} "
        f"({len(data.class_names)} classes, {data.num_bands} bands, {data.tile_size} px tiles, device {device})")
    log("tiles per class: " + "; ".join(f"{n} {c}" for n, c in counts.items()))
    unvalidated = [n for i, n in enumerate(data.class_names) if val_idx.size and not np.any(data.labels[val_idx] == i)]
    if unvalidated:
        log(f"WARNING: class(es) {'; '.join(unvalidated)} have no validation tile (a class needs 2 tiles or more "
            "for one): their validation accuracy is not measured")

    torch.manual_seed(options.seed)
    module = build_model(architecture, data.num_bands, len(data.class_names), data.tile_size,
                         **dict(options.architecture_kwargs))
    if options.weights_path:
        load_initial_weights(module, options.weights_path, log)
    if options.initial_state is not None:
        load_matching_weights(module, options.initial_state, options.initial_state_name or "initial state", log)
    channels_last = bool(options.channels_last and device == "cpu")
    if any(layer.num_features < 16 for layer in batchnorm_layers(module)):
        # torch 2.14.1's CPU backward in channels-last layout corrupts memory and aborts the process
        # for a resnet18_64 of width 8 on batches of odd size (seen on an AVX-512 CPU): tiny networks
        # train in the default layout, which costs them little
        channels_last = False
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    trained = trainable_parameters(module, options.train_only)
    optimiser = torch.optim.AdamW(trained, lr=options.lr, weight_decay=options.weight_decay)
    generator = torch.Generator().manual_seed(options.seed)
    order_rng = np.random.default_rng(options.seed)
    radiometry_rng = np.random.default_rng([options.seed, 7919])
    full_scale = options.radiometric_full_scale or (255.0 if data.tiles.dtype == np.uint8 else 10000.0)
    steps_per_epoch = len(_batches(np.arange(train_idx.size), options.batch_size))
    total_steps = steps_per_epoch * options.epochs
    if options.schedule == "onecycle" and total_steps >= 8:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=options.lr, total_steps=total_steps, pct_start=0.25)
    elif options.schedule in ("constant", "onecycle"):
        scheduler = None  # a one-cycle schedule needs a few steps; very short runs keep lr fixed
    else:
        raise TrainingDataError(f"unknown learning-rate schedule '{options.schedule}' (onecycle or constant)")
    criterion = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
    teacher_t = None if teacher is None else torch.from_numpy(teacher)

    history: list[dict[str, Any]] = []
    best = (-1.0, float("inf"))
    best_state = None
    best_epoch = 0
    since_best = 0
    stopped_early = False
    step = 0
    start_epoch = 0
    seconds_before = 0.0
    schedule_changes: list[dict[str, int]] = []
    checkpoint_path = Path(options.checkpoint_path) if options.checkpoint_path else None
    config = checkpoint_config(data, architecture, options, train_idx, val_idx, scaling) if checkpoint_path else None
    if checkpoint_path is not None and checkpoint_path.exists():
        ckpt = _read_checkpoint(checkpoint_path, config, options.reschedule)
        start_epoch = int(ckpt["epoch"])
        module.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        schedule_changes = list(ckpt["schedule_changes"])
        old_epochs = int(ckpt["config"]["epochs"])
        if (ckpt["scheduler"] is None) != (scheduler is None):
            raise TrainingDataError(f"{checkpoint_path}: the learning-rate schedule cannot change on resume "
                                    f"({old_epochs} -> {options.epochs} epochs); delete it to start afresh")
        if old_epochs != options.epochs:
            if options.epochs <= start_epoch and not ckpt["stopped_early"]:
                raise TrainingDataError(f"{options.epochs} epochs asked but the checkpoint {checkpoint_path} has "
                                        f"already done {start_epoch}")
            if scheduler is not None:  # the same one-cycle shape over the new length, from the current step
                scheduler = torch.optim.lr_scheduler.OneCycleLR(
                    optimiser, max_lr=options.lr, total_steps=total_steps, pct_start=0.25,
                    last_epoch=int(ckpt["step"]) - 1)
            schedule_changes.append({"after_epoch": start_epoch, "from_epochs": old_epochs, "to_epochs": options.epochs})
        elif scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        order_rng.bit_generator.state = json.loads(ckpt["order_rng"])
        if "radiometry_rng" in ckpt:
            radiometry_rng.bit_generator.state = json.loads(ckpt["radiometry_rng"])
        history = list(ckpt["history"])
        best = tuple(ckpt["best"])
        best_state = {k: v.to(device) for k, v in ckpt["best_state"].items()}
        best_epoch, since_best = int(ckpt["best_epoch"]), int(ckpt["since_best"])
        stopped_early, step = bool(ckpt["stopped_early"]), int(ckpt["step"])
        seconds_before = float(ckpt["seconds"])
        log(f"resumed from {checkpoint_path} after epoch {start_epoch}"
            + (" (early stop reached)" if stopped_early else "")
            + (f"; one-cycle schedule rebuilt for {old_epochs} -> {options.epochs} epochs" if old_epochs != options.epochs
               else ""))
        progress(100.0 * min(step, total_steps) / total_steps)

    def save_checkpoint(epochs_done: int) -> None:
        _write_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "config": config, "epoch": epochs_done,
            "model": module.state_dict(), "optimiser": optimiser.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "order_rng": json.dumps(order_rng.bit_generator.state),
            "radiometry_rng": json.dumps(radiometry_rng.bit_generator.state),
            "history": history, "best": list(best), "best_state": best_state, "best_epoch": best_epoch,
            "since_best": since_best, "stopped_early": stopped_early, "step": step,
            "schedule_changes": schedule_changes, "seconds": seconds_before + time.perf_counter() - started,
        })

    for epoch in range(start_epoch + 1, options.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        module.train()
        if options.freeze_batchnorm:
            freeze_batchnorm_statistics(module)
        if options.train_only:
            for name, child in module.named_children():
                if name != options.train_only:
                    child.eval()
        total_loss, correct, seen = 0.0, 0, 0
        for batch in _batches(order_rng.permutation(train_idx.size), options.batch_size):
            if is_cancelled():
                raise Cancelled("training cancelled; no model was written"
                                + (f" (the checkpoint {checkpoint_path} of the last finished epoch is kept)"
                                   if checkpoint_path is not None and checkpoint_path.exists() else ""))
            raw = x_train[batch]
            if options.radiometric > 0:
                raw = _changed_radiometry(raw, full_scale, radiometry_rng, options)
            x = torch.from_numpy(scale_batch(raw, scaling))
            if options.augment:
                x = random_dihedral(x, generator)
            if options.shift:
                x = random_shift(x, options.shift, generator)
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(y_train[batch]).to(device)
            logits = module(x)
            loss = criterion(logits, y)
            if teacher_t is not None:
                loss = ((1.0 - options.distill_weight) * loss + options.distill_weight
                        * distillation_loss(logits, teacher_t[batch].to(device), options.distill_temperature))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += float(loss.detach()) * y.numel()
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += y.numel()
            step += 1
            progress(100.0 * step / total_steps)
        train_loss, train_acc = total_loss / seen, correct / seen
        entry: dict[str, Any] = {"epoch": epoch, "loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
                                 "lr": optimiser.param_groups[0]["lr"]}
        if val_idx.size:
            logits = _predict_logits(module, x_val, scaling, max(64, options.batch_size), device, is_cancelled,
                                     channels_last)
            val_acc = float((logits.argmax(1) == y_val).mean())
            val_loss = _cross_entropy(logits, y_val)
            entry.update(val_acc=round(val_acc, 5), val_loss=round(val_loss, 5))
            improved = options.keep == "last" or (val_acc, -val_loss) > (best[0], -best[1])
        else:
            val_acc, val_loss, improved = float("nan"), float("nan"), True
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(entry)
        log(f"epoch {epoch}/{options.epochs} loss {train_loss:.4f} train_acc {train_acc:.4f} "
            + (f"val_acc {val_acc:.4f} val_loss {val_loss:.4f}" if val_idx.size else "val_acc -")
            + f" ({entry['seconds']:.1f} s)")
        if improved:
            best = (val_acc, val_loss)
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            since_best = 0
        else:
            since_best += 1
            if options.patience and since_best >= options.patience and epoch < options.epochs:
                log(f"early stop: no better validation accuracy for {options.patience} epochs; "
                    f"keeping epoch {best_epoch} (val_acc {best[0]:.4f})")
                stopped_early = True
                progress(100.0)
        if checkpoint_path is not None:
            save_checkpoint(epoch)
        if stopped_early:
            break
        if epoch < options.epochs:
            if options.stop_after_epoch and epoch >= options.stop_after_epoch:
                reason = f"after epoch {epoch} as asked"
            elif options.stop_at is not None and time.time() + entry["seconds"] > options.stop_at:
                reason = f"after epoch {epoch}: another epoch would end after the stop time"
            else:
                continue
            log(f"stopped {reason}; the checkpoint {checkpoint_path} resumes training")
            raise TrainingStopped(f"training stopped {reason}; run again with the same settings to resume from "
                                  f"{checkpoint_path}", epoch, str(checkpoint_path))

    module.load_state_dict(best_state)
    module = module.to("cpu").to(memory_format=torch.contiguous_format).eval()
    val_metrics = None
    accuracy: dict[str, Any] = {}
    if val_idx.size:
        logits = _predict_logits(module, x_val, scaling, max(64, options.batch_size), "cpu", is_cancelled)
        val_metrics = compute_metrics(y_val, logits.argmax(1), data.class_names)
        accuracy = {
            "val_overall": round(val_metrics.overall_accuracy, 4),
            "n_val": int(val_idx.size),
            "val_macro_f1": round(val_metrics.macro_f1, 4),
            # a class without validation tiles (one tile only) has no F1: null, as the macro F1 leaves it out
            "per_class_f1_val": {n: round(float(f), 4) if s else None
                                 for n, f, s in zip(data.class_names, val_metrics.f1, val_metrics.support)},
            "note": "validation tiles were held out from training but come from the same data; "
                    "evaluate on independent tiles (glassbox:evaluate) for a test accuracy",
        }
    accuracy["train_overall_last_epoch"] = history[-1]["train_acc"]
    seconds = seconds_before + time.perf_counter() - started
    colours = options.colours or {}
    gsd = float(options.gsd or data.gsd or 10.0)
    card = ModelCard(
        name=options.name or f"{architecture} trained on {len(data.class_names)} classes",
        classes=[ClassInfo(n, colours.get(n) or KNOWN_COLOURS.get(n) or default_colour(i))
                 for i, n in enumerate(data.class_names)],
        bands=list(data.band_names),
        scaling=scaling,
        tile_size=data.tile_size,
        gsd=gsd,
        architecture={"name": architecture, "kwargs": dict(options.architecture_kwargs)},
        output="logits",
        description=(
            f"{architecture} trained with Glassbox on {data.description or 'labelled tiles'}: classes "
            f"{', '.join(data.class_names)}; bands {', '.join(data.band_names)}; tiles of "
            f"{data.tile_size} x {data.tile_size} px at {gsd:g} m"
            + (f"; validation accuracy {best[0]:.1%} on {val_idx.size} held-out tiles" if val_idx.size else "")
            + "."
        ),
        training={
            "data": data.description,
            "n_train": int(train_idx.size),
            "n_val": int(val_idx.size),
            "tiles_per_class": counts,
            "split": (options.split_description or "given by the caller (training and validation tile indices)")
                     if options.split is not None else split_rule,
            "seed": options.seed,
            "epochs_max": options.epochs,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "stopped_early": stopped_early,
            "batch_size": options.batch_size,
            "optimizer": f"AdamW (lr {options.lr:g}, weight decay {options.weight_decay:g}), "
                         f"{options.schedule} schedule, label smoothing {options.label_smoothing:g}",
            "early_stopping": f"patience {options.patience} epochs on validation accuracy" if options.patience else "off",
            "augmentation": "; ".join(
                ([AUGMENTATION] if options.augment else [])
                + ([f"random translation up to {options.shift} px (reflection padding)"] if options.shift else [])
                + ([f"random radiometry at strength {options.radiometric:g}"
                    + (f" on {options.radiometric_fraction:.0%} of the tiles" if options.radiometric_fraction < 1 else "")
                    + " (core.radiometry.random_radiometry: "
                    "gain/offset per band, brightness, contrast, gamma, haze, noise, glint, blur)"]
                   if options.radiometric > 0 else [])
            ) or "none",
            "scaling": "given (not computed from these tiles)" if options.scaling is not None
                       else "uint8: (x - mean) / std" if data.tiles.dtype == np.uint8
                       else "per band 1st..99th percentile -> 0..1, clip, (x - mean) / std",
            "initial_weights": Path(options.weights_path).name if options.weights_path
                               else options.initial_state_name if options.initial_state is not None else None,
            "seconds": round(seconds, 1),
            "date": datetime.date.today().isoformat(),
            "torch_version": torch.__version__,
            "history": history,
            **({"distillation": {"weight": options.distill_weight, "temperature": options.distill_temperature,
                                 "loss": "(1 - weight) * label-smoothed cross-entropy + weight * T^2 * "
                                         "KL(teacher || student) at temperature T"}} if teacher is not None else {}),
            **({"schedule_changes": schedule_changes} if schedule_changes else {}),
            **({"batchnorm": "running statistics frozen at the initial weights' (scale and shift trained)"}
               if options.freeze_batchnorm else {}),
            **({"trained_part": f"only '{options.train_only}' trained; the rest kept at its initial weights"}
               if options.train_only else {}),
        },
        accuracy=accuracy,
    )
    card.validate("trained model")
    log(f"trained in {seconds:.1f} s; kept epoch {best_epoch}"
        + (f" (val_acc {best[0]:.4f})" if val_idx.size else ""))
    return TrainingResult(module, card, history, train_idx, val_idx, val_metrics, best_epoch, stopped_early,
                          schedule_changes=schedule_changes, resumed_after_epoch=start_epoch)


