"""Model backends: ONNX Runtime and Torch, behind one interface.

``load_model(path)`` reads the model and its card and returns a :class:`ClassifierModel` whose
``predict_proba`` maps a float32 batch ``(N, bands, tile, tile)`` of *already scaled* input to
class probabilities ``(N, classes)``.

Torch files are never unpickled: state dicts load with ``torch.load(weights_only=True)`` and a
file that holds pickled Python objects is refused with :class:`UnsafeModelError`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .card import ONNX_METADATA_KEY, TORCHSCRIPT_EXTRA_FILE, ModelCard
from ..dihedral import dihedral_views
from ..errors import ModelCardError, ModelLoadError, UnsafeModelError

ONNX_SUFFIXES = (".onnx",)
TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def cuda_available() -> bool:
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


class ClassifierModel:
    """A loaded model plus its card. Subclasses implement :meth:`predict_logits`."""

    backend = "abstract"

    def __init__(self, card: ModelCard, path: Path, device: str):
        self.card = card
        self.path = path
        self.device = device

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, batch: np.ndarray, dihedral_tta: bool = False) -> np.ndarray:
        """Class probabilities ``(N, classes)`` for a scaled float32 batch ``(N, bands, H, W)``.

        ``dihedral_tta``: test-time augmentation: the model's outputs (logits, or probabilities
        for a model that outputs them) averaged over the 8 rotations and flips of every tile
        (:func:`.dihedral.dihedral_views`), at 8 times the cost."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        views = dihedral_views(batch) if dihedral_tta else [batch]
        out = np.mean([self._checked_output(view) for view in views], axis=0)
        if self.card.output == "probabilities":
            return out.astype(np.float32)
        return softmax(out).astype(np.float32)

    def _checked_output(self, batch: np.ndarray) -> np.ndarray:
        out = self.predict_logits(batch)
        if out.ndim != 2 or out.shape[1] != self.card.num_classes:
            raise ModelLoadError(
                f"{self.path.name}: model returned shape {tuple(out.shape)}, expected "
                f"(batch, {self.card.num_classes}) for the card's {self.card.num_classes} classes"
            )
        self._check_output_kind(out)
        return out.astype(np.float64)

    def check_output(self) -> None:
        """Refuse a card whose ``output`` does not say what the network returns, tried on 4 random
        scaled tiles: for callers that use the network without :meth:`predict_proba` (explain,
        ensembles)."""
        card = self.card
        tiles = np.random.default_rng(0).standard_normal((4, card.num_bands, card.tile_size, card.tile_size))
        self._output_checked = False
        self._check_output_kind(np.asarray(self.predict_logits(tiles.astype(np.float32)), dtype=np.float64))

    def _check_output_kind(self, out: np.ndarray) -> None:
        """Catch a card whose ``output`` does not say what the network returns: a softmax inside the
        network read as logits would be softmaxed twice (flattened probabilities, confidence and
        MIN_CONFIDENCE wrong, argmax of blended tiles shifted); sigmoid scores read as probabilities
        do not sum to 1. Only for more than one class and a batch of a few tiles."""
        if self.card.num_classes < 2 or out.shape[0] < 4 or getattr(self, "_output_checked", False):
            return
        self._output_checked = True
        sums = out.sum(axis=1)
        looks_like_probabilities = bool(np.all(out >= 0) and np.all(out <= 1) and np.allclose(sums, 1, atol=1e-3))
        if self.card.output == "logits" and looks_like_probabilities:
            raise ModelCardError(
                f"{self.path.name}: the model returns class probabilities (every row of its output is 0-1 and sums "
                "to 1: a softmax inside the network), but its card says \"output\": \"logits\" (the default), so "
                "the probabilities would be softmaxed a second time. Add \"output\": \"probabilities\" to the card, "
                "or export the network without its final softmax")
        if self.card.output == "probabilities" and not np.allclose(sums, 1, atol=1e-2):
            raise ModelCardError(
                f"{self.path.name}: the card says \"output\": \"probabilities\", but the model's class scores sum "
                f"to {sums.min():.3g}-{sums.max():.3g}, not 1 (e.g. a sigmoid per class, or logits): give "
                "\"output\": \"logits\" for raw scores, or export the network with a softmax over the classes")


