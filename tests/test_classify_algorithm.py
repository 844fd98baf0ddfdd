"""glassbox:classify through QGIS Processing: CRS and grid, styling, extent, mask, errors."""

import os

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

import processing
from helpers import TINY_TILE, two_halves, write_raster

pytestmark = pytest.mark.usefixtures("glassbox_processing")


def run_classify(raster, model, out_dir, feedback=None, context=None, **extra):
    params = {
        "INPUT": str(raster),
        "MODEL": str(model),
        "TILE_STRIDE": TINY_TILE // 2,
        "OUTPUT_CLASSES": str(out_dir / "classes.tif"),
        "OUTPUT_PROBABILITIES": str(out_dir / "probabilities.tif"),
    }
    params.update(extra)
    return processing.run("glassbox:classify", params, feedback=feedback, context=context)


def test_classify_writes_only_the_class_raster_unless_more_is_asked_for(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 96), descriptions=["B08", "B03"])
    out = tmp_path / "out"
    out.mkdir()
    result = processing.run("glassbox:classify", {"INPUT": raster, "MODEL": str(tiny_model_files["onnx"]),
                                                  "TILE_STRIDE": TINY_TILE // 2,
                                                  "OUTPUT_CLASSES": str(out / "classes.tif")})
    assert sorted(os.listdir(out)) == ["classes.qml", "classes.tif", "classes.tif.aux.xml"]  # PAM: class names
    assert "OUTPUT_PROBABILITIES" not in result and "OUTPUT_CONFIDENCE" not in result
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        classes = cls.read(1)
    assert (classes[:, :40] == 0).all() and (classes[:, 56:] == 1).all()


@pytest.mark.parametrize("crs,origin", [("EPSG:32633", (500000.0, 6000000.0)), ("EPSG:2193", (1570000.0, 5180000.0))])
def test_classify_keeps_crs_grid_and_finds_the_pattern(tmp_path, tiny_model_files, crs, origin):
    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 96), crs=crs, origin=origin,
                          descriptions=["B08", "B03"])
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path,
                          OUTPUT_CONFIDENCE=str(tmp_path / "confidence.tif"))
    with rasterio.open(raster) as src, rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        assert cls.crs == src.crs and cls.crs.to_epsg() == int(crs.split(":")[1])
        assert cls.transform == src.transform and cls.shape == src.shape
        assert cls.dtypes[0] == "uint8" and cls.nodata == 255
        assert cls.colormap(1)[0][:3] == (0x2C, 0xA0, 0x2C)
        classes = cls.read(1)
    # left half 'Vegetation' (0), right half 'Water' (1); the blended border may shift by a few px
    assert (classes[:, :40] == 0).all() and (classes[:, 56:] == 1).all()
    with rasterio.open(result["OUTPUT_PROBABILITIES"]) as probs:
        assert probs.count == 2 and probs.descriptions == ("Vegetation", "Water")
        assert probs.dtypes[0] == "float32" and probs.transform == cls.transform
        p = probs.read()
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    with rasterio.open(result["OUTPUT_CONFIDENCE"]) as conf:
        np.testing.assert_allclose(conf.read(1), p.max(axis=0), atol=1e-6)
    from osgeo import gdal

    info = gdal.Info(result["OUTPUT_CLASSES"])  # GDAL 3.6's Python GetCategoryNames() returns None
    assert "0: Vegetation" in info and "1: Water" in info
    layer = QgsRasterLayer(result["OUTPUT_CLASSES"], "classes")  # picks up the saved .qml
    assert isinstance(layer.renderer(), QgsPalettedRasterRenderer)
    assert [c.label for c in layer.renderer().classes()] == ["Vegetation", "Water"]


def test_styled_when_loaded_into_the_project(tmp_path, tiny_model_files):
    from qgis.core import QgsProject

    raster = write_raster(tmp_path / "scene.tif", two_halves(32, 32))
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    result = processing.runAndLoadResults(
        "glassbox:classify",
        {"INPUT": raster, "MODEL": str(tiny_model_files["onnx"]), "OUTPUT_CLASSES": str(tmp_path / "c.tif"),
         "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")},
        context=context,
    )
    loaded = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.source() == result["OUTPUT_CLASSES"]]
    assert loaded and isinstance(loaded[0].renderer(), QgsPalettedRasterRenderer)
    assert loaded[0].name() == "Classes"
    # the probabilities show one class's 0-1 (QGIS's default was an RGB composite of three classes)
    (probabilities,) = [lyr for lyr in QgsProject.instance().mapLayers().values()
                        if lyr.source() == result["OUTPUT_PROBABILITIES"]]
    assert probabilities.renderer().type() == "singlebandpseudocolor" and probabilities.renderer().band() == 1
    assert probabilities.name().startswith("Probabilities (band 1: Vegetation")
    QgsProject.instance().removeAllMapLayers()


