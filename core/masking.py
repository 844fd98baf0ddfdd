"""Masked fine-tuning (paper 2): replace the background of each training tile, i.e. everything
outside the polygons of the tile's class, by a mask, and fine-tune a model on those tiles.

QGIS-free; torch is imported inside the functions that train.

**Inside and outside.** A tile's *inside* is the union of the polygons whose (mapped) class
equals the tile's label, rasterised on the tile's model pixels: a pixel is inside when its
centre lies inside such a polygon (``rasterio.features.geometry_mask``; holes are outside).
Everything else is *background*. Pixels inside are never changed (:func:`apply_background_mask`
copies them bit for bit).

**Mask types** (:data:`MASK_TYPES`), all in the model's *raw* value space (values as read from
the raster, before the card's scaling), so that the masked tile goes through the same scaling
as any other tile:

* ``white`` -- the brightest value the model distinguishes, per band: where the card's scaling
  clips (``clip [lo, hi]`` after ``x * scale + offset``), the raw value that maps to ``hi``
  (``(hi - offset) / scale``; for a model trained on 16-bit data by Glassbox that is the
  training data's 99th percentile); without a clip, 255 for 8-bit tiles, else the training
  tiles' per-band maximum.
* ``black`` -- likewise the darkest: the raw value that maps to the clip's ``lo``; without a
  clip, 0 for 8-bit tiles, else the training tiles' per-band minimum.
* ``median`` -- the per-band median of the raw values of the training tiles (all their pixels,
  a seeded sample of at most 2 million per band). Paper 2 filled with the median colour of
  ImageNet because its ResNet18 was pretrained on ImageNet: the neutral colour *of the data the
  network knows*. ImageNet's statistics describe 8-bit photographs and mean nothing for
  Sentinel-2 reflectances or other rasters, so the analogue here is the median of the data the
  model is trained on. (For 8-bit RGB photographs the two are similar greys; ImageNet's own
  median is not available offline and is not used.)
* ``blur`` -- the tile blurred by a Gaussian of ``blur_sigma`` model pixels (default
  :func:`default_blur_sigma`: tile size / 16, at least 1; e.g. 4 px for 64 px tiles), per band,
  ``scipy.ndimage.gaussian_filter`` with ``mode="nearest"``; the blurred values replace the
  background only (the blur is of the whole tile, so near the polygon's edge the background
  takes a little colour from the inside, as in the paper's "Gaussian blur added on the
  background").
* ``none`` -- no masking (raw tiles): fine-tunes a model to the mapped classes with the same
  tile sampling, e.g. the raw model of an ensemble.

**Tiles** (:func:`sample_masked_tiles`): candidates on the raster's pixel grid every
``stride`` model pixels (default one tile), over each polygon's bounding box widened by half a
tile; a tile is taken when its centre pixel lies inside the polygon and at least ``min_inside``
(default 50 %) of its pixel centres do (:func:`core.training.tiles_from_polygons` with
``beyond_polygon=True``), so tiles reach over the polygon's edge and have background to mask.
Tiles with nodata are dropped; ``tiles_per_polygon`` keeps a seeded random sample per polygon.
Its label is the polygon's mapped class.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .card import ModelCard, Scaling
from .errors import ClassMappingError, MaskingError, ModelCardError, ModelLoadError, TrainingDataError

MASK_TYPES = ("white", "black", "median", "blur", "none")
MASK_LABELS = {
    "white": "white (brightest value)",
    "black": "black (darkest value)",
    "median": "median of the training data",
    "blur": "Gaussian blur of the tile",
    "none": "none (raw tiles)",
}
DEFAULT_MIN_INSIDE = 0.5
MEDIAN_SAMPLE_PIXELS = 2_000_000

Progress = Callable[[float], None]
IsCancelled = Callable[[], bool]
Log = Callable[[str], None]


def _noop(*_args: Any) -> None:
    return None


def _never() -> bool:
    return False


def check_mask_type(mask_type: str) -> str:
    mask_type = (mask_type or "").strip().lower()
    if mask_type not in MASK_TYPES:
        raise MaskingError(f"unknown mask type '{mask_type}'; use one of {', '.join(MASK_TYPES)}")
    return mask_type


def default_blur_sigma(tile_size: int) -> float:
    """The blur mask's Gaussian sigma in model pixels: tile size / 16, at least 1."""
    return max(1.0, float(tile_size) / 16.0)


