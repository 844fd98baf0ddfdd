"""The model card: everything Glassbox needs to know to run a model on a raster.

A card is a JSON object. It travels with the model:

* ONNX: as the ``metadata_props`` entry with key :data:`ONNX_METADATA_KEY`;
* Torch: in a JSON file beside the weights (``model.pt`` -> ``model.json``) and, for TorchScript,
  also as the extra file ``glassbox_card.json`` inside the archive.

Fields (units in brackets)::

    {
      "card_version": 1,
      "name": "EuroSAT RGB CNN (paper 1)",
      "task": "patch_classification",       # one class vector per tile
      "classes": [{"name": "Forest", "color": "#1a7a2e"}, ...],
      "bands": ["B04", "B03", "B02"],       # names, in the order the model reads them
      "scaling": {                          # applied to raw raster values, per band or scalar:
        "scale": 0.0927, "offset": 0.0,     #   x = x * scale + offset
        "clip": [0, 255],                   #   x = clip(x, lo, hi)          (optional)
        "mean": [..], "std": [..]           #   x = (x - mean) / std         (optional)
      },
      "tile_size": 64,                      # [model pixels], square tiles
      "gsd": 10.0,                          # ground sample distance [metres per pixel]
      "architecture": {"name": "paper1_cnn", "kwargs": {}},
      "training": {...},                    # provenance: data, split, seed, epochs, date
      "accuracy": {...}                     # e.g. {"test_overall": 0.95, "n_test": 5400}
    }
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ModelCardError

ONNX_METADATA_KEY = "glassbox_card"
TORCHSCRIPT_EXTRA_FILE = "glassbox_card.json"
CARD_VERSION = 1
#: classes a model may have: the class raster's values 253, 254 and 255 are Cloud, Unclassified and nodata
MAX_CLASSES = 253
SUPPORTED_TASKS = ("patch_classification",)

_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_REQUIRED = ("classes", "bands", "scaling", "tile_size", "gsd")


@dataclass
class ClassInfo:
    name: str
    color: str  # "#rrggbb"

    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass
class Scaling:
    """Maps raw raster values to the model's input: ``((clip(x*scale+offset)) - mean) / std``."""

    scale: float | list[float] = 1.0
    offset: float | list[float] = 0.0
    clip: list[float] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Scale raw values of shape ``(..., bands, rows, cols)`` to float32 model input."""
        x = pixels.astype(np.float32, copy=True)
        bands = x.shape[-3]
        x *= _per_band(self.scale, bands)
        x += _per_band(self.offset, bands)
        if self.clip is not None:
            np.clip(x, self.clip[0], self.clip[1], out=x)
        if self.mean is not None:
            x -= _per_band(self.mean, bands)
        if self.std is not None:
            x /= _per_band(self.std, bands)
        return x


def _per_band(value: float | Sequence[float], bands: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, bands)
    if arr.size != bands:
        raise ModelCardError(f"scaling has {arr.size} values for {bands} bands")
    return arr.reshape(bands, 1, 1)


@dataclass
class ModelCard:
    classes: list[ClassInfo]
    bands: list[str]
    scaling: Scaling
    tile_size: int
    gsd: float
    name: str = "unnamed model"
    task: str = "patch_classification"
    output: str = "logits"  # what the network returns: "logits" (Glassbox applies the softmax) or "probabilities"
    architecture: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    card_version: int = CARD_VERSION

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"{source}: the model card is not valid JSON ({exc})") from exc
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "card") -> "ModelCard":
        """Build and validate a card; the error names every missing or invalid field."""
        if not isinstance(data, dict):
            raise ModelCardError(f"{source}: the model card must be a JSON object")
        problems = [f"missing '{key}'" for key in _REQUIRED if key not in data]
        if problems:
            raise ModelCardError(
                f"{source}: model card is unusable: " + ", ".join(problems) + ". Every card needs "
                + ", ".join(_REQUIRED) + ": add the missing field(s) (see docs/models.md, 'Models and their cards')"
            )
        try:
            classes = [_class_info(c, i) for i, c in enumerate(data["classes"])]
            scaling = Scaling(**data["scaling"])
            card = cls(
                classes=classes,
                bands=[str(b) for b in data["bands"]],
                scaling=scaling,
                tile_size=int(data["tile_size"]),
                gsd=float(data["gsd"]),
                name=str(data.get("name", "unnamed model")),
                task=str(data.get("task", "patch_classification")),
                output=str(data.get("output", "logits")),
                architecture=dict(data.get("architecture") or {}),
                training=dict(data.get("training") or {}),
                accuracy=dict(data.get("accuracy") or {}),
                description=str(data.get("description", "")),
                card_version=int(data.get("card_version", CARD_VERSION)),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelCardError(f"{source}: model card is unusable: {exc}") from exc
        card.validate(source)
        return card

    def validate(self, source: str = "card") -> None:
        problems = []
        if not self.classes:
            problems.append("'classes' is empty")
        if len(self.classes) > MAX_CLASSES:
            problems.append(f"{len(self.classes)} classes: at most {MAX_CLASSES} (the class raster is 8-bit: values "
                            f"0-{MAX_CLASSES - 1} are the classes, 253 Cloud, 254 Unclassified, 255 nodata); group "
                            "classes, e.g. with a class mapping")
        if len(set(self.class_names)) != len(self.classes):
            problems.append("class names are not unique")
        if not self.bands:
            problems.append("'bands' is empty")
        if self.tile_size <= 0:
            problems.append("'tile_size' must be positive")
        if not self.gsd > 0:
            problems.append("'gsd' must be positive (metres per pixel)")
        if self.task not in SUPPORTED_TASKS:
            problems.append(f"task '{self.task}' is not one of {SUPPORTED_TASKS}")
        if self.output not in ("logits", "probabilities"):
            problems.append(f"output '{self.output}' must be 'logits' or 'probabilities'")
        s = self.scaling
        if s.clip is not None and (len(s.clip) != 2 or s.clip[0] > s.clip[1]):
            problems.append("'scaling.clip' must be [low, high]")
        for key in ("scale", "offset", "mean", "std"):
            value = getattr(s, key)
            if value is None:
                continue
            n = np.asarray(value).size
            if n not in (1, len(self.bands)):
                problems.append(f"'scaling.{key}' has {n} values for {len(self.bands)} bands")
        if s.std is not None and np.any(np.asarray(s.std, dtype=float) == 0):
            problems.append("'scaling.std' contains 0")
        if problems:
            raise ModelCardError(f"{source}: model card is unusable: " + "; ".join(problems))


def _class_info(entry: Any, index: int) -> ClassInfo:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"class {index} needs a 'name'")
    color = str(entry.get("color") or default_colour(index))
    if not _HEX_COLOUR.match(color):
        raise ValueError(f"class '{entry['name']}' colour '{color}' is not #rrggbb")
    return ClassInfo(name=str(entry["name"]), color=color)


_FALLBACK_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]


def default_colour(index: int) -> str:
    return _FALLBACK_PALETTE[index % len(_FALLBACK_PALETTE)]


#: Colours for the EuroSAT classes, chosen to read like a land-cover legend.
EUROSAT_CLASSES: list[ClassInfo] = [
    ClassInfo("AnnualCrop", "#f2d16b"),
    ClassInfo("Forest", "#1b7a2f"),
    ClassInfo("HerbaceousVegetation", "#9ccc65"),
    ClassInfo("Highway", "#6d6d6d"),
    ClassInfo("Industrial", "#b05fc7"),
    ClassInfo("Pasture", "#d5e88f"),
    ClassInfo("PermanentCrop", "#e08b2f"),
    ClassInfo("Residential", "#e0413a"),
    ClassInfo("River", "#3a8ee0"),
    ClassInfo("SeaLake", "#1b3f8f"),
]
