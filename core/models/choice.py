"""Choose a shipped model for a raster when the user names none: the one that reads the most of
the raster's bands.

A model *fits* a raster when

* the raster names its bands (band descriptions) and every band of the model's card is among
  them, matched as ``glassbox:classify`` matches them (:func:`core.io.raster.normalise_band_name`:
  ``B4``, ``b04`` and ``B04`` are the same band); or
* the raster names none of its bands and has exactly as many bands as the model reads (they
  are then taken in the raster's order, as classify does);
* or, when the user selected bands (``BANDS``), the model reads as many bands as were selected
  (they are fed in the selected order; names are then not looked at).

Of the fitting models the one reading the most bands wins (a 13-band Sentinel-2 stack gets the
13-band model, an RGB raster the RGB model); ties go to the model listed first. When none fits,
the first model is returned (classify then reports which bands are missing). QGIS-free and
Torch-free: cards are read from ``<model>.json`` beside the file, else from the ONNX metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .card import ONNX_METADATA_KEY, ModelCard
from ..errors import GlassboxError, ModelCardError, ModelLoadError
from ..io.raster import normalise_band_name, raster_band_names


def read_card(path: str | Path) -> ModelCard:
    """The card of a model file without loading its network: ``<stem>.json`` beside it when
    present (Torch state dicts; the shipped ONNX files have it too), else the ONNX metadata."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return ModelCard.from_json(sidecar.read_text(encoding="utf-8"), source=sidecar.name)
    if path.suffix.lower() != ".onnx":
        raise ModelCardError(f"{path.name}: no card {sidecar.name} beside it")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: onnxruntime cannot load the model: {exc}") from exc
    meta = session.get_modelmeta().custom_metadata_map
    if ONNX_METADATA_KEY not in meta:
        raise ModelCardError(f"{path.name}: the ONNX model has no Glassbox card")
    return ModelCard.from_json(meta[ONNX_METADATA_KEY], source=path.name)


def raster_bands(raster_path: str | Path) -> tuple[list[str | None], int]:
    """(band descriptions, None where a band has none; band count) of a raster's image bands
    (its alpha bands, which mark where the image is, are left out)."""
    from ..io.raster import alpha_bands, band_descriptions, open_raster

    with open_raster(raster_path, require_crs=False) as ds:
        alpha = set(alpha_bands(ds))
        image = [i for i in range(ds.count) if i + 1 not in alpha]
        names = band_descriptions(ds)
        return [names[i] for i in image], len(image)


def choose_model(raster_path: str | Path, model_paths: Sequence[str | Path],
                 selected_bands: int | None = None) -> tuple[str, str]:
    """(path of the model to use, reason in one sentence for the log) for ``raster_path`` among
    ``model_paths`` (in order of preference; files that do not exist or have no readable card
    are passed over); ``selected_bands`` is the number of bands the user selected, if any. See
    the module docstring for the rule."""
    if not model_paths:
        raise ModelLoadError("no model to choose from")
    if selected_bands:
        return _choose_by_selection(raster_path, model_paths, selected_bands)
    descriptions, count = raster_bands(raster_path)
    named = [normalise_band_name(d) for d in descriptions if d]
    available = set(named)
    fits: list[tuple[int, int, Path, ModelCard, str]] = []
    passed_over: list[str] = []
    near_misses: list[str] = []  # models that miss only one or two of their bands: said in the reason
    for order, candidate in enumerate(model_paths):
        path = Path(candidate)
        if not path.is_file():
            continue
        try:
            card = read_card(path)
        except GlassboxError as exc:
            passed_over.append(f"{path.name} ({exc})")
            continue
        wanted = [normalise_band_name(b) for b in card.bands]
        if named:
            available = {n for n in raster_band_names(descriptions, card.bands) if n}
        if named and all(w in available for w in wanted):
            fits.append((len(wanted), -order, path, card, "name"))
        elif not named and count == len(wanted):
            fits.append((len(wanted), -order, path, card, "count"))
        else:
            missing = [b for b, w in zip(card.bands, wanted) if w not in available]
            level2a = (" (a Level-2A product has none; the shipped models read Level-1C top-of-atmosphere "
                       "digital numbers)" if missing == ["B10"] else "")
            passed_over.append(f"{path.name} (reads {len(wanted)} bands; "
                               + (f"the raster has no band named {', '.join(missing)}{level2a})" if named
                                  else f"the raster has {count} unnamed bands)"))
            if named and len(missing) <= 2:
                near_misses.append(passed_over[-1])
    raster = Path(raster_path).name
    if not fits:
        first = Path(model_paths[0])
        have = (f"bands named {', '.join(named)}" if named else f"{count} band(s) without names")
        return str(first), (f"no shipped model's bands were found in {raster} ({have}): "
                            f"{'; '.join(passed_over) or 'no model file found'}; trying the default {first.name}, "
                            "choose BANDS or a MODEL that fits the raster")
    fits.sort(key=lambda f: (f[0], f[1]), reverse=True)
    n_bands, _order, path, card, how = fits[0]
    others = [f"{p.name} reads {n}" for n, _o, p, _c, _h in fits[1:]]
    if how == "name":
        reason = (f"{raster} names its bands and holds all {n_bands} that '{card.name}' reads "
                  f"({', '.join(card.bands)}), the most of any shipped model")
    else:
        reason = (f"{raster} does not name its bands and has {count}, as many as '{card.name}' reads "
                  f"({', '.join(card.bands)}); which band feeds which is logged below (the raster's order, or for 13 "
                  "bands Sentinel-2's order as its cirrus band shows it); if that is wrong set the band descriptions, "
                  "BANDS or MODEL")
    if others:
        reason += f" (other fitting models: {', '.join(others)})"
    if near_misses:
        reason += f"; not chosen: {'; '.join(near_misses)}"
    return str(path), reason


def _choose_by_selection(raster_path: str | Path, model_paths: Sequence[str | Path], selected: int) -> tuple[str, str]:
    """The first model reading ``selected`` bands, else the first model (classify then reports
    the mismatch)."""
    readable: list[str] = []
    for candidate in model_paths:
        path = Path(candidate)
        if not path.is_file():
            continue
        try:
            card = read_card(path)
        except GlassboxError:
            continue
        if card.num_bands == selected:
            return str(path), (f"{selected} bands were selected (BANDS), as many as '{card.name}' reads "
                               f"({', '.join(card.bands)}); they are fed in the order selected")
        readable.append(f"{path.name} reads {card.num_bands}")
    first = Path(model_paths[0])
    return str(first), (f"{selected} bands were selected (BANDS) but no shipped model reads {selected} "
                        f"({'; '.join(readable) or 'no model file found'}); trying the default {first.name}")
