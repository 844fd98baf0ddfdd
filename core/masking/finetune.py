"""Sampling masked tiles and fine-tuning a base model on them (``glassbox:finetune_masked``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence
import numpy as np
from ..models.card import ModelCard
from ..errors import ClassMappingError, ModelCardError, ModelLoadError, TrainingDataError
from ..feedback import IsCancelled, Log, Progress, ignore, never
from ..training.scaling import scaling_mismatch
from .masks import DEFAULT_MIN_INSIDE, MASK_LABELS, MaskSpec, apply_background_masks, check_mask_type, inside_masks, mask_spec


# -- sampling -------------------------------------------------------------------------------
@dataclass
class MaskedTiles:
    """Tiles for masked training: ``data`` (raw tiles, labels, footprints; see
    :class:`core.training.data.TrainingData`) and each tile's ``inside`` mask ``(N, H, W)``."""

    data: Any
    inside: np.ndarray


def sample_masked_tiles(
    raster_path: str | Path,
    polygons: Sequence[dict],
    classes: Sequence[str | None],
    tile_size: int,
    *,
    class_order: Sequence[str] | None = None,
    gsd: float | None = None,
    stride: int | None = None,
    tiles_per_polygon: int = 0,
    min_inside: float = DEFAULT_MIN_INSIDE,
    band_indices: Sequence[int] | None = None,
    band_names: Sequence[str] | None = None,
    nodata: float | None = None,
    seed: int = 0,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
    polygon_ids: Sequence[Any] | None = None,
) -> MaskedTiles:
    """Tiles centred in the polygons, reaching past their edges (see the module docstring),
    labelled with each polygon's class (``classes``: one class name per polygon, None =
    skipped), with their inside masks. Classes are ordered as ``class_order`` (e.g. the
    mapping's), classes without any tile are left out with a log line."""
    from ..training.data import tiles_from_polygons

    log = log or ignore
    if len(polygons) != len(classes):
        raise TrainingDataError(f"{len(polygons)} polygons but {len(classes)} classes")
    if not 0 < min_inside <= 1:
        raise TrainingDataError("the share of a tile inside its polygon must be in (0, 1]")
    keep = [i for i, c in enumerate(classes) if c is not None and polygons[i]]
    if not keep:
        raise ClassMappingError("no polygon has a class: the class mapping maps none of the class field's values")
    data = tiles_from_polygons(
        raster_path, [polygons[i] for i in keep], [classes[i] for i in keep], tile_size, gsd=gsd, stride=stride,
        max_tiles_per_polygon=tiles_per_polygon, band_indices=band_indices, band_names=band_names,
        min_inside=min_inside, nodata=nodata, seed=seed, is_cancelled=is_cancelled, log=log, beyond_polygon=True,
        polygon_ids=None if polygon_ids is None else [polygon_ids[i] for i in keep],
    )
    data = order_classes(data, class_order, log)
    names = [data.class_names[k] for k in data.labels]
    inside = inside_masks(data.footprints, tile_size, names, [polygons[i] for i in keep], [classes[i] for i in keep])
    return MaskedTiles(data, inside)


def order_classes(data: Any, class_order: Sequence[str] | None, log: Log | None = None) -> Any:
    """``data`` with its classes in ``class_order`` (classes not named there follow, sorted as
    they were) and classes without tiles removed (logged)."""
    log = log or ignore
    counts = data.class_counts()
    order = [c for c in (class_order or []) if c in counts] + [c for c in data.class_names
                                                             if c not in (class_order or [])]
    empty = [c for c in order if counts.get(c, 0) == 0]
    if empty:
        log(f"no tile for class(es) {'; '.join(empty)}: left out of the model")
    names = [c for c in order if counts.get(c, 0) > 0]
    index = {c: i for i, c in enumerate(names)}
    remap = np.array([index.get(c, -1) for c in data.class_names], dtype=np.int64)
    return replace(data, labels=remap[data.labels], class_names=names)


# -- the base model -------------------------------------------------------------------------
def last_layer_keys(module: Any, num_classes: int) -> list[str]:
    """State-dict keys of the network's last linear (or 1x1 convolution) layer giving
    ``num_classes`` outputs: the class layer."""
    from torch import nn

    last = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and sub.out_features == num_classes:
            last = name
        elif isinstance(sub, nn.Conv2d) and sub.out_channels == num_classes and sub.kernel_size == (1, 1):
            last = name
    if last is None:
        return []
    return [k for k in module.state_dict() if k.rsplit(".", 1)[0] == last]


