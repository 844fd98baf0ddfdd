"""Every Glassbox algorithm run the way batch users run it: ``qgis_process run glassbox:<id>`` in
a throw-away QGIS profile, on a small real-looking scene (4 Sentinel-2-like bands with texture
and noise, NZTM2000 / EPSG:2193, band descriptions, a nodata corner) with real tiny models; then
every output the run reports is opened and its content checked (rasters: bands, CRS, nodata,
value range; vector layers: features with valid geometries in the raster's CRS and extent;
files: parse; numbers: in range)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers import QGIS_PROCESS, TINY_TILE, qgis_env, write_raster

pytestmark = pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="qgis_process is not installed")

CRS = "EPSG:2193"
ORIGIN = (1570000.0, 5180000.0)  # NZTM2000, Canterbury
PIXEL = 10.0
ROWS, COLS = 80, 96
NODATA = 0
NODATA_ROWS, NODATA_COLS = slice(68, 80), slice(84, 96)  # a 12 x 12 pixel corner without data
BANDS = ["B02", "B03", "B04", "B08"]
#: raw levels per band (B02, B03, B04, B08) of the tiny model's classes (see helpers.pattern_tile:
#: 'Vegetation' bright in B08 and dark in B03, 'Water' the other way round)
LEVELS = {"Vegetation": [450.0, 600.0, 400.0, 3000.0], "Water": [800.0, 3000.0, 700.0, 600.0]}
CLASSES = ["Vegetation", "Water"]
EXTENT = (ORIGIN[0], ORIGIN[1] - ROWS * PIXEL, ORIGIN[0] + COLS * PIXEL, ORIGIN[1])


def xy(row, col):
    """CRS coordinates of the corner (row, col) of the scene's pixel grid."""
    return ORIGIN[0] + PIXEL * col, ORIGIN[1] - PIXEL * row


def shore(row):
    """Column of the lake's wavy western shore at ``row`` (the lake lies east of it)."""
    return 52.0 + 6.0 * np.sin(np.asarray(row) / 9.0)


def scene_data(seed=3):
    """(4, ROWS, COLS) uint16: pasture west of a lake, with smooth texture and pixel noise, and
    the nodata corner. Returns (data, water mask)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:ROWS, :COLS]
    water = cc >= shore(rr)
    data = np.empty((4, ROWS, COLS))
    for b in range(4):
        level = np.where(water, LEVELS["Water"][b], LEVELS["Vegetation"][b])
        texture = gaussian_filter(rng.normal(0, 1, (ROWS, COLS)), 3) * 400  # fields, ripples
        data[b] = level + texture + rng.normal(0, 150, (ROWS, COLS))
    data = np.clip(data, 1, 10000)
    data[:, NODATA_ROWS, NODATA_COLS] = NODATA
    return data.astype(np.uint16), water


def write_vector(path, geometry_type, fields, features, crs=CRS):
    """A one-layer vector file (format from the suffix) written with OGR: ``fields`` are
    (name, ogr type), ``features`` (wkt, {field: value})."""
    from osgeo import ogr, osr

    driver = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON"}[Path(path).suffix]
    ds = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.SetFromUserInput(crs)
    layer = ds.CreateLayer(Path(path).stem, srs, geometry_type)
    for name, kind in fields:
        layer.CreateField(ogr.FieldDefn(name, kind))
    for wkt, values in features:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        for name, value in values.items():
            feature.SetField(name, value)
        assert layer.CreateFeature(feature) == 0
    ds = None
    return str(path)


def rectangle(row0, col0, row1, col1):
    (x0, y0), (x1, y1) = xy(row0, col0), xy(row1, col1)
    return f"POLYGON(({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The raster and the vector inputs (GeoPackages in the raster's CRS): labelled rectangles
    wholly inside pasture and lake (fields ``klass`` = class name and ``Class_2018`` = LCDB code),
    the lake's outline as ground truth, and two seed points."""
    from osgeo import ogr

    folder = tmp_path_factory.mktemp("scene")
    data, water = scene_data()
    raster = write_raster(folder / "scene.tif", data, crs=CRS, origin=ORIGIN, pixel=PIXEL, nodata=NODATA,
                          descriptions=BANDS)
    labels = write_vector(folder / "labels.gpkg", ogr.wkbPolygon,
                          [("klass", ogr.OFTString), ("Class_2018", ogr.OFTInteger)],
                          [(rectangle(2, 2, 66, 42), {"klass": "Vegetation", "Class_2018": 40}),
                           (rectangle(2, 62, 62, 94), {"klass": "Water", "Class_2018": 21})])
    rows = np.arange(0, ROWS + 1, 4)
    ring = [xy(r, float(shore(r))) for r in rows] + [xy(ROWS, COLS), xy(0, COLS)]
    lake = "POLYGON((" + ", ".join(f"{x} {y}" for x, y in ring + ring[:1]) + "))"
    truth = write_vector(folder / "lake.gpkg", ogr.wkbPolygon, [("name", ogr.OFTString)], [(lake, {"name": "lake"})])
    seeds = write_vector(folder / "seeds.gpkg", ogr.wkbPoint, [("score", ogr.OFTReal), ("class", ogr.OFTString)],
                         [("POINT({} {})".format(*xy(30.5, 20.5)), {"score": 0.9, "class": "Vegetation"}),
                          ("POINT({} {})".format(*xy(30.5, 80.5)), {"score": 0.8, "class": "Water"})])
    return {"raster": raster, "data": data, "water": water, "labels": labels, "truth": truth, "seeds": seeds}


