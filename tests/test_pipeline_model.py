"""The shipped Processing model "Classify, explain and segment" (glassbox:classify_explain_segment)
and glassbox:classify run in a batch over several rasters, both outside the test process: the
model through qgis_process, the batch in one Python process that initialises QGIS Processing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rasterio

from helpers import QGIS_PLUGIN_PRELUDE, PLUGIN_DIR, QGIS_PROCESS, load_script, qgis_env, two_halves, write_raster

MODEL_FILE = PLUGIN_DIR / "resources" / "processing_models" / "classify_explain_segment.model3"
MODEL_ID = "glassbox:classify_explain_segment"
#: model output -> (kind, band count for rasters)
MODEL_OUTPUTS = {"classify:classes": ("raster", 1), "explain:heatmap": ("raster", 1),
                 "explain:peaks": ("vector", None), "segment:polygons": ("vector", None)}


def test_model_file_loads_and_is_what_the_generator_writes(tmp_path, qgis_app):
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL_FILE))
    assert model.name() == "Classify, explain and segment"
    assert sorted(model.childAlgorithms()) == ["classify", "explain", "segment"]
    assert {c.algorithmId() for c in model.childAlgorithms().values()} == {
        "glassbox:classify", "glassbox:explain", "glassbox:segment"}
    seeds = model.childAlgorithm("segment").parameterSources()["SEEDS"][0]
    assert (seeds.outputChildId(), seeds.outputName()) == ("explain", "OUTPUT_PEAKS")

    # compared as read back, not as bytes: Qt writes XML attributes in a random order
    path = tmp_path / "rebuilt.model3"
    assert load_script("scripts/build_pipeline_model.py").build_model().toFile(str(path))
    rebuilt = QgsProcessingModelAlgorithm()
    assert rebuilt.fromFile(str(path))
    assert rebuilt.toVariant() == model.toVariant(), "run scripts/build_pipeline_model.py again"


def test_model_is_valid_in_the_graphical_modeler(glassbox_processing):
    """The Modeler's check (Validate model, and before Run model): every required setting of every
    step is set (they were left to the steps' defaults, and QGIS called the model invalid)."""
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL_FILE))
    assert model.validate() == (True, [])
    assert model.childAlgorithm("segment").parameterSources()["WINDOW_SIZE"][0].staticValue() == 1024


def test_model_is_in_the_toolbox_with_its_outputs(glassbox_processing):
    """Registered, a run's instance of it and after the provider reloads its algorithms (as on
    a change of Processing settings), the model has its outputs (its steps were found)."""
    from qgis.core import QgsApplication

    def check(model):
        assert model is not None
        assert model.provider().id() == "glassbox"
        assert model.displayName() == "Classify, explain and segment"
        names = [p.name() for p in model.parameterDefinitions()]
        assert set(names) == {"INPUT", "MOSAIC", "MODEL", "MASK", "CLOUD_MASK"} | set(MODEL_OUTPUTS)
        assert model.parameterDefinition("CLOUD_MASK").defaultValue() is False
        assert {o.name() for o in model.outputDefinitions()} == set(MODEL_OUTPUTS)
        for name in ("INPUT", "MOSAIC", "MODEL", "MASK"):
            assert model.parameterDefinition(name).flags() & model.parameterDefinition(name).FlagOptional

    registry = QgsApplication.processingRegistry()
    check(registry.algorithmById(MODEL_ID))
    check(registry.createAlgorithmById(MODEL_ID))
    registry.providerById("glassbox").refreshAlgorithms()
    check(registry.algorithmById(MODEL_ID))


def check_raster(path, bands, crs, bounds):
    with rasterio.open(path) as ds:
        assert ds.crs is not None and ds.crs.to_epsg() == crs
        assert ds.count == bands
        assert tuple(ds.bounds) == pytest.approx(bounds)
        data = ds.read(masked=True)
    assert data.count() > 0 and float(data.max()) > float(data.min()), f"{path} is constant"
    return data