def base_state_for_classes(module: Any, base_classes: Sequence[str], classes: Sequence[str],
                           log: Log | None = None) -> tuple[dict[str, Any], str]:
    """The base network's state dict adapted to ``classes``: unchanged when they equal the
    base's classes; the class layer's rows reordered when they are the same classes in another
    order; when only some are the base's, their rows kept and the new classes' rows drawn as the
    layer's own start (seed 0); without the class layer (so it keeps its random start) when none are. Returns (state,
    what was done, in words)."""
    log = log or ignore
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    base_classes, classes = list(base_classes), list(classes)
    if base_classes == classes:
        return state, "all weights from the base model (same classes)"
    keys = last_layer_keys(module, len(base_classes))
    if not keys:
        raise ModelLoadError("cannot find the base model's class layer (its last layer with one output per class)")
    if sorted(base_classes) == sorted(classes):
        order = [base_classes.index(c) for c in classes]
        for k in keys:
            state[k] = state[k][order].clone()
        text = "all weights from the base model; its class layer reordered to the new class order"
        log(text)
        return state, text
    shared = [c for c in classes if c in base_classes]
    if shared:
        import torch

        generator = torch.Generator().manual_seed(0)
        weight = next(k for k in keys if k.endswith("weight"))
        bound = 1.0 / math.sqrt(state[weight][0].numel())  # nn.Linear's and nn.Conv2d's own start
        for k in keys:
            old = state[k]
            rows = (torch.rand((len(classes),) + tuple(old.shape[1:]), generator=generator) * 2 - 1) * bound
            rows = rows.to(old.dtype)
            for i, name in enumerate(classes):
                if name in base_classes:
                    rows[i] = old[base_classes.index(name)]
            state[k] = rows
        new = [c for c in classes if c not in base_classes]
        text = (f"all weights from the base model; in its class layer ({weight.rsplit('.', 1)[0]}) the rows of the "
                f"{len(shared)} class(es) it knows ({'; '.join(shared)}) are kept and the {len(new)} new one(s) "
                f"({'; '.join(new)}) start at random"
                + (f"; its class(es) {'; '.join(c for c in base_classes if c not in classes)} are dropped"
                   if set(base_classes) - set(classes) else ""))
        log(text)
        return state, text
    for k in keys:
        del state[k]
    text = (f"the base model's classes ({'; '.join(base_classes)}) differ from the new ones "
            f"({'; '.join(classes)}): its class layer ({keys[0].rsplit('.', 1)[0]}) is re-initialised, "
            "every other weight comes from the base model")
    log(text)
    return state, text


def load_base_model(path: str | Path) -> tuple[Any, ModelCard]:
    """A Torch state dict + card to fine-tune (module on the CPU, card). TorchScript and ONNX
    are refused: fine-tuning needs the architecture named in the card."""
    from ..models.backends import TorchModel, TORCH_SUFFIXES, is_torchscript

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"base model not found: {path}")
    if path.suffix.lower() not in TORCH_SUFFIXES or is_torchscript(path):
        raise ModelLoadError(
            f"{path.name}: the base model must be a Torch state dict (.pt) with its .json card beside it "
            "(as 'Train classifier' writes it), so its architecture is known; ONNX and TorchScript cannot "
            "be fine-tuned"
        )
    model = TorchModel(path, "cpu")
    if not model.card.architecture.get("name"):
        raise ModelCardError(f"{path.name}: the card names no architecture")
    if model.card.output != "logits":
        raise ModelCardError(f"{path.name}: the model returns probabilities; fine-tuning needs a logit model")
    return model.module, model.card


# -- one call for glassbox:finetune_masked --------------------------------------------------
@dataclass
class MaskedFinetuneOptions:
    """Settings of :func:`finetune_masked`: the mask (``mask_type``, ``blur_sigma``), tile
    sampling (``tiles_per_polygon``, 0 = all; ``min_inside``; ``stride`` in model pixels) and
    training (as :class:`core.training.loop.TrainOptions`)."""

    mask_type: str = "median"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 5
    tiles_per_polygon: int = 20
    min_inside: float = DEFAULT_MIN_INSIDE
    stride: int | None = None
    blur_sigma: float | None = None
    device: str = "cpu"
    threads: int | None = None
    extra_training: dict[str, Any] = field(default_factory=dict)