# -- fills ----------------------------------------------------------------------------------
@dataclass
class MaskSpec:
    """How to mask: ``mask_type``, ``fill`` (raw value per band, for white/black/median) and
    ``blur_sigma`` (model pixels, for blur), plus how the fill was found (``rule``)."""

    mask_type: str
    fill: list[float] | None = None
    blur_sigma: float | None = None
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.mask_type, "fill": self.fill, "blur_sigma": self.blur_sigma, "rule": self.rule}


def _cast_fill(values: np.ndarray, dtype: np.dtype) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return [float(v) for v in values]


def mask_spec(mask_type: str, train_tiles: np.ndarray, scaling: Scaling | None = None,
              blur_sigma: float | None = None, seed: int = 0) -> MaskSpec:
    """The :class:`MaskSpec` for ``mask_type`` from the raw training tiles ``(N, bands, H, W)``
    and the model's card scaling (see the module docstring for each rule)."""
    mask_type = check_mask_type(mask_type)
    tiles = np.asarray(train_tiles)
    if tiles.ndim != 4 or tiles.shape[0] == 0:
        raise MaskingError(f"masking needs training tiles (N, bands, H, W), got shape {tiles.shape}")
    bands = tiles.shape[1]
    if mask_type == "none":
        return MaskSpec("none", rule="no masking: raw tiles")
    if mask_type == "blur":
        sigma = float(blur_sigma) if blur_sigma else default_blur_sigma(tiles.shape[2])
        if not sigma > 0:
            raise MaskingError("the blur sigma must be positive (model pixels)")
        return MaskSpec("blur", blur_sigma=sigma,
                        rule=f"Gaussian blur of the tile, sigma {sigma:g} model pixels, replaces the background")
    if mask_type == "median":
        flat = tiles.reshape(tiles.shape[0], bands, -1)
        total = flat.shape[0] * flat.shape[2]
        rng = np.random.default_rng(seed)
        pick = rng.choice(total, size=MEDIAN_SAMPLE_PIXELS, replace=False) if total > MEDIAN_SAMPLE_PIXELS \
            else np.arange(total)
        tile_index, pixel_index = np.divmod(pick, flat.shape[2])
        sample = flat[tile_index, :, pixel_index].astype(np.float64)
        values = np.nanmedian(sample, axis=0)
        return MaskSpec("median", fill=_cast_fill(values, tiles.dtype),
                        rule=f"per-band median of the raw values of {tiles.shape[0]} training tiles")
    clip = scaling.clip if scaling is not None else None
    high = mask_type == "white"
    if clip is not None:
        target = clip[1] if high else clip[0]
        scale = np.broadcast_to(np.asarray(scaling.scale, dtype=np.float64).reshape(-1), (bands,))
        offset = np.broadcast_to(np.asarray(scaling.offset, dtype=np.float64).reshape(-1), (bands,))
        if np.any(scale == 0):
            raise MaskingError("the card's scaling has a zero scale; white/black cannot be found")
        values = (target - offset) / scale
        rule = f"raw value the card's scaling maps to its clip {'high' if high else 'low'} ({target:g})"
    elif tiles.dtype == np.uint8:
        values = np.full(bands, 255.0 if high else 0.0)
        rule = "8-bit tiles: " + ("255" if high else "0")
    else:
        values = (np.nanmax if high else np.nanmin)(tiles, axis=(0, 2, 3)).astype(np.float64)
        rule = f"per-band {'maximum' if high else 'minimum'} of the training tiles"
    return MaskSpec(mask_type, fill=_cast_fill(values, tiles.dtype), rule=rule)


