"""Measure explanation quality against ground truth: explain every tile that intersects
ground-truth polygons and score each explanation (IoU, pointing game, deletion AUC against the
same heatmap's least-relevant-first order and a random pixel order, :mod:`core.explain.metrics`); check on a sample of those tiles that the
heatmaps depend on what the model learnt (model randomization and class sensitivity,
:mod:`core.explain.sanity`); write a per-tile CSV and an HTML report.

Entry point: :func:`evaluate_explanation_quality`. Tiles are those of :func:`core.explain.heatmap.explain_raster`
(:mod:`core.tiles.loop`); the attribution itself is :mod:`core.explain.attribution`.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import metrics as xai_metrics
from ..models.card import ModelCard
from ..errors import Cancelled, RasterInputError
from .heatmap import Progress, format_value, write_csv
from ..io.raster import MaskPolygons, RasterSource, no_overlap_error
from ..tiles.loop import iter_batches, plan_tiles
from ..io.writers import StagedOutputs
from .sanity import SanityResult, model_randomization_check
from .attribution import METHOD_LABELS, ExplainError, Explainer, check_method, load_explainer, pixel_heatmap, resolve_target


@dataclass
class QualityOptions:
    """``stride`` defaults to the tile size (tiles side by side, each evaluated once).
    ``threshold``/``smooth``: the IoU rule of :func:`core.explain.metrics.heatmap_iou`; ``tolerance``
    (model pixels): the pointing game's; ``deletion_steps``: points of the deletion curve.
    ``randomization_check``: run :func:`core.explain.sanity.model_randomization_check` on up to
    ``randomization_tiles`` of the evaluated tiles (a seeded random sample), at three stages: the
    output layer, the top half of the weighted layers, all of them."""

    method: str = "guided_gradcam"
    target: str | int | None = None
    stride: int | None = None
    batch_size: int = 16
    threshold: float = xai_metrics.DEFAULT_THRESHOLD
    smooth: float = xai_metrics.DEFAULT_SMOOTH
    tolerance: int = 0
    deletion_steps: int = xai_metrics.DEFAULT_STEPS
    bands: Sequence[int] | None = None
    nodata: float | None = None
    min_valid_fraction: float = 0.5
    device: str = "cpu"
    engine: str = "fused"
    randomization_check: bool = True
    randomization_tiles: int = 128


@dataclass
class TileQuality:
    tile_row: int
    tile_col: int
    bounds: tuple[float, float, float, float]
    class_name: str
    class_id: int
    probability: float
    gt_fraction: float
    iou: float
    pointing_hit: bool
    deletion_auc: float  # NaN for an empty heatmap (no order to delete in)
    random_deletion_auc: float
    empty_heatmap: bool = False  # all zero on the tile's valid pixels: IoU 0 and a miss by definition
    reverse_deletion_auc: float = math.nan  # least relevant first; NaN for an empty heatmap


@dataclass
class QualityResult:
    outputs: dict[str, str]
    tiles: list[TileQuality]
    mean_iou: float
    pointing_game: float
    deletion_auc: float
    random_deletion_auc: float
    deletion_curve: list[float]
    random_curve: list[float]
    seconds: float
    method: str
    target: str
    layer: str
    card: ModelCard | None = None
    reverse_deletion_auc: float = math.nan
    reverse_curve: list[float] = field(default_factory=list)
    sanity: SanityResult | None = None


def evaluate_explanation_quality(
    input_path: str,
    model: Explainer | str | Path,
    ground_truth: Sequence[dict],
    csv_path: str | None,
    report_path: str | None = None,
    options: QualityOptions | None = None,
    progress: Progress | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> QualityResult:
    """Explain every tile that intersects the ``ground_truth`` polygons (GeoJSON-like, in the
    raster CRS) and score each explanation: IoU of the thresholded heatmap with the polygons
    (rasterised on the tile's model pixels), pointing game, deletion AUC and the deletion AUC
    of a random pixel order as reference (:mod:`core.explain.metrics`). Writes a per-tile CSV with a
    final ``mean`` row and an HTML report. Tiles are those of the raster-wide grid (the same
    tiles :func:`core.explain.heatmap.explain_raster` uses with the same stride)."""
    options = options or QualityOptions()
    progress = progress or (lambda _p: None)
    is_cancelled = is_cancelled or (lambda: False)
    log = log or (lambda _m: None)
    if not (csv_path or report_path):
        raise RasterInputError("no output requested")
    method = check_method(options.method)
    if not 0 < options.threshold <= 1:
        raise ExplainError("the IoU threshold must be in (0, 1], a fraction of each heatmap's maximum")
    if options.deletion_steps < 1:
        raise ExplainError("deletion steps must be at least 1")
    explainer = model if isinstance(model, Explainer) else load_explainer(model, options.device)
    card = explainer.card
    target = resolve_target(card, options.target)
    started = time.perf_counter()
    truth = MaskPolygons(ground_truth)
    size = (card.tile_size, card.tile_size)

    with RasterSource(input_path, options.bands, card.bands, options.nodata, card) as source, StagedOutputs() as staged:
        plan = plan_tiles(source, card, options.stride or card.tile_size)
        gb = truth.total_bounds()
        rb = source.dataset.bounds
        if gb[0] >= rb.right or gb[2] <= rb.left or gb[1] >= rb.top or gb[3] <= rb.bottom:
            raise no_overlap_error("the ground truth polygons", gb, source.dataset)
        candidates = []
        for tile in plan.grid:
            x0, y0, x1, y1 = plan.tile_bounds(tile)
            if gb[0] < x1 and gb[2] > x0 and gb[1] < y1 and gb[3] > y0:
                candidates.append(tile)

        def truth_mask(tile):
            return truth.inside(plan.tile_transform(tile), size)

        rows: list[TileQuality] = []
        curves, random_curves, reverse_curves = [], [], []
        sample: list[np.ndarray] = []  # reservoir of evaluated tiles for the randomization check
        sampler = np.random.default_rng(0)
        on_truth = [0]

        def on_a_polygon(tile) -> bool:
            hit = bool(truth_mask(tile).any())
            on_truth[0] += hit
            return hit

        for batch in iter_batches(plan, card, options.batch_size, options.min_valid_fraction, is_cancelled,
                                  tiles=candidates, include=on_a_polygon):
            if batch.tiles:
                x = batch.inputs
                expl = explainer.explain(x, method, target, options.engine)
                heat = pixel_heatmap(expl.attributions)
                for i, (tile, valid) in enumerate(zip(batch.tiles, batch.valid)):
                    h = np.where(valid, heat[i], 0.0)
                    gt = truth_mask(tile) & valid
                    t = int(expl.targets[i])
                    empty = not bool(np.any(h[valid] > 0))
                    curve = reverse = None
                    if not empty:  # an empty heatmap ranks no pixel: no deletion order to score
                        curve = xai_metrics.deletion_curve(explainer.predict_proba, x[i], h, t, options.deletion_steps)
                        reverse = xai_metrics.deletion_curve(explainer.predict_proba, x[i], h, t,
                                                             options.deletion_steps, least_relevant_first=True)
                        curves.append(curve.probabilities)
                        reverse_curves.append(reverse.probabilities)
                    order = np.random.default_rng(tile.grid_row * 100003 + tile.grid_col).permutation(h.size)
                    rand = xai_metrics.deletion_curve(explainer.predict_proba, x[i], h, t, options.deletion_steps,
                                                      order=order)
                    if len(rows) < options.randomization_tiles:
                        sample.append(x[i])
                    else:
                        slot = int(sampler.integers(0, len(rows) + 1))
                        if slot < options.randomization_tiles:
                            sample[slot] = x[i]
                    if not empty:  # compared with the deletion curves: the same tiles
                        random_curves.append(rand.probabilities)
                    rows.append(TileQuality(
                        tile_row=tile.grid_row, tile_col=tile.grid_col, bounds=plan.tile_bounds(tile),
                        class_name=card.class_names[t], class_id=t, probability=float(expl.probabilities[i, t]),
                        gt_fraction=float(gt.sum() / max(1, valid.sum())),
                        iou=xai_metrics.heatmap_iou(h, gt, options.threshold, options.smooth, valid),
                        pointing_hit=xai_metrics.pointing_game(h, gt, options.tolerance, options.smooth, valid),
                        deletion_auc=curve.auc if curve else math.nan, random_deletion_auc=rand.auc,
                        empty_heatmap=empty, reverse_deletion_auc=reverse.auc if reverse else math.nan,
                    ))
            progress(100.0 * batch.done / max(1, batch.total))
        if not rows and not on_truth[0]:
            raise ExplainError(
                f"no tile of the raster lies on a ground truth polygon ({len(ground_truth)} polygons, within "
                f"{gb[0]:.2f}, {gb[1]:.2f}, {gb[2]:.2f}, {gb[3]:.2f} in the raster's CRS): check that the polygons "
                "cover the raster's area and that each layer's CRS is set right")
        if not rows:
            raise ExplainError(
                f"the {on_truth[0]} tile(s) on the ground truth polygons have too few valid pixels (at least "
                f"{options.min_valid_fraction:.0%} needed): the raster holds nodata there; check its nodata value")
        sanity = None
        if options.randomization_check and sample:
            if is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            sanity = model_randomization_check(explainer, np.stack(sample), method, stages="ends", seed=0,
                                               batch_size=options.batch_size, target=target)
        ious = np.array([r.iou for r in rows], dtype=float)
        result = QualityResult(
            outputs={k: v for k, v in dict(csv=csv_path, report=report_path).items() if v},
            tiles=rows,
            mean_iou=float(np.nanmean(ious)) if np.isfinite(ious).any() else math.nan,
            pointing_game=float(np.mean([r.pointing_hit for r in rows])),
            deletion_auc=_mean([r.deletion_auc for r in rows]),
            random_deletion_auc=_mean([r.random_deletion_auc for r in rows if not r.empty_heatmap]),
            deletion_curve=[float(v) for v in np.mean(curves, axis=0)] if curves else [],
            random_curve=[float(v) for v in np.mean(random_curves, axis=0)] if random_curves else [],
            reverse_deletion_auc=_mean([r.reverse_deletion_auc for r in rows]),
            reverse_curve=[float(v) for v in np.mean(reverse_curves, axis=0)] if reverse_curves else [],
            seconds=time.perf_counter() - started,
            method=method,
            target="predicted" if target is None else card.class_names[target],
            layer=explainer.layer_name,
            card=card,
            sanity=sanity,
        )
        log(f"{len(rows)} tiles intersect the ground truth: mean IoU {result.mean_iou:.3f}, pointing game "
            f"{result.pointing_game:.1%}, deletion AUC {result.deletion_auc:.3f} (least relevant first "
            f"{result.reverse_deletion_auc:.3f}; random pixels {result.random_deletion_auc:.3f})")
        if sanity is not None:
            log(sanity_log_line(sanity))
        empty = sum(r.empty_heatmap for r in rows)
        if empty:
            log(f"WARNING: {empty} of the {len(rows)} tiles have an empty heatmap (zero everywhere: the method found "
                "nothing for the class, e.g. Grad-CAM with no positive evidence); they count as IoU 0 and a pointing "
                "miss (column empty_heatmap)")
        if csv_path:
            _write_quality_csv(staged, csv_path, result)
        if report_path:
            tmp = staged.stage(report_path)
            tmp.write_text(_quality_html(result, input_path, explainer.source, options), encoding="utf-8")
        staged.commit()
    return result


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def sanity_log_line(sanity: SanityResult) -> str:
    """One log line of the randomization check's figures."""
    stages = ", ".join(f"{_stage_name(stage.layers_randomized, len(sanity.weighted_layers))} "
                       f"{stage.spearman_mean:.2f}" for stage in sanity.stages)
    return (f"sanity check on {sanity.tiles} tiles (Spearman rank correlation with the trained model's heatmaps; "
            f"1 = unchanged, near 0 = the heatmap depends on what the model learnt): weights randomized in {stages}; "
            f"explained class against the next most probable class {sanity.class_spearman:.2f}; against an edge "
            f"detector {sanity.edge_spearman_trained:.2f}")


def _stage_name(randomized: int, total: int) -> str:
    if randomized == total:
        return f"all {total} layers"
    if randomized == 1:
        return "the output layer"
    return f"the top {randomized} of {total} layers"


_QUALITY_COLUMNS = ["kind", "tile_row", "tile_col", "x_min", "y_min", "x_max", "y_max", "class", "class_id",
                    "probability", "gt_fraction", "iou", "pointing_hit", "deletion_auc", "random_deletion_auc",
                    "empty_heatmap", "reverse_deletion_auc"]
_QUALITY_TYPES = ["String", "Integer", "Integer", "Real", "Real", "Real", "Real", "String", "Integer",
                  "Real", "Real", "Real", "Real", "Real", "Real", "Integer", "Real"]


def _write_quality_csv(staged: StagedOutputs, target: str, result: QualityResult) -> None:
    rows = [["tile", r.tile_row, r.tile_col, *[f"{b:.6f}" for b in r.bounds], r.class_name, r.class_id,
             format_value(r.probability), format_value(r.gt_fraction), format_value(r.iou), int(r.pointing_hit), format_value(r.deletion_auc),
             format_value(r.random_deletion_auc), int(r.empty_heatmap), format_value(r.reverse_deletion_auc)]
            for r in result.tiles]
    rows.append(["mean", "", "", "", "", "", "", "", "", format_value(float(np.mean([r.probability for r in result.tiles]))),
                 format_value(float(np.mean([r.gt_fraction for r in result.tiles]))), format_value(result.mean_iou),
                 format_value(result.pointing_game), format_value(result.deletion_auc), format_value(result.random_deletion_auc),
                 sum(r.empty_heatmap for r in result.tiles), format_value(result.reverse_deletion_auc)])
    write_csv(staged, target, _QUALITY_COLUMNS, rows, _QUALITY_TYPES)


def _svg_curves(curves: dict[str, tuple[list[float], str]], width: int = 360, height: int = 200) -> str:
    pad = 30
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{pad}" y="10" width="{width - pad - 10}" height="{height - pad - 10}" fill="none" stroke="#999"/>']
    for label, (values, colour) in curves.items():
        n = len(values) - 1
        points = " ".join(f"{pad + (width - pad - 10) * i / max(1, n):.1f},"
                          f"{10 + (height - pad - 10) * (1 - v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="11">0</text>')
    parts.append(f'<text x="{width - 60}" y="{height - 8}" font-size="11">1 (deleted)</text>')
    parts.append('<text x="2" y="20" font-size="11">p=1</text>')
    parts.append("</svg>")
    return "".join(parts)


def _quality_html(result: QualityResult, input_path: str, model_name: str, options: QualityOptions) -> str:
    esc = html.escape
    card = result.card
    summary = [
        ("Tiles evaluated", str(len(result.tiles))),
        ("Mean IoU (Jaccard) of the thresholded heatmap", f"{result.mean_iou:.3f}"),
        ("Pointing game hit rate", f"{result.pointing_game:.1%}"),
        ("Deletion AUC, most relevant first (lower = more faithful)", f"{result.deletion_auc:.3f}"),
        ("Deletion AUC, least relevant first (the reference: a faithful heatmap's is higher)",
         f"{result.reverse_deletion_auc:.3f}"),
        ("Deletion AUC, scattered random pixels (a floor, not a reference to beat)", f"{result.random_deletion_auc:.3f}"),
        ("Tiles with an empty heatmap (zero everywhere; scored IoU 0 and a miss)",
         str(sum(r.empty_heatmap for r in result.tiles))),
    ]
    tile_rows = "".join(
        f"<tr><td>{r.tile_row}</td><td>{r.tile_col}</td><td>{esc(r.class_name)}</td><td>{r.probability:.3f}</td>"
        f"<td>{r.gt_fraction:.3f}</td><td>{format_value(r.iou) or 'n/a'}</td><td>{'hit' if r.pointing_hit else 'miss'}</td>"
        f"<td>{_correlation(r.deletion_auc)}</td><td>{_correlation(r.reverse_deletion_auc)}</td>"
        f"<td>{r.random_deletion_auc:.3f}</td></tr>" for r in result.tiles)
    sanity_section = _sanity_html(result.sanity) if result.sanity is not None else ""
    curves = _svg_curves({"most relevant first": (result.deletion_curve, "#c0392b"),
                          "least relevant first": (result.reverse_curve, "#2471a3"),
                          "random pixels": (result.random_curve, "#7f8c8d")})
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Explanation quality</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}</style>
</head><body>
<h1>Explanation quality</h1>
<p>Raster <code>{esc(str(input_path))}</code>, model <code>{esc(model_name)}</code> ({esc(card.name)}),
method <b>{esc(METHOD_LABELS[result.method])}</b>, target class <b>{esc(result.target)}</b>,
Grad-CAM layer <code>{esc(result.layer)}</code>.</p>
<table>{''.join(f'<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>' for k, v in summary)}</table>
<h2>How to read it</h2>
<ul>
<li><b>IoU</b>: per tile, the pixels whose heatmap (smoothed by a Gaussian of {options.smooth:g} model px) is at
least {options.threshold:g} &times; the tile's maximum, compared with the ground-truth polygons rasterised on the
tile's model pixels: intersection / union. 1 = the relevant region is exactly the ground truth.</li>
<li><b>Pointing game</b>: a hit when the heatmap's maximum lies inside the ground truth
(tolerance {options.tolerance} model px).</li>
<li><b>Deletion</b>: pixels are deleted (set to 0 in the model's scaled input: the training mean of a model
that standardises its input, e.g. the RGB models; zero reflectance, i.e. black, for one that does not, e.g. the
13-band fusion model) from the most to the least relevant and the probability of the explained class is
recorded; the area under that curve is low when the heatmap found what the model relies on. Compare it with
the same heatmap's <b>least relevant first</b> order, which deletes pixels of the same spatial structure: a
faithful heatmap's curve falls faster most relevant first (a lower AUC than least relevant first). Deleting
<b>scattered random pixels</b> destroys a tile far faster than deleting compact regions (the deleted pixels
look like nothing the model was trained on), so the random curve is a floor that heatmap orders rarely reach,
not a reference to beat. Tiles with an empty heatmap have no deletion order and are left out of these means.</li>
</ul>
{sanity_section}
<h2>Mean deletion curve</h2>
<p><span style="color:#c0392b">&#9632; most relevant first</span> &nbsp; <span style="color:#2471a3">&#9632; least relevant
first</span> &nbsp; <span style="color:#7f8c8d">&#9632; scattered random pixels</span></p>
{curves}
<h2>Tiles</h2>
<table><tr><th>tile row</th><th>tile col</th><th>class</th><th>probability</th><th>ground-truth share</th>
<th>IoU</th><th>pointing game</th><th>deletion AUC</th><th>least relevant first</th><th>random pixels</th></tr>{tile_rows}</table>
</body></html>
"""


def _correlation(value: float, missing: str = "n/a") -> str:
    return f"{value:.2f}" if math.isfinite(value) else missing


def _sanity_html(sanity: SanityResult) -> str:
    total = len(sanity.weighted_layers)
    rows = "".join(
        f"<tr><td>{html.escape(_stage_name(stage.layers_randomized, total))} (down to "
        f"<code>{html.escape(stage.lowest_layer)}</code>)</td><td>{_correlation(stage.spearman_mean)}</td>"
        f"<td>{_correlation(stage.spearman_median)}</td><td>{stage.prediction_agreement:.1%}</td>"
        f"<td>{stage.constant_share:.1%}</td></tr>" for stage in sanity.stages)
    return f"""<h2>Does the heatmap depend on the model? (sanity check)</h2>
<p>On {sanity.tiles} of the tiles, the learnt weights of the network were replaced by random ones from the
output down, and the heatmaps of the same class compared with the trained model's by their Spearman rank
correlation over each tile's pixels (Adebayo et al. 2018, <i>Sanity checks for saliency maps</i>). A heatmap
that explains the model must change when what the model learnt is destroyed: a correlation near 1 after
randomizing the top layers means the heatmap shows the image's structure more than the model's reasons.</p>
<table><tr><th>weights randomized</th><th>mean correlation</th><th>median</th>
<th>tiles still given the explained class</th><th>tiles with a constant heatmap (not counted)</th></tr>{rows}</table>
<p>Explained class against the next most probable class, same tiles: correlation
<b>{_correlation(sanity.class_spearman, 'n/a (the heatmaps of one of the two classes are constant on every tile)')}</b>
(near 1: the heatmap hardly tells the classes apart).
Against an edge detector (the tiles' Sobel gradient magnitude): {_correlation(sanity.edge_spearman_trained)}.</p>
"""
