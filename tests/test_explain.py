"""Explanations (core.xai, core.explain) and glassbox:explain / glassbox:explanation_quality,
with a tiny model trained here to recognise a bright square on noise."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers import write_raster

pytestmark = pytest.mark.usefixtures("glassbox_processing", "one_torch_thread")

SQ_TILE = 32  # model pixels
SQ_SIDE = 8  # side of the bright square, pixels
SQ_BANDS = ["B1", "B2"]  # the square is bright in B1 only; B2 is noise everywhere


def square_tile(rng, square=True, side=SQ_SIDE, size=SQ_TILE, at=None):
    """Raw values (2, size, size): noise around 1000 in both bands; with ``square``, a bright
    square (+2000) in band 1 at ``at`` (row, col) or at random. Returns (tile, mask)."""
    tile = rng.normal(1000, 150, (2, size, size)).astype(np.float32)
    mask = np.zeros((size, size), dtype=bool)
    if square:
        r, c = at if at is not None else rng.integers(0, size - side + 1, 2)
        tile[0, r : r + side, c : c + side] += 2000
        mask[r : r + side, c : c + side] = True
    return np.clip(tile, 1, None), mask


def square_scene(rows, cols, squares, seed=3):
    """A 2-band uint16 scene of noise with bright squares at ``squares`` [(row, col)] and their mask."""
    rng = np.random.default_rng(seed)
    data = rng.normal(1000, 150, (2, rows, cols)).astype(np.float32)
    mask = np.zeros((rows, cols), dtype=bool)
    for r, c in squares:
        data[0, r : r + SQ_SIDE, c : c + SQ_SIDE] += 2000
        mask[r : r + SQ_SIDE, c : c + SQ_SIDE] = True
    return np.clip(data, 1, None).astype(np.uint16), mask


@pytest.fixture(scope="module")
def square_model(tmp_path_factory):
    """paper1_cnn, 2 bands, 32 px tiles, trained in about a second to tell 'square' (a bright
    8 px square in band B1 at a random place) from 'noise'; saved as Torch + card and ONNX."""
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.card import ClassInfo, ModelCard, Scaling
    from glassbox.core.models.export import export_onnx, save_torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    card = ModelCard(
        name="bright square detector",
        classes=[ClassInfo("noise", "#444444"), ClassInfo("square", "#ffcc00")],
        bands=list(SQ_BANDS),
        scaling=Scaling(scale=1 / 1000.0, offset=0.0, mean=[1.1, 1.0], std=[0.5, 0.15]),
        tile_size=SQ_TILE,
        gsd=10.0,
        architecture={"name": "paper1_cnn", "kwargs": {}},
        training={"data": "generated bright squares on noise", "seed": 0},
    )
    model = build_model("paper1_cnn", 2, 2, SQ_TILE)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        labels = rng.integers(0, 2, 16)
        x = np.stack([square_tile(rng, bool(k))[0] for k in labels])
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(card.scaling.apply(x))), torch.from_numpy(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    torch.set_num_threads(before)
    folder = tmp_path_factory.mktemp("square_model")
    return {
        "torch": save_torch(model, card, folder / "square.pt"),
        "onnx": export_onnx(model, card, folder / "square.onnx"),
        "card": card,
        "module": model,
    }


@pytest.fixture(scope="module")
def explainer(square_model):
    from glassbox.core.explain.attribution import Explainer

    return Explainer(square_model["module"], square_model["card"], "square.pt")


def _square_batch(card, n=16, seed=5):
    rng = np.random.default_rng(seed)
    tiles, masks = zip(*[square_tile(rng) for _ in range(n)])
    return card.scaling.apply(np.stack(tiles)), np.stack(masks)


# -- core ---------------------------------------------------------------------------------------
def test_layer_is_the_rectified_last_convolution_and_model_is_untouched(explainer, square_model):
    from torch import nn

    assert explainer.layer_name == "features.17"  # Conv(15) -> BN(16) -> ReLU(17) -> MaxPool(18)
    assert isinstance(explainer.layer, nn.ReLU)
    assert explainer.module is not square_model["module"]
    assert all(p.requires_grad for p in square_model["module"].parameters())


@pytest.mark.parametrize("method", ["guided_gradcam", "gradcam", "guided_backprop"])
def test_fused_engine_equals_captum(explainer, square_model, method):
    x, _masks = _square_batch(square_model["card"], n=6)
    fused = explainer.explain(x, method)
    reference = explainer.explain(x, method, engine="captum")
    assert fused.attributions.shape == ((6, 1, 32, 32) if method == "gradcam" else (6, 2, 32, 32))
    np.testing.assert_array_equal(fused.targets, reference.targets)
    scale = np.abs(reference.attributions).max()
    assert scale > 0
    np.testing.assert_allclose(fused.attributions, reference.attributions, atol=1e-5 * scale)
    if method == "guided_gradcam":  # and captum's GuidedGradCam is guided backprop x bilinear Grad-CAM
        cam = explainer.explain(x, "gradcam").attributions
        gb = explainer.explain(x, "guided_backprop").attributions
        np.testing.assert_allclose(fused.attributions, gb * cam, atol=1e-5 * scale)


def test_heatmap_finds_the_square_and_its_band(explainer, square_model):
    from glassbox.core.explain.attribution import band_shares, pixel_heatmap
    from glassbox.core.explain.metrics import deletion_curve, heatmap_iou, pointing_game, random_deletion_auc

    x, masks = _square_batch(square_model["card"], n=16)
    expl = explainer.explain(x)  # predicted class
    assert (expl.targets == 1).all(), "the trained model must see every square"
    heat = pixel_heatmap(expl.attributions)
    hits = [pointing_game(h, m) for h, m in zip(heat, masks)]
    ious = np.array([heatmap_iou(h, m) for h, m in zip(heat, masks)])
    assert all(hits)
    # a square covers 1/16 of the tile: a heatmap unrelated to it would score IoU ~0.06
    assert ious.mean() > 0.45 and ious.min() > 0.25, ious
    shares = band_shares(expl.attributions)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert shares[:, 0].mean() > 0.55  # the square is in B1; B2 is noise
    deletion = np.mean([deletion_curve(explainer.predict_proba, xi, h, 1).auc for xi, h in zip(x[:6], heat[:6])])
    chance = np.mean([random_deletion_auc(explainer.predict_proba, xi, 1, seed=i) for i, xi in enumerate(x[:6])])
    assert deletion < 0.5 * chance


def test_onnx_twin_gives_the_same_heatmap(square_model):
    from glassbox.core.explain.attribution import load_explainer, pixel_heatmap

    torch_side = load_explainer(square_model["torch"])
    onnx_side = load_explainer(square_model["onnx"])
    assert onnx_side.layer_name.endswith("Relu")  # batch norm is folded into the ONNX convolution
    x, _masks = _square_batch(square_model["card"], n=8, seed=11)
    for method in ("guided_gradcam", "gradcam", "guided_backprop"):
        a = pixel_heatmap(torch_side.explain(x, method).attributions)
        b = pixel_heatmap(onnx_side.explain(x, method).attributions)
        np.testing.assert_allclose(b, a, atol=1e-4 * a.max())


def test_a_gated_ensemble_is_explained_through_its_second_expert(tmp_path, square_model):
    """Both experts the square detector, a gate that weighs tiles differently: Grad-CAM runs on the
    second expert's last layer, so the heatmap is the detector's own (scaled by 1 - a, same shape);
    the ONNX twin gives the same heatmap."""
    import dataclasses

    import torch

    from glassbox.core.explain.attribution import load_explainer, pixel_heatmap
    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.export import export_onnx, save_torch

    expert = square_model["card"].architecture
    card = dataclasses.replace(square_model["card"], name="gated square detectors",
                               architecture={"name": "gated", "kwargs": {"experts": [expert, expert], "gate_width": 4}})
    torch.manual_seed(0)
    gated = build_model("gated", 2, 2, SQ_TILE, experts=[expert, expert], gate_width=4)
    for member in gated.experts:
        member.load_state_dict(square_model["module"].state_dict())
    for parameter in gated.gate.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    gated.eval()
    x, _masks = _square_batch(card, n=6, seed=3)
    with torch.no_grad():
        weights = gated.gate(torch.from_numpy(x)).numpy().ravel()
    assert weights.max() - weights.min() > 1e-3 and weights.max() < 0.999
    torch_side = load_explainer(save_torch(gated, card, tmp_path / "gated.pt"))
    onnx_side = load_explainer(export_onnx(gated, card, tmp_path / "gated.onnx"))
    assert torch_side.layer_name == "experts.1.features.17"
    plain = pixel_heatmap(load_explainer(square_model["torch"]).explain(x, "gradcam").attributions)
    mixed = pixel_heatmap(torch_side.explain(x, "gradcam").attributions)
    for a, b in zip(plain, mixed):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
    np.testing.assert_allclose(pixel_heatmap(onnx_side.explain(x, "guided_gradcam").attributions),
                               pixel_heatmap(torch_side.explain(x, "guided_gradcam").attributions),
                               atol=1e-4 * float(np.abs(mixed).max()))


def test_models_that_cannot_be_explained_are_refused_clearly(tmp_path, square_model):
    import onnx
    import torch
    from onnx import helper

    from glassbox.core.errors import ModelLoadError
    from glassbox.core.models.export import attach_card_to_onnx
    from glassbox.core.explain.attribution import load_explainer

    scripted = torch.jit.script(square_model["module"])
    ts_path = tmp_path / "square_ts.pt"
    torch.jit.save(scripted, str(ts_path), _extra_files={"glassbox_card.json": square_model["card"].to_json()})
    with pytest.raises(ModelLoadError, match="TorchScript models cannot be explained.*state dict"):
        load_explainer(ts_path)
    # an operator onnxruntime runs but onnx2torch cannot convert (Shrink with lambd=0 is the identity)
    proto = onnx.load(str(square_model["onnx"]))
    out = proto.graph.output[0].name
    proto.graph.node[-1].output[0] = "pre_shrink"
    proto.graph.node.append(helper.make_node("Shrink", ["pre_shrink"], [out], lambd=0.0, bias=0.0))
    odd = tmp_path / "odd.onnx"
    onnx.save(proto, str(odd))
    attach_card_to_onnx(odd, square_model["card"])
    with pytest.raises(ModelLoadError, match="cannot be converted to Torch.*Shrink"):
        load_explainer(odd)


def test_identical_tiles_get_identical_values_under_global_normalisation(tmp_path, explainer):
    from glassbox.core.explain.heatmap import ExplainOptions, explain_raster

    rng = np.random.default_rng(21)
    same, _ = square_tile(rng, at=(5, 17))
    other, _ = square_tile(rng, at=(20, 3))
    faint = rng.normal(1000, 150, (2, SQ_TILE, SQ_TILE)).astype(np.float32)
    faint[0, 12:20, 12:20] += 700
    blank = rng.normal(1000, 150, (2, SQ_TILE, SQ_TILE)).astype(np.float32)
    layout = [[same, other, faint], [blank, faint[:, ::-1], same]]  # 'same' at tiles (0, 0) and (1, 2)
    data = np.concatenate([np.concatenate(row, axis=2) for row in layout], axis=1).clip(1).astype(np.uint16)
    raster = write_raster(tmp_path / "scene.tif", data)
    results = {}
    normaliser = {}
    for norm in ("global", "tile", "none"):
        path = tmp_path / f"heat_{norm}.tif"
        explain_raster(raster, explainer, str(path), options=ExplainOptions(stride=SQ_TILE, normalization=norm))
        with rasterio.open(path) as ds:
            results[norm] = ds.read(1)
            normaliser[norm] = ds.tags().get("GLASSBOX_HEATMAP_NORMALISER")
            assert json.loads(ds.tags()["GLASSBOX_PARAMETERS"])["normalization"] == norm
    # the global scale is recorded: value x normaliser gives back the raw relevance
    np.testing.assert_allclose(results["global"] * float(normaliser["global"]), results["none"], rtol=1e-4,
                               atol=1e-6 * results["none"].max())
    assert normaliser["tile"] is None and normaliser["none"] is None
    del results["none"]
    tiles = {norm: [[h[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for c in range(3)] for r in range(2)]
             for norm, h in results.items()}
    for norm in ("global", "tile"):
        np.testing.assert_allclose(tiles[norm][0][0], tiles[norm][1][2], rtol=1e-4, atol=1e-6)
    g, t = tiles["global"], tiles["tile"]
    maxima = np.array([[tile.max() for tile in row] for row in g])
    assert maxima.max() == pytest.approx(1.0) and maxima.min() < 0.9  # one scale: tiles differ in strength
    for r in range(2):
        for c in range(3):
            assert t[r][c].max() == pytest.approx(1.0)  # per tile: every tile reaches 1
            np.testing.assert_allclose(g[r][c], t[r][c] * maxima[r, c], rtol=1e-4, atol=1e-6)


def test_resampled_raster_and_nodata(tmp_path, explainer):
    """A 5 m raster for the 10 m model: tiles are read resampled, the heatmap comes back on the
    5 m grid; nodata pixels stay nodata."""
    from glassbox.core.explain.heatmap import ExplainOptions, explain_raster

    data, truth = square_scene(64, 64, [(8, 40), (44, 12)])
    fine = np.repeat(np.repeat(data, 2, axis=1), 2, axis=2)  # 128 x 128 px of 5 m
    truth = np.repeat(np.repeat(truth, 2, axis=0), 2, axis=1)
    fine[:, 100:, 100:] = 0
    raster = write_raster(tmp_path / "fine.tif", fine, pixel=5.0, nodata=0)
    result = explain_raster(raster, explainer, str(tmp_path / "heat.tif"), options=ExplainOptions(target="square"))
    assert result.footprint == (64, 64)
    with rasterio.open(raster) as src, rasterio.open(tmp_path / "heat.tif") as heat:
        assert heat.transform == src.transform and heat.shape == (128, 128)
        h = heat.read(1)
    assert (h[100:, 100:] == -1).all() and (h[:100, :100] >= 0).all()
    assert truth.flat[int(np.argmax(h))]


# -- the algorithms -------------------------------------------------------------------------------
def run_explain(raster, model, out_dir, feedback=None, **extra):
    import processing

    params = {
        "INPUT": str(raster),
        "MODEL": str(model),
        "OUTPUT_HEATMAP": str(out_dir / "heatmap.tif"),
        "OUTPUT_BAND_RELEVANCE": str(out_dir / "bands.csv"),
    }
    params.update(extra)
    return processing.run("glassbox:explain", params, feedback=feedback)


SCENE_SQUARES = [(6, 10), (40, 70), (12, 52)]


def test_explain_algorithm_outputs_on_the_input_grid(tmp_path, square_model):
    from qgis.core import QgsRasterLayer, QgsSingleBandPseudoColorRenderer, QgsVectorLayer, QgsWkbTypes

    data, truth = square_scene(64, 96, SCENE_SQUARES)
    raster = write_raster(tmp_path / "scene.tif", data, crs="EPSG:2193", origin=(1570000.0, 5180000.0))
    result = run_explain(raster, square_model["onnx"], tmp_path, TARGET="square",
                         OUTPUT_PEAKS=str(tmp_path / "peaks.gpkg"), PEAKS_PER_TILE=2)
    with rasterio.open(raster) as src, rasterio.open(result["OUTPUT_HEATMAP"]) as heat:
        assert heat.crs == src.crs and heat.crs.to_epsg() == 2193
        assert heat.transform == src.transform and heat.shape == src.shape
        assert heat.dtypes[0] == "float32" and heat.nodata == -1
        h = heat.read(1)
    assert h.min() >= 0 and h.max() <= 1 + 1e-6 and h.max() > 0.5
    # the bright squares hold the strongest relevance: the raster's peak and most of the top 1 %
    assert truth.flat[int(np.argmax(h))]
    top = h >= np.quantile(h, 0.99)
    assert truth[top].mean() > 0.8
    layer = QgsRasterLayer(result["OUTPUT_HEATMAP"], "heat")  # picks up the saved .qml
    assert isinstance(layer.renderer(), QgsSingleBandPseudoColorRenderer)
    # colours stretched to the 99th percentile: relevance is concentrated in few pixels
    assert layer.renderer().classificationMax() == pytest.approx(np.quantile(h, 0.99), rel=0.05)
    assert layer.renderer().classificationMax() < h.max()

    table = QgsVectorLayer(result["OUTPUT_BAND_RELEVANCE"], "bands", "ogr")
    assert table.isValid() and table.featureCount() == 3
    assert table.fields().names()[:5] == ["class", "class_id", "n_tiles", "B1", "B2"]
    rows = {f["class"]: f for f in table.getFeatures()}
    assert rows["square"]["n_tiles"] == rows["(all)"]["n_tiles"] == 15 and rows["noise"]["n_tiles"] == 0
    assert isinstance(rows["square"]["B1"], float)
    assert rows["square"]["B1"] + rows["square"]["B2"] == pytest.approx(1.0, abs=1e-5)

    peaks = QgsVectorLayer(result["OUTPUT_PEAKS"], "peaks", "ogr")
    assert peaks.isValid() and peaks.geometryType() == QgsWkbTypes.PointGeometry
    assert peaks.crs().authid() == "EPSG:2193"
    for name in ("score", "class", "class_id", "rank", "tile_row", "tile_col"):
        assert name in peaks.fields().names()
    features = list(peaks.getFeatures())
    assert features and all(f["class"] == "square" and f["rank"] in (1, 2) for f in features)
    with rasterio.open(raster) as src:
        best = max(features, key=lambda f: f["score"])
        row, col = src.index(best.geometry().asPoint().x(), best.geometry().asPoint().y())
    assert truth[max(0, row - 1):row + 2, max(0, col - 1):col + 2].any()
    assert best["score"] <= 1.0 + 1e-6


def test_mask_layer_limits_the_heatmap_and_the_peaks(tmp_path, square_model):
    """MASK, as in classify: the heatmap covers the polygons' extent only, pixels outside the
    polygon are nodata, and every peak lies inside it."""
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    data, truth = square_scene(64, 96, SCENE_SQUARES)
    x0, y0 = 1570000.0, 5180000.0
    raster = write_raster(tmp_path / "scene.tif", data, crs="EPSG:2193", origin=(x0, y0))
    # a triangle over the left half: its corners at the top left, 48 px right and 64 px down
    triangle = QgsGeometry.fromPolygonXY([[QgsPointXY(x0, y0), QgsPointXY(x0 + 480, y0),
                                           QgsPointXY(x0, y0 - 640), QgsPointXY(x0, y0)]])
    mask = QgsVectorLayer("Polygon?crs=EPSG:2193", "mask", "memory")
    feature = QgsFeature()
    feature.setGeometry(triangle)
    mask.dataProvider().addFeatures([feature])
    from qgis.core import QgsProcessingFeedback

    lines = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = lines.append
    result = run_explain(raster, square_model["onnx"], tmp_path, feedback, TARGET="square", MASK=mask,
                         OUTPUT_PEAKS=str(tmp_path / "peaks.gpkg"))
    assert any("skipped as nodata or outside the mask" in line for line in lines), lines
    with rasterio.open(result["OUTPUT_HEATMAP"]) as heat:
        h = heat.read(1)
        assert heat.transform.c == x0 and heat.transform.f == y0
        assert heat.width <= 49 and heat.height == 64
    rows, cols = np.indices(h.shape)
    inside = (cols + 1) / 48 + (rows + 1) / 64 <= 1  # pixels wholly inside the triangle
    outside = cols / 48 + rows / 64 >= 1
    assert (h[outside] == -1).all()
    # the narrow tip is nodata too: no tile there has half its pixels inside (the valid-pixel rule)
    assert (h[inside & (rows < 40)] >= 0).all() and (h[inside] >= 0).mean() > 0.9 and h[inside].max() > 0.5
    assert truth[:, :h.shape[1]].flat[int(np.argmax(h))]  # the square inside the triangle is the peak
    peaks = QgsVectorLayer(result["OUTPUT_PEAKS"], "peaks", "ogr")
    points = [f.geometry() for f in peaks.getFeatures()]
    assert points and all(triangle.contains(p) for p in points)


def test_mosaic_is_explained_as_the_whole_raster(tmp_path, square_model):
    """MOSAIC, as in classify: a raster cut in two and explained as a mosaic gives the heatmap
    and the peaks of the whole raster."""
    from qgis.core import QgsVectorLayer

    data, _ = square_scene(64, 96, SCENE_SQUARES)
    x0, y0 = 1570000.0, 5180000.0
    whole = write_raster(tmp_path / "scene.tif", data, crs="EPSG:2193", origin=(x0, y0))
    top = write_raster(tmp_path / "top.tif", data[:, :40], crs="EPSG:2193", origin=(x0, y0))
    bottom = write_raster(tmp_path / "bottom.tif", data[:, 40:], crs="EPSG:2193", origin=(x0, y0 - 400))
    runs = {}
    for name, inputs in (("whole", {"INPUT": whole}), ("mosaic", {"INPUT": None, "MOSAIC": [top, bottom]})):
        out = tmp_path / name
        out.mkdir()
        runs[name] = run_explain(whole, square_model["onnx"], out, OUTPUT_PEAKS=str(out / "peaks.gpkg"), **inputs)
    with rasterio.open(runs["whole"]["OUTPUT_HEATMAP"]) as a, rasterio.open(runs["mosaic"]["OUTPUT_HEATMAP"]) as b:
        assert a.transform == b.transform and a.crs == b.crs
        np.testing.assert_allclose(a.read(1), b.read(1), atol=1e-6)
    peaks = [sorted((round(f["score"], 5), f.geometry().asWkt(1)) for f in
                    QgsVectorLayer(runs[name]["OUTPUT_PEAKS"], "peaks", "ogr").getFeatures()) for name in runs]
    assert peaks[0] and peaks[0] == peaks[1]


def test_a_heatmap_written_over_an_older_one_is_styled_by_its_own_values(tmp_path, square_model):
    """Run again onto the same file with other values (raw magnitudes instead of 0-1): the old
    file's GDAL statistics (.aux.xml) must not survive to stretch the new one's colours."""
    from qgis.core import QgsRasterLayer

    data, _truth = square_scene(64, 96, SCENE_SQUARES)
    raster = write_raster(tmp_path / "scene.tif", data)
    run_explain(raster, square_model["onnx"], tmp_path, TARGET="square")
    result = run_explain(raster, square_model["onnx"], tmp_path, TARGET="square", NORMALIZATION=2)
    with rasterio.open(result["OUTPUT_HEATMAP"]) as heat:
        h = heat.read(1)
    valid = h[h != -1]
    assert valid.max() < 0.5  # raw magnitudes: far below the first run's 0-1 scale
    layer = QgsRasterLayer(result["OUTPUT_HEATMAP"], "heat")
    assert layer.renderer().classificationMax() == pytest.approx(np.quantile(valid, 0.99), rel=0.05)
    del layer
    aux = Path(result["OUTPUT_HEATMAP"] + ".aux.xml")  # no histogram kept beside it (13 KB here, 134 KB+ on a scene)
    assert not aux.exists() or aux.stat().st_size < 5_000


def test_torch_and_onnx_through_the_algorithm_agree(tmp_path, square_model):
    data, _truth = square_scene(48, 48, [(4, 30)])
    raster = write_raster(tmp_path / "scene.tif", data)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = run_explain(raster, square_model["torch"], tmp_path / "a")
    b = run_explain(raster, square_model["onnx"], tmp_path / "b")
    with rasterio.open(a["OUTPUT_HEATMAP"]) as ha, rasterio.open(b["OUTPUT_HEATMAP"]) as hb:
        np.testing.assert_allclose(hb.read(1), ha.read(1), atol=1e-4)
    with open(a["OUTPUT_BAND_RELEVANCE"]) as fa, open(b["OUTPUT_BAND_RELEVANCE"]) as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["n_tiles"] for r in ra] == [r["n_tiles"] for r in rb]
    for x, y in zip(ra, rb):
        for band in SQ_BANDS:
            if x[band]:
                assert float(x[band]) == pytest.approx(float(y[band]), abs=1e-3)


def test_unknown_target_names_the_classes_and_writes_nothing(tmp_path, square_model):
    from qgis.core import QgsProcessingException

    data, _ = square_scene(32, 32, [])
    raster = write_raster(tmp_path / "scene.tif", data)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException, match="unknown target class 'Forest'.*noise, square"):
        run_explain(raster, square_model["torch"], out, TARGET="Forest")
    assert os.listdir(out) == []


def test_cancel_stops_within_a_batch_and_writes_nothing(tmp_path, square_model):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    data, _ = square_scene(128, 128, [(10, 10)])
    raster = write_raster(tmp_path / "scene.tif", data)
    out = tmp_path / "out"
    out.mkdir()
    feedback = QgsProcessingFeedback()
    progress = []

    def cancel_after_first_batch(value):
        progress.append(value)
        feedback.cancel()

    feedback.progressChanged.connect(cancel_after_first_batch)
    with pytest.raises(QgsProcessingException, match="cancelled"):
        run_explain(raster, square_model["torch"], out, BATCH_SIZE=4, feedback=feedback,
                    OUTPUT_PEAKS=str(out / "peaks.gpkg"))
    assert len(progress) == 1 and progress[0] < 10
    assert os.listdir(out) == []


def test_explanation_quality_algorithm(tmp_path, square_model):
    import processing
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsProject,
        QgsRectangle,
        QgsVectorLayer,
    )

    squares = [(6, 10), (40, 70), (12, 52)]  # one square per 32 px tile
    data, _truth = square_scene(64, 96, squares)
    raster = write_raster(tmp_path / "scene.tif", data)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    truth = QgsVectorLayer("Polygon?crs=EPSG:4326", "truth", "memory")
    features = []
    for r, c in squares:
        x0, y1 = 500000 + 10 * c, 6000000 - 10 * r
        geometry = QgsGeometry.fromRect(QgsRectangle(x0, y1 - 10 * SQ_SIDE, x0 + 10 * SQ_SIDE, y1))
        geometry.transform(to_wgs84)
        feature = QgsFeature()
        feature.setGeometry(geometry)
        features.append(feature)
    truth.dataProvider().addFeatures(features)
    result = processing.run("glassbox:explanation_quality", {
        "INPUT": raster, "MODEL": str(square_model["torch"]), "GROUND_TRUTH": truth, "TARGET": "square",
        "DELETION_STEPS": 10, "OUTPUT_REPORT": str(tmp_path / "quality.html"),
        "OUTPUT_CSV": str(tmp_path / "quality.csv"),
    })
    assert result["TILES"] == 3
    assert result["MEAN_IOU"] > 0.35
    assert result["POINTING_GAME"] == 1.0
    assert result["DELETION_AUC"] < 0.5 * result["RANDOM_DELETION_AUC"]
    assert result["DELETION_AUC"] < result["REVERSE_DELETION_AUC"]  # the reference: least relevant first
    report = (tmp_path / "quality.html").read_text()
    assert "Pointing game" in report and "<svg" in report
    table = QgsVectorLayer(result["OUTPUT_CSV"], "quality", "ogr")
    assert table.isValid() and table.featureCount() == 4
    kinds = [f["kind"] for f in table.getFeatures()]
    assert kinds == ["tile", "tile", "tile", "mean"]
    mean_row = [f for f in table.getFeatures() if f["kind"] == "mean"][0]
    assert mean_row["iou"] == pytest.approx(result["MEAN_IOU"], abs=1e-5)
    assert mean_row["reverse_deletion_auc"] == pytest.approx(result["REVERSE_DELETION_AUC"], abs=1e-5)
    assert [f["empty_heatmap"] for f in table.getFeatures()] == [0, 0, 0, 0]  # every square found: none empty
    assert "Tiles with an empty heatmap" in report
    # the sanity check (on by default): the report's section and the figures as outputs
    assert "Does the heatmap depend on the model?" in report and "all 6 layers" in report
    assert -1 <= result["RANDOMIZED_OUTPUT_SPEARMAN"] < 0.9999 and -1 <= result["CLASS_SPEARMAN"] <= 1
    unchecked = processing.run("glassbox:explanation_quality", {
        "INPUT": raster, "MODEL": str(square_model["torch"]), "GROUND_TRUTH": truth, "TARGET": "square",
        "DELETION_STEPS": 10, "SANITY_CHECK": False, "OUTPUT_REPORT": str(tmp_path / "unchecked.html"),
    })
    assert unchecked["MEAN_IOU"] == pytest.approx(result["MEAN_IOU"])
    assert unchecked.get("RANDOMIZED_OUTPUT_SPEARMAN") is None
    assert "Does the heatmap depend on the model?" not in (tmp_path / "unchecked.html").read_text()


def test_outputs_load_styled_into_the_project(tmp_path, square_model):
    import processing
    from qgis.core import QgsProcessingContext, QgsProject, QgsSingleBandPseudoColorRenderer, QgsVectorLayer

    data, _ = square_scene(32, 32, [(3, 3)])
    raster = write_raster(tmp_path / "scene.tif", data)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    result = processing.runAndLoadResults(
        "glassbox:explain", {"INPUT": raster, "MODEL": str(square_model["torch"]),
                             "OUTPUT_HEATMAP": str(tmp_path / "h.tif"), "OUTPUT_BAND_RELEVANCE": "TEMPORARY_OUTPUT",
                             "OUTPUT_PEAKS": str(tmp_path / "peaks.gpkg")},
        context=context)
    assert result["OUTPUT_BAND_RELEVANCE"].endswith(".csv")
    layers = {lyr.source().split("|")[0]: lyr for lyr in QgsProject.instance().mapLayers().values()}
    heat = layers[result["OUTPUT_HEATMAP"]]
    assert heat.name() == "Heatmap" and isinstance(heat.renderer(), QgsSingleBandPseudoColorRenderer)
    table = layers[result["OUTPUT_BAND_RELEVANCE"]]
    assert isinstance(table, QgsVectorLayer) and table.featureCount() == 3 and not table.isSpatial()
    # the peaks in their classes' colours (a single symbol before), also when the file is opened later
    peaks = layers[result["OUTPUT_PEAKS"]]
    assert peaks.name() == "Heatmap peaks" and peaks.renderer().type() == "categorizedSymbol"
    assert peaks.renderer().classAttribute() == "class"
    reopened = QgsVectorLayer(result["OUTPUT_PEAKS"], "again", "ogr")
    assert reopened.renderer().type() == "categorizedSymbol"
    QgsProject.instance().removeAllMapLayers()


def test_explanation_quality_says_when_no_tile_lies_on_the_ground_truth(tmp_path, square_model):
    """Two polygons on either side of the raster: the layer's extent spans it, yet no polygon
    touches a tile; the error says so (it spoke of valid pixels) and nothing is written."""
    from glassbox.core.explain.attribution import ExplainError
    from glassbox.core.explain.quality import evaluate_explanation_quality

    data, _truth = square_scene(64, 96, [(6, 10)])
    raster = write_raster(tmp_path / "scene.tif", data)
    beside = [{"type": "Polygon", "coordinates": [[(x, 5999500), (x + 100, 5999500), (x + 100, 5999600),
                                                   (x, 5999600), (x, 5999500)]]} for x in (499000, 501500)]
    with pytest.raises(ExplainError, match="no tile of the raster lies on a ground truth polygon .2 polygons"):
        evaluate_explanation_quality(raster, str(square_model["torch"]), beside, None, str(tmp_path / "none" / "q.html"))
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())


def test_overlapping_tiles_give_each_peak_once(tmp_path, square_model):
    """At the default half-tile stride a square lies in several tiles, each finding peaks on it
    (guided backpropagation's edges: 6 of 45 points were repeats): the peak layer holds each place
    (and class) once, with the strongest score."""
    import processing
    from qgis.core import QgsVectorLayer

    data, _ = square_scene(64, 96, [(20, 40)])
    raster = write_raster(tmp_path / "scene.tif", data)
    result = processing.run("glassbox:explain", {
        "INPUT": raster, "MODEL": str(square_model["torch"]), "TARGET": "square", "METHOD": 2,
        "OUTPUT_HEATMAP": str(tmp_path / "h.tif"), "OUTPUT_PEAKS": str(tmp_path / "peaks.gpkg")})
    peaks = [(f.geometry().asPoint().x(), f.geometry().asPoint().y(), f["class"], f["score"])
             for f in QgsVectorLayer(result["OUTPUT_PEAKS"], "peaks", "ogr").getFeatures()]
    places = [(x, y, c) for x, y, c, _ in peaks]
    assert peaks and len(places) == len(set(places))


def test_a_heatmap_of_zeros_is_said_plainly(tmp_path, square_model):
    """Grad-CAM for 'square' on a raster without any square finds nothing: a warning says so,
    and the heatmap is still styled (no GDAL histogram error)."""
    import processing
    from qgis.core import QgsProcessingFeedback

    data, _ = square_scene(32, 32, [])
    raster = write_raster(tmp_path / "noise.tif", data)
    warnings = []
    feedback = QgsProcessingFeedback()
    feedback.pushWarning = warnings.append
    result = processing.run("glassbox:explain", {
        "INPUT": raster, "MODEL": str(square_model["torch"]), "TARGET": "square", "METHOD": 1,
        "OUTPUT_HEATMAP": str(tmp_path / "h.tif")}, feedback=feedback)
    with rasterio.open(result["OUTPUT_HEATMAP"]) as heat:
        if heat.read(1).max() > 0:
            pytest.skip("Grad-CAM found some evidence for 'square' in this noise")
    assert any("the heatmap is zero everywhere" in w for w in warnings), warnings
    assert (tmp_path / "h.qml").is_file()


def test_a_killed_runs_raw_heatmap_goes_when_the_heatmap_is_written_again(tmp_path, explainer, monkeypatch):
    """Global normalisation writes the raw relevance to a hidden temporary first (for a whole
    granule about 0.5 GB); a killed run left it behind for good, now the next run removes it."""
    import subprocess
    import sys

    from glassbox.core.explain import heatmap
    from glassbox.core.explain.heatmap import ExplainOptions, explain_raster

    seen = []
    normalise = heatmap._normalise_pass

    def watched(raw_path, *args, **kwargs):  # the raw temporary exists while it is normalised
        seen.append(Path(raw_path).name)
        return normalise(raw_path, *args, **kwargs)

    monkeypatch.setattr(heatmap, "_normalise_pass", watched)
    rng = np.random.default_rng(2)
    raster = write_raster(tmp_path / "scene.tif", square_tile(rng, at=(5, 17))[0].clip(1).astype(np.uint16))
    explain_raster(raster, explainer, str(tmp_path / "heat.tif"), options=ExplainOptions(normalization="global"))
    assert len(seen) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["heat.tif", "scene.tif"]
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    left = tmp_path / seen[0].replace(f".{os.getpid()}-", f".{dead}-")  # as a killed run leaves it
    assert left.name != seen[0]
    left.write_bytes(b"left by a killed run")
    explain_raster(raster, explainer, str(tmp_path / "heat.tif"), options=ExplainOptions(normalization="global"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.tif", "scene.tif"]


def test_explanation_quality_compares_deletion_and_random_on_the_same_tiles(tmp_path, square_model):
    """A ground-truth polygon where the model sees no square gives a tile with an empty heatmap:
    it has no deletion order, so it is left out of the deletion AUCs, and of the random baseline
    they are compared with too (it had been counted there; an audit)."""
    import csv

    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsRectangle, QgsVectorLayer

    squares = [(6, 10), (40, 70)]
    data, _truth = square_scene(64, 96, squares)
    raster = write_raster(tmp_path / "scene.tif", data)
    truth = QgsVectorLayer("Polygon?crs=EPSG:32633", "truth", "memory")
    features = []
    for r, c in squares + [(40, 8)]:  # the last lies on plain background
        x0, y1 = 500000 + 10 * c, 6000000 - 10 * r
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0, y1 - 10 * SQ_SIDE, x0 + 10 * SQ_SIDE, y1)))
        features.append(feature)
    truth.dataProvider().addFeatures(features)
    result = processing.run("glassbox:explanation_quality", {
        "INPUT": raster, "MODEL": str(square_model["torch"]), "GROUND_TRUTH": truth, "TARGET": "square",
        "DELETION_STEPS": 10, "SANITY_CHECK": False, "OUTPUT_REPORT": str(tmp_path / "quality.html"),
        "OUTPUT_CSV": str(tmp_path / "quality.csv")})
    with open(result["OUTPUT_CSV"], newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "tile"]
    shown = [r for r in rows if r["empty_heatmap"] in ("0", "false", "False")]
    assert len(shown) < len(rows), "the plain tile should have an empty heatmap"
    assert result["RANDOM_DELETION_AUC"] == pytest.approx(np.mean([float(r["random_deletion_auc"]) for r in shown]),
                                                           abs=1e-5)
