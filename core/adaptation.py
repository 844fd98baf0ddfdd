"""Scene adaptation: re-estimate a network's batch-normalisation statistics from the raster it
is about to classify (AdaBN: Li et al. 2016, "Revisiting batch normalization for practical
domain adaptation"; Schneider et al. 2020, "Improving robustness against common corruptions by
covariate shift adaptation").

Why: a classifier trained on EuroSAT's summer tiles normalises every layer with the mean and
variance it saw in training. A darker, brighter, hazier, noisier or blurrier scene shifts those
statistics and the map collapses (the default RGB model falls from 98.5 % to 28-86 % under such
changes, ``bench/bench_corruptions.py``). Re-estimating the statistics from the scene's own
tiles, with no labels, undoes most of that shift; the learnt weights are not touched.

How: :func:`sample_scene_tiles` reads up to ``max_tiles`` tiles of the tile plan, chosen at
random (seeded) over the whole area, scaled as the model expects; :func:`adapt_batchnorm`
resets every batch-norm layer's running statistics and runs the tiles through the network in
training mode, **in random order** (batches of one class, as a raster read row by row gives,
would bias the statistics of the deeper layers), accumulating a plain average over batches
(``momentum=None``); then the network is back in eval mode. :func:`adapt_model_to_scene` does
both for a model file and writes the adapted model as ONNX (with its card) for the tile loop.

Limits: it needs the network's batch-norm layers: Torch weights with a card, or an ONNX model
that kept its ``BatchNormalization`` nodes (Glassbox's exports do since 2026-12;
:mod:`.adaptation_onnx` adapts those with ONNX Runtime alone, so it works without Torch). An
ONNX export that folded batch norm into its convolutions can be adapted only through the Torch
``.pt`` of the same name beside it. The scene's class mix enters the
statistics too: a scene that is nearly all one class (open sea, one forest) is normalised
towards that class, which can push its tiles to other classes. Cloud and nodata-rich tiles
take part like any other tile (tiles with less than ``min_valid_fraction`` valid pixels do not).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ModelLoadError, RasterInputError
from .models.card import ModelCard

#: tiles sampled from a raster for the statistics, at most (about 20 s with the default
#: RGB model on 2 CPU cores)
ADAPTATION_TILES = 1024
#: tiles per batch while the statistics are gathered (batch statistics need enough tiles)
ADAPTATION_BATCH = 64
#: fewer valid tiles than this cannot give trustworthy statistics
MIN_ADAPTATION_TILES = 32


class AdaptationError(ModelLoadError):
    """The model cannot be adapted (no batch-norm layers, no Torch weights, too few tiles)."""


def skipped_note(exc: Exception, then: str = "") -> str:
    """The log line for an adaptation that was asked for and skipped (mode "auto"): a warning when
    a missing package is the reason (the user's to install), else a plain note (a raster of too
    few tiles, a model without batch-norm layers)."""
    from .feedback import WARNING_PREFIX

    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
    return f"{WARNING_PREFIX if isinstance(cause, ImportError) else ''}scene adaptation skipped: {exc}{then}"


@dataclass
class Adaptation:
    """What an adaptation did: how many batch-norm layers were re-estimated from how many tiles
    (of ``tiles_planned``), the Torch weights it started from (file name), the seconds it took,
    the seed of the tile draw and feeding order,
    and the adapted model's file (:func:`adapt_model_to_scene`; None for a module adapted in
    memory)."""

    layers: int
    tiles: int
    tiles_planned: int
    weights: str
    seconds: float
    seed: int = 0
    model_path: Path | None = None
    #: mean entropy (nats) of the class probabilities on the sampled tiles, before and after
    #: (set in mode "auto", :func:`keep_adaptation`)
    entropy_before: float | None = None
    entropy_after: float | None = None
    #: False when mode "auto" rejected the adaptation: the model as trained is used
    kept: bool = True

    def message(self) -> str:
        text = (f"scene adaptation: batch-norm statistics of {self.layers} layers re-estimated from {self.tiles} "
                f"of the raster's {self.tiles_planned} tiles at half-tile stride (random, seed {self.seed}; weights "
                f"{self.weights}) in {self.seconds:.1f} s")
        if self.entropy_before is None:
            return text
        change = f"mean entropy of its class probabilities on those tiles {self.entropy_before:.3f} -> " \
                 f"{self.entropy_after:.3f} nats"
        if self.kept:
            return f"{text}; kept ({change})"
        return (f"{text}; not used: the adapted model is much less sure of this raster ({change}), as on a "
                f"raster of almost one land cover; the model as trained classifies it")


#: what ADAPT_TO_SCENE can ask for: no adaptation; adaptation not used when it makes the model
#: much less sure of the scene (:func:`keep_adaptation`); adaptation always
ADAPTATION_MODES = ("off", "auto", "always")


def adaptation_mode(value: Any) -> str:
    """``value`` as one of :data:`ADAPTATION_MODES` (True = "always", False/None = "off", as the
    option was a yes/no before "auto")."""
    if value is None or value is False:
        return "off"
    if value is True:
        return "always"
    mode = str(value).strip().lower()
    if mode not in ADAPTATION_MODES:
        raise AdaptationError(f"unknown scene adaptation mode '{value}'; use one of {', '.join(ADAPTATION_MODES)}")
    return mode


def mean_entropy(probabilities: np.ndarray) -> float:
    """Mean Shannon entropy (nats) of class probabilities ``(N, classes)``."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum(axis=1).mean())


