"""glassbox:assess_map: the accuracy of a class map against reference points and the
area-adjusted class areas (core.map_accuracy), checked against Olofsson et al. (2014)'s worked
example and run through QGIS Processing on a map that glassbox:classify made."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import rasterio

from glassbox.core.errors import TrainingDataError
from glassbox.core.map_accuracy import MIN_POINTS_PER_CLASS, area_adjusted, sampling_warnings
from helpers import TINY_TILE, two_halves, write_raster

pytestmark = pytest.mark.usefixtures("glassbox_processing", "one_torch_thread")


def test_olofsson_worked_example():
    """Olofsson et al. (2014), section 5: four strata of 30 m pixels (0.09 ha) and 640 points.
    Rows of their table are map classes; ours are reference classes, hence the transpose."""
    by_map = np.array([[66, 0, 5, 4],      # deforestation
                       [0, 55, 8, 12],     # forest gain
                       [1, 0, 153, 11],    # stable forest
                       [2, 1, 9, 313]])    # stable non-forest
    mapped = np.array([200_000, 150_000, 3_200_000, 6_450_000])
    result = area_adjusted(by_map.T, mapped, 0.09)
    # deforestation: 21,158 ha +/- 6,158 ha (95 %); user's 0.88, producer's 0.75; overall 0.95
    assert result["area_ha"][0] == pytest.approx(21_158, abs=1)
    assert result["area_ci95_ha"][0] == pytest.approx(6_158, rel=0.002)
    assert result["users"][0] == pytest.approx(0.88) and result["producers"][0] == pytest.approx(0.7487, abs=1e-4)
    assert result["overall"] == pytest.approx(0.9465, abs=1e-4)
    assert result["area_ha"].sum() == pytest.approx(mapped.sum() * 0.09)
    assert np.all(result["users_ci95"] > 0) and np.all(result["producers_ci95"] > 0)
    # a perfect map: every estimate is the mapped area, every accuracy 1 with no uncertainty
    perfect = area_adjusted(np.diag([10, 20, 30, 40]), mapped, 0.09)
    np.testing.assert_allclose(perfect["area_ha"], mapped * 0.09)
    np.testing.assert_allclose(perfect["area_ci95_ha"], 0, atol=1e-9)
    assert perfect["overall"] == pytest.approx(1.0)


def test_sampling_warnings_name_unsampled_and_thin_classes():
    """A mapped class without points leaves its area out of the estimates: warned with its share
    of the mapped area; classes with fewer than 50 points are named with their counts; a class
    that is not in the map at all is not a sampling problem."""
    confusion = np.array([[60, 0, 0, 0],   # rows: reference class; columns: map class
                          [3, 12, 0, 0],
                          [0, 0, 0, 0],
                          [0, 0, 0, 0]])
    mapped = np.array([500, 300, 200, 0])
    warnings = sampling_warnings(["Forest", "Water", "Town", "Snow"], confusion, mapped)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("map class(es) Town (20.0% of the mapped area) have no reference point")
    assert "Snow" not in " ".join(warnings)
    assert f"fewer than {MIN_POINTS_PER_CLASS} reference points on map class(es) Water (12)" in warnings[1]
    assert "Forest" not in warnings[1]  # 63 points on it
    # the estimates show why: Town's area is in no estimated area, and counts as wrong
    adjusted = area_adjusted(confusion, mapped, 1.0)
    assert adjusted["area_ha"].sum() == pytest.approx(800)
    assert sampling_warnings(["A", "B"], np.diag([50, 70]), np.array([10, 10])) == []


def _map_and_points(tmp_path, tiny_model_files, crs="EPSG:32633"):
    """A map made by glassbox:classify (left half Vegetation, right half Water, 64 x 128 px of
    10 m) and reference points: 10 Vegetation and 8 Water on their halves, 2 'Water' points on
    the Vegetation half (map errors), one point off the raster and one without a class."""
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 128), descriptions=["B08", "B03"])
    classes = processing.run("glassbox:classify", {"INPUT": raster, "MODEL": str(tiny_model_files["onnx"]),
                                                   "TILE_STRIDE": TINY_TILE,
                                                   "OUTPUT_CLASSES": str(tmp_path / "classes.tif")})["OUTPUT_CLASSES"]
    with rasterio.open(classes) as ds:
        values = ds.read(1)
        assert (values[:, :60] == 0).all() and (values[:, 68:] == 1).all()
    x0, y0 = 500000.0, 6000000.0
    points = ([(x0 + 50 + 40 * i, y0 - 300, "Vegetation") for i in range(10)]
              + [(x0 + 800 + 40 * i, y0 - 300, "water") for i in range(8)]
              + [(x0 + 100, y0 - 500, "Water"), (x0 + 300, y0 - 500, "1")]  # value 1 = Water
              + [(x0 + 5000, y0 - 300, "Water"), (x0 + 100, y0 - 200, None)])
    layer = QgsVectorLayer(f"Point?crs={crs}&field=truth:string(20)", "reference", "memory")
    features = []
    for x, y, name in points:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        feature["truth"] = name
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return classes, layer


def test_assess_map_through_processing(tmp_path, tiny_model_files):
    import processing
    from qgis.core import QgsProcessingFeedback

    classes, layer = _map_and_points(tmp_path, tiny_model_files)
    warnings = []
    feedback = QgsProcessingFeedback()
    feedback.pushWarning = warnings.append
    out = tmp_path / "out"
    result = processing.run("glassbox:assess_map", {
        "INPUT": classes, "REFERENCE": layer, "CLASS_FIELD": "truth",
        "OUTPUT_REPORT": str(out / "map.html"), "OUTPUT_CSV": str(out / "map.csv")}, feedback=feedback)
    # 20 counted points, 18 on their class; the two 'Water' points on the Vegetation half are errors
    assert result["N_POINTS"] == 20 and result["OVERALL_ACCURACY"] == pytest.approx(18 / 20)
    # the map is half and half: W = 0.5 each; user's accuracy Vegetation 10/12, Water 8/8
    assert result["ADJUSTED_OVERALL_ACCURACY"] == pytest.approx(0.5 * 10 / 12 + 0.5 * 1.0)
    assert any("1 reference point(s) outside the raster" in w for w in warnings), warnings
    assert any("without a geometry or a 'truth' value" in w for w in warnings), warnings
    thin = "fewer than 50 reference points on map class(es) Vegetation (12); Water (8)"
    assert any(thin in w for w in warnings), warnings

    rows = list(csv.DictReader(open(result["OUTPUT_CSV"], encoding="utf-8")))
    assert [r["class"] for r in rows] == ["Vegetation", "Water", "(all)"]
    vegetation, water, total = rows
    pixels = 64 * 64  # each half of the 64 x 128 px map
    assert int(vegetation["mapped_pixels"]) == pixels and float(vegetation["mapped_area_ha"]) == pytest.approx(
        pixels * 0.01)
    assert int(vegetation["reference_points"]) == 12 and int(vegetation["ref_Water"]) == 2
    assert float(vegetation["users_accuracy"]) == pytest.approx(10 / 12, abs=1e-4)
    # 2/12 of the Vegetation area is Water: the Water estimate grows by that much
    assert float(water["estimated_area_ha"]) == pytest.approx(pixels * 0.01 * (1 + 2 / 12), abs=0.01)
    assert float(total["estimated_area_ha"]) == pytest.approx(2 * pixels * 0.01, abs=0.01)
    assert float(water["estimated_area_ci95_ha"]) > 0

    page = Path(result["OUTPUT_REPORT"]).read_text(encoding="utf-8")
    assert 'id="overall-accuracy">90.00 %' in page and "Olofsson" in page and "data:image/png;base64," in page
    assert "outside the raster" in page
    assert "1 point(s) without a geometry or a class value" in page and "22 points of " in page
    assert '<ul id="warnings">' in page and "Vegetation (12); Water (8)" in page and "rule of three" in page


def test_assess_map_refuses_points_that_miss_the_map(tmp_path, tiny_model_files):
    """The same coordinates declared in New Zealand's NZTM land far from the map: a clear error
    naming the map's classes, and no report."""
    import processing
    from qgis.core import QgsProcessingException

    classes, layer = _map_and_points(tmp_path, tiny_model_files, crs="EPSG:2193")
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="no reference point could be counted .21 outside the raster.*"
                                                     "classes are Vegetation; Water"):
        processing.run("glassbox:assess_map", {
            "INPUT": classes, "REFERENCE": layer, "CLASS_FIELD": "truth", "OUTPUT_REPORT": str(out / "m.html")})
    assert not out.exists() or not any(out.iterdir())