def check_onnx_input(inputs: Sequence[Any], card: ModelCard, name: str) -> None:
    """An ONNX classifier takes one input, a batch of tiles (N, bands, height, width); where the
    graph fixes the bands or the tile size they must be the card's. Raises :class:`ModelCardError`."""
    if len(inputs) != 1:
        raise ModelCardError(
            f"{name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); a Glassbox model takes one "
            "input, a batch of tiles (N, bands, height, width): export the model with a single input")
    shape = list(inputs[0].shape or [])
    if len(shape) != 4:
        raise ModelCardError(f"{name} takes an input of {len(shape)} dimensions {shape}; a Glassbox model takes a "
                             "batch of tiles (N, bands, height, width)")
    expected = {1: (card.num_bands, f"{card.num_bands} bands ({', '.join(card.bands)})"),
                2: (card.tile_size, f"tiles of {card.tile_size} px"), 3: (card.tile_size, f"tiles of {card.tile_size} px")}
    if (isinstance(shape[3], int) and shape[3] == card.num_bands and shape[1] != card.num_bands
            and all(not isinstance(shape[a], int) or shape[a] == card.tile_size for a in (1, 2))):
        raise ModelCardError(
            f"{name} takes its input channels-last, (N, height, width, bands) = {shape}; Glassbox feeds a batch of "
            f"tiles (N, bands, height, width) with the {card.num_bands} bands as the second axis: export the model "
            "with a channels-first input (in PyTorch, drop the permute in front of the network; in TensorFlow/Keras, "
            "tf2onnx's --inputs-as-nchw)")
    for axis, (size, what) in expected.items():
        if isinstance(shape[axis], int) and shape[axis] > 0 and shape[axis] != size:
            got = f"{shape[axis]} bands" if axis == 1 else f"tiles of {shape[2]} x {shape[3]} px"
            raise ModelCardError(f"{name} reads {got}, but its card says {what}: the card does not belong to this "
                                 "model; export the model again with its own card")


class OnnxModel(ClassifierModel):
    backend = "onnx"

    def __init__(self, path: Path, device: str = "cpu", card: ModelCard | None = None, threads: int | None = None):
        """``threads``: CPU threads of ONNX Runtime's operators (None: its default, all cores)."""
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelLoadError("CUDA was asked for but onnxruntime has no CUDA provider here")
            providers.insert(0, "CUDAExecutionProvider")
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise ModelLoadError(f"{Path(path).name}: the model file is empty (0 bytes): an interrupted download or "
                                 "copy; download or export it again")
        try:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
                options.inter_op_num_threads = 1
            # ONNX Runtime's threads busy-wait for the next operator by default; between batches
            # that burns a core the reader, blending and writing (and other processes) need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"{path.name}: onnxruntime cannot load the model: {str(exc).rstrip('.')}. The file is damaged or not an ONNX "
                "model (e.g. an interrupted download or copy): download or export it again"
            ) from exc
        if card is None:
            meta = self.session.get_modelmeta().custom_metadata_map
            if ONNX_METADATA_KEY not in meta:
                raise ModelCardError(
                    f"{path.name}: the ONNX model has no Glassbox model card (which says its classes, bands, tile "
                    "size and scaling). Use a model trained or exported by Glassbox ('Export model to ONNX' makes one "
                    "from a Torch model with its .json card), or add a card to yours "
                    f"(core.models.export.attach_card_to_onnx, metadata key '{ONNX_METADATA_KEY}'; docs/models.md)"
                )
            card = ModelCard.from_json(meta[ONNX_METADATA_KEY], source=path.name)
        super().__init__(card, path, device)
        check_onnx_input(self.session.get_inputs(), card, path.name)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        batch_dim = model_input.shape[0] if model_input.shape else None
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        # a float16 export (model.half() before torch.onnx.export) takes float16 tiles
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        if model_input.type not in ("tensor(float)", "tensor(float16)"):
            raise ModelCardError(f"{path.name} takes {model_input.type} input; a Glassbox model takes float32 (or "
                                 "float16) tiles: export it with a float input")

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(self.input_dtype, copy=False)
        if self.fixed_batch is None or self.fixed_batch == batch.shape[0]:
            return self.session.run(None, {self.input_name: batch})[0].astype(np.float32)
        step = self.fixed_batch
        outs = [
            self.session.run(None, {self.input_name: batch[i : i + step]})[0]
            for i in range(0, batch.shape[0], step)
        ]
        return np.concatenate(outs).astype(np.float32)