# -- applying -------------------------------------------------------------------------------
def apply_background_mask(tile: np.ndarray, inside: np.ndarray, mask_type: str,
                          fill: Sequence[float] | float | None = None, blur_sigma: float | None = None) -> np.ndarray:
    """A copy of ``tile`` (raw values ``(bands, H, W)``) whose pixels outside ``inside``
    (bool ``(H, W)``) are replaced: by ``fill`` (one raw value, or one per band) for white,
    black and median, by the tile blurred with a Gaussian of ``blur_sigma`` model pixels for
    blur (default :func:`default_blur_sigma`), and not at all for none. Pixels inside are
    copied unchanged. The data type is kept (fills and blurred values are rounded and clipped
    to the type's range for integer tiles)."""
    tile = np.asarray(tile)
    inside = np.asarray(inside, dtype=bool)
    if tile.ndim != 3 or inside.shape != tile.shape[1:]:
        raise MaskingError(f"a tile (bands, H, W) and an inside mask (H, W) are needed, got {tile.shape} and "
                           f"{inside.shape}")
    mask_type = check_mask_type(mask_type)
    out = tile.copy()
    if mask_type == "none":
        return out
    outside = ~inside
    if mask_type == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = float(blur_sigma) if blur_sigma else default_blur_sigma(tile.shape[-1])
        for b in range(tile.shape[0]):
            blurred = gaussian_filter(tile[b].astype(np.float64), sigma=sigma, mode="nearest")
            out[b][outside] = _to_dtype(blurred[outside], tile.dtype)
        return out
    if fill is None:
        raise MaskingError(f"a '{mask_type}' mask needs a fill value per band")
    values = np.broadcast_to(np.asarray(fill, dtype=np.float64).reshape(-1), (tile.shape[0],))
    for b in range(tile.shape[0]):
        out[b][outside] = _to_dtype(np.asarray([values[b]]), tile.dtype)[0]
    return out


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return values.astype(dtype)


def apply_background_masks(tiles: np.ndarray, inside: np.ndarray, spec: MaskSpec,
                           is_cancelled: IsCancelled | None = None) -> np.ndarray:
    """:func:`apply_background_mask` for every tile of ``tiles`` ``(N, bands, H, W)`` with its
    ``inside`` ``(N, H, W)``; a new array."""
    is_cancelled = is_cancelled or _never
    tiles = np.asarray(tiles)
    inside = np.asarray(inside, dtype=bool)
    if inside.shape != (tiles.shape[0], *tiles.shape[2:]):
        raise MaskingError(f"{tiles.shape[0]} tiles of {tiles.shape[2:]} px but inside masks of shape {inside.shape}")
    if spec.mask_type == "none":
        return tiles.copy()
    out = np.empty_like(tiles)
    for i in range(tiles.shape[0]):
        if i % 256 == 0 and is_cancelled():
            from .errors import Cancelled

            raise Cancelled("cancelled while masking tiles; nothing was written")
        out[i] = apply_background_mask(tiles[i], inside[i], spec.mask_type, spec.fill, spec.blur_sigma)
    return out


# -- inside masks ---------------------------------------------------------------------------
def _bounds(geometry: dict) -> tuple[float, float, float, float]:
    from rasterio.features import bounds

    return tuple(bounds(geometry))  # type: ignore[return-value]


