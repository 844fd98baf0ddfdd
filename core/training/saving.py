"""Writing trained models: weights, card, ONNX, training-tile footprints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..feedback import Log, ignore
from ..models.card import ModelCard
from ..scene_radiometry import REFERENCE_SUFFIX, beside_model, stage_reference_copy
from ..errors import ModelLoadError, TrainingDataError
from ..io.vectors import VectorLayer, InMemory, boxes_layer, is_file_target, write_gpkg
from .data import TrainingData
from .loop import TrainingResult


# -- saving ---------------------------------------------------------------------------------
def save_model_files(
    module: Any,
    card: ModelCard,
    weights_path: str | Path,
    onnx_path: str | Path | None = None,
    samples_path: str | Path | InMemory | None = None,
    data: TrainingData | None = None,
    result: TrainingResult | None = None,
    check_tolerance: float = 1e-4,
    radiometry_tiles: np.ndarray | None = None,
    log: Log | None = None,
) -> dict[str, str]:
    """Write the state dict (``weights_path``, loadable with ``weights_only=True``), its card
    beside it (``<stem>.json``), optionally the ONNX model with the same card (the export is
    checked against Torch within ``check_tolerance``) and optionally a GeoPackage of the
    training tiles' footprints (``samples_path``; needs ``data`` with footprints and
    ``result``; :data:`core.io.vectors.IN_MEMORY` puts that layer only in ``result.layers``). All
    files are staged and moved into place together, so a failure leaves none of them.
    ``radiometry_tiles``: the raw training tiles ``(N, bands, size, size)``, as the card's scaling
    reads them; with at least :data:`MIN_REFERENCE_TILES` a radiometry reference
    (``<stem>.radiometry.json`` beside the weights and beside the ONNX model) is written from them,
    so classify and explain can tell when a scene is unlike the training data
    (:mod:`core.scene_radiometry`). Returns {"weights", "card", "onnx", "samples", "radiometry"}
    -> path for what was written."""
    import torch

    from ..models.backends import card_path_for
    from ..models.export import export_onnx
    from ..io.writers import StagedOutputs

    weights_path = Path(weights_path)
    if weights_path.suffix.lower() not in (".pt", ".pth"):
        raise TrainingDataError(f"Torch weights must be written as .pt or .pth, not {weights_path.name}")
    if onnx_path and Path(onnx_path).suffix.lower() != ".onnx":
        raise TrainingDataError(f"the ONNX model must be written as .onnx, not {Path(onnx_path).name}")
    card.validate(weights_path.name)
    written = {"weights": str(weights_path), "card": str(card_path_for(weights_path))}
    with StagedOutputs() as staged:
        tmp_weights = staged.stage(weights_path)
        tmp_card = staged.stage(card_path_for(weights_path))
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        torch.save(state, tmp_weights)
        tmp_card.write_text(card.to_json(), encoding="utf-8")
        if onnx_path:
            export_onnx(module, card, staged.stage(onnx_path), check_tolerance=check_tolerance)
            written["onnx"] = str(onnx_path)
        reference = _radiometry_reference(radiometry_tiles, card, log or ignore)
        if reference is not None:
            for model_path in [weights_path] + ([Path(onnx_path)] if onnx_path else []):
                target = beside_model(model_path, REFERENCE_SUFFIX)
                if str(target) in written.values():
                    continue
                staged.stage(target).write_text(json.dumps(
                    {"model": Path(model_path).name, "radiometry_reference": reference.to_dict()}, indent=2) + "\n",
                    encoding="utf-8")
                written["radiometry" if "radiometry" not in written else "radiometry_onnx"] = str(target)
        else:  # a reference beside a model this replaces would describe the old model's tiles
            for model_path in [weights_path] + ([Path(onnx_path)] if onnx_path else []):
                staged.remove_at_commit(beside_model(model_path, REFERENCE_SUFFIX))
        if samples_path:
            if data is None or data.footprints is None or result is None:
                raise TrainingDataError("a sample-footprint layer needs tiles cut from a raster")
            result.layers["samples"] = sample_footprints_layer(data, result)
            if is_file_target(samples_path):
                write_gpkg(result.layers["samples"], staged.stage(samples_path))
                written["samples"] = str(samples_path)
        staged.commit()
    return written


def sample_footprints_layer(data: TrainingData, result: TrainingResult) -> VectorLayer:
    """The training tiles' footprints (raster CRS) as a polygon layer ``samples`` with fields
    ``class`` (name), ``class_id``, ``split`` (train/val) and ``source`` (polygon n)."""
    split = np.full(data.num_tiles, "train", dtype=object)
    split[result.val_index] = "val"
    fields = [("class", "str"), ("class_id", "int"), ("split", "str"), ("source", "str")]
    rows = [
        (tuple(float(v) for v in data.footprints[i]),
         {"class": data.class_names[int(data.labels[i])], "class_id": int(data.labels[i]),
          "split": str(split[i]), "source": data.sources[i]})
        for i in range(data.num_tiles)
    ]
    return boxes_layer("samples", data.crs_wkt, fields, rows)


def export_model_file(weights_path: str | Path, onnx_path: str | Path, tolerance: float = 1e-4,
                      seed: int = 0, batch: int = 8) -> dict[str, Any]:
    """Export a Torch model file (state dict with its card beside it, or TorchScript with a
    card) to ONNX carrying the same card. :func:`core.models.export.export_onnx` refuses an export
    whose logits differ from Torch by more than ``tolerance``; afterwards both models are run
    through Glassbox's backends on ``batch`` random standard-normal tiles (``seed``) and the
    largest absolute differences of logits and class probabilities are returned
    (``max_abs_diff_logits``, ``max_abs_diff_probabilities``), with ``card`` and ``path``.
    The ONNX file is written atomically: on any error there is none."""
    from ..models.backends import OnnxModel, TorchModel, TORCH_SUFFIXES
    from ..models.export import export_onnx
    from ..io.writers import StagedOutputs

    weights_path, onnx_path = Path(weights_path), Path(onnx_path)
    if not weights_path.is_file():
        raise ModelLoadError(f"model file not found: {weights_path}")
    if weights_path.suffix.lower() not in TORCH_SUFFIXES:
        raise ModelLoadError(f"{weights_path.name}: not a Torch model ({', '.join(TORCH_SUFFIXES)})")
    if onnx_path.suffix.lower() != ".onnx":
        raise ModelLoadError(f"the ONNX model must be written as .onnx, not {onnx_path.name}")
    torch_model = TorchModel(weights_path, "cpu")
    card = torch_model.card
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, card.num_bands, card.tile_size, card.tile_size)).astype(np.float32)
    torch_model.predict_proba(x)  # a model that does not give the card's classes is named as itself
    with StagedOutputs() as staged:
        tmp = staged.stage(onnx_path)
        export_onnx(torch_model.module, card, tmp, check_tolerance=tolerance)
        onnx_model = OnnxModel(tmp, "cpu")
        if onnx_model.card != card:
            raise ModelLoadError("internal: the exported card differs from the Torch model's")
        reference = stage_reference_copy(staged, [weights_path], onnx_path)
        diff_logits = float(np.max(np.abs(onnx_model.predict_logits(x) - torch_model.predict_logits(x))))
        diff_probs = float(np.max(np.abs(onnx_model.predict_proba(x) - torch_model.predict_proba(x))))
        if diff_probs > tolerance:
            raise ModelLoadError(f"ONNX probabilities differ from Torch by {diff_probs:.2e} (> {tolerance})")
        del onnx_model
        staged.commit()
    return {"path": str(onnx_path), "card": card, "max_abs_diff_logits": diff_logits,
            "max_abs_diff_probabilities": diff_probs, "tiles_compared": batch,
            "radiometry": str(reference) if reference else None}


#: the fewest training tiles a radiometry reference is made from (its draws take a quarter of them)
MIN_REFERENCE_TILES = 64


def _radiometry_reference(tiles: np.ndarray | None, card: ModelCard, log: Log) -> Any:
    """The radiometry reference of raw training ``tiles`` under the card's scaling (draws of a
    quarter of the tiles, at most 256), or None (logged) when there are too few tiles."""
    if tiles is None:
        return None
    if len(tiles) < MIN_REFERENCE_TILES:
        log(f"no radiometry reference written: {len(tiles)} training tiles, it needs {MIN_REFERENCE_TILES}; "
            "classify will not say whether a scene looks like the training data")
        return None
    from ..scene_radiometry import DRAW_SIZE, reference_from_tiles
    from .scaling import scale_batch

    inputs = scale_batch(tiles, card.scaling)
    return reference_from_tiles(inputs, list(card.bands), draw_size=min(DRAW_SIZE, len(tiles) // 4),
                                source=f"{len(tiles)} training tiles of {card.name}")


def tiles_per_class_text(data: TrainingData) -> str:
    return "; ".join(f"{n}: {c}" for n, c in data.class_counts().items())