def test_model_left_empty_means_the_shipped_model(tmp_path):
    """QGIS 3.22 rejects a missing file parameter even with a default; Glassbox's model
    parameter is optional and falls back to the shipped EuroSAT model."""
    scene = np.full((3, 64, 64), 500, np.uint16)
    raster = write_raster(tmp_path / "s2.tif", scene, descriptions=["B04", "B03", "B02"])
    result = processing.run("glassbox:classify", {"INPUT": raster, "OUTPUT_CLASSES": str(tmp_path / "c.tif"),
                                                  "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")})
    with rasterio.open(result["OUTPUT_PROBABILITIES"]) as probs:
        assert probs.count == 10 and probs.descriptions[1] == "Forest"


def test_torch_model_through_the_algorithm_matches_onnx(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(48, 48))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = run_classify(raster, tiny_model_files["onnx"], tmp_path / "a")
    b = run_classify(raster, tiny_model_files["torch"], tmp_path / "b")
    with rasterio.open(a["OUTPUT_PROBABILITIES"]) as pa, rasterio.open(b["OUTPUT_PROBABILITIES"]) as pb:
        np.testing.assert_allclose(pa.read(), pb.read(), atol=1e-4)


def test_extent_crops_on_the_input_grid(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 96))
    # 500000 + 10 * col; choose columns 13..77 and rows 5..45, given slightly off-grid
    extent = f"{500000 + 133.0},{500000 + 767.0},{6000000 - 447.0},{6000000 - 52.0} [EPSG:32633]"
    from qgis.core import QgsProcessingFeedback

    infos = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = infos.append
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path, feedback=feedback, EXTENT=extent)
    # the snapped extent is logged in coordinates
    assert any("area 64x40 px (500130.00, 5999550.00 - 500770.00, 5999950.00 in the raster's CRS" in m
               for m in infos), infos
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        assert cls.shape == (40, 64)
        assert cls.transform.c == 500130.0 and cls.transform.f == 5999950.0
        assert cls.transform.a == 10.0
        classes = cls.read(1)
    assert (classes != 255).all()



def test_an_extent_smaller_than_a_tile_at_the_raster_edge_is_read_inside_the_raster(tmp_path, tiny_model_files):
    """A 4 x 4 px extent in the bottom-right corner: its one tile would reach past the raster (and
    was refused as mostly nodata); the area grows to one tile inside the raster, and the corner
    is classified (Water, the east half). In the middle a small extent stays as asked."""
    raster = write_raster(tmp_path / "scene.tif", two_halves(48, 64))
    x1, y0 = 500000 + 640, 6000000 - 480
    corner = f"{x1 - 40},{x1},{y0},{y0 + 40} [EPSG:32633]"
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path, EXTENT=corner)
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        assert (cls.height, cls.width) == (TINY_TILE, TINY_TILE)
        assert cls.bounds.right == x1 and cls.bounds.bottom == y0
        assert (cls.read(1)[-4:, -4:] == 1).all()
    middle = "500100,500140,5999700,5999740 [EPSG:32633]"
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path / "m", EXTENT=middle)
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        assert (cls.height, cls.width) == (4, 4)


