"""Does a scene's radiometry look like a model's training tiles?

A network trained on EuroSAT tiles is accurate on tiles like them and much less so when the
whole scene is darker, brighter, hazier, noisier or softer (other seasons, atmospheres,
sensors). One tile cannot tell such a change from its land cover (a dark forest and a darkened
field look alike); a whole scene can: its tiles' statistics, summarised over hundreds of tiles,
move away from the training tiles'. Classify and explain use this to warn in the log
(:func:`check_scene`, with ``<model>.radiometry.json`` beside the model); :class:`SceneSwitch`
(research, not used by the algorithms) picks one of two networks by it.

The summary of a set of tiles is, per band, the median over the tiles of the tile mean, the tile
standard deviation and the tile's local detail (mean absolute difference from its 3x3
neighbourhood mean: noise raises it, blur lowers it), all computed on *scaled* tiles (the model
card's scaling applied). A :class:`RadiometryReference` holds the summary of the training tiles
and how much it varies between random draws of ``draw_size`` training tiles; the *distance* of
a scene is the largest deviation of its summary from the reference centre, in those spreads (a
z-score, max over the ``3 * bands`` numbers). A scene is *like the training tiles* when its
distance is at most the reference's threshold, which is set from the training tiles alone (a
multiple of the largest distance among the reference's own draws).

The class mix of a scene moves the summary too (a scene of only forest is darker than
EuroSAT's even mix), so a real scene can be "unlike" the training tiles with perfect radiometry:
the warning says the map may be less accurate than the model's benchmark, not that the
radiometry is wrong. For a switch that is the safe direction: such a scene gets the network
trained for robustness, which costs a point of accuracy on clean tiles, where the other mistake
(a shifted scene given to the clean network) costs tens of points. QGIS-free, Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ModelCardError

#: tiles per random draw of the training tiles, and draws, for a reference's spread
DRAW_SIZE = 256
DRAWS = 200
#: a scene is like the training tiles up to this multiple of the largest distance among the draws
THRESHOLD_FACTOR = 2.0


def tile_statistics(inputs: np.ndarray) -> np.ndarray:
    """``(N, 3C)`` for scaled tiles ``(N, C, H, W)``: per band the mean, the standard deviation
    and the mean absolute difference from the 3x3 neighbourhood mean (edges replicated).
    Computed 64 tiles at a time: float64 copies of all 1024 sampled 13-band tiles (436 MB each,
    several alive at once) made classify peak at 2.8 GB before its first tile."""
    inputs = np.asarray(inputs)
    if inputs.ndim != 4 or inputs.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch (N, C, H, W), got {inputs.shape}")
    parts = []
    for start in range(0, inputs.shape[0], 64):
        x = np.asarray(inputs[start:start + 64], dtype=np.float64)
        mean = x.mean(axis=(2, 3))
        std = x.std(axis=(2, 3))
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        h, w = x.shape[2], x.shape[3]
        local = sum(padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
        detail = np.abs(x - local).mean(axis=(2, 3))
        parts.append(np.concatenate([mean, std, detail], axis=1))
    return np.concatenate(parts, axis=0)


def scene_summary(inputs: np.ndarray) -> np.ndarray:
    """``(3C,)``: the median over the tiles of :func:`tile_statistics`."""
    return np.median(tile_statistics(inputs), axis=0)


@dataclass
class RadiometryReference:
    """The training tiles' summary (``centre``), its spread between random draws of
    ``draw_size`` tiles (``spread``, same length, positive), and the largest distance a scene
    may have to count as like them (``threshold``, in spreads). Stored in a model card as
    ``radiometry_reference`` (:meth:`to_dict`)."""

    centre: list[float]
    spread: list[float]
    threshold: float
    draw_size: int = DRAW_SIZE
    draws: int = DRAWS
    source: str = ""
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.centre) != len(self.spread) or not self.centre:
            raise ModelCardError("radiometry_reference: 'centre' and 'spread' must be equally long and not empty")
        if min(self.spread) <= 0 or not self.threshold > 0:
            raise ModelCardError("radiometry_reference: 'spread' and 'threshold' must be positive")

    def deviations(self, inputs: np.ndarray) -> np.ndarray:
        """``(3C,)``: the signed deviation of the scene summary of ``inputs`` (scaled tiles) from
        the centre, in spreads, one per statistic (in the order of ``names``)."""
        summary = scene_summary(inputs)
        if summary.size != len(self.centre):
            raise ValueError(f"the reference has {len(self.centre)} statistics, the tiles give {summary.size}")
        return (summary - np.asarray(self.centre)) / np.asarray(self.spread)

    def distance(self, inputs: np.ndarray) -> float:
        """The largest deviation (:meth:`deviations`) in absolute value."""
        return float(np.max(np.abs(self.deviations(inputs))))

    def is_like(self, inputs: np.ndarray) -> tuple[bool, float]:
        """(the tiles' radiometry is like the training tiles', their distance)."""
        d = self.distance(inputs)
        return d <= self.threshold, d

    def to_dict(self) -> dict[str, Any]:
        return {"centre": [round(float(v), 6) for v in self.centre], "spread": [round(float(v), 6) for v in self.spread],
                "threshold": round(float(self.threshold), 4), "draw_size": self.draw_size, "draws": self.draws,
                "source": self.source, "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RadiometryReference":
        try:
            return cls(centre=[float(v) for v in data["centre"]], spread=[float(v) for v in data["spread"]],
                       threshold=float(data["threshold"]), draw_size=int(data.get("draw_size", DRAW_SIZE)),
                       draws=int(data.get("draws", DRAWS)), source=str(data.get("source", "")),
                       names=[str(n) for n in data.get("names", [])])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCardError(f"radiometry_reference is malformed: {exc}") from None


def reference_from_tiles(inputs: np.ndarray, bands: list[str], draw_size: int = DRAW_SIZE, draws: int = DRAWS,
                         threshold_factor: float = THRESHOLD_FACTOR, seed: int = 0,
                         source: str = "") -> RadiometryReference:
    """The :class:`RadiometryReference` of scaled training tiles ``(N, C, H, W)``: centre = the
    summary of all of them, spread = the standard deviation of the summaries of ``draws``
    random draws of ``draw_size`` tiles, threshold = ``threshold_factor`` times the largest
    distance of those draws."""
    stats = tile_statistics(inputs)
    if stats.shape[0] < draw_size:
        raise ValueError(f"need at least {draw_size} tiles for a reference, got {stats.shape[0]}")
    rng = np.random.default_rng(seed)
    summaries = np.stack([np.median(stats[rng.choice(stats.shape[0], draw_size, replace=False)], axis=0)
                          for _ in range(draws)])
    centre = np.median(stats, axis=0)
    spread = np.maximum(summaries.std(axis=0), 1e-6)
    largest = float(np.max(np.abs(summaries - centre) / spread))
    names = [f"{kind} {band}" for kind in ("mean", "std", "detail") for band in bands]
    return RadiometryReference(centre=centre.tolist(), spread=spread.tolist(), threshold=threshold_factor * largest,
                               draw_size=draw_size, draws=draws, source=source, names=names)


#: suffix of a scene-switch file beside the model it switches from
SWITCH_SUFFIX = ".scene_switch.json"


@dataclass
class SceneSwitch:
    """Two models of the same bands, tile and scaling: ``like_training`` classifies a scene whose
    radiometry is like its training tiles' (:class:`RadiometryReference`), ``otherwise`` every
    other scene. Read from ``<like_training stem>.scene_switch.json`` beside the model
    (:func:`scene_switch_for`); model names there are file names in the same folder."""

    like_training: Path
    otherwise: Path
    reference: RadiometryReference
    description: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "SceneSwitch":
        import json

        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            models = (path.parent / data["like_training"], path.parent / data["otherwise"])
            reference = RadiometryReference.from_dict(data["radiometry_reference"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelCardError(f"{path.name}: not a usable scene switch ({type(exc).__name__}: {exc})") from None
        missing = [m.name for m in models if not m.is_file()]
        if missing:
            raise ModelCardError(f"{path.name}: model file(s) not found beside it: {', '.join(missing)}")
        return cls(models[0], models[1], reference, str(data.get("description", "")))

    def choose(self, inputs: np.ndarray) -> tuple[Path, float, str]:
        """(model for a scene given by its sampled scaled tiles, the scene's distance, a
        sentence for the log)."""
        like, distance = self.reference.is_like(inputs)
        chosen = self.like_training if like else self.otherwise
        reason = (f"the scene's radiometry (median brightness, contrast and detail of {len(inputs)} sampled tiles) is "
                  f"{distance:.1f} spreads from {self.like_training.name}'s training tiles "
                  f"({'within' if like else 'beyond'} the {self.reference.threshold:.1f} it accepts), so "
                  + (f"{chosen.name}, the most accurate on radiometry like its training data, classifies it"
                     if like else f"{chosen.name}, trained to hold up under other radiometry (season, "
                     "atmosphere, sensor), classifies it"))
        return chosen, distance, reason


def scene_switch_for(model_path: str | Path) -> SceneSwitch | None:
    """The :class:`SceneSwitch` beside ``model_path`` (``<stem>.scene_switch.json``), or None."""
    candidate = beside_model(model_path, SWITCH_SUFFIX)
    return SceneSwitch.load(candidate) if candidate.is_file() else None


def beside_model(model_path: str | Path, suffix: str) -> Path:
    """``<stem><suffix>`` in the model file's folder."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + suffix)