@pytest.fixture(scope="module")
def second_model(tiny_model_files, tmp_path_factory):
    """Another paper1_cnn with the tiny model's card (random weights, seed 1), as Torch + card."""
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.export import save_torch

    torch.manual_seed(1)
    model = build_model("paper1_cnn", 2, 2, TINY_TILE).eval()
    return save_torch(model, tiny_model_files["card"], tmp_path_factory.mktemp("second") / "second.pt")


def run(profile, algorithm, **parameters):
    """``qgis_process run glassbox:<algorithm> --json -- KEY=value ...``; returns its results."""
    args = [QGIS_PROCESS, "run", f"glassbox:{algorithm}", "--json", "--"]
    for key, value in parameters.items():  # a list: the parameter given once per value (MOSAIC=a MOSAIC=b)
        args += [f"{key}={v}" for v in value] if isinstance(value, list) else [f"{key}={value}"]
    env = dict(qgis_env(profile), OMP_NUM_THREADS="1")  # the CPU is shared
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["algorithm_details"]["id"] == f"glassbox:{algorithm}"
    return report["results"]


# -- opening outputs ------------------------------------------------------------------------------
def open_raster(path, count, dtype, nodata):
    """The data of a raster output (masked where nodata) after checking its band count, data
    type, nodata value and that it lies on the input's grid in the input's CRS."""
    assert Path(path).is_file() and Path(path).stat().st_size > 0, path
    with rasterio.open(path) as ds:
        assert ds.count == count and ds.dtypes == (dtype,) * count
        assert ds.nodata == nodata
        assert ds.crs == rasterio.crs.CRS.from_string(CRS)
        assert ds.shape == (ROWS, COLS)
        assert ds.transform.almost_equals(rasterio.transform.from_origin(*ORIGIN, PIXEL, PIXEL))
        data = ds.read(masked=True)
    assert data.count() > 0.5 * data.size, "mostly nodata"
    assert data.min() < data.max(), "constant"
    return data