def test_assess_map_refuses_a_polygon_layer(tmp_path):
    """Reference polygons (a common first try: land-cover polygons of known class) get a clear
    error that says what to do, and no report."""
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsProcessingException, QgsVectorLayer

    raster = write_raster(tmp_path / "classes.tif", np.zeros((1, 32, 32), dtype=np.uint8))
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=truth:string(20)", "polygons", "memory")
    feature = QgsFeature(layer.fields())
    feature.setGeometry(QgsGeometry.fromWkt("POLYGON((500010 5999990, 500100 5999990, 500100 5999900, 500010 5999990))"))
    feature["truth"] = "0"
    assert layer.dataProvider().addFeatures([feature])[0]
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="holds polygons, not points.*Random points inside polygons"):
        processing.run("glassbox:assess_map", {"INPUT": raster, "REFERENCE": layer, "CLASS_FIELD": "truth",
                                               "OUTPUT_REPORT": str(out / "m.html")})
    assert not out.exists() or not any(out.iterdir())


def test_assess_map_without_a_legend_takes_the_values_the_raster_holds(tmp_path):
    """A class raster whose .qml was lost still has classify's 256-entry colour table, which QGIS
    shows as a legend of numbers: the classes are then the values in the raster (0, 1 and 5
    here, 255 its nodata), not 253 numbers, and a class without points is still mapped area."""
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    values = np.zeros((1, 40, 40), dtype=np.uint8)
    values[0, :, 20:] = 1
    values[0, 30:, :10] = 5
    values[0, :2, :2] = 255
    raster = write_raster(tmp_path / "classes.tif", values, nodata=255)
    with rasterio.open(raster, "r+") as ds:
        ds.write_colormap(1, {v: (v, 255 - v, 0, 255) for v in range(256)})
    layer = QgsVectorLayer("Point?crs=EPSG:32633&field=code:integer", "reference", "memory")
    features = []
    for x, code in ((500050.0, 0), (500300.0, 1), (500310.0, 1)):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, 5999900.0)))
        feature["code"] = code
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    result = processing.run("glassbox:assess_map", {
        "INPUT": raster, "REFERENCE": layer, "CLASS_FIELD": "code", "OUTPUT_REPORT": str(tmp_path / "m.html"),
        "OUTPUT_CSV": str(tmp_path / "m.csv")})
    rows = list(csv.DictReader(open(result["OUTPUT_CSV"], encoding="utf-8")))
    assert [r["class"] for r in rows] == ["0", "1", "5", "(all)"]
    assert [int(r["mapped_pixels"]) for r in rows] == [40 * 20 - 4 - 100, 800, 100, 1596]
    assert result["N_POINTS"] == 3 and result["OVERALL_ACCURACY"] == 1.0
    assert "no reference point on them" in Path(result["OUTPUT_REPORT"]).read_text(encoding="utf-8")
    # the same map with its 255 fill but no nodata value set: 255 is still no class
    unset = write_raster(tmp_path / "unset.tif", values)
    result = processing.run("glassbox:assess_map", {
        "INPUT": unset, "REFERENCE": layer, "CLASS_FIELD": "code", "OUTPUT_REPORT": str(tmp_path / "u.html"),
        "OUTPUT_CSV": str(tmp_path / "u.csv")})
    assert [r["class"] for r in csv.DictReader(open(result["OUTPUT_CSV"], encoding="utf-8"))] == ["0", "1", "5", "(all)"]