#: suffix of a radiometry reference file beside the model whose training tiles it describes
REFERENCE_SUFFIX = ".radiometry.json"

def stage_reference_copy(staged: Any, sources: Sequence[str | Path], target_model: str | Path) -> Path | None:
    """Give ``target_model``, a model made from the models ``sources`` that reads the same input
    (an ONNX export, an ensemble), the radiometry reference of the first of them that has a usable
    one: copied beside it through ``staged`` (a :class:`core.io.writers.StagedOutputs`), so it
    appears with the model. Without one, an old reference beside the target that was written for
    the target itself (its ``model`` field) is removed at commit; one written for another model
    file of the same stem (``b.pt`` beside ``b.onnx``) is left. Returns the reference's final
    path, or None."""
    import json

    target = beside_model(target_model, REFERENCE_SUFFIX)
    for source in sources:
        try:
            reference = reference_for(source)
        except ModelCardError:  # a damaged reference of a source model is not copied
            continue
        if reference is not None:
            content = {"model": Path(target_model).name, "copied_from": beside_model(source, REFERENCE_SUFFIX).name,
                       "radiometry_reference": reference.to_dict()}
            staged.stage(target).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
            return target
    if _written_for(target) in (None, Path(target_model).name):
        staged.remove_at_commit(target)
    return None