def inside_masks(footprints: np.ndarray, tile_size: int, tile_classes: Sequence[str],
                 polygons: Sequence[dict], polygon_classes: Sequence[str | None]) -> np.ndarray:
    """Bool ``(N, tile_size, tile_size)``: per tile, the model pixels whose centre lies inside
    a polygon of the tile's class. ``footprints`` ``(N, 4)`` = (xmin, ymin, xmax, ymax) of
    each tile and ``polygons`` (GeoJSON-like, with their classes) in the same CRS."""
    from rasterio.features import geometry_mask
    from rasterio.transform import from_bounds

    footprints = np.asarray(footprints, dtype=np.float64)
    if len(footprints) != len(tile_classes):
        raise MaskingError(f"{len(footprints)} footprints but {len(tile_classes)} tile classes")
    boxes = np.array([_bounds(g) if g else (np.inf, np.inf, -np.inf, -np.inf) for g in polygons],
                     dtype=np.float64).reshape(-1, 4)
    classes = np.asarray([c if c is not None else "" for c in polygon_classes], dtype=object)
    out = np.zeros((len(footprints), tile_size, tile_size), dtype=bool)
    for i, ((xmin, ymin, xmax, ymax), name) in enumerate(zip(footprints, tile_classes)):
        near = np.flatnonzero((classes == name) & (boxes[:, 0] < xmax) & (boxes[:, 2] > xmin)
                              & (boxes[:, 1] < ymax) & (boxes[:, 3] > ymin))
        if near.size == 0:
            continue
        transform = from_bounds(xmin, ymin, xmax, ymax, tile_size, tile_size)
        out[i] = geometry_mask([polygons[k] for k in near], out_shape=(tile_size, tile_size),
                               transform=transform, invert=True)
    return out


# -- sampling -------------------------------------------------------------------------------
@dataclass
class MaskedTiles:
    """Tiles for masked training: ``data`` (raw tiles, labels, footprints; see
    :class:`core.training.TrainingData`) and each tile's ``inside`` mask ``(N, H, W)``."""

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
) -> MaskedTiles:
    """Tiles centred in the polygons, reaching past their edges (see the module docstring),
    labelled with each polygon's class (``classes``: one class name per polygon, None =
    skipped), with their inside masks. Classes are ordered as ``class_order`` (e.g. the
    mapping's), classes without any tile are left out with a log line."""
    from .training import tiles_from_polygons

    log = log or _noop
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
    )
    data = order_classes(data, class_order, log)
    names = [data.class_names[k] for k in data.labels]
    inside = inside_masks(data.footprints, tile_size, names, [polygons[i] for i in keep], [classes[i] for i in keep])
    return MaskedTiles(data, inside)


