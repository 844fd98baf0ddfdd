"""Weight interpolation between two networks of one architecture (WiSE-FT).

Wortsman et al. 2022, "Robust fine-tuning of zero-shot models": when a network was fine-tuned
from another one's weights, the networks on the straight line between the two often keep most
of the clean accuracy of the first and most of the robustness of the second, at the cost of one
network (no ensemble). ``theta(w) = (1 - w) * theta_first + w * theta_second`` for every
floating-point tensor of the state dict (weights, batch-norm scales, shifts, running means and
variances); integer buffers (the batch-norm batch counter) are taken from the first network.

The running statistics of an interpolated network are not the interpolated statistics (the
activations of a mixed network differ from both), so they can instead be re-estimated from
tiles (:func:`interpolate_models` ``batchnorm_inputs``; Jordan et al. 2022, "REPAIR").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .card import ModelCard
from .ensemble import _file_info, check_compatible
from ..errors import EnsembleError, ModelLoadError


class InterpolationError(ModelLoadError):
    """The two networks cannot be interpolated (other architecture, classes, scaling or tensors)."""


def interpolate_state_dicts(first: Mapping[str, Any], second: Mapping[str, Any], weight: float) -> dict[str, Any]:
    """``(1 - weight) * first + weight * second`` per floating-point tensor (``weight`` in 0..1:
    0 gives ``first``, 1 gives ``second``); other tensors are copied from ``first``. Both state
    dicts must have the same keys and shapes, else :class:`InterpolationError`."""
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise InterpolationError(f"the interpolation weight must be between 0 and 1, not {weight:g}")
    missing, extra = sorted(set(first) - set(second)), sorted(set(second) - set(first))
    if missing or extra:
        raise InterpolationError(
            "the networks have different tensors: " + "; ".join(
                part for part in (f"only in the first: {', '.join(missing[:5])}" if missing else "",
                                  f"only in the second: {', '.join(extra[:5])}" if extra else "") if part))
    mixed = {}
    for key, a in first.items():
        b = second[key]
        if tuple(a.shape) != tuple(b.shape):
            raise InterpolationError(f"tensor {key} has shape {tuple(a.shape)} in the first network and "
                                     f"{tuple(b.shape)} in the second")
        if a.is_floating_point():
            mixed[key] = (1.0 - weight) * a.detach().double() + weight * b.detach().double()
            mixed[key] = mixed[key].to(a.dtype)
        else:
            mixed[key] = a.detach().clone()
    return mixed


def interpolate_models(first_path: str | Path, second_path: str | Path, weight: float,
                       output_path: str | Path, onnx_path: str | Path | None = None,
                       batchnorm_inputs: Any = None, batchnorm_note: str = "") -> tuple[Any, ModelCard]:
    """Write the network ``(1 - weight) * first + weight * second`` of two Torch state-dict model
    files (each with its card) as a state dict with its card at ``output_path`` (``.pt``), and
    as ONNX at ``onnx_path`` if given. The card is the first network's with the interpolation
    recorded in ``training`` and no accuracy (the new network has not been scored). With
    ``batchnorm_inputs`` (float32 ``(N, bands, tile, tile)``, scaled as the network expects) the
    batch-norm running statistics are re-estimated from them after the interpolation
    (:func:`..adaptation.adapt_batchnorm`: plain average, batches of 64, random order, seed 0)
    and ``batchnorm_note`` says in the card what they were. Returns
    (module in eval mode, card). Raises :class:`InterpolationError` if the two differ in
    architecture, bands, classes (or their order), tile size or scaling."""
    from .backends import TORCH_SUFFIXES, _sidecar_card, build_from_card, load_state_dict
    from .export import export_onnx, save_torch

    first_path, second_path, output_path = Path(first_path), Path(second_path), Path(output_path)
    for path in (first_path, second_path):
        if path.suffix.lower() not in TORCH_SUFFIXES:
            raise InterpolationError(f"{path.name}: weight interpolation needs Torch state dicts (.pt), not ONNX")
    first_card, second_card = _sidecar_card(first_path, True), _sidecar_card(second_path, True)
    try:
        order = check_compatible(first_card, second_card, first_path.name, second_path.name)
    except EnsembleError as exc:
        raise InterpolationError(str(exc)) from exc
    if order is not None:
        raise InterpolationError(f"{first_path.name} and {second_path.name} list the classes in another order")
    if first_card.architecture.get("name") != second_card.architecture.get("name") or \
            (first_card.architecture.get("kwargs") or {}) != (second_card.architecture.get("kwargs") or {}):
        raise InterpolationError(f"{first_path.name} and {second_path.name} are different architectures "
                                 f"({first_card.architecture.get('name')} and {second_card.architecture.get('name')})")
    state = interpolate_state_dicts(load_state_dict(first_path), load_state_dict(second_path), weight)
    card = ModelCard.from_dict(first_card.to_dict(), "first network's card")
    card.name = f"{first_card.name}, weights interpolated {1 - weight:g} : {weight:g} with {second_path.stem}"
    card.training = dict(first_card.training)
    card.training["weight_interpolation"] = {
        "formula": "theta = (1 - w) * theta_first + w * theta_second, every floating-point tensor "
                   "(batch-norm running statistics included); integer buffers from the first",
        "w": float(weight),
        "first": _file_info(first_path, first_card),
        "second": _file_info(second_path, second_card),
        "reference": "Wortsman et al. 2022, Robust fine-tuning of zero-shot models (WiSE-FT)",
    }
    module = build_from_card(card)
    module.load_state_dict(state)
    module.eval()
    if batchnorm_inputs is not None:
        from ..adaptation import adapt_batchnorm

        layers = adapt_batchnorm(module, batchnorm_inputs, batch_size=64, seed=0)
        card.training["weight_interpolation"]["batchnorm_statistics"] = {
            "re_estimated_from": batchnorm_note or f"{len(batchnorm_inputs)} tiles", "tiles": len(batchnorm_inputs),
            "layers": layers, "method": "core.adaptation.adapt_batchnorm (plain average, batches of 64, seed 0)"}
    card.accuracy = {}
    if onnx_path is not None:  # first: the export checks the file's logits, the likelier step to fail
        export_onnx(module, card, onnx_path)
    try:
        save_torch(module, card, output_path)
    except BaseException:
        if onnx_path is not None:
            Path(onnx_path).unlink(missing_ok=True)
        raise
    return module, card