def _points(rows):
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    layer = QgsVectorLayer("Point?crs=EPSG:32633&field=code:integer", "reference", "memory")
    features = []
    for xy, code in rows:
        feature = QgsFeature(layer.fields())
        if xy is not None:
            feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(*xy)))
        feature["code"] = code
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def test_assess_map_inputs_a_user_may_get_wrong(tmp_path):
    """Points without a CRS are taken in the raster's CRS (warned, as polygons elsewhere); points
    without geometry are named as the reason; an image (13 bands, or one band of thousands of
    values) is refused as a class map; none writes a report."""
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    values = np.zeros((1, 20, 20), dtype=np.uint8)
    values[0, :, 10:] = 1
    raster = write_raster(tmp_path / "classes.tif", values)
    rows = [((500020.0, 5999900.0), 0), ((500150.0, 5999900.0), 1)]
    warnings = []
    feedback = QgsProcessingFeedback()
    feedback.pushWarning = warnings.append
    from osgeo import ogr

    no_crs = str(tmp_path / "no_crs.gpkg")  # a file with no SRS (a memory layer would get QGIS's default CRS)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(no_crs)
    ogr_layer = source.CreateLayer("reference", None, ogr.wkbPoint)
    ogr_layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
    for (x, y), code in rows:
        feature = ogr.Feature(ogr_layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({x} {y})"))
        feature.SetField("code", code)
        ogr_layer.CreateFeature(feature)
    source = None
    result = processing.run("glassbox:assess_map", {
        "INPUT": raster, "REFERENCE": no_crs, "CLASS_FIELD": "code",
        "OUTPUT_REPORT": str(tmp_path / "ok.html")}, feedback=feedback)
    assert result["N_POINTS"] == 2 and result["OVERALL_ACCURACY"] == 1.0
    assert any("has no CRS: its coordinates are taken to be in the raster's CRS" in w for w in warnings), warnings

    out = tmp_path / "out"
    cases = [
        (raster, _points([(None, 0), (None, 1)]), "no points with a geometry.*2 feature.s. without"),
        (write_raster(tmp_path / "image.tif", np.full((13, 20, 20), 900, dtype=np.uint16)),
         _points(rows), "has 13 bands: a class raster has one band"),
        (write_raster(tmp_path / "band.tif", np.arange(400, dtype=np.uint16).reshape(1, 20, 20)),
         _points(rows), "holds more than 255 different values and no legend: it looks like an image"),
    ]
    for map_raster, layer, message in cases:
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("glassbox:assess_map", {"INPUT": map_raster, "REFERENCE": layer, "CLASS_FIELD": "code",
                                                   "OUTPUT_REPORT": str(out / "m.html")})
    assert not out.exists() or not any(out.iterdir())


def _half_map(tmp_path, quarter_unclassified=False):
    """A 40 x 40 px uint8 map at 10 m: class 1 west, class 2 east (legend-less), optionally the
    south-east quarter Unclassified (254)."""
    values = np.ones((1, 40, 40), dtype=np.uint8)
    values[0, :, 20:] = 2
    if quarter_unclassified:
        values[0, 20:, 20:] = 254
    return write_raster(tmp_path / "map.tif", values, nodata=255)


def _grid_points(rows, cols, code_of):
    """Pixel-centre points of rows x cols, their reference code from ``code_of(row, col, k)``."""
    return [(500000.0 + 10 * c + 5, 6000000.0 - 10 * r - 5, code_of(r, c, k))
            for k, (r, c) in enumerate((r, c) for r in rows for c in cols)]


def test_reference_classes_the_map_never_shows_are_errors_not_skipped(tmp_path):
    """In the class-1 half a fifth of the points are truly class 3, which the map never shows:
    they lower the accuracy and get an area, instead of being skipped (which gave 100 %)."""
    from glassbox.core.map_accuracy import assess_map

    raster = _half_map(tmp_path)
    points = _grid_points(range(0, 40, 4), range(0, 40, 4), lambda r, c, k: 3 if c < 20 and k % 5 == 0 else
                          (1 if c < 20 else 2))
    lines = []
    result = assess_map(raster, [(x, y) for x, y, _ in points], [code for _, _, code in points], log=lines.append)
    wrong = sum(1 for _, _, code in points if code == 3)
    assert wrong == 10 and result.class_names == ["1", "2", "3"]
    assert result.metrics.overall_accuracy == pytest.approx(1 - wrong / len(points))
    assert result.mapped_pixels.tolist() == [800, 800, 0] and not result.skipped
    # class 3 is a fifth of the class-1 stratum (half the map): a tenth of the 16 ha
    assert result.estimated_area_ha[2] == pytest.approx(0.1 * 16.0)
    assert result.estimated_area_ha.sum() == pytest.approx(16.0)
    assert any("10 reference point(s) of class(es) the map never shows (3 x10)" in line for line in lines)
    # the same through Processing: the report and table have a row for class 3 (no mapped area)
    import processing

    layer = _points([((x, y), code) for x, y, code in points])
    out = processing.run("glassbox:assess_map", {
        "INPUT": raster, "REFERENCE": layer, "CLASS_FIELD": "code", "OUTPUT_REPORT": str(tmp_path / "m.html"),
        "OUTPUT_CSV": str(tmp_path / "m.csv")})
    rows = list(csv.DictReader(open(out["OUTPUT_CSV"], encoding="utf-8")))
    assert [r["class"] for r in rows] == ["1", "2", "3", "(all)"]
    assert int(rows[2]["mapped_pixels"]) == 0 and float(rows[2]["estimated_area_ha"]) == pytest.approx(1.6, abs=0.01)
    assert out["OVERALL_ACCURACY"] == pytest.approx(0.9)
    # a field of other names altogether (the wrong field): refused, not scored as all errors
    with pytest.raises(TrainingDataError, match="no reference point holds a class of the map: their classes are "
                                                "forest; water"):
        assess_map(raster, [(x, y) for x, y, _ in points], ["water" if k % 2 else "forest" for k in range(len(points))])


def test_unclassified_pixels_are_a_stratum_of_the_area_estimates(tmp_path):
    """A quarter of the map Unclassified and truly class 2: class 2's estimated area holds it
    (the estimates cover the whole map) and those points count as errors."""
    from glassbox.core.map_accuracy import assess_map

    raster = _half_map(tmp_path, quarter_unclassified=True)
    points = _grid_points(range(0, 40, 4), range(0, 40, 4), lambda r, c, k: 1 if c < 20 else 2)
    result = assess_map(raster, [(x, y) for x, y, _ in points], [code for _, _, code in points])
    assert result.class_names == ["1", "2", "Unclassified"]
    assert result.mapped_pixels.tolist() == [800, 400, 400]
    assert result.estimated_area_ha.tolist() == pytest.approx([8.0, 8.0, 0.0])  # 4 ha of it Unclassified on the map
    assert result.metrics.overall_accuracy == pytest.approx(0.75)
    assert result.adjusted_overall == pytest.approx(0.75)


def test_a_classify_map_with_unclassified_pixels_through_processing(tmp_path, tiny_model_files):
    """classify's legend names Unclassified (254): assess_map counts the points on it in their
    own stratum (they were 'on a value the legend does not name' when the stratum was first added),
    and the Unclassified area enters the estimates."""
    import processing
    from qgis.core import QgsProcessingFeedback

    raster = write_raster(tmp_path / "scene.tif", two_halves(64, 128), descriptions=["B08", "B03"])
    classes = processing.run("glassbox:classify", {
        "INPUT": raster, "MODEL": str(tiny_model_files["onnx"]), "TILE_STRIDE": TINY_TILE // 2,
        "MIN_CONFIDENCE": 0.999, "OUTPUT_CLASSES": str(tmp_path / "classes.tif"),
        "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")})["OUTPUT_CLASSES"]
    with rasterio.open(classes) as ds:
        values = ds.read(1)
        transform = ds.transform
    unsure = np.argwhere(values == 254)
    sure = np.argwhere(values == 0)
    assert len(unsure) and len(sure)
    picks = [tuple(unsure[k]) for k in range(0, len(unsure), max(1, len(unsure) // 10))][:10] + \
        [tuple(sure[k]) for k in range(0, len(sure), max(1, len(sure) // 10))][:10]
    layer = _points([((transform * (c + 0.5, r + 0.5)), 0) for r, c in picks])
    warnings = []
    feedback = QgsProcessingFeedback()
    feedback.pushWarning = warnings.append
    result = processing.run("glassbox:assess_map", {
        "INPUT": classes, "REFERENCE": layer, "CLASS_FIELD": "code", "OUTPUT_REPORT": str(tmp_path / "m.html"),
        "OUTPUT_CSV": str(tmp_path / "m.csv")}, feedback=feedback)
    assert not any("does not name" in w for w in warnings), warnings
    rows = {r["class"]: r for r in csv.DictReader(open(result["OUTPUT_CSV"], encoding="utf-8"))}
    assert "Unclassified" in rows and int(rows["Unclassified"]["reference_points"]) == len(picks) // 2
    assert result["N_POINTS"] == len(picks)
    assert result["OVERALL_ACCURACY"] == pytest.approx(0.5)  # the points on Unclassified count as errors
    assert int(rows["Unclassified"]["mapped_pixels"]) == len(unsure)


def test_class_groups_merge_map_classes_for_coarser_reference_classes(tmp_path):
    """A map of three classes (water 1 | river 2 west, crop 3 east) against reference points
    that know only 'water' and 'land': with the groups water = 1 + 2, land = 3 every point is on
    its class and the group's mapped area is the sum of its members'; without them, no point holds
    a class of the map."""
    from glassbox.core.errors import RasterInputError
    from glassbox.core.map_accuracy import assess_map, parse_class_groups

    values = np.full((1, 40, 40), 3, dtype=np.uint8)
    values[0, :20, :20] = 1
    values[0, 20:, :20] = 2
    raster = write_raster(tmp_path / "map.tif", values, nodata=255)
    names = {1: "SeaLake", 2: "River", 3: "AnnualCrop"}
    points = _grid_points(range(0, 40, 4), range(0, 40, 4), lambda r, c, k: "water" if c < 20 else "land")
    xy, reference = [(x, y) for x, y, _ in points], [code for _, _, code in points]
    groups = parse_class_groups("water: sealake, River; land = AnnualCrop")
    assert groups == {"water": ["sealake", "River"], "land": ["AnnualCrop"]}
    lines = []
    result = assess_map(raster, xy, reference, names, groups=groups, log=lines.append)
    assert result.class_names == ["water", "land"] and result.mapped_pixels.tolist() == [800, 800]
    assert result.metrics.overall_accuracy == 1.0 and result.estimated_area_ha.tolist() == pytest.approx([8.0, 8.0])
    assert any("class groups: water = SeaLake + River; land = AnnualCrop" in line for line in lines)
    with pytest.raises(TrainingDataError, match="no reference point holds a class of the map"):
        assess_map(raster, xy, reference, names)
    partial = assess_map(raster, xy, reference, names, groups={"water": ["SeaLake", "River"]})
    assert partial.class_names[:2] == ["water", "AnnualCrop"]  # ungrouped classes stay as they are
    for bad, message in (({"water": ["Forest"]}, "the map has no class 'Forest'"),
                         ({"a": ["River"], "b": ["River"]}, "is in two class groups"),
                         ({"AnnualCrop": ["River"]}, "has the name of a map class outside it")):
        with pytest.raises(RasterInputError, match=message):
            assess_map(raster, xy, reference, names, groups=bad)
    for text in ("water SeaLake", "water:", ": River", "a: River; a: SeaLake"):
        with pytest.raises(RasterInputError, match="class groups"):
            parse_class_groups(text)


def test_points_labelled_with_a_member_of_a_group_count_as_the_group(tmp_path):
    """With 'water: SeaLake, River', a point labelled River is a water point (an audit: every such
    point counted as an error of a class 'the map never shows', 4.5 % instead of 44.9 %)."""
    from glassbox.core.map_accuracy import assess_map

    values = np.full((1, 40, 40), 3, dtype=np.uint8)
    values[0, :20, :20] = 1
    values[0, 20:, :20] = 2
    raster = write_raster(tmp_path / "map.tif", values, nodata=255)
    names = {1: "SeaLake", 2: "River", 3: "AnnualCrop"}
    points = _grid_points(range(0, 40, 4), range(0, 40, 4),
                          lambda r, c, k: ("river" if r >= 20 else "SeaLake") if c < 20 else ("3" if k % 2 else "land"))
    lines = []
    result = assess_map(raster, [(x, y) for x, y, _ in points], [code for _, _, code in points], names,
                        groups={"water": ["SeaLake", "River"], "land": ["AnnualCrop"]}, log=lines.append)
    assert result.class_names == ["water", "land"] and result.metrics.overall_accuracy == 1.0
    assert any("name a map class of a class group and count as that group" in line for line in lines)


def test_class_groups_through_processing(tmp_path, tiny_model_files):
    import processing
    from qgis.core import QgsProcessingException

    classes, layer = _map_and_points(tmp_path, tiny_model_files)
    result = processing.run("glassbox:assess_map", {
        "INPUT": classes, "REFERENCE": layer, "CLASS_FIELD": "truth", "CLASS_GROUPS": "Water: water",
        "OUTPUT_REPORT": str(tmp_path / "g.html"), "OUTPUT_CSV": str(tmp_path / "g.csv")})
    assert result["N_POINTS"] == 20 and result["OVERALL_ACCURACY"] == pytest.approx(18 / 20)
    assert [r["class"] for r in csv.DictReader(open(result["OUTPUT_CSV"], encoding="utf-8"))] == [
        "Vegetation", "Water", "(all)"]
    # the report says how the classes were merged, so a reviewer can repeat the figures
    page = Path(result["OUTPUT_REPORT"]).read_text(encoding="utf-8")
    assert "map classes merged into the reference" in page and "Water = water" in page
    with pytest.raises(QgsProcessingException, match="cannot read 'nonsense'"):
        processing.run("glassbox:assess_map", {"INPUT": classes, "REFERENCE": layer, "CLASS_FIELD": "truth",
                                               "CLASS_GROUPS": "nonsense", "OUTPUT_REPORT": str(tmp_path / "x.html")})
    with pytest.raises(QgsProcessingException, match="the map has no class 'Forest'"):
        processing.run("glassbox:assess_map", {"INPUT": classes, "REFERENCE": layer, "CLASS_FIELD": "truth",
                                               "CLASS_GROUPS": "trees: Forest", "OUTPUT_REPORT": str(tmp_path / "x.html")})
    assert not (tmp_path / "x.html").exists()


def test_the_class_field_must_be_chosen_and_is_not_the_feature_id(tmp_path, tiny_model_files):
    """QGIS's dialog preselected the first field of a required field parameter, a GeoPackage's
    fid, and the run reported an assessment of feature ids as classes: now the chooser starts
    blank, an empty field is refused before the run, and a feature-id field is refused."""
    import processing
    from qgis.core import QgsProcessingException, QgsVectorFileWriter, QgsCoordinateTransformContext

    from glassbox.algorithms.assess_map import AssessMapAlgorithm

    definition = AssessMapAlgorithm()
    definition.initAlgorithm()
    assert definition.parameterDefinition("CLASS_FIELD").defaultValue() == "ref_class"  # as sample_points writes
    classes, layer = _map_and_points(tmp_path, tiny_model_files)
    assert "ref_class" not in layer.fields().names()
    with pytest.raises(QgsProcessingException, match="choose the reference class field|ref_class"):
        processing.run("glassbox:assess_map", {"INPUT": classes, "REFERENCE": layer,
                                               "OUTPUT_REPORT": str(tmp_path / "x.html")})
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    error = QgsVectorFileWriter.writeAsVectorFormatV3(layer, str(tmp_path / "points.gpkg"),
                                                      QgsCoordinateTransformContext(), options)
    assert error[0] == QgsVectorFileWriter.NoError
    with pytest.raises(QgsProcessingException, match="'fid' is the reference layer's feature id, not a class"):
        processing.run("glassbox:assess_map", {"INPUT": classes, "REFERENCE": str(tmp_path / "points.gpkg"),
                                               "CLASS_FIELD": "fid", "OUTPUT_REPORT": str(tmp_path / "x.html")})
    assert not (tmp_path / "x.html").exists()


def test_the_class_field_sample_points_writes_needs_no_choosing(tmp_path, tiny_model_files):
    """Sample reference points writes 'ref_class'; Assess map accuracy takes it when no field is
    given (through qgis_process an omitted CLASS_FIELD had been refused despite the default)."""
    import processing
    from qgis.core import QgsVectorLayer

    classes, layer = _map_and_points(tmp_path, tiny_model_files)
    renamed = QgsVectorLayer("Point?crs=EPSG:32633&field=ref_class:string(20)", "reference", "memory")
    renamed.dataProvider().addFeatures(list(layer.getFeatures()))
    given = processing.run("glassbox:assess_map", {"INPUT": classes, "REFERENCE": layer, "CLASS_FIELD": "truth",
                                                   "OUTPUT_REPORT": str(tmp_path / "given.html")})
    default = processing.run("glassbox:assess_map", {"INPUT": classes, "REFERENCE": renamed,
                                                     "OUTPUT_REPORT": str(tmp_path / "default.html")})
    assert default["N_POINTS"] == given["N_POINTS"] > 0
    assert default["OVERALL_ACCURACY"] == given["OVERALL_ACCURACY"]