#: mode "auto" does not use an adaptation that raises the mean prediction entropy on the
#: scene's tiles above this multiple of the trained model's (chosen on EuroSAT's validation
#: scenes: docs/benchmarks.md, *Guarded adaptation*)
MAX_ENTROPY_RATIO = 1.5
#: ... unless the adapted model stays this sure: mean entropy at most this share of its maximum
#: ln(classes) (a ratio of two near-zero entropies says nothing)
SURE_ENTROPY_SHARE = 0.1


def keep_adaptation(entropy_before: float, entropy_after: float, classes: int = 10) -> bool:
    """Mode "auto"'s rule: keep the adapted model unless it is much less sure of the scene's
    sampled tiles than the trained model: mean entropy of its class probabilities above
    :data:`MAX_ENTROPY_RATIO` times the trained model's (and above :data:`SURE_ENTROPY_SHARE` of
    ln ``classes``). Why: adaptation undoes a radiometric shift (darker, hazier, blurrier scene)
    and the network's certainty stays about the same (at most x1.42 on EuroSAT's validation
    scenes, under noise); on a raster of one land cover it normalises that cover away, the
    network becomes far less sure (x1.54 or more) and wrong on most tiles."""
    if entropy_after <= SURE_ENTROPY_SHARE * float(np.log(max(classes, 2))):
        return True
    return entropy_after <= MAX_ENTROPY_RATIO * entropy_before


def mix_statistics(mean_s: Any, var_s: Any, mean_t: Any, var_t: Any, source_weight: float) -> tuple[Any, Any]:
    """Mean and variance of the mixture ``w * N(mean_s, var_s) + (1 - w) * N(mean_t, var_t)`` per
    channel (``w`` = ``source_weight``; training ``s`` and scene ``t`` statistics as Torch tensors
    or NumPy arrays): Schneider et al.'s prior."""
    w = source_weight
    mean = w * mean_s + (1 - w) * mean_t
    return mean, w * (var_s + (mean_s - mean) ** 2) + (1 - w) * (var_t + (mean_t - mean) ** 2)