def open_vector(path, geometry_type, min_features=1):
    """The features of a vector output (file path, or ``path|layername=...``) after checking that
    there are some, each with a non-empty valid geometry of ``geometry_type`` in the raster's CRS
    and inside its extent."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle, QgsVectorLayer, QgsWkbTypes

    assert Path(str(path).split("|")[0]).is_file(), path
    layer = QgsVectorLayer(str(path), "output", "ogr")
    assert layer.isValid(), path
    assert layer.geometryType() == geometry_type
    assert layer.crs() == QgsCoordinateReferenceSystem(CRS), layer.crs().authid()
    features = list(layer.getFeatures())
    assert len(features) >= min_features and layer.featureCount() == len(features)
    extent = QgsRectangle(*EXTENT)
    extent.grow(1e-6)
    for feature in features:
        geometry = feature.geometry()
        assert not geometry.isNull() and not geometry.isEmpty(), f"feature {feature.id()} has no geometry"
        assert QgsWkbTypes.geometryType(geometry.wkbType()) == geometry_type
        assert geometry.isGeosValid(), f"feature {feature.id()}: {geometry.validateGeometry()}"
        assert extent.contains(geometry.boundingBox()), f"feature {feature.id()} lies outside the raster"
        if geometry_type == QgsWkbTypes.PolygonGeometry:
            assert geometry.area() > 0
    return features


def read_csv(path, header_start):
    assert Path(path).is_file(), path
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows and rows[0][: len(header_start)] == header_start, rows[:1]
    assert len(rows) > 1 and all(len(row) == len(rows[0]) for row in rows)
    return rows


def read_html(path, *words):
    assert Path(path).is_file(), path
    text = Path(path).read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html") and "</html>" in text
    for word in words:
        assert word in text, word
    return text


def check_onnx(path):
    import onnx

    assert Path(path).is_file() and Path(path).stat().st_size > 0, path
    onnx.checker.check_model(onnx.load(str(path)))


def check_areas(segments, water):
    """The 'Water' segments cover about the lake, the 'Vegetation' ones about the pasture."""
    area = {name: sum(f.geometry().area() for f in segments if f["class"] == name) for name in CLASSES}
    valid = np.ones_like(water)
    valid[NODATA_ROWS, NODATA_COLS] = False
    assert area["Water"] == pytest.approx((water & valid).sum() * PIXEL ** 2, rel=0.25)
    assert area["Vegetation"] == pytest.approx((~water & valid).sum() * PIXEL ** 2, rel=0.25)


def random_tiles(n=8, seed=5):
    return np.random.default_rng(seed).normal(0, 1.5, (n, 2, TINY_TILE, TINY_TILE)).astype(np.float32)


def check_model_files(weights, onnx_path, classes):
    """A trained model: Torch state dict + card, and the same model as ONNX with the same card."""
    import torch

    from glassbox.core.models.backends import load_model

    state = torch.load(weights, map_location="cpu")
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    card = json.loads(Path(weights).with_suffix(".json").read_text())
    assert [c["name"] for c in card["classes"]] == classes
    check_onnx(onnx_path)
    from_torch, from_onnx = load_model(weights), load_model(onnx_path)
    assert from_onnx.card == from_torch.card and from_torch.card.class_names == classes
    x = np.random.default_rng(0).uniform(100, 3000, (4, len(from_torch.card.bands), from_torch.card.tile_size,
                                                       from_torch.card.tile_size)).astype(np.float32)
    x = from_torch.card.scaling.apply(x)
    np.testing.assert_allclose(from_onnx.predict_proba(x), from_torch.predict_proba(x), atol=1e-4)


# -- one test per algorithm ------------------------------------------------------------------------
def test_classify(tmp_path, qgis_profile, tiny_model_files, scene):
    from qgis.core import QgsWkbTypes

    out = {k: tmp_path / f"{k}.tif" for k in ("classes", "probabilities", "confidence")}
    results = run(qgis_profile, "classify", INPUT=scene["raster"], MODEL=tiny_model_files["onnx"],
                  OUTPUT_CLASSES=out["classes"], OUTPUT_PROBABILITIES=out["probabilities"],
                  OUTPUT_CONFIDENCE=out["confidence"], OUTPUT_TILES=tmp_path / "tiles.gpkg", TILE_STRIDE=8)
    assert results["OUTPUT_CLASSES"] == str(out["classes"])
    classes = open_raster(results["OUTPUT_CLASSES"], 1, "uint8", 255)[0]
    probabilities = open_raster(results["OUTPUT_PROBABILITIES"], 2, "float32", -1)
    confidence = open_raster(results["OUTPUT_CONFIDENCE"], 1, "float32", -1)[0]
    nodata = scene["data"][0] == NODATA
    assert classes.mask[nodata].all() and probabilities.mask[:, nodata].all() and confidence.mask[nodata].all()
    valid = ~classes.mask
    assert set(np.unique(classes.compressed())) == {0, 1}
    p = probabilities.filled(np.nan)[:, valid]
    assert np.all((p >= 0) & (p <= 1)) and np.allclose(p.sum(0), 1, atol=1e-3)
    np.testing.assert_array_equal(classes.data[valid], p.argmax(0))
    np.testing.assert_allclose(confidence.data[valid], p.max(0), atol=1e-5)
    assert confidence.min() >= 0.5 - 1e-6 and confidence.max() <= 1
    # away from the shore the map is right: pasture west, lake east
    rr, cc = np.mgrid[:ROWS, :COLS]
    far = np.abs(cc - shore(rr)) > 16
    assert (classes.data[far & valid] == scene["water"][far & valid]).mean() > 0.95
    assert Path(results["OUTPUT_CLASSES"]).with_suffix(".qml").is_file()
    tiles = open_vector(results["OUTPUT_TILES"], QgsWkbTypes.PolygonGeometry)
    assert {f["class"] for f in tiles} == set(CLASSES)
    for feature in tiles:
        box = feature.geometry().boundingBox()
        assert box.width() == pytest.approx(TINY_TILE * PIXEL) and box.height() == pytest.approx(TINY_TILE * PIXEL)


def test_classify_adapted_to_a_brighter_scene(tmp_path, qgis_profile, tiny_model_files, scene):
    data = scene["data"].astype(np.int32)
    brighter = np.where(data == NODATA, NODATA, data + 1500).astype(np.uint16)  # a haze the model never saw
    raster = write_raster(tmp_path / "brighter.tif", brighter, crs=CRS, origin=ORIGIN, pixel=PIXEL, nodata=NODATA,
                          descriptions=BANDS)
    results = run(qgis_profile, "classify", INPUT=raster, MODEL=tiny_model_files["onnx"], ADAPT_TO_SCENE="true",
                  ADAPT_ALWAYS="true", OUTPUT_CLASSES=tmp_path / "classes.tif", TILE_STRIDE=8)
    classes = open_raster(results["OUTPUT_CLASSES"], 1, "uint8", 255)[0]
    assert classes.mask[scene["data"][0] == NODATA].all()
    rr, cc = np.mgrid[:ROWS, :COLS]
    far = (np.abs(cc - shore(rr)) > 16) & ~classes.mask
    assert (classes.data[far] == scene["water"][far]).mean() > 0.95


def test_explain(tmp_path, qgis_profile, tiny_model_files, scene):
    from qgis.core import QgsWkbTypes

    results = run(qgis_profile, "explain", INPUT=scene["raster"], MODEL=tiny_model_files["onnx"], PEAKS_PER_TILE=2,
                  OUTPUT_HEATMAP=tmp_path / "heatmap.tif", OUTPUT_BAND_RELEVANCE=tmp_path / "bands.csv",
                  OUTPUT_PEAKS=tmp_path / "peaks.gpkg")
    heatmap = open_raster(results["OUTPUT_HEATMAP"], 1, "float32", -1)[0]
    assert heatmap.mask[scene["data"][0] == NODATA].all()
    # one scale for the raster: 0..1, the maximum 1 before overlapping tiles are blended
    assert heatmap.min() >= 0 and 0.5 < heatmap.max() <= 1
    rows = read_csv(results["OUTPUT_BAND_RELEVANCE"], ["class", "class_id", "n_tiles", "B08", "B03"])
    table = {row[0]: row for row in rows[1:]}
    assert set(CLASSES) <= set(table) and int(table["(all)"][2]) > 0
    shares = [float(v) for v in table["(all)"][3:]]
    assert all(0 <= s <= 1 for s in shares) and sum(shares) == pytest.approx(1, abs=1e-3)
    peaks = open_vector(results["OUTPUT_PEAKS"], QgsWkbTypes.PointGeometry)
    assert {f["class"] for f in peaks} <= set(CLASSES)
    assert all(0 < f["score"] <= 1 for f in peaks)


def test_explain_a_mosaic_inside_a_mask(tmp_path, qgis_profile, tiny_model_files, scene):
    """MOSAIC (the scene cut in a west and an east raster) and MASK (the lake's outline): one
    heatmap on the scene's grid over the lake's extent, nodata away from the lake, peaks in it."""
    from qgis.core import QgsGeometry, QgsVectorLayer, QgsWkbTypes

    data = scene["data"]
    west = write_raster(tmp_path / "west.tif", data[:, :, :40], crs=CRS, origin=ORIGIN, pixel=PIXEL, nodata=NODATA,
                        descriptions=BANDS)
    east = write_raster(tmp_path / "east.tif", data[:, :, 40:], crs=CRS, origin=xy(0, 40), pixel=PIXEL,
                        nodata=NODATA, descriptions=BANDS)
    results = run(qgis_profile, "explain", MOSAIC=[west, east], MASK=scene["truth"], MODEL=tiny_model_files["onnx"],
                  TILE_STRIDE=8, OUTPUT_HEATMAP=tmp_path / "heatmap.tif", OUTPUT_PEAKS=tmp_path / "peaks.gpkg")
    with rasterio.open(results["OUTPUT_HEATMAP"]) as ds:
        assert ds.crs == rasterio.crs.CRS.from_string(CRS) and ds.nodata == -1 and ds.height == ROWS
        col0 = round((ds.transform.c - ORIGIN[0]) / PIXEL)
        assert ds.transform.f == ORIGIN[1] and col0 > 0 and col0 + ds.width == COLS  # the lake's extent
        heat = ds.read(1)
    rr, cc = np.mgrid[:ROWS, col0:COLS]
    assert (heat[cc < shore(rr) - 2] == -1).all()  # west of the shore: outside the mask
    lake = (cc > shore(rr) + 16) & (scene["data"][0][:, col0:] != NODATA)
    assert (heat[lake] >= 0).all() and heat.max() > 0.5
    outline = QgsGeometry.fromWkt(next(QgsVectorLayer(scene["truth"], "lake", "ogr").getFeatures()).geometry().asWkt())
    peaks = open_vector(results["OUTPUT_PEAKS"], QgsWkbTypes.PointGeometry)
    assert all(outline.contains(f.geometry()) for f in peaks)
    assert {f["class"] for f in peaks} == {"Water"}


def test_explanation_quality(tmp_path, qgis_profile, tiny_model_files, scene):
    results = run(qgis_profile, "explanation_quality", INPUT=scene["raster"], MODEL=tiny_model_files["torch"],
                  GROUND_TRUTH=scene["truth"], TARGET="Water", DELETION_STEPS=5,
                  OUTPUT_REPORT=tmp_path / "quality.html", OUTPUT_CSV=tmp_path / "quality.csv")
    assert results["TILES"] > 0
    for key in ("MEAN_IOU", "POINTING_GAME", "DELETION_AUC", "RANDOM_DELETION_AUC", "REVERSE_DELETION_AUC"):
        assert 0 <= results[key] <= 1, key
    read_html(results["OUTPUT_REPORT"], "Explanation quality", "Pointing game", "Deletion AUC",
              "Does the heatmap depend on the model?", "the output layer")
    # the sanity check, on by default; the class correlation is empty (NaN) here: with two classes the
    # other class's Guided Grad-CAM finds no positive evidence, its heatmaps are constant
    assert -1 <= results["RANDOMIZED_OUTPUT_SPEARMAN"] < 0.9999
    assert results["CLASS_SPEARMAN"] is None or -1 <= results["CLASS_SPEARMAN"] <= 1
    rows = read_csv(results["OUTPUT_CSV"], ["kind", "tile_row", "tile_col", "x_min", "y_min", "x_max", "y_max",
                                             "class", "class_id", "probability", "gt_fraction", "iou"])
    tiles = [row for row in rows[1:] if row[0] == "tile"]
    assert len(tiles) == results["TILES"] and rows[-1][0] == "mean"
    for row in tiles:
        x0, y0, x1, y1 = map(float, row[3:7])
        assert EXTENT[0] <= x0 < x1 <= EXTENT[2] and EXTENT[1] <= y0 < y1 <= EXTENT[3]
        assert row[7] == "Water" and 0 < float(row[10]) <= 1  # every tile touches the lake
    assert float(rows[-1][11]) == pytest.approx(results["MEAN_IOU"], abs=1e-5)


def test_train_classifier(tmp_path, qgis_profile, scene):
    from qgis.core import QgsWkbTypes

    results = run(qgis_profile, "train_classifier", INPUT=scene["raster"], POLYGONS=scene["labels"],
                  CLASS_FIELD="klass", ARCHITECTURE=1, TILE_SIZE=16, EPOCHS=2, BATCH_SIZE=8, SEED=0,
                  OUTPUT_MODEL=tmp_path / "trained.pt", OUTPUT_ONNX=tmp_path / "trained.onnx",
                  OUTPUT_SAMPLES=tmp_path / "samples.gpkg")
    assert results["OUTPUT_MODEL"] == str(tmp_path / "trained.pt")
    assert 0 <= results["VALIDATION_ACCURACY"] <= 1
    check_model_files(results["OUTPUT_MODEL"], results["OUTPUT_ONNX"], CLASSES)
    samples = open_vector(results["OUTPUT_SAMPLES"], QgsWkbTypes.PolygonGeometry, min_features=4)
    assert {f["class"] for f in samples} == set(CLASSES)


def test_evaluate(tmp_path, qgis_profile, tiny_model_files, scene):
    results = run(qgis_profile, "evaluate", MODEL=tiny_model_files["torch"], INPUT=scene["raster"],
                  POLYGONS=scene["labels"], CLASS_FIELD="klass", OUTPUT_REPORT=tmp_path / "report.html",
                  OUTPUT_CSV=tmp_path / "report.csv")
    assert results["N_TILES"] >= 4
    assert results["OVERALL_ACCURACY"] >= 0.9  # clear pasture and lake tiles, bands found by name
    assert 0 <= results["MACRO_F1"] <= 1 and -1 <= results["KAPPA"] <= 1
    read_html(results["OUTPUT_REPORT"], "Accuracy report", "Confusion matrix", *CLASSES)
    rows = read_csv(results["OUTPUT_CSV"], ["class", "support", "precision", "recall", "f1", "pred_Vegetation",
                                            "pred_Water"])
    per_class = {row[0]: row for row in rows[1:3]}
    assert set(per_class) == set(CLASSES)
    assert sum(int(row[1]) for row in per_class.values()) == results["N_TILES"]
    assert sum(int(v) for row in per_class.values() for v in row[5:]) == results["N_TILES"]


def test_evaluate_codes_through_a_class_mapping(tmp_path, qgis_profile, tiny_model_files, scene):
    """The same polygons by their LCDB code (Class_2018: 40 pasture, 21 river) and a custom mapping
    give the same tiles and figures as their class names."""
    by_name = run(qgis_profile, "evaluate", MODEL=tiny_model_files["torch"], INPUT=scene["raster"],
                  POLYGONS=scene["labels"], CLASS_FIELD="klass", OUTPUT_REPORT=tmp_path / "names.html")
    by_code = run(qgis_profile, "evaluate", MODEL=tiny_model_files["torch"], INPUT=scene["raster"],
                  POLYGONS=scene["labels"], CLASS_FIELD="Class_2018", CLASS_MAPPING=2,
                  CUSTOM_MAPPING="40=Vegetation; 21=Water", OUTPUT_REPORT=tmp_path / "codes.html",
                  OUTPUT_CSV=tmp_path / "codes.csv")
    for key in ("N_TILES", "OVERALL_ACCURACY", "MACRO_F1", "KAPPA"):
        assert by_code[key] == by_name[key], key
    read_html(by_code["OUTPUT_REPORT"], "Accuracy report", *CLASSES)
    rows = read_csv(by_code["OUTPUT_CSV"], ["class", "support", "precision", "recall", "f1"])
    assert sum(int(row[1]) for row in rows[1:3]) == by_code["N_TILES"] >= 4


def test_export_onnx(tmp_path, qgis_profile, tiny_model_files):
    from glassbox.core.models.backends import load_model

    results = run(qgis_profile, "export_onnx", MODEL=tiny_model_files["torch"], OUTPUT=tmp_path / "exported.onnx")
    assert results["OUTPUT"] == str(tmp_path / "exported.onnx")
    assert 0 <= results["MAX_DIFFERENCE"] < 1e-4
    check_onnx(results["OUTPUT"])
    exported = load_model(results["OUTPUT"])
    assert exported.card == load_model(tiny_model_files["torch"]).card
    x = random_tiles()
    np.testing.assert_allclose(exported.predict_proba(x), load_model(tiny_model_files["torch"]).predict_proba(x),
                               atol=1e-4)


def test_segment(tmp_path, qgis_profile, tiny_model_files, scene):
    from qgis.core import QgsWkbTypes

    results = run(qgis_profile, "segment", INPUT=scene["raster"], MODEL=tiny_model_files["onnx"], PEAKS_PER_TILE=1,
                  OUTPUT_POLYGONS=tmp_path / "segments.gpkg", OUTPUT_SEEDS=tmp_path / "seeds.gpkg")
    assert results["POLYGONS"] > 0 and results["SEEDS_USED"] > 0
    assert results["SEEDS_OUTSIDE"] == 0 and results["SEEDS_NODATA"] >= 0 and results["SEEDS_WEAK"] >= 0
    segments = open_vector(results["OUTPUT_POLYGONS"], QgsWkbTypes.PolygonGeometry)
    assert len(segments) == results["POLYGONS"]
    assert {f["class"] for f in segments} == set(CLASSES)
    check_areas(segments, scene["water"])
    seeds = open_vector(results["OUTPUT_SEEDS"], QgsWkbTypes.PointGeometry)
    assert len(seeds) >= results["SEEDS_USED"]


@pytest.mark.parametrize("suffix", [".shp", ".geojson"])
def test_segment_polygons_to_other_formats(tmp_path, qgis_profile, scene, suffix):
    """A Shapefile and a GeoJSON file hold the same real polygons (watershed from two seed
    points: one in the pasture, one in the lake)."""
    from qgis.core import QgsWkbTypes

    out = tmp_path / f"segments{suffix}"
    results = run(qgis_profile, "segment", INPUT=scene["raster"], SEEDS=scene["seeds"], OUTPUT_POLYGONS=out)
    assert results["OUTPUT_POLYGONS"].split("|")[0] == str(out)
    assert results["SEEDS_USED"] == 2 and results["POLYGONS"] >= 2
    segments = open_vector(results["OUTPUT_POLYGONS"], QgsWkbTypes.PolygonGeometry, min_features=2)
    assert {f["class"] for f in segments} == set(CLASSES)
    check_areas(segments, scene["water"])


def test_finetune_masked(tmp_path, qgis_profile, tiny_model_files, scene):
    from qgis.core import QgsWkbTypes

    results = run(qgis_profile, "finetune_masked", INPUT=scene["raster"], POLYGONS=scene["labels"],
                  CLASS_FIELD="Class_2018", CLASS_MAPPING=2, CUSTOM_MAPPING="40=Vegetation; 21=Water",
                  BASE_MODEL=tiny_model_files["torch"], MASK_TYPE=0, TILES_PER_POLYGON=6, EPOCHS=2, BATCH_SIZE=4,
                  OUTPUT_MODEL=tmp_path / "masked.pt", OUTPUT_ONNX=tmp_path / "masked.onnx",
                  OUTPUT_SAMPLES=tmp_path / "samples.gpkg")
    assert 0 <= results["VALIDATION_ACCURACY"] <= 1
    check_model_files(results["OUTPUT_MODEL"], results["OUTPUT_ONNX"], CLASSES)
    samples = open_vector(results["OUTPUT_SAMPLES"], QgsWkbTypes.PolygonGeometry, min_features=4)
    assert {f["class"] for f in samples} == set(CLASSES)


def test_ensemble(tmp_path, qgis_profile, tiny_model_files, second_model):
    from glassbox.core.models.backends import load_model

    results = run(qgis_profile, "ensemble", RAW_MODEL=tiny_model_files["torch"], MASKED_MODEL=second_model,
                  ALPHA=0.7, OUTPUT=tmp_path / "ensemble.onnx")
    assert 0 <= results["MAX_DIFFERENCE"] < 1e-4
    check_onnx(results["OUTPUT"])
    ensemble = load_model(results["OUTPUT"])
    assert ensemble.card.class_names == CLASSES and ensemble.card.training["ensemble"]["alpha"] == pytest.approx(0.7)
    x = random_tiles()
    raw, masked = load_model(tiny_model_files["torch"]).predict_logits(x), load_model(second_model).predict_logits(x)
    np.testing.assert_allclose(ensemble.predict_logits(x), 0.7 * raw + 0.3 * masked, atol=1e-4)


def test_sample_points_then_assess_map(tmp_path, qgis_profile, tiny_model_files, scene):
    """The accuracy workflow: classify, draw stratified points on the map, label them (here from
    the scene's truth, as an interpreter would from the image), assess the map."""
    from qgis.core import QgsVectorLayer, QgsWkbTypes, edit

    classes = run(qgis_profile, "classify", INPUT=scene["raster"], MODEL=tiny_model_files["onnx"],
                  OUTPUT_CLASSES=tmp_path / "classes.tif", TILE_STRIDE=8)["OUTPUT_CLASSES"]
    results = run(qgis_profile, "sample_points", INPUT=classes, POINTS_PER_CLASS=30, TOTAL_POINTS=80, SEED=1,
                  OUTPUT=tmp_path / "points.gpkg")
    assert results["N_POINTS"] == 80
    points = open_vector(results["OUTPUT"], QgsWkbTypes.PointGeometry, min_features=80)
    with rasterio.open(classes) as ds:
        cells = {f.id(): ds.index(f.geometry().asPoint().x(), f.geometry().asPoint().y()) for f in points}
        mapped = ds.read(1)
    assert all(mapped[rc] != 255 for rc in cells.values())  # never on nodata
    per_class = np.bincount([mapped[rc] for rc in cells.values()], minlength=2)
    assert len(per_class) == 2 and per_class.min() >= 30  # 30 each, the other 20 by area
    layer = QgsVectorLayer(results["OUTPUT"], "points", "ogr")
    with edit(layer):
        for fid, rc in cells.items():
            layer.changeAttributeValue(fid, layer.fields().indexOf("ref_class"), CLASSES[int(scene["water"][rc])])
    assessed = run(qgis_profile, "assess_map", INPUT=classes, REFERENCE=results["OUTPUT"], CLASS_FIELD="ref_class",
                   OUTPUT_REPORT=tmp_path / "report.html", OUTPUT_CSV=tmp_path / "report.csv")
    assert assessed["N_POINTS"] == 80
    truth = np.array([scene["water"][rc] for rc in cells.values()])
    on_map = np.array([mapped[rc] for rc in cells.values()])
    assert assessed["OVERALL_ACCURACY"] == pytest.approx((truth == on_map).mean())
    assert assessed["OVERALL_ACCURACY"] > 0.85
    read_html(assessed["OUTPUT_REPORT"], "Olofsson", "Vegetation", "Water")
    rows = read_csv(assessed["OUTPUT_CSV"], ["class", "mapped_pixels"])
    assert [r[0] for r in rows[1:]] == CLASSES + ["(all)"]
