"""Sanity checks of explanations (Adebayo et al. 2018, "Sanity checks for saliency maps").

An explanation that shows *why the model* chose a class must change when what the model learnt
is destroyed. Two checks, both on tiles in memory (scaled float32 ``(N, bands, H, W)``):

* **Cascading model randomization.** The weights of the network's layers are replaced by random
  ones from the output down: stage ``k`` randomizes the ``k`` weighted layers (``Conv2d``,
  ``Linear``, any leaf module with a weight of 2 or more dimensions) that run last in a forward
  pass. Each randomized weight is drawn from a Gaussian of mean 0 and the trained weight's own
  standard deviation (biases likewise), so activations keep their scale; batch-norm layers keep
  their trained statistics. At every stage the tile's heatmap (:func:`pixel_heatmap`) for the
  *same* target class as the trained model explained (its predicted class) is compared with the
  trained model's heatmap by the Spearman rank correlation over the tile's pixels. Near 1: the
  heatmap hardly depends on those layers' weights, it shows the image more than the model; near 0:
  it depends on them. Adebayo et al. found guided backpropagation and Guided Grad-CAM stay
  similar when the top layers are randomized, and Grad-CAM does not.
* **Class sensitivity.** The Spearman correlation between the heatmap of the predicted class and
  that of the runner-up class (the second most probable) on the same tile: near 1, the heatmap
  says where the image has structure, not what tells one class from another.
* **Edge-detector similarity.** The Spearman correlation between the heatmap and the tile's own
  gradient magnitude (Sobel in both directions, summed over the scaled bands): how much of the
  heatmap an edge detector that knows nothing of the classes would already draw.

Randomization needs a Torch network (an ONNX model is converted as for explaining,
:func:`core.explain.attribution.load_explainer`). The trained network is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .attribution import ExplainError, Explainer, check_method, pixel_heatmap


@dataclass
class RandomizationStage:
    """One stage of the cascade: ``layers_randomized`` weighted layers from the output down, the
    lowest of them ``lowest_layer``; ``spearman_mean``/``spearman_median`` over the tiles whose
    heatmaps are not constant; ``prediction_agreement``: share of tiles the randomized network
    still gives the trained network's class (near chance once the output layer is random);
    ``constant_share``: share of tiles whose randomized heatmap is constant (no correlation: e.g.
    Grad-CAM with no positive evidence left)."""

    layers_randomized: int
    lowest_layer: str
    spearman_mean: float
    spearman_median: float
    prediction_agreement: float
    constant_share: float


@dataclass
class SanityResult:
    """The two checks for one method on ``tiles`` tiles; ``weighted_layers`` in forward order."""

    method: str
    tiles: int
    weighted_layers: list[str]
    class_spearman: float
    edge_spearman_trained: float
    edge_spearman_random: float
    stages: list[RandomizationStage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weighted_layers(explainer: Explainer) -> list[str]:
    """Names of the network's leaf modules with a weight of 2 or more dimensions (convolutions,
    linear layers), in the order they first finish in one forward pass of a zero tile."""
    import torch

    module = explainer.module
    candidates = {
        name: sub for name, sub in module.named_modules()
        if name and not any(True for _ in sub.children())
        and isinstance(getattr(sub, "weight", None), torch.Tensor) and sub.weight.ndim >= 2
    }
    order: list[str] = []
    handles = [sub.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
               for name, sub in candidates.items()]
    try:
        size = explainer.card.tile_size
        with torch.no_grad():
            module(torch.zeros(1, explainer.card.num_bands, size, size, device=explainer.device))
    finally:
        for handle in handles:
            handle.remove()
    seen: list[str] = []
    for name in order:
        if name not in seen:
            seen.append(name)
    return seen


def randomized_explainer(explainer: Explainer, layers: Sequence[str], seed: int = 0) -> Explainer:
    """A copy of ``explainer`` whose ``layers`` (names from :func:`weighted_layers`) have random
    weights and biases: Gaussian, mean 0, each tensor's trained standard deviation; drawn with
    ``seed`` in the order given."""
    import torch

    module = copy.deepcopy(explainer.module)
    modules = dict(module.named_modules())
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name in layers:
            for parameter_name in ("weight", "bias"):
                tensor = getattr(modules[name], parameter_name, None)
                if not isinstance(tensor, torch.Tensor):
                    continue
                spread = float(tensor.float().std()) if tensor.numel() > 1 else 0.0
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
                tensor.copy_((noise * spread).to(tensor.dtype))
    return Explainer(module, explainer.card, source=f"{explainer.source} (randomized)",
                     device=str(explainer.device), layer=explainer.layer_name)


def spearman_per_tile(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman rank correlation ``(N,)`` of two stacks of maps ``(N, H, W)``, tile by tile
    (average ranks for ties); NaN where either map is constant on the tile."""
    from scipy.stats import rankdata

    a = rankdata(first.reshape(first.shape[0], -1), axis=1)
    b = rankdata(second.reshape(second.shape[0], -1), axis=1)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / np.where(denominator > 0, denominator, 1.0), np.nan)


