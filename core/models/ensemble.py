"""Alpha ensembles of a raw and a masked model (paper 2): ``L = a * L_raw + (1 - a) * L_masked``,
and mean ensembles of several models of one kind (e.g. seeds): ``L = (L_1 + ... + L_K) / K``
(:func:`build_mean_ensemble`, built and checked the same way).

The ensemble reads one tile scaled with the raw (first) model's card; each model gets it as its
own card would scale it (see Requirements); their logits are mixed and the ensemble's card says
``output: logits``, so ``glassbox:classify`` applies the softmax after the mix, as the paper does.

**Construction.** The two models are loaded as Torch modules (a Torch state dict + card through
:mod:`core.models.backends`; an ONNX model converted with onnx2torch by :func:`core.explain.attribution.load_explainer`,
which checks the converted network against onnxruntime), wrapped in :class:`AlphaEnsemble` and
exported with :func:`core.models.export.export_onnx` (which checks the ONNX logits against the Torch
wrapper within 1e-4). Afterwards the written model is run once more through Glassbox's ONNX
backend next to both original models on random raw tiles, each model given the tiles scaled
with its own card, and must give ``a * L_raw + (1 - a) * L_masked`` within
``1e-4 * max(1, |L|)``. Why a Torch wrapper and not ``onnx.compose``:
``onnx.compose.merge_models`` chains graphs (outputs into inputs); two branches on one input
plus the mix would be hand-made graph surgery (renaming every node and initializer, adding
Mul/Add nodes), and Torch models would have to be exported first anyway. The wrapper gives one
standard ONNX graph from the exporter that every Glassbox tool reads, including onnx2torch for
``glassbox:explain``.

**Explaining an ensemble.** Guided backpropagation runs through both branches and is exact for
the mixed logit. Grad-CAM looks at one layer: found automatically (see :mod:`core.explain.attribution`), it is
the last convolution block that runs, which is the *masked* model's (the wrapper runs the masked
model second), i.e. the branch trained to look at the land cover's own area; its map is the
masked model's Grad-CAM scaled by ``1 - a``, which the heatmap normalisation removes. A
re-normalisation in front of the masked model (see Requirements) is a per-band multiply and add,
not a convolution, so neither changes.

**Requirements** (else :class:`EnsembleError`): both outputs are logits; the same bands (names
and order), tile size, ground sample distance and scaling ``scale``, ``offset`` and ``clip``;
the same classes. The same class names in another order are accepted: the masked logits are
reordered to the raw model's order. The scaling ``mean`` and ``std`` may differ (two runs of
``glassbox:train_classifier`` with different seeds take them from their own training splits; a
masked model fine-tuned from the raw one with ``glassbox:finetune_masked`` keeps them): the
ensemble's card has the raw model's scaling, and a fixed per-band affine in front of the masked
model, ``x_m = x * std_raw / std_m + (mean_raw - mean_m) / std_m``, turns that input into the
masked model's own. It is exact, as the clip comes before mean and std. The same holds for
every member of a mean ensemble against the first. Weight interpolation
(:mod:`core.models.interpolation`) uses the strict :func:`check_compatible` (mean and std too).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .card import ModelCard
from ..errors import EnsembleError, ModelLoadError
from ..feedback import Log, ignore
from ..scene_radiometry import stage_reference_copy

CHECK_TOLERANCE = 1e-4


Renormalisation = tuple  # (gain, bias): per-band float arrays; a member reads ``x * gain + bias``


def _ensemble_module_class():
    import torch
    from torch import nn

    class InputAffine(nn.Module):
        """``member(x * gain + bias)`` with per-band ``gain`` and ``bias`` (buffers of shape
        ``(1, C, 1, 1)``): the ensemble's input re-normalised to the member's own scaling."""

        def __init__(self, member: nn.Module, gain: Any, bias: Any):
            super().__init__()
            self.member = member
            self.register_buffer("gain", torch.as_tensor(np.asarray(gain, dtype=np.float32).reshape(1, -1, 1, 1)))
            self.register_buffer("bias", torch.as_tensor(np.asarray(bias, dtype=np.float32).reshape(1, -1, 1, 1)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.member(x * self.gain + self.bias)

    def with_input(member: nn.Module, renormalisation: Renormalisation | None) -> nn.Module:
        return member if renormalisation is None else InputAffine(member, *renormalisation)

    class AlphaEnsemble(nn.Module):
        """``alpha * raw(x) + (1 - alpha) * masked(x * gain + bias)[:, order]`` (``order``: the
        masked model's class index for each of the raw model's classes, or None when they agree;
        ``masked_input``: (gain, bias) per band, see :func:`input_renormalisation`, or None)."""

        def __init__(self, raw: nn.Module, masked: nn.Module, alpha: float, order: Sequence[int] | None = None,
                     masked_input: Renormalisation | None = None):
            super().__init__()
            self.raw = raw
            self.masked = with_input(masked, masked_input)
            self.alpha = float(alpha)
            if order is not None:
                self.register_buffer("order", torch.as_tensor(list(order), dtype=torch.long))
            else:
                self.order = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raw = self.raw(x)
            masked = self.masked(x)
            if self.order is not None:
                masked = masked.index_select(1, self.order)
            return self.alpha * raw + (1.0 - self.alpha) * masked

    class MeanEnsemble(nn.Module):
        """The mean of the members' logits, ``(1/K) * sum_k member_k(x * gain_k + bias_k)[:, order_k]``
        (``order_k``: member k's class index for each class of the first member, or None;
        ``inputs[k]``: (gain_k, bias_k) per band, see :func:`input_renormalisation`, or None)."""

        def __init__(self, members: Sequence[nn.Module], orders: Sequence[Sequence[int] | None],
                     inputs: Sequence[Renormalisation | None] | None = None):
            super().__init__()
            inputs = inputs or [None] * len(members)
            self.members = nn.ModuleList([with_input(m, r) for m, r in zip(members, inputs)])
            self.orders = [None if o is None else torch.as_tensor(list(o), dtype=torch.long) for o in orders]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            total = None
            for member, order in zip(self.members, self.orders):
                logits = member(x)
                if order is not None:
                    logits = logits.index_select(1, order)
                total = logits if total is None else total + logits
            return total / float(len(self.members))

    return AlphaEnsemble, MeanEnsemble


def AlphaEnsemble(raw: Any, masked: Any, alpha: float, order: Sequence[int] | None = None,  # noqa: N802
                  masked_input: Renormalisation | None = None) -> Any:
    """The ensemble as a Torch module (see :func:`_ensemble_module_class`)."""
    return _ensemble_module_class()[0](raw, masked, alpha, order, masked_input)


def MeanEnsemble(members: Sequence[Any], orders: Sequence[Sequence[int] | None] | None = None,  # noqa: N802
                 inputs: Sequence[Renormalisation | None] | None = None) -> Any:
    """The mean-logit ensemble of several Torch modules (see :func:`_ensemble_module_class`)."""
    return _ensemble_module_class()[1](members, orders or [None] * len(members), inputs)


def load_torch_module(path: str | Path) -> tuple[Any, ModelCard]:
    """(Torch module in eval mode, card) of a model file: a Torch state dict with its card or
    TorchScript through :class:`core.models.backends.TorchModel`; ONNX converted by
    :func:`core.explain.attribution.load_explainer` (onnx2torch, checked against onnxruntime)."""
    from .backends import TorchModel, TORCH_SUFFIXES

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from ..explain.attribution import load_explainer

        explainer = load_explainer(path, "cpu")
        return explainer.module.eval(), explainer.card
    if suffix in TORCH_SUFFIXES:
        from .backends import is_torchscript

        if is_torchscript(path):  # a compiled module cannot be traced inside the ensemble's wrapper
            raise ModelLoadError(f"{path.name} is TorchScript, which cannot be built into an ensemble: convert it "
                                 "with 'Export model to ONNX' (glassbox:export_onnx) and give the .onnx file")
        model = TorchModel(path, "cpu")
        model.check_output()
        return model.module.eval(), model.card
    raise ModelLoadError(f"{path.name}: unknown model type '{suffix}'; use .onnx or a Torch .pt with its card")


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        if a.size == 1 or b.size == 1:
            a, b = np.broadcast_arrays(a, b)
        else:
            return False
    return bool(np.allclose(a, b, rtol=1e-6, atol=1e-9))


def check_compatible(raw: ModelCard, masked: ModelCard, raw_name: str = "raw model",
                     masked_name: str = "masked model", renormalise: bool = False) -> list[int] | None:
    """Check that two cards can be mixed (see the module docstring); returns the class order
    (masked index per raw class) when the classes are the same names in another order, else
    None. Raises :class:`EnsembleError` naming every difference. The scaling must agree in
    every field, or with ``renormalise`` (the ensembles, which re-normalise the input with
    :func:`input_renormalisation`) only in scale, offset and clip."""
    problems = []
    for name, card in ((raw_name, raw), (masked_name, masked)):
        if card.output != "logits":
            problems.append(f"{name} returns probabilities, not logits; logits cannot be mixed from it")
    if raw.bands != masked.bands:
        problems.append(f"bands differ: {raw_name} reads {', '.join(raw.bands)}, {masked_name} "
                        f"{', '.join(masked.bands)}")
    if raw.tile_size != masked.tile_size:
        problems.append(f"tile sizes differ: {raw.tile_size} and {masked.tile_size} px")
    if not np.isclose(raw.gsd, masked.gsd, rtol=1e-6):
        problems.append(f"ground sample distances differ: {raw.gsd:g} and {masked.gsd:g} m")
    rs, ms = raw.scaling, masked.scaling
    keys = ("scale", "offset", "clip") if renormalise else ("scale", "offset", "clip", "mean", "std")
    differ = [k for k in keys if not _same(getattr(rs, k), getattr(ms, k))]
    if differ:
        values = ", ".join(f"{k} {getattr(rs, k)} and {getattr(ms, k)}" for k in differ)
        why = ("only the mean and std may differ (they are re-normalised inside the ensemble), as the "
               "clip before them cannot be undone" if renormalise else "so one input cannot feed both")
        problems.append(f"the models scale raw values differently (card 'scaling': {values}); {why}; fine-tune "
                        "the masked model from the raw model (glassbox:finetune_masked keeps its scaling)")
    order = None
    if raw.class_names != masked.class_names:
        if sorted(raw.class_names) == sorted(masked.class_names):
            order = [masked.class_names.index(c) for c in raw.class_names]
        else:
            problems.append(f"classes differ: {raw_name} has ({'; '.join(raw.class_names)}), {masked_name} has "
                            f"({'; '.join(masked.class_names)})")
    if problems:
        raise EnsembleError(f"{raw_name} and {masked_name} cannot be combined: " + "; ".join(problems))
    return order


def _mean_std(card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    bands = card.num_bands
    mean = np.zeros(bands) if card.scaling.mean is None else np.asarray(card.scaling.mean, dtype=np.float64).reshape(-1)
    std = np.ones(bands) if card.scaling.std is None else np.asarray(card.scaling.std, dtype=np.float64).reshape(-1)
    return np.broadcast_to(mean, (bands,)).copy(), np.broadcast_to(std, (bands,)).copy()


def input_renormalisation(first: ModelCard, member: ModelCard) -> Renormalisation | None:
    """(gain, bias) per band turning input scaled with ``first``'s card into input scaled with
    ``member``'s, ``x_member = x * gain + bias`` with ``gain = std_first / std_member`` and
    ``bias = (mean_first - mean_member) / std_member`` (exact when scale, offset and clip agree,
    see :func:`check_compatible`); None when mean and std agree (no mean: 0, no std: 1)."""
    mean_f, std_f = _mean_std(first)
    mean_m, std_m = _mean_std(member)
    if np.allclose(mean_f, mean_m, rtol=1e-6, atol=1e-9) and np.allclose(std_f, std_m, rtol=1e-6, atol=1e-9):
        return None
    return std_f / std_m, (mean_f - mean_m) / std_m


def _renormalisation_info(renormalisation: Renormalisation | None) -> dict[str, Any] | None:
    if renormalisation is None:
        return None
    return {"formula": "x_member = x * gain + bias, per band (x: the input scaled with the ensemble's card)",
            "gain": [float(v) for v in renormalisation[0]], "bias": [float(v) for v in renormalisation[1]]}


def _random_raw_tiles(card: ModelCard, count: int, seed: int) -> np.ndarray:
    """Raw tiles ``(count, bands, tile, tile)`` that ``card``'s scaling maps to about standard-normal
    input before its clip (so some values are clipped): ``(mean + std * z - offset) / scale``."""
    rng = np.random.default_rng(seed)
    shape = (count, card.num_bands, card.tile_size, card.tile_size)
    z = rng.standard_normal(shape)
    bands = card.num_bands
    mean, std = _mean_std(card)
    scale = np.broadcast_to(np.asarray(card.scaling.scale, dtype=np.float64).reshape(-1), (bands,))
    offset = np.broadcast_to(np.asarray(card.scaling.offset, dtype=np.float64).reshape(-1), (bands,))
    per_band = lambda v: v.reshape(1, bands, 1, 1)  # noqa: E731
    safe = np.where(scale == 0, 1.0, scale)
    raw = np.where(per_band(scale) == 0, z, (per_band(mean) + per_band(std) * z - per_band(offset)) / per_band(safe))
    return raw.astype(np.float32)


def _file_info(path: Path, card: ModelCard) -> dict[str, Any]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"file": path.name, "sha256": digest, "name": card.name, "architecture": card.architecture.get("name"),
            "mask_type": card.training.get("mask_type")}


def build_ensemble(raw_path: str | Path, masked_path: str | Path, alpha: float, output_path: str | Path,
                   log: Log | None = None, check_tiles: int = 8, seed: int = 0) -> dict[str, Any]:
    """Write the ONNX ensemble ``alpha * L_raw + (1 - alpha) * L_masked`` of two model files
    (see the module docstring) with its card. Returns {"path", "card", "max_abs_diff"} (the
    largest difference between the written model and the mix of both models' logits on
    ``check_tiles`` random raw tiles, each model given them scaled with its own card). Nothing is
    written on any error."""
    log = log or ignore
    raw_path, masked_path, output_path = Path(raw_path), Path(masked_path), Path(output_path)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError) as exc:
        raise EnsembleError(f"alpha must be a number between 0 and 1, not {alpha!r}") from exc
    if not 0.0 <= alpha <= 1.0:
        raise EnsembleError(f"alpha must be between 0 and 1 (the raw model's weight), not {alpha:g}")
    if output_path.suffix.lower() != ".onnx":
        raise EnsembleError(f"the ensemble is written as ONNX (.onnx), not {output_path.name}")
    raw_module, raw_card = load_torch_module(raw_path)
    masked_module, masked_card = load_torch_module(masked_path)
    order = check_compatible(raw_card, masked_card, f"the raw model {raw_path.name}",
                             f"the masked model {masked_path.name}", renormalise=True)
    if order is not None:
        log(f"the masked model lists the classes in another order; its logits are reordered to "
            f"{', '.join(raw_card.class_names)}")
    masked_input = input_renormalisation(raw_card, masked_card)
    if masked_input is not None:
        log("the masked model's scaling mean/std differ from the raw model's; its input is re-normalised inside "
            "the ensemble")
    module = AlphaEnsemble(raw_module, masked_module, alpha, order, masked_input).eval()
    card = ModelCard.from_dict(raw_card.to_dict(), "raw model card")
    card.name = f"ensemble a={alpha:g}: {raw_card.name} + {masked_card.name}"
    card.output = "logits"
    card.architecture = {
        "name": "alpha_ensemble", "kwargs": {}, "alpha": alpha,
        "raw": raw_card.architecture, "masked": masked_card.architecture,
        "note": "ONNX only: the mix of two networks; Grad-CAM looks at the masked model's last block",
    }
    card.training = {
        "ensemble": {
            "formula": "L = alpha * L_raw + (1 - alpha) * L_masked (logits); softmax applied after the mix",
            "alpha": alpha,
            "raw_model": _file_info(raw_path, raw_card),
            "masked_model": _file_info(masked_path, masked_card),
            "masked_class_order": order,
            "masked_input_renormalised": _renormalisation_info(masked_input),
            "reference": "paper 2: masked fine-tuning and logit ensembles",
        },
        # what an evaluation on polygons must pass again, as the members were trained
        **{key: raw_card.training[key] for key in ("class_field", "class_mapping") if key in raw_card.training},
    }
    card.accuracy = {"raw_model": raw_card.accuracy, "masked_model": masked_card.accuracy,
                     "note": "the members' own accuracies; evaluate the ensemble with glassbox:evaluate"}
    card.description = (
        f"Logit ensemble L = {alpha:g} * L_raw + {1 - alpha:g} * L_masked of '{raw_card.name}' ({raw_path.name}) "
        f"and '{masked_card.name}' ({masked_path.name}); classes {', '.join(card.class_names)}; bands "
        f"{', '.join(card.bands)}; tiles of {card.tile_size} px at {card.gsd:g} m."
    )
    card.validate(output_path.name)

    def mixed_logits(raw_tiles: np.ndarray) -> np.ndarray:
        masked_logits = _own_logits(masked_path, raw_tiles)
        if order is not None:
            masked_logits = masked_logits[:, order]
        return alpha * _own_logits(raw_path, raw_tiles) + (1 - alpha) * masked_logits

    # only members read like the ensemble lend it their radiometry reference (computed on scaled tiles)
    diff = _export_checked(module, card, output_path, mixed_logits, check_tiles, seed,
                           [raw_path] + ([masked_path] if masked_input is None else []),
                           half=any(_half_precision(p) for p in (raw_path, masked_path)))
    log(f"ensemble written: L = {alpha:g} * L_raw + {1 - alpha:g} * L_masked; checked on {check_tiles} random tiles "
        f"(largest difference {diff:.1e})")
    return {"path": str(output_path), "card": card, "max_abs_diff": diff}


def _own_logits(path: Path, raw_tiles: np.ndarray) -> np.ndarray:
    """A model file's logits on raw tiles scaled with its own card (Glassbox's backend)."""
    from .backends import load_model

    model = load_model(path)
    return model.predict_logits(model.card.scaling.apply(raw_tiles))


def _half_precision(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX model taking float16 tiles (the ensemble runs it in float32)."""
    if Path(path).suffix.lower() != ".onnx":
        return False
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return bool(graph.input) and graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def _export_checked(module: Any, card: ModelCard, output_path: Path, expected_logits: Callable[[np.ndarray], np.ndarray],
                    check_tiles: int, seed: int, members: Sequence[Path] = (), half: bool = False) -> float:
    """Export ``module`` with ``card`` to ``output_path`` (staged: nothing is left on error) and
    check the written ONNX model, given ``check_tiles`` random raw tiles scaled with ``card``,
    against ``expected_logits`` of the same raw tiles (computed from the member files, each
    scaling them with its own card); returns the largest difference. The first of the
    ``members`` with a radiometry reference lends it to the ensemble (pass only members that read
    the ensemble's input: same scaling). ``half``: a member is a float16 model, run in float32
    in the ensemble, so the check allows float16's precision."""
    from .backends import OnnxModel
    from .export import export_onnx
    from ..io.writers import StagedOutputs

    raw_tiles = _random_raw_tiles(card, check_tiles, seed)
    x = card.scaling.apply(raw_tiles)
    expected = expected_logits(raw_tiles)
    with StagedOutputs() as staged:
        tmp = staged.stage(output_path)
        try:
            export_onnx(module, card, tmp, check_tolerance=CHECK_TOLERANCE)
        except ModelLoadError:
            raise
        except Exception as exc:  # the exporter raises many types
            raise ModelLoadError(f"the ensemble cannot be exported to ONNX: {type(exc).__name__}: {exc}") from exc
        written = OnnxModel(tmp, "cpu")
        got = written.predict_logits(x)
        diff = float(np.max(np.abs(got - expected)))
        tolerance = CHECK_TOLERANCE * (100.0 if half else 1.0) * max(1.0, float(np.max(np.abs(expected))))
        if not diff <= tolerance:
            raise ModelLoadError(f"the exported ensemble differs from the mix of its models' logits by {diff:.2e} "
                                 f"(> {tolerance:.1e}): a member computes something the ensemble's ONNX export "
                                 "does not reproduce (e.g. a random or data-dependent step); check that each member "
                                 "classifies alike as .onnx and as Torch (glassbox:export_onnx checks it)")
        del written
        stage_reference_copy(staged, members, output_path)
        staged.commit()
    return diff