def check_vector(path, crs, bounds):
    """Every feature has a non-empty, valid geometry inside ``bounds``, in ``crs``."""
    from qgis.core import QgsRectangle, QgsVectorLayer

    layer = QgsVectorLayer(str(path), "output", "ogr")
    assert layer.isValid(), path
    assert layer.crs().authid() == f"EPSG:{crs}"
    assert layer.featureCount() > 0
    extent = QgsRectangle(*bounds)
    for feature in layer.getFeatures():
        geometry = feature.geometry()
        assert not geometry.isNull() and not geometry.isEmpty(), f"{path}: feature {feature.id()} has no geometry"
        assert geometry.isGeosValid(), f"{path}: feature {feature.id()}: {geometry.validateGeometry()}"
        assert extent.contains(geometry.boundingBox()), f"{path}: feature {feature.id()} outside the raster"
    return layer


def run_pipeline(tmp_path, qgis_profile, *inputs: str) -> dict:
    """Run the model through qgis_process with ``inputs`` ("NAME=value") and every output written
    to ``tmp_path``; returns {output: path} after checking the run succeeded and reported them."""
    paths = {key: tmp_path / (key.split(":")[1] + (".tif" if kind == "raster" else ".gpkg"))
             for key, (kind, _bands) in MODEL_OUTPUTS.items()}
    done = subprocess.run(
        [QGIS_PROCESS, "run", MODEL_ID, "--json", "--", *inputs, *(f"{key}={path}" for key, path in paths.items())],
        env=qgis_env(qgis_profile), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    for key, path in paths.items():
        assert report["results"][key] == str(path)
    return paths


def test_qgis_process_runs_the_pipeline_model(tmp_path, qgis_app, qgis_profile, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(48, 64), crs="EPSG:2193",
                          origin=(1570000.0, 5180000.0), descriptions=["B08", "B03"])
    bounds = (1570000.0, 5180000.0 - 480, 1570000.0 + 640, 5180000.0)
    paths = run_pipeline(tmp_path, qgis_profile, f"INPUT={raster}", f"MODEL={tiny_model_files['onnx']}")

    classes = check_raster(paths["classify:classes"], 1, 2193, bounds)
    assert (classes[0, :, :24] == 0).all() and (classes[0, :, 40:] == 1).all()
    heatmap = check_raster(paths["explain:heatmap"], 1, 2193, bounds)
    assert 0.0 <= float(heatmap.min()) and float(heatmap.max()) <= 1.0
    peaks = check_vector(paths["explain:peaks"], 2193, bounds)
    assert {"score", "class"} <= set(peaks.fields().names())
    polygons = check_vector(paths["segment:polygons"], 2193, bounds)
    assert {f["class"] for f in polygons.getFeatures()} <= {"Vegetation", "Water"}


def test_the_pipeline_model_inside_a_mask(tmp_path, qgis_app, qgis_profile, tiny_model_files):
    """MASK: the class raster and heatmap cover the mask polygon's extent only, nodata outside the
    polygon, and every peak and every segment lies inside it."""
    from osgeo import ogr, osr
    from qgis.core import QgsGeometry

    raster = write_raster(tmp_path / "scene.tif", two_halves(48, 64), crs="EPSG:2193",
                          origin=(1570000.0, 5180000.0), descriptions=["B08", "B03"])
    x0, y0 = 1570000.0, 5180000.0
    triangle = f"POLYGON(({x0} {y0}, {x0 + 640} {y0}, {x0} {y0 - 480}, {x0} {y0}))"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "aoi.gpkg"))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(2193)
    layer = ds.CreateLayer("aoi", srs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt(triangle))
    assert layer.CreateFeature(feature) == 0
    ds = layer = None
    paths = run_pipeline(tmp_path, qgis_profile, f"INPUT={raster}", f"MODEL={tiny_model_files['onnx']}",
                         f"MASK={tmp_path / 'aoi.gpkg'}")
    bounds = (x0, y0 - 480, x0 + 640, y0)
    classes = check_raster(paths["classify:classes"], 1, 2193, bounds)
    heatmap = check_raster(paths["explain:heatmap"], 1, 2193, bounds)
    rows, cols = np.indices(classes.shape[1:])
    outside = cols / 64 + rows / 48 >= 1
    assert classes.mask[0][outside].all() and heatmap.mask[0][outside].all()
    assert (classes[0, :8, :24] == 0).all() and (classes[0, :8, 40:56] == 1).all()  # Vegetation west, Water east
    area = QgsGeometry.fromWkt(triangle)
    peaks = check_vector(paths["explain:peaks"], 2193, bounds)
    assert all(area.contains(f.geometry()) for f in peaks.getFeatures())
    segments = check_vector(paths["segment:polygons"], 2193, bounds)
    margin = area.buffer(10.0, 4)  # a pixel: segment edges follow pixel edges, the triangle's hypotenuse does not
    assert all(margin.contains(f.geometry()) for f in segments.getFeatures())