def batchnorm_layers(module: Any) -> list[Any]:
    """The batch-norm layers (1-, 2- and 3-d) of a Torch module, in module order."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def adapt_batchnorm(module: Any, inputs: np.ndarray, batch_size: int = ADAPTATION_BATCH, seed: int = 0,
                    source_weight: float = 0.0) -> int:
    """Replace the running mean and variance of every batch-norm layer of ``module`` by the
    average batch statistics of ``inputs`` (float32 ``(N, bands, tile, tile)``, already scaled
    as the model expects), fed in a random order (``seed``) in batches of ``batch_size``. The
    module is left in eval mode; nothing else changes. Returns the number of layers adapted.

    ``source_weight`` w in [0, 1): the statistics become the mixture ``w * training + (1 - w) *
    scene`` (mean and variance of the mixed distribution; Schneider et al.'s prior). The product
    uses 0, chosen on EuroSAT's validation tiles (docs/benchmarks.md, *Scene adaptation*)."""
    import torch

    if not 0.0 <= source_weight < 1.0:
        raise AdaptationError(f"the source weight must be in [0, 1), got {source_weight}")
    layers = batchnorm_layers(module)
    if not layers:
        raise AdaptationError("the network has no batch-normalisation layers to adapt")
    if inputs.ndim != 4 or len(inputs) == 0:
        raise AdaptationError(f"adaptation needs tiles (N, bands, size, size), got shape {inputs.shape}")
    order = np.random.default_rng(seed).permutation(len(inputs))
    momenta = [m.momentum for m in layers]
    source = [(m.running_mean.clone(), m.running_var.clone()) for m in layers]
    module.eval()
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches
            m.train()
        device = next(module.parameters()).device
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                if len(chunk) < 2 and start > 0:
                    break  # a batch of one has no variance; the batches before hold the statistics
                module(torch.from_numpy(np.ascontiguousarray(inputs[chunk], dtype=np.float32)).to(device))
        if source_weight > 0:
            for m, (mean_s, var_s) in zip(layers, source):
                mean, var = mix_statistics(mean_s, var_s, m.running_mean.clone(), m.running_var.clone(), source_weight)
                m.running_var.copy_(var)
                m.running_mean.copy_(mean)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        module.eval()
    return len(layers)


def torch_weights_for(model_path: str | Path) -> Path:
    """The Torch state dict (with its card) that adaptation starts from: the file itself for
    ``.pt``/``.pth``, the ``.pt`` of the same name beside an ONNX file. Raises
    :class:`AdaptationError` when there is none."""
    from .models.backends import ONNX_SUFFIXES, TORCH_SUFFIXES, is_torchscript

    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        for candidate in (path.with_suffix(".pt"), path.with_suffix(".pth")):
            if candidate.is_file() and candidate.with_suffix(".json").is_file():
                return candidate
        raise AdaptationError(
            f"{path.name}: scene adaptation needs the model's batch-normalisation layers, which this ONNX "
            f"export folded into its convolutions; export it again with glassbox:export_onnx (which keeps "
            f"them), give the Torch weights (.pt with its .json card), or put {path.with_suffix('.pt').name} "
            f"and {path.with_suffix('.json').name} beside it")
    if suffix in TORCH_SUFFIXES:
        if is_torchscript(path):
            raise AdaptationError(f"{path.name}: scene adaptation needs a Torch state dict with its card, "
                                  f"not TorchScript")
        return path
    raise AdaptationError(f"{path.name}: unknown model type '{suffix}'")


def adaptable_weights_for(model_path: str | Path) -> Path:
    """The file a Torch module is built from when the model must be adapted in Torch (explain):
    the Torch weights (:func:`torch_weights_for`) when there are, else an ONNX model that kept its
    ``BatchNormalization`` nodes itself (converted to Torch by the explainer). Raises
    :class:`AdaptationError`."""
    from .models.backends import ONNX_SUFFIXES

    path = Path(model_path)
    try:
        return torch_weights_for(path)
    except AdaptationError:
        if path.suffix.lower() in ONNX_SUFFIXES:
            try:
                graph = _onnx_graph_with_batchnorm(path)
            except AdaptationError:
                graph = None  # a damaged file: loading the model reports the damage
            if graph is not None:
                return path
        raise


def _onnx_graph_with_batchnorm(path: Path) -> Any | None:
    """The ``onnx.ModelProto`` of ``path`` when it has ``BatchNormalization`` nodes, None when its
    export folded them. Raises :class:`AdaptationError` without the onnx package or for a file
    it cannot read."""
    try:
        import onnx
    except ImportError as exc:
        raise AdaptationError(f"scene adaptation of an ONNX model needs the Python package onnx ({exc})") from exc
    from .adaptation_onnx import BATCHNORM

    try:
        graph = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 (onnx raises DecodeError and others for a damaged file)
        raise AdaptationError(f"{path.name}: the ONNX graph cannot be read for scene adaptation ({exc})") from exc
    return graph if any(node.op_type == BATCHNORM for node in graph.graph.node) else None


def sample_scene_tiles(plan: Any, card: ModelCard, max_tiles: int = ADAPTATION_TILES, seed: int = 0,
                       min_valid_fraction: float = 0.5, batch_size: int = 64,
                       is_cancelled: Callable[[], bool] | None = None) -> tuple[np.ndarray, int]:
    """Up to ``max_tiles`` tiles over the area of a :class:`core.tiles.loop.TilePlan`, drawn at
    random (``seed``) from the tiles at the default stride (half a tile) that cover it, read and
    scaled as for classification (nodata pixels 0 after scaling). Returns ``(inputs (N, bands,
    tile, tile) float32, tiles at that stride)``; tiles with less than ``min_valid_fraction``
    valid pixels are left out, and so are tiles the plan's ``sample_filter`` refuses (cloudy tiles
    when clouds are masked). The sample does not depend on the plan's own stride, so classify
    and explain adapt the same network from the same raster, extent and mask whatever stride
    each runs at."""
    from .tiles.grid import TileGrid
    from .tiles.loop import iter_batches

    half = max(1, plan.tile_size // 2)  # plan_tiles' default stride, in model pixels
    step = tuple(min(f, max(1, round(half * f / plan.tile_size))) for f in plan.footprint)
    default_grid = TileGrid(plan.area.height, plan.area.width, plan.footprint, step)
    tiles = list(default_grid)
    if getattr(plan, "sample_filter", None) is not None:  # e.g. cloudy tiles left out
        tiles = [t for t in tiles if plan.sample_filter(t)]
    if len(tiles) > max_tiles:
        picked = np.sort(np.random.default_rng(seed).choice(len(tiles), size=max_tiles, replace=False))
        tiles = [tiles[i] for i in picked]
    chunks = [b.inputs for b in iter_batches(plan, card, batch_size, min_valid_fraction, is_cancelled, tiles=tiles)
              if len(b.tiles)]
    inputs = np.concatenate(chunks) if chunks else np.zeros((0, card.num_bands, card.tile_size, card.tile_size),
                                                             np.float32)
    return inputs, len(default_grid)


def _scene_inputs(plan: Any, card: ModelCard, max_tiles: int, seed: int, min_valid_fraction: float,
                  is_cancelled: Callable[[], bool] | None) -> tuple[np.ndarray, int]:
    """:func:`sample_scene_tiles`, refusing a raster with too few valid tiles (:class:`RasterInputError`)."""
    inputs, planned = sample_scene_tiles(plan, card, max_tiles, seed, min_valid_fraction, is_cancelled=is_cancelled)
    if len(inputs) < MIN_ADAPTATION_TILES:
        raise RasterInputError(
            f"scene adaptation needs at least {MIN_ADAPTATION_TILES} tiles with enough valid pixels; the raster "
            f"gives {len(inputs)} of {planned} planned: run without adaptation, or on a larger area")
    return inputs, planned


def adapt_module_to_scene(module: Any, card: ModelCard, plan: Any, weights: str, max_tiles: int = ADAPTATION_TILES,
                          seed: int = 0, min_valid_fraction: float = 0.5,
                          is_cancelled: Callable[[], bool] | None = None, guard: bool = False) -> Adaptation:
    """Adapt a Torch ``module`` (in place) to the raster of ``plan``: :func:`sample_scene_tiles`
    then :func:`adapt_batchnorm`. ``weights`` names where the module came from (for the log).
    ``guard`` (mode "auto"): the module's statistics are put back unless :func:`keep_adaptation`
    keeps them. Raises :class:`AdaptationError`, or :class:`RasterInputError` for too few valid tiles."""
    import copy

    started = time.perf_counter()
    if not batchnorm_layers(module):
        raise AdaptationError(f"{weights}: the network has no batch-normalisation layers to adapt")
    inputs, planned = _scene_inputs(plan, card, max_tiles, seed, min_valid_fraction, is_cancelled)
    original = copy.deepcopy(module.state_dict()) if guard else None
    before = _module_entropy(module, card, inputs) if guard else None
    layers = adapt_batchnorm(module, inputs, seed=seed)
    adaptation = Adaptation(layers, int(len(inputs)), int(planned), weights, 0.0, seed)
    if guard:
        after = _module_entropy(module, card, inputs)
        adaptation = replace(adaptation, entropy_before=before, entropy_after=after,
                             kept=keep_adaptation(before, after, card.num_classes))
        if not adaptation.kept:
            module.load_state_dict(original)
    return replace(adaptation, seconds=time.perf_counter() - started)


def _module_entropy(module: Any, card: ModelCard, inputs: np.ndarray, batch_size: int = ADAPTATION_BATCH) -> float:
    import torch

    from .models.backends import softmax

    module.eval()
    device = next(module.parameters()).device
    outputs = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch_size], dtype=np.float32)).to(device)
            outputs.append(module(batch).float().cpu().numpy())
    out = np.concatenate(outputs)
    return mean_entropy(out if card.output == "probabilities" else softmax(out))