def edge_magnitude(batch: np.ndarray) -> np.ndarray:
    """Gradient magnitude ``(N, H, W)`` of scaled tiles ``(N, bands, H, W)``: per band the Sobel
    derivative along rows and columns, ``hypot`` of the two, summed over bands."""
    from scipy import ndimage

    batch = np.asarray(batch, dtype=np.float32)
    rows = ndimage.sobel(batch, axis=2, mode="nearest")
    cols = ndimage.sobel(batch, axis=3, mode="nearest")
    return np.hypot(rows, cols).sum(axis=1)


def _heatmaps(explainer: Explainer, batch: np.ndarray, method: str, targets: np.ndarray | None,
              batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps ``(N, H, W)`` and class probabilities ``(N, classes)``; ``targets`` ``None``: the
    predicted classes."""
    maps, probabilities = [], []
    for start in range(0, batch.shape[0], batch_size):
        part = batch[start:start + batch_size]
        explanation = explainer.explain(part, method=method,
                                        target=None if targets is None else targets[start:start + batch_size])
        maps.append(pixel_heatmap(explanation.attributions))
        probabilities.append(explanation.probabilities)
    return np.concatenate(maps), np.concatenate(probabilities)


def _summary(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(np.median(finite))


def model_randomization_check(explainer: Explainer, batch: np.ndarray, method: str = "guided_gradcam",
                              stages: Sequence[int] | str | None = None, seed: int = 0,
                              batch_size: int = 32, target: int | None = None) -> SanityResult:
    """The three checks for ``method`` on the scaled tiles ``batch`` ``(N, bands, H, W)``.

    ``stages``: how many weighted layers to randomize, from the output down, at each stage (each
    between 1 and the number of weighted layers); default every count, 1 .. all (the full
    cascade); ``"ends"``: the output layer, half the layers, all of them (three stages). Every stage draws its random weights with the same ``seed``, so a layer gets the
    same random weights at every stage that randomizes it. ``target``: the class explained on every
    tile (``None``: each tile's predicted class); the class sensitivity compares it with the most
    probable other class."""
    method = check_method(method)
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    layers = weighted_layers(explainer)
    if not layers:
        raise ExplainError(f"{explainer.source}: the network has no layer with weights to randomize")
    if stages == "ends":
        stages = sorted({1, max(1, (len(layers) + 1) // 2), len(layers)})
    counts = list(range(1, len(layers) + 1)) if stages is None else [int(k) for k in stages]
    for count in counts:
        if not 1 <= count <= len(layers):
            raise ExplainError(f"a stage must randomize 1 to {len(layers)} layers, not {count}")
    trained, probabilities = _heatmaps(explainer, batch, method,
                                       None if target is None else np.full(batch.shape[0], int(target)), batch_size)
    targets = np.argmax(probabilities, axis=1) if target is None else np.full(batch.shape[0], int(target))
    if probabilities.shape[1] > 1:
        others = probabilities.copy()
        others[np.arange(batch.shape[0]), targets] = -np.inf
        second, _ = _heatmaps(explainer, batch, method, np.argmax(others, axis=1), batch_size)
        class_spearman = _summary(spearman_per_tile(trained, second))[0]
    else:
        class_spearman = float("nan")
    edges = edge_magnitude(batch)
    everything = randomized_explainer(explainer, layers[::-1], seed)
    random_maps, random_probabilities = _heatmaps(everything, batch, method, targets, batch_size)
    result = SanityResult(
        method=method, tiles=int(batch.shape[0]), weighted_layers=layers,
        class_spearman=class_spearman,
        edge_spearman_trained=_summary(spearman_per_tile(trained, edges))[0],
        edge_spearman_random=_summary(spearman_per_tile(random_maps, edges))[0],
    )
    for count in counts:
        top = layers[::-1][:count]
        if count == len(layers):
            maps, randomized_probabilities = random_maps, random_probabilities
        else:
            maps, randomized_probabilities = _heatmaps(randomized_explainer(explainer, top, seed), batch, method,
                                                       targets, batch_size)
        correlations = spearman_per_tile(trained, maps)
        mean, median = _summary(correlations)
        result.stages.append(RandomizationStage(
            layers_randomized=count, lowest_layer=top[-1], spearman_mean=mean, spearman_median=median,
            prediction_agreement=float(np.mean(np.argmax(randomized_probabilities, axis=1) == targets)),
            constant_share=float(np.mean(~np.isfinite(correlations))),
        ))
    return result
