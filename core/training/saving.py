"""Writing trained models: weights, card, ONNX, training-tile footprints."""

from __future__ import annotations

from pathlib import Path
from typing import Any
import numpy as np
from ..models.card import ModelCard
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
) -> dict[str, str]:
    """Write the state dict (``weights_path``, loadable with ``weights_only=True``), its card
    beside it (``<stem>.json``), optionally the ONNX model with the same card (the export is
    checked against Torch within ``check_tolerance``) and optionally a GeoPackage of the
    training tiles' footprints (``samples_path``; needs ``data`` with footprints and
    ``result``; :data:`core.io.vectors.IN_MEMORY` puts that layer only in ``result.layers``). All
    files are staged and moved into place together, so a failure leaves none of them. Returns {"weights", "card", "onnx", "samples"} -> path for what was written."""
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
    with StagedOutputs() as staged:
        tmp = staged.stage(onnx_path)
        export_onnx(torch_model.module, card, tmp, check_tolerance=tolerance)
        onnx_model = OnnxModel(tmp, "cpu")
        if onnx_model.card != card:
            raise ModelLoadError("internal: the exported card differs from the Torch model's")
        diff_logits = float(np.max(np.abs(onnx_model.predict_logits(x) - torch_model.predict_logits(x))))
        diff_probs = float(np.max(np.abs(onnx_model.predict_proba(x) - torch_model.predict_proba(x))))
        if diff_probs > tolerance:
            raise ModelLoadError(f"ONNX probabilities differ from Torch by {diff_probs:.2e} (> {tolerance})")
        del onnx_model
        staged.commit()
    return {"path": str(onnx_path), "card": card, "max_abs_diff_logits": diff_logits,
            "max_abs_diff_probabilities": diff_probs, "tiles_compared": batch}


def tiles_per_class_text(data: TrainingData) -> str:
    return "; ".join(f"{n}: {c}" for n, c in data.class_counts().items())