def adapt_model_to_scene(model_path: str | Path, plan: Any, out_dir: str | Path, max_tiles: int = ADAPTATION_TILES,
                         seed: int = 0, min_valid_fraction: float = 0.5,
                         is_cancelled: Callable[[], bool] | None = None, guard: bool = False,
                         model: Any | None = None) -> Adaptation:
    """Adapt the model at ``model_path`` to the raster of ``plan`` and write it as
    ``<out_dir>/<stem>_adapted.onnx`` with its card (the card's ``training`` records the
    adaptation). An ONNX model with ``BatchNormalization`` nodes is adapted as ONNX with ONNX
    Runtime (:func:`.adaptation_onnx.adapt_onnx_batchnorm`; no Torch); other models through their
    Torch weights (:func:`adapt_module_to_scene`, then exported). The model's classes, bands, tile
    size and scaling are unchanged. ``guard`` (mode "auto"): both models classify the sampled
    tiles and :func:`keep_adaptation` decides; ``kept`` False means: use the model as trained.
    ``model``: the model at ``model_path`` already loaded (a :class:`.models.backends.ClassifierModel`;
    saves loading it again). Raises :class:`AdaptationError` / :class:`RasterInputError`."""
    from .models.backends import ONNX_SUFFIXES, load_model

    started = time.perf_counter()
    path = Path(model_path)
    graph = _onnx_graph_with_batchnorm(path) if path.suffix.lower() in ONNX_SUFFIXES else None
    trained = model
    if trained is None and (graph is not None or guard):
        trained = load_model(path)
    if graph is not None:
        adaptation, inputs = _adapt_onnx_graph_to_scene(path, graph, trained.card, plan, Path(out_dir), max_tiles,
                                                        seed, min_valid_fraction, is_cancelled)
    else:
        adaptation, inputs = _adapt_torch_weights_to_scene(path, plan, Path(out_dir), max_tiles, seed,
                                                           min_valid_fraction, is_cancelled)
    if guard:
        before = predicted_entropy(trained, inputs)
        after = predicted_entropy(load_model(adaptation.model_path), inputs)
        adaptation = replace(adaptation, entropy_before=before, entropy_after=after,
                             kept=keep_adaptation(before, after, trained.card.num_classes))
    return replace(adaptation, seconds=time.perf_counter() - started)