@dataclass
class MaskedFinetuneResult:
    result: Any  # core.training.loop.TrainingResult
    data: Any  # the raw (unmasked) TrainingData
    spec: MaskSpec
    masked_fraction: float
    written: dict[str, str]


def finetune_masked(
    raster_path: str | Path,
    polygons: Sequence[dict],
    values: Sequence[Any],
    base_model: str | Path,
    mapping: Any,
    options: MaskedFinetuneOptions,
    weights_path: str | Path,
    onnx_path: str | Path | None = None,
    samples_path: str | Path | None = None,
    band_indices: Sequence[int] | None = None,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
    polygon_ids: Sequence[Any] | None = None,
) -> MaskedFinetuneResult:
    """``glassbox:finetune_masked`` in one call.

    ``polygons`` (GeoJSON-like, in the raster's CRS) with their class-field ``values``;
    ``mapping`` a :class:`core.masking.lcdb.ClassMapping` (or None: the values are the classes). The
    base model (state dict + card) gives the architecture, bands, tile size, ground sample
    distance and scaling; its weights are the start (class layer re-initialised when the classes
    differ). Tiles are sampled centred in the polygons (:func:`sample_masked_tiles`), their
    background masked (:func:`apply_background_masks`) and the network trained on them with
    :func:`core.training.loop.train_classifier` (validation tiles are masked too; the accuracy of the
    kept weights on the same validation tiles *unmasked* is added to the card). The model is
    written with its card (``training.mask_type``, ``training.masking``, ``training.class_mapping``,
    ``training.base_model``), optionally ONNX and the tile footprints; all or nothing."""
    from .lcdb import mapped_classes, mapping_record
    from ..training.loop import TrainOptions, _predict_logits, check_training_setup, train_classifier, validation_split
    from ..training.saving import save_model_files, tiles_per_class_text

    progress = progress or ignore
    is_cancelled = is_cancelled or never
    log = log or ignore
    mask_type = check_mask_type(options.mask_type)
    weights_path = Path(weights_path)
    if weights_path.suffix.lower() not in (".pt", ".pth"):
        raise TrainingDataError(f"Torch weights must be written as .pt or .pth, not {weights_path.name}")
    module, card = load_base_model(base_model)
    architecture = card.architecture["name"]
    check_training_setup(architecture, options.device)
    classes = mapped_classes(values, mapping, log)
    from ..io.raster import RasterSource

    # the base model's bands and units, checked as classify will check them (an 8-bit image for a
    # model of digital numbers trained a model that classify then refuses on the same raster)
    RasterSource(raster_path, band_indices, card.bands, None, card).close()
    sampled = sample_masked_tiles(
        raster_path, polygons, classes, card.tile_size, class_order=mapping.classes if mapping else None,
        gsd=card.gsd, stride=options.stride, tiles_per_polygon=options.tiles_per_polygon,
        min_inside=options.min_inside, band_indices=band_indices, band_names=None if band_indices else card.bands,
        seed=options.seed, is_cancelled=is_cancelled, log=log, polygon_ids=polygon_ids,
    )
    if sampled.data.num_bands != card.num_bands:
        raise TrainingDataError(f"the base model reads {card.num_bands} band(s) ({', '.join(card.bands)}) but "
                                f"{sampled.data.num_bands} were selected")
    data = sampled.data.with_band_names(card.bands)
    log(f"{data.num_tiles} tiles: {tiles_per_class_text(data)}")
    mismatch = scaling_mismatch(data.tiles, card.scaling, card.bands)
    if mismatch:
        log(f"WARNING: {mismatch}; the base model {Path(base_model).name} keeps its scaling, so fine-tuning starts "
            "from a network that sees this raster as noise: choose a base model trained on data like this raster")
    if len(data.class_names) < 2:
        found = "; ".join(f"{name}: {count} tile(s)" for name, count in data.class_counts().items())
        raise TrainingDataError(f"masked fine-tuning needs tiles of at least 2 classes; found {found} (with the "
                                "LCDB preset, the class field's values are read as LCDB codes or names: choose "
                                "CLASS_MAPPING None if they are your own classes)")
    # one split, for the fill statistics (training tiles only) and for training itself
    train_idx, val_idx, split_rule = validation_split(data, options.val_fraction, options.seed, log)
    spec = mask_spec(mask_type, data.tiles[train_idx], card.scaling, options.blur_sigma, options.seed)
    masked_tiles = apply_background_masks(data.tiles, sampled.inside, spec, is_cancelled)
    outside = ~sampled.inside
    masked_fraction = float(outside.mean()) if mask_type != "none" else 0.0
    changed = int(np.count_nonzero(np.any(masked_tiles != data.tiles, axis=1)))
    log(f"mask '{mask_type}' ({spec.rule}"
        + (f"; fill {', '.join(f'{v:g}' for v in spec.fill)}" if spec.fill else "") + "): "
        + (f"{masked_fraction:.1%} of the tiles' pixels lie outside their class's polygons and were masked "
           f"({changed} pixels changed)" if mask_type != "none" else "tiles are used unmasked"))
    masked = replace(data, tiles=masked_tiles)

    colours = dict(mapping.colours) if mapping else {}
    for c in card.classes:
        colours.setdefault(c.name, c.color)
    state, base_note = base_state_for_classes(module, card.class_names, data.class_names, log)
    train_options = TrainOptions(
        epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, seed=options.seed,
        val_fraction=options.val_fraction, patience=options.patience, device=options.device,
        threads=options.threads, gsd=card.gsd, colours=colours,
        architecture_kwargs=dict(card.architecture.get("kwargs") or {}),
        scaling=copy.deepcopy(card.scaling), initial_state=state, initial_state_name=Path(base_model).name,
        split=(train_idx, val_idx), split_description=split_rule,
        name=(f"{architecture} fine-tuned on raw tiles" if mask_type == "none"
              else f"{architecture} fine-tuned on masked tiles ({MASK_LABELS[mask_type]} background)")
        + f", {len(data.class_names)} classes",
    )
    result = train_classifier(masked, architecture, train_options, progress, is_cancelled, log)
    if is_cancelled():
        from ..errors import Cancelled

        raise Cancelled("fine-tuning cancelled; no model was written")
    new_card = result.card
    if result.val_index.size:
        logits = _predict_logits(result.module, data.tiles[result.val_index], new_card.scaling, 64, "cpu",
                                 is_cancelled)
        raw_acc = float((logits.argmax(1) == data.labels[result.val_index]).mean())
        new_card.accuracy["val_overall_unmasked"] = round(raw_acc, 4)
        new_card.accuracy["note"] = ("val_overall: the validation tiles masked like the training tiles; "
                                     "val_overall_unmasked: the same tiles unmasked. Both come from the same data "
                                     "as the training tiles; evaluate on independent tiles for a test accuracy")
        if mask_type == "none":
            log(f"validation accuracy: {new_card.accuracy.get('val_overall', float('nan')):.4f} (no mask)")
        else:
            log(f"validation accuracy: {new_card.accuracy.get('val_overall', float('nan')):.4f} on masked tiles, "
                f"{raw_acc:.4f} on the same tiles unmasked")
    mapping_info = mapping_record(mapping)
    new_card.training.update({
        "mask_type": mask_type,
        "masking": {**spec.to_dict(), "masked_pixel_fraction": round(masked_fraction, 4),
                    "inside": "pixel centre inside a polygon of the tile's class",
                    "tiles": f"centred in a polygon, at least {options.min_inside:.0%} of the pixels inside, "
                             f"at most {options.tiles_per_polygon or 'all'} per polygon"},
        "class_mapping": mapping_info,
        "base_model": {"file": Path(base_model).name, "name": card.name, "classes": card.class_names,
                       "architecture": architecture, "weights": base_note},
        **options.extra_training,
    })
    new_card.description = (
        f"{architecture} fine-tuned from '{card.name}' on tiles whose background (outside the polygons of the "
        f"tile's class) is masked: {MASK_LABELS[mask_type]}. Classes {', '.join(new_card.class_names)}; bands "
        f"{', '.join(new_card.bands)}; tiles of {new_card.tile_size} px at {new_card.gsd:g} m. "
        "Paper 2: combine it with the raw model in an ensemble (glassbox:ensemble)."
    )
    new_card.validate("fine-tuned model")
    # the reference is of the raw tiles: classify reads scenes as they are, not masked
    written = save_model_files(result.module, new_card, weights_path, onnx_path, samples_path, data, result,
                               radiometry_tiles=data.tiles, log=log)
    return MaskedFinetuneResult(result, data, spec, masked_fraction, written)