class TorchModel(ClassifierModel):
    backend = "torch"

    def __init__(self, path: Path, device: str = "cpu", card: ModelCard | None = None):
        import torch

        device = resolve_torch_device(device)
        if is_torchscript(path):
            extra = {TORCHSCRIPT_EXTRA_FILE: ""}
            try:
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
            except Exception as exc:
                raise ModelLoadError(f"{path.name}: cannot load TorchScript: {exc}") from exc
            if card is None:
                card = _sidecar_card(path, required=False)
            if card is None and extra[TORCHSCRIPT_EXTRA_FILE]:
                card = ModelCard.from_json(extra[TORCHSCRIPT_EXTRA_FILE], source=path.name)
            if card is None:
                raise ModelCardError(_missing_torch_card_message(path))
        else:
            if card is None:
                card = _sidecar_card(path, required=True)
            state = load_state_dict(path)
            module = build_from_card(card)
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"{path.name}: the weights do not fit architecture "
                    f"'{card.architecture.get('name')}' named in the card ({state_dict_mismatch(module, state)}): "
                    "the card belongs to another model, or the weights to another network"
                ) from exc
        module.eval()
        self.module = module.to(device)
        super().__init__(card, path, device)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        return out.detach().float().cpu().numpy()


def build_from_card(card: ModelCard) -> Any:
    """An untrained ``nn.Module`` of the architecture the card names."""
    from .architectures import build_model

    name = card.architecture.get("name")
    if not name:
        raise ModelCardError(
            "the card names no 'architecture.name', which a state-dict model needs "
            "(or save the model as TorchScript)"
        )
    kwargs = dict(card.architecture.get("kwargs") or {})
    return build_model(name, card.num_bands, card.num_classes, card.tile_size, **kwargs)