@pytest.mark.parametrize("pixel", [5.0, 20.0])
def test_nodata_and_mask_edges_hold_on_a_resampled_raster(tmp_path, tiny_model_files, pixel):
    """At 5 m or 20 m (model: 10 m, so tiles are resampled) a nodata border on odd pixels and a
    mask edge stay exact on the raster's own grid: no nodata pixel and no pixel outside the mask
    gets a class or a heat value (the nearest copy of model-resolution validity was a pixel off)."""
    import processing
    from qgis.core import QgsFeature, QgsGeometry

    size = 96 if pixel == 5.0 else 48
    data = two_halves(size, size)
    data[:, :, size - 13:] = 0  # an odd-width nodata strip on the east
    data[:, size - 7:, :] = 0  # and on the south
    raster = write_raster(tmp_path / "scene.tif", data, nodata=0, pixel=pixel)
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path / "c", TILE_STRIDE=4)
    heat = processing.run("glassbox:explain", {"INPUT": raster, "MODEL": str(tiny_model_files["torch"]),
                                               "TILE_STRIDE": 8, "OUTPUT_HEATMAP": str(tmp_path / "h.tif")})
    nodata = np.all(data == 0, axis=0)
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls, rasterio.open(heat["OUTPUT_HEATMAP"]) as h:
        classes, heatmap = cls.read(1, masked=True), h.read(1, masked=True)
    assert classes.mask[nodata].all() and heatmap.mask[nodata].all()
    assert not classes.mask[~nodata].any()

    # a mask polygon whose west edge falls on odd pixels
    x0, y1 = 500000.0 + 13 * pixel, 6000000.0
    polygon = QgsGeometry.fromRect(QgsRectangle(x0, y1 - 40 * pixel, x0 + 30 * pixel, y1))
    mask = QgsVectorLayer("Polygon?crs=EPSG:32633", "mask", "memory")
    feature = QgsFeature()
    feature.setGeometry(polygon)
    mask.dataProvider().addFeatures([feature])
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path / "m", TILE_STRIDE=4, MASK=mask)
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        classes = cls.read(1, masked=True)
        first_col = round((cls.transform.c - 500000.0) / pixel)
    inside = np.zeros(classes.shape, bool)
    inside[:40, 13 - first_col:43 - first_col] = True
    assert classes.mask[~inside].all()

def test_mask_in_another_crs_limits_classification(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 96))
    # a polygon over the left 48 columns, given in WGS 84
    from qgis.core import QgsCoordinateTransform, QgsProject

    utm = QgsRectangle(500000, 6000000 - 640, 500480, 6000000)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    geometry = QgsGeometry.fromRect(utm)
    geometry.transform(to_wgs84)
    mask = QgsVectorLayer("Polygon?crs=EPSG:4326", "mask", "memory")
    feature = QgsFeature()
    feature.setGeometry(geometry)
    mask.dataProvider().addFeatures([feature])
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path, MASK=mask)
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        classes = cls.read(1)
        width = cls.width
    assert width <= 49  # the output covers the mask's extent only
    assert (classes[:, :46] == 0).mean() > 0.97



def test_an_invalid_mask_polygon_is_repaired_with_a_warning(tmp_path, tiny_model_files):
    """A bow-tie (self-intersecting) mask polygon: with Processing's invalid-feature setting at "Do
    not filter" (as qgis_process runs) it is used as 'Fix geometries' repairs it (its two
    triangles) and the log warns with the feature id; at the desktop's default QGIS stops first."""
    from qgis.core import QgsFeatureRequest, QgsProcessingContext, QgsProcessingFeedback, QgsProject

    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 96))
    x0, y0, x1, y1 = 500000, 6000000 - 640, 500960, 6000000
    bowtie = f"POLYGON(({x0} {y0}, {x1} {y1}, {x1} {y0}, {x0} {y1}, {x0} {y0}))"
    assert not QgsGeometry.fromWkt(bowtie).isGeosValid()

    def mask_layer():  # one per run: a run that QGIS stops may leave its input layer unusable
        layer = QgsVectorLayer("Polygon?crs=EPSG:32633", "mask", "memory")
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromWkt(bowtie))
        layer.dataProvider().addFeatures([feature])
        return layer

    warnings = []
    feedback = QgsProcessingFeedback()
    feedback.pushWarning = warnings.append
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    context.setInvalidGeometryCheck(QgsFeatureRequest.GeometryNoCheck)
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path, feedback=feedback, context=context,
                          MASK=mask_layer())
    assert any("1 feature(s) of the mask layer have invalid geometries" in w and "feature id 1" in w
               for w in warnings), warnings
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        classes = cls.read(1, masked=True)
    assert not classes.mask[32, 2] and not classes.mask[32, 93]  # the triangles' tips at mid-height
    assert classes.mask[2, 48] and classes.mask[61, 48]  # above and below the crossing
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    with pytest.raises(QgsProcessingException, match="invalid geometry"):
        run_classify(raster, tiny_model_files["onnx"], stopped, MASK=mask_layer())
    assert not any(stopped.iterdir())

