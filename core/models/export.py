"""Save trained Torch models with their card, and export them to ONNX with the same card."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .backends import card_path_for
from .card import ONNX_METADATA_KEY, ModelCard
from ..errors import ModelLoadError


def attach_card_to_onnx(onnx_path: str | Path, card: ModelCard) -> None:
    """Write ``card`` into the ONNX file's ``metadata_props`` (replacing an older card)."""
    import onnx

    write_onnx_with_card(onnx.load(str(onnx_path)), card, onnx_path)


def write_onnx_with_card(model: Any, card: ModelCard, onnx_path: str | Path) -> Path:
    """Write the ``onnx.ModelProto`` ``model`` to ``onnx_path`` (atomically) with ``card`` in its
    ``metadata_props`` (replacing an older card). ``model`` itself is changed the same way."""
    onnx_path = Path(onnx_path)
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = card.to_json()
    _atomic_write_bytes(onnx_path, model.SerializeToString())
    return onnx_path


def save_torch(module: Any, card: ModelCard, weights_path: str | Path) -> Path:
    """Save a state dict (``weights_only``-loadable) and its card beside it as ``<stem>.json``."""
    import torch

    weights_path = Path(weights_path)
    card.validate(weights_path.name)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=weights_path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        _publish(tmp, weights_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _atomic_write_bytes(card_path_for(weights_path), card.to_json().encode("utf-8"))
    return weights_path


def export_onnx(
    module: Any,
    card: ModelCard,
    onnx_path: str | Path,
    opset: int = 17,
    check_tolerance: float | None = 1e-4,
    keep_batchnorm: bool = True,
) -> Path:
    """Export a Torch classifier to ONNX (dynamic batch axis) with the card in its metadata.

    With ``keep_batchnorm`` (the default) the batch-norm layers stay ``BatchNormalization`` nodes
    (inference form, running statistics as inputs) instead of being folded into the
    convolutions: ONNX Runtime folds them itself when it loads the model (same speed), and the
    file can still be adapted to a scene without Torch (:mod:`..adaptation_onnx`).

    With ``check_tolerance`` set, the ONNX model is run on random input and its logits must
    match the Torch module's within that absolute tolerance, else :class:`ModelLoadError`.
    """
    import torch

    onnx_path = Path(onnx_path)
    card.validate(onnx_path.name)
    module = module.eval().cpu()
    example = torch.randn(2, card.num_bands, card.tile_size, card.tile_size)
    fd, tmp = tempfile.mkstemp(dir=onnx_path.parent, suffix=".onnx.tmp")
    os.close(fd)
    # PRESERVE exports an eval-mode module in inference form but skips the pass that folds
    # batch norm into the convolutions (EVAL runs it)
    training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    try:
        with warnings.catch_warnings():
            # the advice against constant folding is for modules in training mode; this one is in eval
            warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
            # the TorchScript exporter is chosen on purpose (it keeps the batch-norm nodes); its notices would
            # land in the middle of a Processing log
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
                training=training,
            )
        attach_card_to_onnx(tmp, card)
        if check_tolerance is not None:
            _check_same_logits(module, tmp, example.numpy(), check_tolerance)
        _publish(tmp, onnx_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return onnx_path


def _check_same_logits(module: Any, onnx_file: str, example: np.ndarray, tol: float) -> None:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: example})[0]
    with torch.inference_mode():
        torch_out = module(torch.from_numpy(example)).numpy()
    diff = float(np.max(np.abs(onnx_out - torch_out)))
    # relative to the size of the outputs, as the ensemble's own check is: float32 rounding of
    # logits in the hundreds (a model with large logits, or an ensemble re-normalising its input)
    # exceeds an absolute 1e-4 without the export being wrong
    scale = max(1.0, float(np.max(np.abs(torch_out))))
    if diff > tol * scale:
        raise ModelLoadError(f"the ONNX export differs from the Torch model by {diff:.2e} in its outputs (largest "
                             f"{scale:.3g}; allowed {tol * scale:.1e}): the network does something ONNX cannot "
                             "reproduce exactly (e.g. a random or data-dependent step); check it runs in eval mode, "
                             "or raise TOLERANCE")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _publish(tmp: str, target: Path) -> None:
    """Move a finished temporary file into place with the permissions a newly created file
    gets (mkstemp makes it private to its owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def store_onnx_weights_as_float16(onnx_path: str | Path, min_elements: int = 16) -> dict[str, Any]:
    """Halve an ONNX model's file size: every float32 weight (initializer) of at least
    ``min_elements`` values is stored as float16 and cast back to float32 by a ``Cast`` node.
    Inputs, outputs, arithmetic and the card stay float32 and unchanged; ONNX Runtime folds the
    casts when it loads the model, so inference runs at float32 speed. The logits change by the
    weights' rounding (relative error about 5e-4); measure the accuracy of the written file.
    Rewrites the file in place (atomically). Returns {"bytes_before", "bytes_after",
    "weights_converted"}."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    onnx_path = Path(onnx_path)
    before = onnx_path.stat().st_size
    model = onnx.load(str(onnx_path))
    graph = model.graph
    halves, casts = [], []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__float16")
        halves.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_float32"))
        graph.initializer.remove(init)
    graph.initializer.extend(halves)
    nodes = casts + list(graph.node)  # the casts first keeps the graph topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    _atomic_write_bytes(onnx_path, model.SerializeToString())
    return {"bytes_before": before, "bytes_after": onnx_path.stat().st_size, "weights_converted": len(casts)}