def _adapted_card(card: ModelCard, adaptation: Adaptation) -> ModelCard:
    training = dict(card.training)
    training["scene_adaptation"] = {
        "method": "batch-norm statistics re-estimated from the classified raster (AdaBN)",
        "tiles": adaptation.tiles, "tiles_planned": adaptation.tiles_planned, "layers": adaptation.layers,
        "seed": adaptation.seed, "from": adaptation.weights,
    }
    return replace(card, name=f"{card.name} (adapted to the scene)", training=training)


def _adapt_torch_weights_to_scene(path: Path, plan: Any, out_dir: Path, max_tiles: int, seed: int,
                                  min_valid_fraction: float,
                                  is_cancelled: Callable[[], bool] | None) -> tuple[Adaptation, np.ndarray]:
    from .models.backends import TorchModel
    from .models.export import export_onnx

    weights = torch_weights_for(path)
    model = TorchModel(weights, "cpu")
    inputs, planned = _scene_inputs(plan, model.card, max_tiles, seed, min_valid_fraction, is_cancelled)
    layers = adapt_batchnorm(model.module, inputs, seed=seed)
    adaptation = Adaptation(layers, int(len(inputs)), int(planned), weights.name, 0.0, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{weights.stem}_adapted.onnx"
    export_onnx(model.module, _adapted_card(model.card, adaptation), out)
    return replace(adaptation, model_path=out), inputs


def _adapt_onnx_graph_to_scene(path: Path, graph: Any, card: ModelCard, plan: Any, out_dir: Path, max_tiles: int,
                               seed: int, min_valid_fraction: float,
                               is_cancelled: Callable[[], bool] | None) -> tuple[Adaptation, np.ndarray]:
    from .adaptation_onnx import OnnxAdaptationError, adapt_onnx_batchnorm
    from .models.export import write_onnx_with_card

    inputs, planned = _scene_inputs(plan, card, max_tiles, seed, min_valid_fraction, is_cancelled)
    try:
        adapted, layers = adapt_onnx_batchnorm(graph, inputs, ADAPTATION_BATCH, seed)
    except OnnxAdaptationError as exc:
        raise AdaptationError(f"{path.name}: {exc}") from exc
    adaptation = Adaptation(layers, int(len(inputs)), int(planned), path.name, 0.0, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{path.stem}_adapted.onnx"
    write_onnx_with_card(adapted, _adapted_card(card, adaptation), out)
    return replace(adaptation, model_path=out), inputs


def predicted_entropy(model: Any, inputs: np.ndarray, batch_size: int = ADAPTATION_BATCH) -> float:
    """:func:`mean_entropy` of a :class:`.models.backends.ClassifierModel`'s probabilities on
    ``inputs`` (already scaled as the model expects)."""
    chunks = [model.predict_proba(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return mean_entropy(np.concatenate(chunks))
