"""Stratified random reference points (core.sampling, glassbox:sample_points)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from glassbox.core.errors import RasterInputError, TrainingDataError
from glassbox.core.sampling import allocate, stratified_sample
from helpers import write_raster

ROWS, COLS = 700, 90  # taller than one 256-row window: the draw spans three windows


def _class_map(tmp_path, dtype="uint8", nodata=255):
    """Class 0 in the top half, 1 in the bottom half but for a 40-row band of 2, five pixels of
    class 7, a strip of Unclassified (254) and a nodata block."""
    data = np.zeros((ROWS, COLS), dtype=dtype)
    data[350:] = 1
    data[600:640] = 2
    data[10, 10:15] = 7
    data[:, 80:82] = 254
    data[100:200, 30:60] = nodata
    return write_raster(tmp_path / "map.tif", data[None], nodata=nodata), data


def test_allocation_per_class_then_in_proportion_to_area():
    pixels = {0: 9000, 1: 900, 2: 30}
    assert allocate(pixels, 50) == {0: 50, 1: 50, 2: 30}
    # 370 in all: 240 are left after the minimum (130), given by area among the classes with room
    extra = allocate(pixels, 50, total=370)
    assert sum(extra.values()) == 370 and extra[2] == 30
    assert extra[0] == 50 + round(240 * 9000 / 9900) and extra[1] == 50 + round(240 * 900 / 9900)
    assert allocate({0: 10, 1: 5}, 50, total=100) == {0: 10, 1: 5}  # never more than the pixels
    with pytest.raises(ValueError, match="fewer than the 150"):
        allocate({0: 100, 1: 100, 2: 100}, 50, total=120)
    with pytest.raises(ValueError):
        allocate(pixels, 0)


def test_points_fall_on_their_stratum_and_cover_the_whole_raster(tmp_path):
    path, data = _class_map(tmp_path)
    messages = []
    sample = stratified_sample(path, per_class=60, seed=3, log=messages.append)
    assert sample.allocation == {0: 60, 1: 60, 2: 60, 7: 5, 254: 60}
    assert sample.mapped_pixels[7] == 5 and 255 not in sample.mapped_pixels
    assert len(sample.points) == len(set(sample.points)) == 245
    with rasterio.open(path) as ds:
        for (x, y), stratum in zip(sample.points, sample.strata):
            row, col = ds.index(x, y)
            assert data[row, col] == stratum != 255
            assert (x, y) == pytest.approx(ds.xy(row, col))  # pixel centres
    rows = np.array([rasterio.open(path).index(x, y)[0] for (x, y), s in zip(sample.points, sample.strata) if s == 254])
    assert rows.min() < 256 and rows.max() >= 512  # Unclassified drawn from all three windows
    # the order does not give the classes away
    assert sample.strata != sorted(sample.strata)
    assert any("Unclassified: 60 of" in m for m in messages) and any("7: fewer pixels" in m for m in messages)


def test_the_draw_is_uniform_within_a_class_and_repeatable(tmp_path):
    path, _ = _class_map(tmp_path)
    first = stratified_sample(path, per_class=400, seed=0)
    assert first.points == stratified_sample(path, per_class=400, seed=0).points
    assert first.points != stratified_sample(path, per_class=400, seed=1).points
    with rasterio.open(path) as ds:
        cols = np.array([ds.index(x, y)[1] for (x, y), s in zip(first.points, first.strata) if s == 0])
    # class 0 has 80 columns (less the nodata block); left and right halves get about the same
    assert 150 < (cols < 40).sum() < 250


def test_only_the_legend_classes_and_inputs_that_are_no_class_map(tmp_path):
    path, _ = _class_map(tmp_path)
    sample = stratified_sample(path, per_class=10, class_names={0: "Forest", 2: "Water"})
    assert set(sample.allocation) == {0, 2, 254}  # Unclassified is a stratum of a Glassbox map
    image = write_raster(tmp_path / "image.tif", np.ones((3, 20, 20), dtype="uint8"))
    with pytest.raises(RasterInputError, match="3 bands"):
        stratified_sample(image)
    floats = write_raster(tmp_path / "floats.tif", np.ones((1, 20, 20), dtype="float32"))
    with pytest.raises(RasterInputError, match="integer"):
        stratified_sample(floats)
    empty = write_raster(tmp_path / "empty.tif", np.full((1, 20, 20), 255, dtype="uint8"), nodata=255)
    with pytest.raises(TrainingDataError, match="no pixels"):
        stratified_sample(empty)


def test_sample_points_through_processing_feeds_assess_map(tmp_path, glassbox_processing):
    import processing
    from qgis.core import QgsProcessingException, QgsVectorLayer, edit

    path, data = _class_map(tmp_path, dtype="uint16", nodata=0)
    result = processing.run("glassbox:sample_points", {
        "INPUT": path, "POINTS_PER_CLASS": 20, "TOTAL_POINTS": 200, "SEED": 5,
        "OUTPUT": str(tmp_path / "points.gpkg")})
    layer = QgsVectorLayer(result["OUTPUT"], "points", "ogr")
    assert layer.isValid() and layer.featureCount() == result["N_POINTS"] == 200
    assert layer.crs().authid() == "EPSG:32633" and layer.fields().names()[-2:] == ["point_id", "ref_class"]
    features = list(layer.getFeatures())
    assert sorted(f["point_id"] for f in features) == list(range(1, 201))
    assert not any(f["ref_class"] for f in features)  # left empty (NULL) for the interpreter
    with rasterio.open(path) as ds:
        truth = {f.id(): int(data[ds.index(f.geometry().asPoint().x(), f.geometry().asPoint().y())])
                 for f in features}
    # uint16 with nodata 0: the top half is nodata here, and 254 is an ordinary class on 16 bits
    assert set(truth.values()) == {1, 2, 7, 254}
    # label every point with the map's own class but one: assess_map then gives 199 / 200
    wrong = features[0].id()
    with edit(layer):
        for f in features:
            layer.changeAttributeValue(f.id(), layer.fields().indexOf("ref_class"),
                                       str(truth[f.id()] if f.id() != wrong else (1 if truth[f.id()] != 1 else 2)))
    assessed = processing.run("glassbox:assess_map", {
        "INPUT": path, "REFERENCE": result["OUTPUT"], "CLASS_FIELD": "ref_class",
        "OUTPUT_REPORT": str(tmp_path / "report.html")})
    assert assessed["N_POINTS"] == 200 and assessed["OVERALL_ACCURACY"] == pytest.approx(199 / 200)

    with pytest.raises(QgsProcessingException, match="fewer than"):
        processing.run("glassbox:sample_points", {"INPUT": path, "POINTS_PER_CLASS": 50, "TOTAL_POINTS": 100,
                                                  "OUTPUT": str(tmp_path / "refused.gpkg")})
    with pytest.raises(QgsProcessingException, match="cannot name the reference class field"):
        processing.run("glassbox:sample_points", {"INPUT": path, "CLASS_FIELD": "fid",
                                                  "OUTPUT": str(tmp_path / "refused.gpkg")})
    assert not (tmp_path / "refused.gpkg").exists()


def test_a_field_name_a_shapefile_would_cut_is_refused(tmp_path, glassbox_processing):
    import processing
    from qgis.core import QgsProcessingException

    path, _ = _class_map(tmp_path)
    with pytest.raises(QgsProcessingException, match="at most 10 bytes"):
        processing.run("glassbox:sample_points", {"INPUT": path, "CLASS_FIELD": "reference_label",
                                                  "OUTPUT": str(tmp_path / "points.shp")})
    assert not (tmp_path / "points.shp").exists()
    result = processing.run("glassbox:sample_points", {"INPUT": path, "POINTS_PER_CLASS": 5, "CLASS_FIELD": "truth",
                                                       "OUTPUT": str(tmp_path / "points.shp")})
    assert result["N_POINTS"] == 5 * 5
