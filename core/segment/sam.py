"""Segment Anything models for :mod:`.segment`: a small registry of builders, checkpoint
loading (from a path the user gives; nothing is ever downloaded) and point prompts on one
window through samgeo's predictor.

**Model types.** ``vit_b``, ``vit_l`` and ``vit_h`` are segment_anything's own builders
(``segment_anything.sam_model_registry``); ``vit_t`` is MobileSAM, available when the
``mobile_sam`` package is installed (its ``sam_model_registry["vit_t"]``). Other code may add a
builder with :func:`register_sam_builder` (the tests register a tiny, randomly initialised SAM
made of segment_anything's own modules). Importing this module imports neither torch nor
segment_anything: builders are looked up when a model is loaded.

**Checkpoints** (:func:`load_sam`). The network is built without weights by the type's builder
and the checkpoint, a Torch state dict, is read with ``torch.load(weights_only=True)`` (a file
that would run pickled code is refused) and loaded strictly. A checkpoint of another type
fails with the type its tensors fit, when that can be told. Where checkpoints come from is
:data:`CHECKPOINT_HELP`.

**Prompting** (:class:`WindowPredictor`). samgeo's ``SamGeo`` class would download a
checkpoint it cannot find, builds its model only from segment_anything's registry and, in
prompt mode, reads whole rasters; so Glassbox uses samgeo's ``SamGeoPredictor`` (the
``SamPredictor`` subclass samgeo provides for a model built elsewhere) and samgeo's
``prepare_image_for_sam`` on one window at a time: the window's 8-bit RGB image is embedded
once (``set_image``) and then every seed of the window is prompted on its own (one positive
point plus the window's negative points), keeping the mask SAM rates best.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ModelLoadError, SegmentationError

#: What the user is told when a SAM checkpoint is missing.
CHECKPOINT_HELP = (
    "Segment Anything needs a checkpoint file (e.g. sam_vit_b_01ec64.pth from the segment-anything "
    "project's model page on GitHub (facebookresearch/segment-anything, 'Model Checkpoints'), or "
    "MobileSAM's mobile_sam.pt from the MobileSAM project (ChaoningZhang/MobileSAM)); Glassbox never "
    "downloads it. Give its path in SAM checkpoint, or choose the seeded watershed method."
)

#: model type -> label shown to users, in the order of the algorithm's choice list
STANDARD_TYPES = {
    "vit_b": "ViT-B (sam_vit_b_01ec64.pth)",
    "vit_l": "ViT-L (sam_vit_l_0b3195.pth)",
    "vit_h": "ViT-H (sam_vit_h_4b8939.pth)",
    "vit_t": "MobileSAM ViT-T (mobile_sam.pt; needs the mobile_sam package)",
}
#: image encoder width of each standard type (``image_encoder.patch_embed.proj.weight`` rows)
_ENCODER_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}

# model type -> (label, builder); builders take no argument and return an untrained Sam
_REGISTERED: dict[str, tuple[str, Callable[[], Any]]] = {}


def register_sam_builder(model_type: str, builder: Callable[[], Any], label: str | None = None) -> None:
    """Make ``model_type`` loadable: ``builder()`` returns a SAM network (segment_anything's
    ``Sam`` interface) with random weights, which :func:`load_sam` fills from the checkpoint."""
    if model_type in STANDARD_TYPES:
        raise ValueError(f"'{model_type}' is a standard Segment Anything type and cannot be replaced")
    _REGISTERED[model_type] = (label or model_type, builder)


def unregister_sam_builder(model_type: str) -> None:
    _REGISTERED.pop(model_type, None)


def model_types() -> dict[str, str]:
    """Every model type :func:`load_sam` knows -> its label: the standard ones first (always,
    whether or not their package is installed), then registered ones."""
    types = dict(STANDARD_TYPES)
    types.update({k: label for k, (label, _b) in _REGISTERED.items()})
    return types


def mobile_sam_available() -> bool:
    return importlib.util.find_spec("mobile_sam") is not None


def _builder(model_type: str) -> Callable[[], Any]:
    if model_type in _REGISTERED:
        return _REGISTERED[model_type][1]
    if model_type == "vit_t":
        if not mobile_sam_available():
            raise SegmentationError(
                "MobileSAM (model type vit_t) needs the Python package mobile_sam, which is not installed "
                "(pip install git+https://github.com/ChaoningZhang/MobileSAM.git into Glassbox's environment), "
                "or choose a ViT-B/L/H checkpoint or the seeded watershed method."
            )
        from mobile_sam import sam_model_registry as mobile_registry  # type: ignore[import-not-found]

        return lambda: mobile_registry["vit_t"](checkpoint=None)
    if model_type in ("vit_b", "vit_l", "vit_h"):
        from segment_anything import sam_model_registry

        return lambda: sam_model_registry[model_type](checkpoint=None)
    raise SegmentationError(f"unknown Segment Anything model type '{model_type}'; use one of "
                            f"{', '.join(model_types())}")


def check_checkpoint(checkpoint: str | Path | None) -> Path:
    """The checkpoint path, or :class:`SegmentationError` saying where checkpoints come from."""
    if checkpoint is None or str(checkpoint).strip() == "":
        raise SegmentationError(CHECKPOINT_HELP)
    path = Path(checkpoint)
    if not path.is_file():
        raise SegmentationError(f"SAM checkpoint not found: {path}. {CHECKPOINT_HELP}")
    return path


def load_sam(model_type: str, checkpoint: str | Path | None, device: str = "cpu") -> Any:
    """A SAM network of ``model_type`` with the weights of ``checkpoint`` (a state dict file),
    in eval mode on ``device``. Nothing is downloaded."""
    from ..models.backends import load_state_dict, resolve_torch_device

    path = check_checkpoint(checkpoint)
    build = _builder(model_type)
    state = load_state_dict(path, "the SAM checkpoint", unwrap="model",
                            save_hint="copy or download it again (a SAM checkpoint is a plain state dict)")
    model = build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        guess = _guess_type(state)
        hint = f" It looks like a {guess} checkpoint: choose that model type." if guess and guess != model_type else ""
        raise ModelLoadError(f"{path.name} does not fit the SAM model type {model_type}.{hint} "
                             f"({str(exc).splitlines()[0]})") from exc
    return model.to(resolve_torch_device(device)).eval()


def _guess_type(state: dict) -> str | None:
    if "image_encoder.patch_embed.seq.0.c.weight" in state:  # MobileSAM's TinyViT
        return "vit_t"
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None or weight.ndim != 4:
        return None
    return _ENCODER_WIDTH.get(int(weight.shape[0]))


def import_samgeo() -> Any:
    """Import samgeo (its ``samgeo``, ``common`` modules), dropping the tracebacks it keeps.

    samgeo's ``samgeo3`` module stores the ImportErrors of its optional dependencies (sam3,
    transformers) in module globals; their tracebacks hold every frame of whoever imported
    samgeo first, and with them that caller's QGIS layers, until interpreter shutdown, after
    QGIS has closed its data providers (a crash in GDALClose). The exceptions stay, their
    tracebacks go."""
    import sys

    import samgeo
    import samgeo.common
    import samgeo.samgeo

    for name, module in list(sys.modules.items()):
        if name == "samgeo" or name.startswith("samgeo."):
            for value in list(vars(module).values()):
                if isinstance(value, BaseException):
                    value.__traceback__ = None
                    value.__context__ = None
    return samgeo


class WindowPredictor:
    """Point prompts on one window at a time with samgeo's ``SamGeoPredictor``.

    ``set_window(rgb)``: an 8-bit image ``(rows, cols, 3)`` (or 1 or 2 bands, which samgeo's
    ``prepare_image_for_sam`` turns into RGB). ``predict(point, negatives)``: ``point`` and
    ``negatives`` in window pixel coordinates ``(col, row)`` (x right, y down; pixel centres at
    +0.5); returns the best of SAM's three masks ``(rows, cols)`` bool and its predicted IoU."""

    def __init__(self, model: Any):
        samgeo = import_samgeo()
        self.predictor = samgeo.samgeo.SamGeoPredictor(model)
        self._prepare = samgeo.common.prepare_image_for_sam

    def set_window(self, image: Any) -> None:
        self.predictor.set_image(self._prepare(image, channel_axis=-1))

    def predict(self, point: Sequence[float], negatives: Sequence[Sequence[float]] = ()) -> tuple[Any, float]:
        import numpy as np

        coords = np.array([list(point)] + [list(n) for n in negatives], dtype=np.float32)
        labels = np.array([1] + [0] * len(negatives), dtype=np.int64)
        masks, scores, _logits = self.predictor.predict(point_coords=coords, point_labels=labels,
                                                        multimask_output=True)
        best = int(np.argmax(scores))
        return np.asarray(masks[best], dtype=bool), float(scores[best])