def test_tile_grid_output(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(32, 64))
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path, TILE_STRIDE=TINY_TILE,
                          OUTPUT_TILES=str(tmp_path / "tiles.gpkg"))
    tiles = QgsVectorLayer(result["OUTPUT_TILES"], "tiles", "ogr")
    assert tiles.isValid() and tiles.featureCount() == 2 * 4
    assert tiles.crs().authid() == "EPSG:32633"
    names = tiles.fields().names()
    for field in ("class", "confidence", "p_vegetation", "p_water"):
        assert field in names
    by_col = {f["grid_col"]: f["class"] for f in tiles.getFeatures() if f["grid_row"] == 0}
    assert by_col[0] == "Vegetation" and by_col[3] == "Water"
    for f in tiles.getFeatures():
        assert abs(f["p_vegetation"] + f["p_water"] - 1) < 1e-5
        assert abs(f.geometry().area() - (TINY_TILE * 10) ** 2) < 1e-6


def _outputs_left(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "scene.tif")


def test_bad_input_gives_clear_error_and_no_partial_output(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException, match="reads 2 bands.*1 were selected"):
        run_classify(raster, tiny_model_files["onnx"], out, BANDS=[1])
    bare = tmp_path / "nocard.pt"
    bare.write_bytes(tiny_model_files["torch"].read_bytes())
    with pytest.raises(QgsProcessingException, match="no Glassbox model card"):
        run_classify(raster, bare, out)
    with pytest.raises(QgsProcessingException, match="does not overlap"):
        run_classify(raster, tiny_model_files["onnx"], out, EXTENT="0,10,0,10 [EPSG:32633]")
    assert os.listdir(out) == []


def test_cancel_stops_within_a_batch_and_writes_nothing(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(128, 128))
    out = tmp_path / "out"
    out.mkdir()
    feedback = QgsProcessingFeedback()
    progress = []

    def cancel_after_first_batch(value):
        progress.append(value)
        feedback.cancel()

    feedback.progressChanged.connect(cancel_after_first_batch)
    with pytest.raises(QgsProcessingException, match="cancelled"):
        run_classify(raster, tiny_model_files["onnx"], out, BATCH_SIZE=4, feedback=feedback)
    assert len(progress) == 1 and progress[0] < 10
    assert os.listdir(out) == []


def test_runs_inside_a_graphical_model(tmp_path, tiny_model_files):
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("classify twice", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("scene", "Scene"), QgsProcessingModelParameter("scene"))
    child = QgsProcessingModelChildAlgorithm("glassbox:classify")
    child.setChildId("classify")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("scene")])
    child.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromStaticValue(str(tiny_model_files["onnx"]))])
    for name, label in (("OUTPUT_CLASSES", "classes"), ("OUTPUT_PROBABILITIES", "probabilities")):
        output = QgsProcessingModelOutput(label)
        output.setChildOutputName(name)
        child.setModelOutputs({**child.modelOutputs(), label: output})
    model.addChildAlgorithm(child)
    raster = write_raster(tmp_path / "scene.tif", two_halves(32, 64))
    result = processing.run(model, {"scene": raster, "classify:classes": str(tmp_path / "m_classes.tif"),
                                    "classify:probabilities": str(tmp_path / "m_probs.tif")})
    with rasterio.open(result["classify:classes"]) as cls:
        classes = cls.read(1)
    assert (classes[:, :24] == 0).all() and (classes[:, 40:] == 1).all()