def order_classes(data: Any, class_order: Sequence[str] | None, log: Log | None = None) -> Any:
    """``data`` with its classes in ``class_order`` (classes not named there follow, sorted as
    they were) and classes without tiles removed (logged)."""
    log = log or _noop
    counts = data.class_counts()
    order = [c for c in (class_order or []) if c in counts] + [c for c in data.class_names
                                                             if c not in (class_order or [])]
    empty = [c for c in order if counts.get(c, 0) == 0]
    if empty:
        log(f"no tile for class(es) {', '.join(empty)}: left out of the model")
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
    order; without the class layer (so it keeps its random start) otherwise. Returns (state,
    what was done, in words)."""
    log = log or _noop
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
    for k in keys:
        del state[k]
    text = (f"the base model's classes ({', '.join(base_classes)}) differ from the new ones "
            f"({', '.join(classes)}): its class layer ({keys[0].rsplit('.', 1)[0]}) is re-initialised, "
            "every other weight comes from the base model")
    log(text)
    return state, text


def load_base_model(path: str | Path) -> tuple[Any, ModelCard]:
    """A Torch state dict + card to fine-tune (module on the CPU, card). TorchScript and ONNX
    are refused: fine-tuning needs the architecture named in the card."""
    from .backends import TorchModel, TORCH_SUFFIXES, is_torchscript

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
    training (as :class:`core.training.TrainOptions`)."""

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
    result: Any  # core.training.TrainingResult
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
) -> MaskedFinetuneResult:
    """``glassbox:finetune_masked`` in one call.

    ``polygons`` (GeoJSON-like, in the raster's CRS) with their class-field ``values``;
    ``mapping`` a :class:`core.lcdb.ClassMapping` (or None: the values are the classes). The
    base model (state dict + card) gives the architecture, bands, tile size, ground sample
    distance and scaling; its weights are the start (class layer re-initialised when the classes
    differ). Tiles are sampled centred in the polygons (:func:`sample_masked_tiles`), their
    background masked (:func:`apply_background_masks`) and the network trained on them with
    :func:`core.training.train_classifier` (validation tiles are masked too; the accuracy of the
    kept weights on the same validation tiles *unmasked* is added to the card). The model is
    written with its card (``training.mask_type``, ``training.masking``, ``training.class_mapping``,
    ``training.base_model``), optionally ONNX and the tile footprints; all or nothing."""
    from .lcdb import map_values
    from .training import (TrainOptions, _predict_logits, save_model_files, stratified_split,
                           tiles_per_class_text, train_classifier)

    progress = progress or _noop
    is_cancelled = is_cancelled or _never
    log = log or _noop
    mask_type = check_mask_type(options.mask_type)
    weights_path = Path(weights_path)
    if weights_path.suffix.lower() not in (".pt", ".pth"):
        raise TrainingDataError(f"Torch weights must be written as .pt or .pth, not {weights_path.name}")
    module, card = load_base_model(base_model)
    architecture = card.architecture["name"]
    classes = map_values(values, mapping, log)
    if not any(c is not None for c in classes):
        raise ClassMappingError(
            "the class mapping maps none of the polygons' class values"
            + (f" (mapping '{mapping.name}')" if mapping is not None else "")
            + "; check the class field and the mapping"
        )
    sampled = sample_masked_tiles(
        raster_path, polygons, classes, card.tile_size, class_order=mapping.classes if mapping else None,
        gsd=card.gsd, stride=options.stride, tiles_per_polygon=options.tiles_per_polygon,
        min_inside=options.min_inside, band_indices=band_indices, band_names=None if band_indices else card.bands,
        seed=options.seed, is_cancelled=is_cancelled, log=log,
    )
    if sampled.data.num_bands != card.num_bands:
        raise TrainingDataError(f"the base model reads {card.num_bands} band(s) ({', '.join(card.bands)}) but "
                                f"{sampled.data.num_bands} were selected")
    data = sampled.data.with_band_names(card.bands)
    log(f"{data.num_tiles} tiles: {tiles_per_class_text(data)}")
    if len(data.class_names) < 2:
        raise TrainingDataError(f"masked fine-tuning needs tiles of at least 2 classes; found {data.class_counts()}")
    train_idx, val_idx = stratified_split(data.labels, options.val_fraction, options.seed)
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
        name=(f"{architecture} fine-tuned on raw tiles" if mask_type == "none"
              else f"{architecture} fine-tuned on masked tiles ({MASK_LABELS[mask_type]} background)")
        + f", {len(data.class_names)} classes",
    )
    result = train_classifier(masked, architecture, train_options, progress, is_cancelled, log)
    if is_cancelled():
        from .errors import Cancelled

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
        log(f"validation accuracy: {new_card.accuracy.get('val_overall', float('nan')):.4f} on masked tiles, "
            f"{raw_acc:.4f} on the same tiles unmasked")
    mapping_info = mapping.to_dict() if mapping is not None else {"name": "none", "note": "field values are the classes"}
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
    written = save_model_files(result.module, new_card, weights_path, onnx_path, samples_path, data, result)
    return MaskedFinetuneResult(result, data, spec, masked_fraction, written)


__all__ = [
    "MASK_TYPES", "MaskSpec", "mask_spec", "apply_background_mask", "apply_background_masks", "inside_masks",
    "sample_masked_tiles", "order_classes", "default_blur_sigma", "base_state_for_classes", "last_layer_keys",
    "load_base_model", "MaskedFinetuneOptions", "MaskedFinetuneResult", "finetune_masked",
]