def _written_for(reference_path: Path) -> str | None:
    """The model file name a reference file says it was written for (None: none, or unreadable)."""
    import json

    try:
        model = json.loads(reference_path.read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


_STATISTIC_WORDS = {"mean": "brightness", "std": "contrast", "detail": "fine detail"}


def reference_for(model_path: str | Path) -> RadiometryReference | None:
    """The :class:`RadiometryReference` in ``<stem>.radiometry.json`` beside ``model_path``, or None."""
    import json

    candidate = beside_model(model_path, REFERENCE_SUFFIX)
    if not candidate.is_file():
        return None
    try:
        data = json.loads(candidate.read_text(encoding="utf-8"))
        return RadiometryReference.from_dict(data["radiometry_reference"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelCardError(f"{candidate.name}: not a usable radiometry reference ({type(exc).__name__}: {exc})") from None


#: a scene more than this many times the threshold away is taken for wrong bands or units rather
#: than another season (real scenes seen: 17-26 spreads, threshold about 7; shuffled 13-band
#: stacks: thousands)
WRONG_BANDS_FACTOR = 20


@dataclass
class SceneRadiometry:
    """How far a scene's radiometry is from a model's training tiles (see the module docstring):
    ``distance`` and ``threshold`` in spreads, the number of sampled tiles, and the statistic
    furthest from the training tiles' (e.g. ``"mean B02"``) with its signed deviation."""

    distance: float
    threshold: float
    tiles: int
    furthest: str
    deviation: float

    @property
    def like_training(self) -> bool:
        return self.distance <= self.threshold

    def message(self, model_name: str) -> str:
        kind, _, band = self.furthest.partition(" ")
        what = f"{_STATISTIC_WORDS.get(kind, kind)} of band {band}" if band else self.furthest
        direction = "higher" if self.deviation > 0 else "lower"
        measured = (f"scene radiometry: {self.distance:.1f} spreads from the training tiles of '{model_name}' "
                    f"(median brightness, contrast and fine detail of {self.tiles} sampled tiles; "
                    f"{self.threshold:.1f} is within the variation of its training data)")
        if self.like_training:
            return measured + ": like its training data"
        if self.distance > WRONG_BANDS_FACTOR * self.threshold:
            return (f"WARNING: {measured}. The scene looks unlike the data the model was trained on, "
                    f"{self.distance / self.threshold:.0f} times further from it than its variation ({what} "
                    f"{direction} than in the training tiles): so far usually means the raster's bands are not "
                    "the ones the model reads, or not in its order, or "
                    "in other units (e.g. reflectance 0-1 instead of digital numbers, or Sentinel-2 digital numbers "
                    "of processing baseline 04.00 or later, from 25 January 2022, which carry a +1000 offset: "
                    "subtract 1000 first). Check the bands (name "
                    "them as the model's, or set BANDS) and their units before trusting the map")
        offset = ("; or, for a Sentinel-2 product of processing baseline 04.00 or later (from 25 January 2022), "
                  "its +1000 offset: subtract 1000 from the bands first"
                  if kind == "mean" and self.deviation > 0 else "")
        return (f"WARNING: {measured}. The scene looks unlike the data the model was trained on ({what} "
                f"{direction} than in its training tiles): another season, atmosphere or sensor, or a mix of land "
                f"cover far from its training data's{offset}. Expect a less accurate map; ADAPT_TO_SCENE, MIN_CONFIDENCE, "
                "CLOUD_MASK or a model trained on such scenes may help")


def threshold_for(reference: RadiometryReference, tiles: int) -> float:
    """The threshold for a scene summarised from ``tiles`` tiles: the reference's, which holds for
    medians of ``draw_size`` tiles, grown by ``sqrt(draw_size / tiles)`` for fewer tiles (a median
    of n tiles varies about as 1 / sqrt(n)), so a small raster of the training kind is not
    warned about for its sample size alone. Never lowered for more tiles: a scene's tiles
    overlap and are alike, not independent draws."""
    return reference.threshold * float(np.sqrt(max(1.0, reference.draw_size / max(int(tiles), 1))))


def measure_scene(reference: RadiometryReference, inputs: np.ndarray) -> SceneRadiometry:
    """:class:`SceneRadiometry` of scaled scene tiles ``(N, C, H, W)`` against ``reference``, with
    the threshold for that many tiles (:func:`threshold_for`)."""
    deviations = reference.deviations(inputs)
    worst = int(np.argmax(np.abs(deviations)))
    names = (reference.names if len(reference.names) == deviations.size
             else [f"statistic {i}" for i in range(deviations.size)])
    return SceneRadiometry(distance=float(abs(deviations[worst])), threshold=threshold_for(reference, len(inputs)),
                           tiles=len(inputs), furthest=names[worst], deviation=float(deviations[worst]))


def check_scene(model_path: str | Path | None, card: Any, plan: Any, max_tiles: int,
                min_valid_fraction: float = 0.5, is_cancelled: Any = None, log: Any = None) -> SceneRadiometry | None:
    """Measure the planned raster (a :class:`core.tiles.loop.TilePlan`) against the reference
    beside ``model_path`` (:func:`reference_for`) on up to ``max_tiles`` tiles sampled as scene
    adaptation samples them (tiles with at least ``min_valid_fraction`` valid pixels), and log the result (:meth:`SceneRadiometry.message`). None when
    there is no model path or reference, or too few tiles with enough valid pixels (logged)."""
    from .adaptation import MIN_ADAPTATION_TILES, sample_scene_tiles

    log = log or (lambda _m: None)
    reference = reference_for(model_path) if model_path else None
    if reference is None:
        if model_path:
            log(f"scene radiometry not checked: no {Path(model_path).stem}{REFERENCE_SUFFIX} beside the model "
                "(models trained here on 64 tiles or more have one; docs/algorithms/classify.md)")
        return None
    inputs, _planned = sample_scene_tiles(plan, card, max_tiles, min_valid_fraction=min_valid_fraction,
                                          is_cancelled=is_cancelled)
    if len(inputs) < MIN_ADAPTATION_TILES:
        log(f"scene radiometry not checked: {len(inputs)} tiles with enough valid pixels, at least "
            f"{MIN_ADAPTATION_TILES} needed")
        return None
    radiometry = measure_scene(reference, inputs)
    log(radiometry.message(card.name))
    return radiometry