def test_the_pipeline_model_on_a_mosaic(tmp_path, qgis_app, qgis_profile, tiny_model_files):
    """MOSAIC and no INPUT: the two halves of a scene, read as one by every step, give the
    outputs of the whole scene: class raster and heatmap over both halves, segments grown from
    peaks on either side."""
    data = two_halves(48, 64)
    x0, y0 = 1570000.0, 5180000.0
    west = write_raster(tmp_path / "west.tif", data[:, :, :32], crs="EPSG:2193", origin=(x0, y0),
                        descriptions=["B08", "B03"])
    east = write_raster(tmp_path / "east.tif", data[:, :, 32:], crs="EPSG:2193", origin=(x0 + 320, y0),
                        descriptions=["B08", "B03"])
    paths = run_pipeline(tmp_path, qgis_profile, f"MOSAIC={west}", f"MOSAIC={east}",
                         f"MODEL={tiny_model_files['onnx']}")
    bounds = (x0, y0 - 480, x0 + 640, y0)
    classes = check_raster(paths["classify:classes"], 1, 2193, bounds)
    assert (classes[0, :, :24] == 0).all() and (classes[0, :, 40:] == 1).all()
    heatmap = check_raster(paths["explain:heatmap"], 1, 2193, bounds)
    assert heatmap.count() == 48 * 64
    check_vector(paths["explain:peaks"], 2193, bounds)
    polygons = check_vector(paths["segment:polygons"], 2193, bounds)
    centres_x = [f.geometry().centroid().asPoint().x() for f in polygons.getFeatures()]
    assert min(centres_x) < x0 + 320 < max(centres_x), "segments on one granule only"


BATCH_SCRIPT = QGIS_PLUGIN_PRELUDE + textwrap.dedent(
    """
    plugin = module.classFactory(None)  # kept: the provider lives as long as the plugin
    plugin.initProcessing()
    import processing
    results = []
    for raster in sys.argv[3:]:
        results.append(processing.run("glassbox:classify", {
            "INPUT": raster, "MODEL": sys.argv[2], "TILE_STRIDE": 8,
            "OUTPUT_CLASSES": raster[:-4] + "_classes.tif",
            "OUTPUT_PROBABILITIES": raster[:-4] + "_probabilities.tif"}))
    print("RESULTS" + json.dumps(results))
    """
)


def test_classify_runs_in_a_batch_over_three_rasters(tmp_path, qgis_profile, tiny_model_files):
    """Three rasters of different sizes, grids and CRSs (the third mirrored: Water on the left),
    classified one after the other in one QGIS process."""
    scenes = [("a", two_halves(48, 64, seed=1), "EPSG:2193", (1570000.0, 5180000.0)),
              ("b", two_halves(32, 48, seed=2), "EPSG:32633", (500000.0, 6000000.0)),
              ("c", two_halves(40, 64, seed=3)[:, :, ::-1], "EPSG:32760", (300000.0, 5000000.0))]
    rasters = [write_raster(tmp_path / f"{name}.tif", data, crs=crs, origin=origin, descriptions=["B08", "B03"])
               for name, data, crs, origin in scenes]
    done = subprocess.run([sys.executable, "-c", BATCH_SCRIPT, str(PLUGIN_DIR), str(tiny_model_files["onnx"]),
                           *rasters], env=qgis_env(qgis_profile), capture_output=True, text=True, timeout=600)
    assert "RESULTS" in done.stdout, done.stdout + done.stderr
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    assert len(results) == 3
    for (name, data, crs, _origin), raster, result in zip(scenes, rasters, results):
        out = raster[:-4] + "_classes.tif"
        assert result["OUTPUT_CLASSES"] == out
        with rasterio.open(out) as ds:
            assert ds.crs.to_epsg() == int(crs.split(":")[1])
            assert (ds.height, ds.width) == data.shape[1:]
            classes = ds.read(1)
        cols = data.shape[2]
        left, right = (0, 1) if name != "c" else (1, 0)  # Vegetation = 0, Water = 1
        assert (classes[:, : cols // 2 - 8] == left).all(), name
        assert (classes[:, cols // 2 + 8:] == right).all(), name
        assert np.isin(classes, (0, 1)).all(), name