def test_test_time_augmentation_makes_a_tile_and_its_rotation_agree(tmp_path, tiny_model_files):
    """One tile (stride = tile size): with TEST_TIME_AUGMENTATION the probabilities of a scene
    and of the same scene turned by 90 degrees are equal; without it they are not."""
    scene = two_halves(TINY_TILE, TINY_TILE, seed=5)
    scene[:, :6, :] = scene[:, :6, :] // 3  # a dark band along the top: no symmetry left
    probabilities = {}
    for name, data in (("scene", scene), ("turned", np.ascontiguousarray(np.rot90(scene, 1, axes=(1, 2))))):
        raster = write_raster(tmp_path / f"{name}.tif", data, descriptions=["B08", "B03"])
        for tta in (False, True):
            out = tmp_path / f"{name}_{tta}"
            out.mkdir()
            feedback = QgsProcessingFeedback()
            messages = []
            feedback.pushInfo = messages.append
            result = run_classify(raster, tiny_model_files["onnx"], out, feedback=feedback,
                                  TILE_STRIDE=TINY_TILE, TEST_TIME_AUGMENTATION=tta)
            assert any("test-time augmentation" in m for m in messages) == tta
            with rasterio.open(result["OUTPUT_PROBABILITIES"]) as src:
                probabilities[name, tta] = src.read()[:, TINY_TILE // 2, TINY_TILE // 2]
    np.testing.assert_allclose(probabilities["scene", True], probabilities["turned", True], atol=1e-5)
    assert np.abs(probabilities["scene", False] - probabilities["turned", False]).max() > 1e-4


def test_a_band_chosen_twice_is_warned_about(tmp_path, tiny_model_files):
    from qgis.core import QgsProcessingFeedback

    raster = write_raster(tmp_path / "scene.tif", two_halves(32, 32), descriptions=["B08", "B03"])
    warnings = []
    feedback = QgsProcessingFeedback()
    feedback.pushWarning = warnings.append
    run_classify(raster, tiny_model_files["onnx"], tmp_path, feedback=feedback, BANDS=[1, 1])
    assert any("band(s) 1 chosen more than once in Bands" in w and ": 1, 1" in w for w in warnings), warnings
    warnings.clear()
    run_classify(raster, tiny_model_files["onnx"], tmp_path, feedback=feedback, BANDS=[1, 2])
    assert not [w for w in warnings if "more than once" in w]


def test_the_layers_additional_nodata_value_is_used_and_ranges_are_warned_of(tmp_path, tiny_model_files):
    """A value set in QGIS (Layer Properties > Transparency > Additional no data value) on every
    band is nodata for classify as for QGIS's own tools; ranges, which Glassbox cannot use, are
    named in a warning (they were ignored silently)."""
    from qgis.core import QgsRasterRange

    data = two_halves(64, 96)
    data[:, :, :16] = 7  # a strip the user marks as no data in QGIS; the file has no nodata
    raster = write_raster(tmp_path / "scene.tif", data, descriptions=["B08", "B03"])

    def classify_layer(ranges, out):
        layer = QgsRasterLayer(raster, "scene")
        for band in (1, 2):
            layer.dataProvider().setUserNoDataValue(band, [QgsRasterRange(*r) for r in ranges])
        feedback = QgsProcessingFeedback()
        messages = []
        feedback.pushInfo, feedback.pushWarning = messages.append, messages.append
        result = processing.run("glassbox:classify", {"INPUT": layer, "MODEL": str(tiny_model_files["onnx"]),
                                                      "TILE_STRIDE": TINY_TILE // 2, "OUTPUT_CLASSES": str(out)},
                                feedback=feedback)
        with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
            return cls.read(1), cls.nodata, messages

    classes, nodata, log = classify_layer([(7, 7)], tmp_path / "value.tif")
    assert (classes[:, :16] == nodata).all() and (classes[:, 16:] != nodata).all()
    assert any("nodata 7: the layer's additional no-data value" in m for m in log)
    classes, nodata, log = classify_layer([(0, 10)], tmp_path / "range.tif")
    assert (classes != nodata).all()
    assert any("additional no-data values set in QGIS" in m and "band 1: 0 to 10" in m for m in log)


@pytest.mark.parametrize("kind", ["alpha", "mask"])
def test_an_alpha_band_or_mask_band_marks_nodata(tmp_path, tiny_model_files, kind):
    """Orthophotos mark where the image is with an alpha band, or a mask band of GDAL's (an
    internal or .msk mask), not with a nodata value: pixels they hide get no class, and an alpha
    band is not fed to the model as a band (a 2-band model reads 2 bands + alpha)."""
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin

    data = two_halves(64, 96)
    data[:, :, :20] = 0  # what lies under the hidden strip: zeros, as an orthophoto's fill
    path = tmp_path / f"{kind}.tif"
    profile = dict(driver="GTiff", width=96, height=64, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000.0, 6000000.0, 10.0, 10.0))
    hidden = np.zeros((64, 96), bool)
    hidden[:, :20] = True
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", count=3 if kind == "alpha" else 2, **profile) as ds:
            ds.write(data, [1, 2])
            if kind == "alpha":
                ds.write(np.where(hidden, 0, 65535).astype(np.uint16), 3)
                ds.colorinterp = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.alpha]
            else:
                ds.write_mask(np.where(hidden, 0, 255).astype(np.uint8))
    result = run_classify(path, tiny_model_files["onnx"], tmp_path,
                          OUTPUT_CONFIDENCE=str(tmp_path / "confidence.tif"))
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        classes, nodata = cls.read(1), cls.nodata
    assert (classes[hidden] == nodata).all()
    assert (classes[:, 24:40] == 0).all() and (classes[:, 56:] == 1).all()
    heatmap = processing.run("glassbox:explain", {"INPUT": str(path), "MODEL": str(tiny_model_files["torch"]),
                                                  "OUTPUT_HEATMAP": str(tmp_path / "heat.tif")})["OUTPUT_HEATMAP"]
    with rasterio.open(heatmap) as heat:
        values = heat.read(1)
        assert (values[hidden] == heat.nodata).all() and (values[:, 24:] >= 0).all()