def load_mean_ensemble(paths: Sequence[str | Path], log: Log | None = None
                       ) -> tuple[Any, ModelCard, list[list[int] | None]]:
    """(Torch module in eval mode, card without accuracy, class orders) of the mean-logit
    ensemble of model files that read the same input (same bands, tile size, gsd and scaling
    scale, offset and clip) and share their classes, e.g. the same network trained with
    different seeds. The module reads input scaled with the first member's card; a member whose
    scaling mean/std differ gets it re-normalised to its own (:func:`input_renormalisation`,
    recorded in ``training.ensemble.input_renormalised``). The card is the first member's with
    ``architecture.name = "mean_ensemble"`` and the members listed in ``training.ensemble``.
    Raises :class:`EnsembleError` when fewer than two files are given or a member does not fit
    the first."""
    log = log or ignore
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise EnsembleError(f"a mean ensemble needs at least two models, got {len(paths)}")
    loaded = [load_torch_module(p) for p in paths]
    first_card = loaded[0][1]
    orders: list[list[int] | None] = [None]
    inputs: list[Renormalisation | None] = [None]
    for path, (_, card) in zip(paths[1:], loaded[1:]):
        orders.append(check_compatible(first_card, card, f"the model {paths[0].name}", f"the model {path.name}",
                                       renormalise=True))
        inputs.append(input_renormalisation(first_card, card))
    _log_renormalised(paths, inputs, log)
    module = MeanEnsemble([m for m, _ in loaded], orders, inputs).eval()
    card = ModelCard.from_dict(first_card.to_dict(), "first member's card")
    card.name = f"mean of {len(paths)}: " + " + ".join(c.name for _, c in loaded)
    card.output = "logits"
    card.architecture = {
        "name": "mean_ensemble", "kwargs": {}, "members": [c.architecture for _, c in loaded],
        "note": "ONNX only: the mean of the members' logits; Grad-CAM looks at the last member's last block",
    }
    card.training = {
        "ensemble": {
            "formula": f"L = (L_1 + ... + L_{len(paths)}) / {len(paths)} (logits); softmax applied after the mean",
            "members": [_file_info(p, c) | {"training": c.training} for p, (_, c) in zip(paths, loaded)],
            "class_orders": orders,
            "input_renormalised": [_renormalisation_info(r) for r in inputs],
        },
    }
    card.accuracy = {"members": [c.accuracy for _, c in loaded],
                     "note": "the members' own accuracies; evaluate the ensemble with glassbox:evaluate"}
    card.description = (
        f"Mean-logit ensemble of {len(paths)} models ({', '.join(p.name for p in paths)}); classes "
        f"{', '.join(card.class_names)}; bands {', '.join(card.bands)}; tiles of {card.tile_size} px at {card.gsd:g} m."
    )
    return module, card, orders