def load_state_dict(path: Path, noun: str = "Torch weights", unwrap: str = "state_dict",
                    save_hint: str = "save a state dict (torch.save(model.state_dict(), ...)), or TorchScript for a "
                                     "model to classify with") -> dict:
    """Read a state dict with ``weights_only=True``; refuse anything that needs unpickling.

    ``noun`` names the file in messages (``"the SAM checkpoint"``), ``unwrap`` is the key of a
    state dict nested in a training checkpoint (``{"state_dict": ...}``, SAM's ``{"model": ...}``),
    ``save_hint`` says what to do about a file that cannot be read."""
    import pickle

    import torch

    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path.name}: {noun} is an empty file (0 bytes): {save_hint}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "Unsupported global" in str(exc) or "Unsupported class" in str(exc):
            raise UnsafeModelError(f"{path.name}: refused: the file holds pickled Python objects that would run "
                                   f"code when loaded; {save_hint}") from exc
        reason = "not a Torch file" if isinstance(exc, pickle.UnpicklingError) else _load_failure(exc)
        raise ModelLoadError(f"{path.name}: cannot read {noun} ({reason}): the file is damaged, incomplete or "
                             f"not a Torch state dict; {save_hint}") from exc
    if isinstance(obj, dict) and unwrap in obj and isinstance(obj[unwrap], dict):
        obj = obj[unwrap]
    elif isinstance(obj, dict) and unwrap == "state_dict":
        # training checkpoints of the usual recipes: {"epoch": .., "model_state_dict": {..}, "optimizer_state_dict": ..}
        nested = [k for k in ("model_state_dict", "model", "net", "state_dict_ema") if isinstance(obj.get(k), dict)]
        if nested:
            obj = obj[nested[0]]
    if isinstance(obj, dict) and obj and all(str(k).startswith("module.") for k in obj):
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}  # saved from nn.DataParallel / DDP
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(list(map(str, obj))[:5]) if isinstance(obj, dict) else type(obj).__name__
        raise ModelLoadError(f"{path.name}: {noun} is not a state dict of tensors (it holds {keys}): save only the "
                             f"network's weights, e.g. torch.save(checkpoint['model_state_dict'], ...)")
    return obj


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def card_path_for(weights: Path) -> Path:
    """Where a Torch model's card lives: beside the weights, same stem, ``.json``."""
    return weights.with_suffix(".json")


def _sidecar_card(path: Path, required: bool) -> ModelCard | None:
    sidecar = card_path_for(path)
    if not sidecar.exists():
        if required:
            raise ModelCardError(_missing_torch_card_message(path))
        return None
    return ModelCard.from_json(sidecar.read_text(encoding="utf-8"), source=sidecar.name)


def _missing_torch_card_message(path: Path) -> str:
    return (
        f"{path.name}: no Glassbox model card: expected {card_path_for(path).name} beside the "
        "weights (classes, bands, scaling, tile_size, gsd, architecture)"
    )


def state_dict_mismatch(module: Any, state: dict, shown: int = 3) -> str:
    """What keeps ``state`` from loading into ``module``, in one short line: how many tensors are
    missing, unexpected or of another shape, with the first few names (a full list runs to
    kilobytes)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {tuple(state[k].shape)} instead of {tuple(own[k].shape)}" for k in own
                if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
        if items:
            more = f", ... {len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{len(items)} tensor(s) {what}: {', '.join(items[:shown])}{more}")
    return "; ".join(parts) or "no tensor differs by name or shape"


def _load_failure(exc: Exception) -> str:
    """torch.load's reason in words: reading a file that is not a Torch archive at all (e.g.
    text) fails in the unpickler with a bare opcode number such as '101'."""
    text = str(exc).rstrip(".")
    if not text or text.isdigit() or len(text) <= 3:
        return "not a Torch file"
    return text


def resolve_device(requested: str) -> str:
    """'cpu', 'cuda' or 'auto' (CUDA when present). Asking for CUDA where there is none fails."""
    requested = (requested or "cpu").lower()
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    if requested not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device '{requested}' (use cpu, cuda or auto)")
    return requested


def resolve_torch_device(requested: str) -> str:
    """As :func:`resolve_device`, for work done by Torch (explaining, fine-tuning): 'auto' is CUDA
    only when Torch sees a device, and asking for CUDA where Torch sees none fails clearly."""
    import torch

    device = resolve_device(requested)
    if (requested or "").lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was asked for but torch sees no CUDA device here")
    return device


def load_model(path: str | Path, device: str = "cpu") -> ClassifierModel:
    """Load an ONNX or Torch model with its card, on ``device`` ('cpu', 'cuda' or 'auto')."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    device = resolve_device(device)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return OnnxModel(path, device)
    if suffix in TORCH_SUFFIXES:
        return TorchModel(path, device)
    raise ModelLoadError(
        f"{path.name}: unknown model type '{suffix}'; use .onnx, or Torch {', '.join(TORCH_SUFFIXES)}"
    )