def test_outputs_say_what_made_them_and_name_their_classes_inside_the_file(tmp_path, tiny_model_files):
    """A class raster that travels without its .qml and .aux.xml still names its classes, and
    every raster records Glassbox's version, the model (and its hash) and the parameters."""
    import hashlib
    import json
    import shutil

    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 96), descriptions=["B08", "B03"])
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path, MIN_CONFIDENCE=0.3)
    sha = hashlib.sha256(open(tiny_model_files["onnx"], "rb").read()).hexdigest()
    for name in ("OUTPUT_CLASSES", "OUTPUT_PROBABILITIES"):
        with rasterio.open(result[name]) as ds:
            tags = ds.tags()
        assert tags["GLASSBOX_MODEL_SHA256"] == sha and tags["GLASSBOX_MODEL_FILE"] == tiny_model_files["onnx"].name
        assert tags["GLASSBOX_VERSION"] not in ("", "unknown") and tags["GLASSBOX_INPUT"] == "scene.tif"
        parameters = json.loads(tags["GLASSBOX_PARAMETERS"])
        assert parameters["algorithm"] == "classify" and parameters["min_confidence"] == pytest.approx(0.3)
        assert parameters["tile_stride"] == TINY_TILE // 2
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(result["OUTPUT_CLASSES"], alone / "map.tif")  # no .qml, no .aux.xml
    with rasterio.open(alone / "map.tif") as ds:
        assert ds.tags(1)["CLASS_NAME_0"] == "Vegetation" and ds.tags(1)["CLASS_NAME_1"] == "Water"
        assert ds.tags(1)["CLASS_NAME_254"] == "Unclassified"
    layer = QgsVectorLayer("Point?crs=EPSG:32633&field=truth:string(20)", "reference", "memory")
    point = QgsFeature(layer.fields())
    point.setGeometry(QgsGeometry.fromWkt("POINT(500100 5999700)"))  # on the Vegetation half
    point["truth"] = "vegetation"
    assert layer.dataProvider().addFeatures([point])[0]
    assessed = processing.run("glassbox:assess_map", {"INPUT": str(alone / "map.tif"), "REFERENCE": layer,
                                                      "CLASS_FIELD": "truth", "OUTPUT_REPORT": str(alone / "r.html")})
    assert assessed["N_POINTS"] == 1 and assessed["OVERALL_ACCURACY"] == 1.0


def test_a_zero_border_without_nodata_is_warned_about(tmp_path, tiny_model_files):
    """A reprojected raster whose collar is 0 in every band but has no nodata value: the collar had
    been classified without a word (an audit); the log now says so and how to mark it."""
    data = two_halves(64, 96)
    data[:, :, :24] = 0  # the collar
    raster = write_raster(tmp_path / "warped.tif", data, descriptions=["B08", "B03"])
    feedback = QgsProcessingFeedback()
    messages = []
    feedback.pushInfo = messages.append
    feedback.pushWarning = lambda text: messages.append("WARNING: " + text)
    (tmp_path / "a").mkdir()
    run_classify(raster, tiny_model_files["onnx"], tmp_path / "a", feedback=feedback)
    assert any(m.startswith("WARNING: about 25% of the raster's pixels are 0 in every band") and "NODATA=0" in m
               for m in messages), messages
    messages.clear()
    (tmp_path / "b").mkdir()
    result = run_classify(raster, tiny_model_files["onnx"], tmp_path / "b", feedback=feedback, NODATA=0)
    assert not any("0 in every band" in m for m in messages)
    with rasterio.open(result["OUTPUT_CLASSES"]) as cls:
        assert (cls.read(1)[:, :24] == cls.nodata).all()


def test_float_outputs_get_no_histogram_side_file(tmp_path, tiny_model_files):
    """Styling the probability raster opened it in QGIS, whose default renderer's histograms GDAL
    kept in a 1.5 MB .aux.xml beside it (an audit); only the class raster's small one (class names)
    remains."""
    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 96), descriptions=["B08", "B03"])
    out = tmp_path / "out"
    out.mkdir()
    run_classify(raster, tiny_model_files["onnx"], out, OUTPUT_CONFIDENCE=str(out / "confidence.tif"))
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".aux.xml")) == ["classes.tif.aux.xml"]
    assert (out / "probabilities.qml").is_file() and (out / "confidence.qml").is_file()