def _log_renormalised(paths: Sequence[Path], renormalised: Sequence[Any], log: Log) -> None:
    for path, renormalisation in zip(paths[1:], renormalised[1:]):
        if renormalisation is not None:
            log(f"the model {path.name}'s scaling mean/std differ from the first model's ({paths[0].name}); its "
                f"input is re-normalised inside the ensemble")


def build_mean_ensemble(paths: Sequence[str | Path], output_path: str | Path,
                        loaded: tuple[Any, ModelCard, list[list[int] | None]] | None = None,
                        log: Log | None = None, check_tiles: int = 8, seed: int = 0) -> dict[str, Any]:
    """Write the ONNX model of the mean of the members' logits (see :func:`load_mean_ensemble`).
    ``loaded``: what :func:`load_mean_ensemble` returned for the same ``paths`` when the caller
    has it already (e.g. evaluated it and added the measured accuracy to its card); by default
    the members are loaded here. Returns {"path", "card", "max_abs_diff"}; nothing is written on
    any error."""
    log = log or ignore
    paths = [Path(p) for p in paths]
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".onnx":
        raise EnsembleError(f"the ensemble is written as ONNX (.onnx), not {output_path.name}")
    if loaded is None:
        module, card, orders = load_mean_ensemble(paths, log)
    else:
        module, card, orders = loaded
    renormalised = card.training.get("ensemble", {}).get("input_renormalised") or [None] * len(paths)
    if loaded is not None:
        _log_renormalised(paths, renormalised, log)
    card.validate(output_path.name)

    def mean_logits(raw_tiles: np.ndarray) -> np.ndarray:
        total = 0.0
        for path, order in zip(paths, orders):
            logits = _own_logits(path, raw_tiles)
            total = total + (logits if order is None else logits[:, order])
        return total / len(paths)

    # only members read like the ensemble lend it their radiometry reference (computed on scaled tiles)
    same_input = [p for p, r in zip(paths, renormalised) if r is None]
    diff = _export_checked(module, card, output_path, mean_logits, check_tiles, seed, same_input,
                           half=any(_half_precision(p) for p in paths))
    log(f"mean ensemble of {len(paths)} models written; checked on {check_tiles} random tiles "
        f"(largest difference {diff:.1e})")
    return {"path": str(output_path), "card": card, "max_abs_diff": diff}

__all__ = ["AlphaEnsemble", "MeanEnsemble", "build_ensemble", "build_mean_ensemble", "check_compatible",
           "input_renormalisation", "load_mean_ensemble", "load_torch_module"]
