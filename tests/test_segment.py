"""glassbox:segment and core.segment / core.sam: polygons from explanation seed points, with the
seeded watershed (generated scenes with known objects) and a tiny, randomly initialised Segment
Anything model built from segment_anything's own modules (no checkpoint is downloaded)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio

from helpers import TINY_BANDS, two_halves, write_raster

pytestmark = pytest.mark.usefixtures("glassbox_processing", "one_torch_thread")

ORIGIN = (500000.0, 6000000.0)  # write_raster's default north-up grid, 10 m pixels, EPSG:32633
PIXEL = 10.0
TINY_SAM = "tiny_test"


def xy(row, col):
    """CRS coordinates of the centre of pixel (row, col) of a raster written by write_raster."""
    return ORIGIN[0] + PIXEL * (col + 0.5), ORIGIN[1] - PIXEL * (row + 0.5)


def blob_scene(rows, cols, blobs, seed=0):
    """A 3-band uint8 scene: smooth random texture and noise on a green-grey background, with
    reddish objects: ``blobs`` are (row, col, radius_rows, radius_cols) ellipses. Returns
    (data, object mask)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:rows, :cols]
    mask = np.zeros((rows, cols), dtype=bool)
    for r, c, a, b in blobs:
        mask |= ((rr - r) / a) ** 2 + ((cc - c) / b) ** 2 < 1
    texture = np.stack([gaussian_filter(rng.normal(0, 1, (rows, cols)), 2) for _ in range(3)]) * 40
    background = np.array([90.0, 120.0, 70.0])[:, None, None]
    foreground = np.array([150.0, 100.0, 60.0])[:, None, None]
    data = np.where(mask[None], foreground, background) + texture + rng.normal(0, 8, (3, rows, cols))
    return np.clip(data, 0, 255).astype(np.uint8), mask


def point_layer(points, crs="EPSG:32633", labels=None):
    """A memory point layer with fields score and class (and label, 1 = object, 0 = background,
    when ``labels`` are given): ``points`` are (x, y, score, class)."""
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer

    extra = "&field=label:integer" if labels is not None else ""
    layer = QgsVectorLayer(f"Point?crs={crs}&field=score:double&field=class:string(20){extra}", "seeds", "memory")
    features = []
    for i, (x, y, score, name) in enumerate(points):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        feature["score"] = score
        feature["class"] = name
        if labels is not None:
            feature["label"] = labels[i]
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def run_segment(params, feedback=None):
    import processing

    from glassbox.algorithms.segment import SegmentAlgorithm

    algorithm = SegmentAlgorithm()
    algorithm.initAlgorithm()
    return processing.run(algorithm, params, feedback=feedback)


def rasterised(path, raster):
    """The polygons of the GeoPackage ``path`` burnt into the grid of ``raster`` (bool)."""
    from osgeo import ogr
    from rasterio.features import rasterize
    import json

    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    shapes = [json.loads(f.GetGeometryRef().ExportToJson()) for f in layer]
    with rasterio.open(raster) as src:
        if not shapes:
            return np.zeros(src.shape, dtype=bool)
        return rasterize([(s, 1) for s in shapes], out_shape=src.shape, transform=src.transform).astype(bool)


def iou(a, b):
    return float((a & b).sum() / max(1, (a | b).sum()))


# -- the seeded watershed ---------------------------------------------------------------------------
def test_watershed_recovers_a_known_object(tmp_path):
    from qgis.core import QgsCategorizedSymbolRenderer, QgsVectorLayer, QgsWkbTypes

    data, truth = blob_scene(120, 150, [(60, 70, 30, 38), (45, 105, 12, 20)])  # an irregular two-lobed object
    raster = write_raster(tmp_path / "scene.tif", data)
    seeds = point_layer([(*xy(62, 66), 0.9, "blob"), (*xy(46, 108), 0.7, "blob")])
    out = tmp_path / "not" / "yet" / "segments.gpkg"  # a missing folder is made, as for rasters
    result = run_segment({"INPUT": raster, "SEEDS": seeds, "OUTPUT_POLYGONS": str(out)})
    assert result["SEEDS_USED"] == 2 and result["POLYGONS"] == 1
    assert iou(rasterised(out, raster), truth) >= 0.8
    layer = QgsVectorLayer(str(out), "segments", "ogr")
    assert layer.isValid() and layer.geometryType() == QgsWkbTypes.PolygonGeometry
    assert layer.crs().authid() == "EPSG:32633"
    (feature,) = list(layer.getFeatures())
    assert feature["class"] == "blob" and feature["seed_ids"] == "1,2" and feature["n_seeds"] == 2
    assert feature["score"] == pytest.approx(0.9) and feature["method"] == "watershed"
    assert feature["area"] == pytest.approx(feature.geometry().area())
    assert feature["area"] == pytest.approx(truth.sum() * PIXEL * PIXEL, rel=0.2)
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)  # the .qml saved beside it


def test_areas_are_square_metres_in_degrees_too(tmp_path):
    """The same scene on a WGS 84 grid of about 10 m pixels at 52 N: the polygon's `area` is in
    square metres on the ground (as QGIS's ellipsoidal measure, within 1 %), not square degrees,
    and MIN_AREA is compared in square metres."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsDistanceArea, QgsProject, QgsVectorLayer

    data, truth = blob_scene(120, 150, [(60, 70, 30, 38)])
    dlat = 10.0 / 111_320.0
    dlon = 10.0 / (111_320.0 * np.cos(np.radians(52.0)))
    raster = tmp_path / "scene_4326.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=150, height=120, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=rasterio.transform.from_origin(13.0, 52.0 + 60 * dlat, dlon, dlat)) as ds:
        ds.write(data)
    seed = point_layer([(13.0 + 66.5 * dlon, 52.0 + 60 * dlat - 62.5 * dlat, 0.9, "blob")], "EPSG:4326")
    out = tmp_path / "segments.gpkg"
    run_segment({"INPUT": str(raster), "SEEDS": seed, "OUTPUT_POLYGONS": str(out)})
    (feature,) = list(QgsVectorLayer(str(out), "segments", "ogr").getFeatures())
    measure = QgsDistanceArea()
    measure.setSourceCrs(QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance().transformContext())
    measure.setEllipsoid("WGS84")
    ground = measure.measureArea(feature.geometry())
    assert feature["area"] == pytest.approx(ground, rel=0.01)
    assert feature["area"] == pytest.approx(truth.sum() * 100.0, rel=0.2)
    smaller = tmp_path / "none.gpkg"
    from qgis.core import QgsProcessingFeedback

    warnings = []
    feedback = QgsProcessingFeedback()
    feedback.pushWarning = warnings.append
    result = run_segment({"INPUT": str(raster), "SEEDS": seed, "OUTPUT_POLYGONS": str(smaller),
                          "MIN_AREA": 2 * feature["area"]}, feedback)
    assert result["POLYGONS"] == 0
    assert any(w.startswith("no polygon is left: 1 polygon(s) smaller than the minimum area") for w in warnings), warnings


def test_a_mosaic_is_segmented_as_the_whole_raster(tmp_path, tiny_model_files):
    """MOSAIC: an object cut by the border between two rasters comes out as the one polygon of
    the whole raster, from seed points and from a model's peaks alike."""
    from osgeo import ogr

    data, truth = blob_scene(120, 150, [(60, 70, 30, 38), (45, 105, 12, 20)])
    whole = write_raster(tmp_path / "scene.tif", data)
    west = write_raster(tmp_path / "west.tif", data[:, :, :70])
    east = write_raster(tmp_path / "east.tif", data[:, :, 70:], origin=(ORIGIN[0] + 70 * PIXEL, ORIGIN[1]))

    def shapes(path):
        ds = ogr.Open(str(path))
        return sorted((f.GetField("class"), f.GetField("seed_ids"), round(f.GetGeometryRef().GetArea()))
                      for f in ds.GetLayer(0))

    seeds = point_layer([(*xy(62, 66), 0.9, "blob"), (*xy(46, 108), 0.7, "blob")])
    runs = {}
    for name, inputs in (("whole", {"INPUT": whole}), ("mosaic", {"MOSAIC": [west, east]})):
        runs[name] = run_segment({**inputs, "SEEDS": seeds, "OUTPUT_POLYGONS": str(tmp_path / f"{name}.gpkg")})
    assert runs["mosaic"]["POLYGONS"] == 1 and iou(rasterised(runs["mosaic"]["OUTPUT_POLYGONS"], whole), truth) >= 0.8
    assert shapes(runs["mosaic"]["OUTPUT_POLYGONS"]) == shapes(runs["whole"]["OUTPUT_POLYGONS"])

    halves = two_halves(48, 64)
    whole = write_raster(tmp_path / "halves.tif", halves, descriptions=TINY_BANDS)
    top = write_raster(tmp_path / "top.tif", halves[:, :24], descriptions=TINY_BANDS)
    bottom = write_raster(tmp_path / "bottom.tif", halves[:, 24:], descriptions=TINY_BANDS,
                          origin=(ORIGIN[0], ORIGIN[1] - 24 * PIXEL))
    model = {"MODEL": str(tiny_model_files["onnx"]), "PEAKS_PER_TILE": 1}
    whole_run = run_segment({"INPUT": whole, **model, "OUTPUT_POLYGONS": str(tmp_path / "m_whole.gpkg")})
    mosaic_run = run_segment({"MOSAIC": [top, bottom], **model, "OUTPUT_POLYGONS": str(tmp_path / "m_mosaic.gpkg")})
    assert whole_run["SEEDS_USED"] >= 2 and mosaic_run["SEEDS_USED"] == whole_run["SEEDS_USED"]
    assert shapes(mosaic_run["OUTPUT_POLYGONS"]) == shapes(whole_run["OUTPUT_POLYGONS"])


def test_object_across_a_window_border_is_one_polygon(tmp_path):
    from glassbox.core.segment.seeds import Seed, SegmentOptions
    from glassbox.core.segment.windows import WindowGrid
    from glassbox.core.segment.run import segment_raster

    grid = WindowGrid(128, 128, 64)
    assert (grid.step, grid.margin) == (48, 8)  # cells of 48 px, windows of up to 64 px
    data, truth = blob_scene(128, 128, [(60, 48, 14, 20)], seed=4)  # centred on the border at column 48
    raster = write_raster(tmp_path / "scene.tif", data)
    seeds = [Seed(*xy(60, 38), 0.8, "blob", 7), Seed(*xy(62, 58), 0.6, "blob", 9)]
    assert grid.cell(60, 38) != grid.cell(62, 58)
    out = tmp_path / "segments.gpkg"
    simplified = tmp_path / "simplified.gpkg"
    result = segment_raster(raster, seeds, str(out), SegmentOptions(window_size=64))
    assert result.windows == 2 and result.polygons == 1 and result.seeds_used == 2
    assert iou(rasterised(out, raster), truth) >= 0.8
    segment_raster(raster, seeds, str(simplified), SegmentOptions(window_size=64, simplify_tolerance=PIXEL))
    from osgeo import ogr

    def vertices_and_ids(path):
        ds = ogr.Open(str(path))  # keep the data source alive while its layer is read
        (feature,) = list(ds.GetLayer(0))
        return feature.GetGeometryRef().GetGeometryRef(0).GetPointCount(), feature.GetField("seed_ids")

    raw_points, raw_ids = vertices_and_ids(out)
    simple_points, simple_ids = vertices_and_ids(simplified)
    assert raw_ids == simple_ids == "7,9"
    assert simple_points < raw_points / 2


# -- seeds that cannot be used -------------------------------------------------------------------
def test_seeds_outside_or_on_nodata_are_reported(tmp_path):
    from qgis.core import QgsProcessingException, QgsVectorLayer

    data, truth = blob_scene(80, 80, [(40, 30, 12, 12)], seed=2)
    data[:, :, 60:] = 0  # a nodata strip on the right
    raster = write_raster(tmp_path / "scene.tif", data, nodata=0)
    points = [(*xy(40, 30), 1.0, "blob"), (*xy(40, 200), 1.0, "blob"), (*xy(20, 70), 1.0, "blob"),
              (*xy(40, 32), 0.05, "blob")]
    out = tmp_path / "segments.gpkg"
    seeds_out = tmp_path / "seeds.gpkg"
    result = run_segment({"INPUT": raster, "SEEDS": point_layer(points), "OUTPUT_POLYGONS": str(out),
                          "OUTPUT_SEEDS": str(seeds_out)})
    assert (result["SEEDS_USED"], result["SEEDS_OUTSIDE"], result["SEEDS_NODATA"], result["SEEDS_WEAK"]) == (1, 1, 1, 1)
    got = rasterised(out, raster)
    assert not got[:, 60:].any()  # nodata never belongs to a segment
    assert iou(got, truth) >= 0.8
    statuses = {f["id"]: f["status"] for f in QgsVectorLayer(str(seeds_out), "seeds", "ogr").getFeatures()}
    assert statuses == {1: "used", 2: "outside the raster", 3: "on nodata", 4: "below the minimum score"}

    unusable = tmp_path / "unusable"
    unusable.mkdir()
    with pytest.raises(QgsProcessingException, match="none of the 2 seed point.*1 outside the raster, 1 on nodata"):
        run_segment({"INPUT": raster, "SEEDS": point_layer(points[1:3]),
                     "OUTPUT_POLYGONS": str(unusable / "segments.gpkg")})
    assert os.listdir(unusable) == []



def test_a_mask_keeps_segments_and_seeds_inside_it(tmp_path):
    """MASK (in another CRS than the raster): the object is cut where the mask ends, no segment
    pixel lies outside it, and a seed outside it is skipped (counted with those on nodata)."""
    from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsGeometry,
                           QgsProject, QgsProcessingException, QgsVectorLayer)

    data, truth = blob_scene(80, 100, [(40, 30, 14, 14), (40, 75, 10, 10)], seed=3)
    raster = write_raster(tmp_path / "scene.tif", data)
    x0, y1 = xy(0, 0)[0] - PIXEL / 2, xy(0, 0)[1] + PIXEL / 2
    west_half = QgsGeometry.fromWkt(f"POLYGON(({x0} {y1}, {x0 + 300} {y1}, {x0 + 300} {y1 - 800}, "
                                    f"{x0} {y1 - 800}, {x0} {y1}))")  # columns 0..29: the first blob's west half
    west_half.transform(QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                               QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance()))
    mask = QgsVectorLayer("Polygon?crs=EPSG:4326", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(west_half)
    assert mask.dataProvider().addFeatures([feature])[0]
    seeds = point_layer([(*xy(40, 24), 1.0, "blob"), (*xy(40, 75), 1.0, "blob")])
    out = tmp_path / "segments.gpkg"
    result = run_segment({"INPUT": raster, "SEEDS": seeds, "MASK": mask, "OUTPUT_POLYGONS": str(out)})
    assert (result["SEEDS_USED"], result["SEEDS_NODATA"]) == (1, 1)
    got = rasterised(out, raster)
    assert got.any() and not got[:, 31:].any()  # one pixel of slack: the reprojected mask edge
    assert iou(got, truth & (np.arange(100) < 30)[None, :]) >= 0.7
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(QgsProcessingException, match="1 on nodata pixels or outside the mask"):
        run_segment({"INPUT": raster, "SEEDS": point_layer([(*xy(40, 75), 1.0, "blob")]), "MASK": mask,
                     "OUTPUT_POLYGONS": str(nothing / "segments.gpkg")})
    assert os.listdir(nothing) == []

def test_sam_without_checkpoint_and_ambiguous_seed_sources_fail_clearly(tmp_path):
    from qgis.core import QgsProcessingException

    data, _truth = blob_scene(40, 40, [(20, 20, 8, 8)])
    raster = write_raster(tmp_path / "scene.tif", data)
    seeds = point_layer([(*xy(20, 20), 1.0, "blob")])
    out = tmp_path / "out"
    out.mkdir()
    where = r"checkpoint file \(e\.g\. sam_vit_b_01ec64\.pth.*GitHub.*never downloads"
    with pytest.raises(QgsProcessingException, match=where):
        run_segment({"INPUT": raster, "SEEDS": seeds, "METHOD": 1, "OUTPUT_POLYGONS": str(out / "s.gpkg")})
    with pytest.raises(QgsProcessingException, match="exactly one source of seed points"):
        run_segment({"INPUT": raster, "SEEDS": seeds, "HEATMAP": raster, "OUTPUT_POLYGONS": str(out / "s.gpkg")})
    assert os.listdir(out) == []


# -- Segment Anything: a tiny random SAM through samgeo and segment_anything -----------------------
def build_tiny_sam():
    """A Segment Anything network made of segment_anything's own modules, tiny: 64 px input,
    one 32-wide transformer block, prompt embedding 32 (= the encoder's output channels)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    size, patch, dim = 64, 16, 32
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=size, patch_size=patch, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, out_chans=dim,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=0,
            global_attn_indexes=(),
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
                                 transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@pytest.fixture(scope="module")
def tiny_sam_checkpoint(tmp_path_factory):
    import torch

    from glassbox.core.segment.sam import register_sam_builder, unregister_sam_builder

    torch.manual_seed(0)
    model = build_tiny_sam()
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(model.state_dict(), path)
    register_sam_builder(TINY_SAM, build_tiny_sam, "tiny test SAM")
    yield path, model
    unregister_sam_builder(TINY_SAM)


def test_checkpoint_is_loaded_from_the_path_and_pickles_are_refused(tmp_path, tiny_sam_checkpoint):
    import torch

    from glassbox.core.errors import ModelLoadError, UnsafeModelError
    from glassbox.core.segment.sam import load_sam

    path, reference = tiny_sam_checkpoint
    loaded = load_sam(TINY_SAM, path)  # the builder starts from other random weights
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": reference.state_dict(), "optimiser": torch.optim.SGD}, pickled)
    with pytest.raises(UnsafeModelError, match="pickled"):
        load_sam(TINY_SAM, pickled)
    partial_state = {k: v for k, v in reference.state_dict().items() if not k.startswith("mask_decoder")}
    torch.save(partial_state, tmp_path / "partial.pth")
    with pytest.raises(ModelLoadError, match="does not fit the SAM model type tiny_test"):
        load_sam(TINY_SAM, tmp_path / "partial.pth")
    (tmp_path / "text.pth").write_text("not weights at all\n")
    with pytest.raises(ModelLoadError, match="cannot read the SAM checkpoint .not a Torch file.: the file is damaged, incomplete or not a Torch"):
        load_sam(TINY_SAM, tmp_path / "text.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty file .0 bytes."):
        load_sam(TINY_SAM, tmp_path / "empty.pth")


def test_tiny_sam_through_samgeo_gives_a_valid_layer(tmp_path, tiny_sam_checkpoint):
    from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry, QgsPointXY, QgsProject,
                           QgsVectorLayer)

    from glassbox.core.segment.sam import model_types

    path, _model = tiny_sam_checkpoint
    data, _truth = blob_scene(96, 112, [(30, 30, 12, 14), (70, 80, 14, 16)], seed=5)
    raster = write_raster(tmp_path / "scene.tif", data, crs="EPSG:2193", origin=(1570000.0, 5180000.0))
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:2193"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    points, places = [], [(30, 30), (70, 80), (72, 20), (10, 100), (50, 50)]
    for (row, col), name in zip(places, ["tree", "tree", "grass", "grass", "tree"]):
        point = to_wgs84.transform(QgsPointXY(1570000.0 + PIXEL * (col + 0.5), 5180000.0 - PIXEL * (row + 0.5)))
        points.append((point.x(), point.y(), 0.8, name))
    out = tmp_path / "sam_segments.gpkg"
    seeds_out = tmp_path / "sam_seeds.gpkg"
    result = run_segment({
        "INPUT": raster, "SEEDS": point_layer(points, "EPSG:4326", labels=[1, 1, 1, 1, 0]), "METHOD": 1,
        "SAM_CHECKPOINT": str(path), "SAM_MODEL_TYPE": list(model_types()).index(TINY_SAM), "WINDOW_SIZE": 64,
        "OUTPUT_POLYGONS": str(out), "OUTPUT_SEEDS": str(seeds_out),
    })
    statuses = {f["id"]: f["status"] for f in QgsVectorLayer(str(seeds_out), "s", "ogr").getFeatures()}
    assert statuses[5] == "negative point"  # label 0: prompted as a background point
    # a random SAM's best mask often misses its own prompt: such a mask is dropped, not kept whole
    assert {statuses[k] for k in (1, 2, 3, 4)} <= {"used", "no segment"}
    assert result["SEEDS_USED"] == sum(statuses[k] == "used" for k in (1, 2, 3, 4)) >= 1 and result["POLYGONS"] >= 1
    layer = QgsVectorLayer(str(out), "segments", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:2193"
    assert {"class", "score", "seed_ids", "n_seeds", "area", "method"} <= set(layer.fields().names())
    features = list(layer.getFeatures())
    assert len(features) == result["POLYGONS"]
    with rasterio.open(raster) as src:
        bounds = src.bounds
    seen_ids = set()
    for feature in features:
        geometry = feature.geometry()
        assert geometry.isGeosValid() and not geometry.isEmpty()
        assert feature["area"] > 0 and feature["area"] == pytest.approx(geometry.area())
        assert feature["method"] == "sam" and feature["class"] in ("tree", "grass")
        box = geometry.boundingBox()
        assert box.xMinimum() >= bounds.left - 1e-6 and box.xMaximum() <= bounds.right + 1e-6
        assert box.yMinimum() >= bounds.bottom - 1e-6 and box.yMaximum() <= bounds.top + 1e-6
        ids = [int(i) for i in feature["seed_ids"].split(",")]
        for k in ids:  # each seed a polygon names lies in it
            row, col = places[k - 1]
            seed = QgsGeometry.fromPointXY(QgsPointXY(1570000.0 + PIXEL * (col + 0.5), 5180000.0 - PIXEL * (row + 0.5)))
            assert geometry.contains(seed), (k, feature["seed_ids"])
        seen_ids.update(ids)
    assert seen_ids == {k for k in (1, 2, 3, 4) if statuses[k] == "used"}


# -- seeds from explanations: explain's peak layer, a heatmap raster, a model -----------------------
def test_seeds_from_explain_peaks_heatmap_and_model(tmp_path, tiny_model_files):
    import processing
    from qgis.core import QgsCategorizedSymbolRenderer, QgsVectorLayer

    data = two_halves(48, 64)  # left half 'Vegetation', right half 'Water'
    raster = write_raster(tmp_path / "scene.tif", data, descriptions=TINY_BANDS)
    explained = processing.run("glassbox:explain", {
        "INPUT": raster, "MODEL": str(tiny_model_files["torch"]), "METHOD": 1, "PEAKS_PER_TILE": 2,
        "OUTPUT_HEATMAP": str(tmp_path / "heat.tif"), "OUTPUT_BAND_RELEVANCE": str(tmp_path / "bands.csv"),
        "OUTPUT_PEAKS": str(tmp_path / "peaks.gpkg"),
    })
    left = np.zeros((48, 64), dtype=bool)
    left[:, :32] = True

    def class_masks(path):
        layer = QgsVectorLayer(str(path), "s", "ogr")
        assert layer.isValid() and layer.featureCount() > 0
        from rasterio.features import rasterize
        import json

        with rasterio.open(raster) as src:
            masks = {}
            for feature in layer.getFeatures():
                shape = json.loads(feature.geometry().asJson())
                burnt = rasterize([(shape, 1)], out_shape=src.shape, transform=src.transform).astype(bool)
                masks[feature["class"]] = masks.get(feature["class"], np.zeros(src.shape, bool)) | burnt
        return masks, layer

    from_peaks = tmp_path / "from_peaks.gpkg"
    result = run_segment({"INPUT": raster, "SEEDS": explained["OUTPUT_PEAKS"], "OUTPUT_POLYGONS": str(from_peaks)})
    assert result["SEEDS_USED"] >= 2
    masks, layer = class_masks(from_peaks)
    assert set(masks) == {"Vegetation", "Water"}
    assert iou(masks["Vegetation"], left) >= 0.8 and iou(masks["Water"], ~left) >= 0.8
    colours = {c.value(): c.symbol().color().name() for c in layer.renderer().categories()}
    assert colours == {"Vegetation": "#2ca02c", "Water": "#1f77b4"}  # the card's colours, carried by the peaks

    from_heatmap = tmp_path / "from_heatmap.gpkg"
    result = run_segment({"INPUT": raster, "HEATMAP": explained["OUTPUT_HEATMAP"], "PEAKS_PER_TILE": 2,
                          "NEGATIVE_POINTS": 1, "OUTPUT_POLYGONS": str(from_heatmap),
                          "OUTPUT_SEEDS": str(tmp_path / "heat_seeds.gpkg")})
    assert result["SEEDS_USED"] >= 1
    masks, _layer = class_masks(from_heatmap)
    assert set(masks) == {"segment"} and masks["segment"].any()
    labels = {f["label"] for f in QgsVectorLayer(str(tmp_path / "heat_seeds.gpkg"), "s", "ogr").getFeatures()}
    assert labels == {0, 1}  # negative points were chosen from low-relevance spots

    from_model = tmp_path / "from_model.gpkg"
    result = run_segment({"INPUT": raster, "MODEL": str(tiny_model_files["onnx"]), "PEAKS_PER_TILE": 1,
                          "OUTPUT_POLYGONS": str(from_model)})
    masks, layer = class_masks(from_model)
    assert set(masks) == {"Vegetation", "Water"}
    assert iou(masks["Vegetation"], left) >= 0.8 and iou(masks["Water"], ~left) >= 0.8
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    colours = {c.value(): c.symbol().color().name() for c in renderer.categories()}
    assert colours["Vegetation"] == "#2ca02c" and colours["Water"] == "#1f77b4"  # the model card's colours


def test_samgeo_keeps_no_tracebacks_after_import():
    """samgeo stores ImportErrors of optional packages; their tracebacks would pin the caller's
    frames (and QGIS layers) until shutdown, where destroying an OGR layer after exitQgis()
    crashes the interpreter."""
    import sys

    from glassbox.core.segment.sam import import_samgeo

    def import_with_a_local():
        marker = object()  # a local that a pinned frame would keep alive
        import_samgeo()
        return marker

    import_with_a_local()
    stored = [v for name, m in list(sys.modules.items()) if name == "samgeo" or name.startswith("samgeo.")
              for v in vars(m).values() if isinstance(v, BaseException)]
    assert all(e.__traceback__ is None for e in stored)


@pytest.mark.parametrize("extension", ["shp", "gpkg"])
def test_long_seed_lists_fit_a_shapefile_at_whole_ids_and_are_announced(tmp_path, extension):
    """A polygon holding hundreds of seeds: a Shapefile text field holds 254 bytes, so its
    seed_ids are cut at the last whole id with ',...' and the log says so (n_seeds keeps the
    count); a GeoPackage keeps them whole."""
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsVectorLayer
    from shapely.geometry import box

    from glassbox.algorithms.segment import SegmentAlgorithm
    from glassbox.core.io.vectors import VectorLayer
    from rasterio.crs import CRS

    ids = ",".join(str(i) for i in range(1000, 1400))  # 400 ids, 1999 characters
    layer = VectorLayer("segments", CRS.from_epsg(32633).to_wkt(), "Polygon", [("seed_ids", "str"), ("n_seeds", "int")],
                        [(box(500000, 5999000, 501000, 6000000).wkb, {"seed_ids": ids, "n_seeds": 400})])
    warnings = []

    class Feedback(QgsProcessingFeedback):
        def pushWarning(self, text):  # noqa: N802 (QGIS API name)
            warnings.append(text)

    path = tmp_path / f"segments.{extension}"
    algorithm = SegmentAlgorithm()
    algorithm.initAlgorithm({})
    algorithm.write_vector_output({"OUTPUT_POLYGONS": str(path)}, "OUTPUT_POLYGONS", QgsProcessingContext(), layer,
                                  Feedback())
    written = QgsVectorLayer(str(path), "segments", "ogr")
    (feature,) = list(written.getFeatures())
    assert feature["n_seeds"] == 400 and not feature.geometry().isNull()
    if extension == "gpkg":
        assert feature["seed_ids"] == ids and not warnings
        return
    text = feature["seed_ids"]
    assert text.endswith(",...") and len(text.encode()) <= 254
    kept = text[:-len(",...")].split(",")
    assert kept == ids.split(",")[:len(kept)] and len(kept) > 40
    assert len(warnings) == 1 and "seed_ids" in warnings[0] and "GeoPackage" in warnings[0]


def test_a_heatmap_without_data_says_so(tmp_path):
    """An all-nodata heatmap gives no seed: the error names the heatmap, not missing seed points."""
    from glassbox.core.errors import SegmentationError
    from glassbox.core.segment.seeds import seeds_from_heatmap

    empty = write_raster(tmp_path / "heat.tif", np.full((1, 32, 32), -1, dtype=np.float32), nodata=-1)
    with pytest.raises(SegmentationError, match="the heatmap heat.tif has no peak to seed from: it holds only nodata"):
        seeds_from_heatmap(empty, "EPSG:32633", tile_size=16)
    flat = write_raster(tmp_path / "flat.tif", np.zeros((1, 32, 32), dtype=np.float32), nodata=-1)
    with pytest.raises(SegmentationError, match="flat.tif has no peak to seed from: it has no local maximum"):
        seeds_from_heatmap(flat, "EPSG:32633", tile_size=16)


# -- vector outputs into a user's existing files --------------------------------------------------
def _user_geopackage(path):
    """A GeoPackage holding a user's point layer 'survey' (3 points) and a style file of the user's
    beside it; returns the style's text."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("survey", srs, ogr.wkbPoint)
    for k in range(3):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({xy(10, 10 + k)[0]} {xy(10, 10 + k)[1]})"))
        layer.CreateFeature(feature)
        feature = None
    layer = dataset = None
    style = "<!DOCTYPE qgis><qgis version='3.22'><!-- the user's own style --></qgis>"
    path.with_suffix(".qml").write_text(style)
    return style


def _layers(path):
    from osgeo import ogr

    dataset = ogr.Open(str(path))
    found = {dataset.GetLayer(i).GetName(): dataset.GetLayer(i).GetFeatureCount() for i in range(dataset.GetLayerCount())}
    dataset = None
    return found


def _cancel_when_writing():
    """A feedback that cancels once segment announces its result, i.e. while the polygons are written."""
    from qgis.core import QgsProcessingFeedback

    class CancelWhenWriting(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802 (QGIS API name)
            super().pushInfo(info)
            if "polygon(s) from" in info:
                self.cancel()

    return CancelWhenWriting()


def _blob_run(tmp_path):
    data, _truth = blob_scene(80, 80, [(40, 40, 15, 18)])
    raster = write_raster(tmp_path / "scene.tif", data)
    return {"INPUT": raster, "SEEDS": point_layer([(*xy(40, 40), 0.9, "blob")])}


def test_a_failed_run_into_an_existing_geopackage_drops_only_its_own_table(tmp_path):
    """QGIS's 'Save to GeoPackage' writes a table into an existing file: a cancelled or failed run
    must drop that table and leave the user's file, its other layers and their style alone (it
    deleted the whole file and the .qml beside it)."""
    from qgis.core import QgsProcessingException

    survey = tmp_path / "survey.gpkg"
    style = _user_geopackage(survey)
    params = {**_blob_run(tmp_path), "OUTPUT_POLYGONS": f"ogr:dbname='{survey}' table=\"segments\" (geom)"}
    with pytest.raises(QgsProcessingException, match="cancel"):
        run_segment(params, _cancel_when_writing())
    assert _layers(survey) == {"survey": 3}
    assert survey.with_suffix(".qml").read_text() == style
    new_file = tmp_path / "new.gpkg"  # a file the run itself created goes whole
    with pytest.raises(QgsProcessingException, match="cancel"):
        run_segment({**params, "OUTPUT_POLYGONS": f"ogr:dbname='{new_file}' table=\"segments\" (geom)"},
                    _cancel_when_writing())
    assert not new_file.exists()


def test_segments_into_an_existing_geopackage_keep_their_style_inside_it(tmp_path):
    """The segments' style is saved in the GeoPackage (layer_styles) for their table only: no
    .qml beside the file, which would style every layer in it or overwrite the user's."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsVectorLayer

    survey = tmp_path / "survey.gpkg"
    style = _user_geopackage(survey)
    result = run_segment({**_blob_run(tmp_path),
                          "OUTPUT_POLYGONS": f"ogr:dbname='{survey}' table=\"segments\" (geom)"})
    assert result["POLYGONS"] == 1 and result["OUTPUT_POLYGONS"] == f"{survey}|layername=segments"
    layers = _layers(survey)
    assert layers["survey"] == 3 and layers["segments"] == 1 and layers["layer_styles"] == 1
    assert survey.with_suffix(".qml").read_text() == style
    segments = QgsVectorLayer(f"{survey}|layername=segments", "segments", "ogr")
    assert isinstance(segments.renderer(), QgsCategorizedSymbolRenderer)
    points = QgsVectorLayer(f"{survey}|layername=survey", "survey", "ogr")
    assert points.isValid() and not isinstance(points.renderer(), QgsCategorizedSymbolRenderer)


def test_a_cancelled_shapefile_output_leaves_none_of_its_files(tmp_path):
    from qgis.core import QgsProcessingException

    folder = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="cancel"):
        run_segment({**_blob_run(tmp_path), "OUTPUT_POLYGONS": str(folder / "segments.shp")}, _cancel_when_writing())
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []


def test_a_raster_without_crs_is_refused_before_heatmap_seeds_are_placed(tmp_path):
    """Heatmap seeds are reprojected into the raster's CRS: a raster without one gave a rasterio
    traceback ('CRS is empty or invalid') instead of the message every other seed source gives."""
    from qgis.core import QgsProcessingException

    data, _truth = blob_scene(80, 80, [(40, 40, 15, 18)])
    raster = write_raster(tmp_path / "scene.tif", data, crs=None)
    heatmap = write_raster(tmp_path / "heat.tif", (data[:1] / 255.0).astype(np.float32))
    with pytest.raises(QgsProcessingException, match="has no CRS.*assign its CRS"):
        run_segment({"INPUT": raster, "HEATMAP": heatmap, "OUTPUT_POLYGONS": str(tmp_path / "out" / "s.gpkg")})
    assert not (tmp_path / "out").exists()


def test_no_seed_source_is_refused_before_the_run():
    """The dialog's check before the run (checkParameterValues) says a seed source is missing,
    and that an input raster is, rather than the log once the run has started."""
    from qgis.core import QgsProcessingContext

    from glassbox.algorithms.segment import SegmentAlgorithm

    algorithm = SegmentAlgorithm()
    algorithm.initAlgorithm()
    ok, message = algorithm.checkParameterValues({"OUTPUT_POLYGONS": "TEMPORARY_OUTPUT"}, QgsProcessingContext())
    assert not ok and "give exactly one source of seed points" in message
    ok, message = algorithm.checkParameterValues({"SEEDS": point_layer([(*xy(1, 1), 1.0, "a")]),
                                                  "OUTPUT_POLYGONS": "TEMPORARY_OUTPUT"}, QgsProcessingContext())
    assert not ok and "no input: choose an input raster, or the rasters of a mosaic" in message


def test_the_border_sits_on_the_objects_edge_not_a_pixel_inside(tmp_path):
    """A sharp 30 x 30 px square: its segment holds the whole square (the blurred features had
    put the object's outer ring among the background markers: every object lost a pixel all
    round, 784 of 900 px here)."""
    from qgis.core import QgsVectorLayer

    rng = np.random.default_rng(4)
    data = np.clip(rng.normal([[[90.0]], [[120.0]], [[70.0]]], 6, (3, 100, 100)), 0, 255)
    data[:, 35:65, 40:70] = np.array([200.0, 90.0, 60.0])[:, None, None]
    raster = write_raster(tmp_path / "square.tif", data.astype(np.uint8))
    result = run_segment({"INPUT": raster, "SEEDS": point_layer([(*xy(50, 55), 0.9, "roof")]),
                          "OUTPUT_POLYGONS": str(tmp_path / "s.gpkg")})
    (feature,) = list(QgsVectorLayer(result["OUTPUT_POLYGONS"], "s", "ogr").getFeatures())
    assert feature["area"] == pytest.approx(900 * PIXEL * PIXEL, rel=0.01)
    box = feature.geometry().boundingBox()
    assert (box.xMinimum(), box.yMaximum()) == (ORIGIN[0] + 40 * PIXEL, ORIGIN[1] - 35 * PIXEL)


def test_min_area_fills_small_holes_and_names_the_seeds_it_dropped(tmp_path):
    """A 40 px square with a 10 x 10 px hole and an 8 x 8 px square: with MIN_AREA 12000 m2 the
    hole (10000 m2) is filled, the small square (6400 m2) dropped, and its seed's status says so
    (it read 'used' and counted in SEEDS_USED)."""
    from qgis.core import QgsVectorLayer

    rng = np.random.default_rng(4)
    data = np.clip(rng.normal([[[90.0]], [[120.0]], [[70.0]]], 6, (3, 100, 100)), 0, 255)
    roof = np.array([200.0, 90.0, 60.0])[:, None, None]
    data[:, 20:60, 20:60] = roof
    data[:, 35:45, 35:45] = np.array([90.0, 120.0, 70.0])[:, None, None]  # the hole
    data[:, 80:88, 80:88] = roof
    raster = write_raster(tmp_path / "roofs.tif", data.astype(np.uint8))
    seeds = point_layer([(*xy(25, 25), 0.9, "roof"), (*xy(83, 83), 0.8, "roof")])

    def holes_and_areas(result):
        features = list(QgsVectorLayer(result["OUTPUT_POLYGONS"], "s", "ogr").getFeatures())
        return sorted((len(f.geometry().asPolygon()) - 1, round(f["area"])) for f in features)

    kept = run_segment({"INPUT": raster, "SEEDS": seeds, "OUTPUT_POLYGONS": str(tmp_path / "all.gpkg")})
    (small_holes, small), (big_holes, big) = holes_and_areas(kept)
    assert (small_holes, big_holes) == (0, 1)
    assert small == pytest.approx(6400, rel=0.05) and big == pytest.approx(150000, rel=0.02)
    result = run_segment({"INPUT": raster, "SEEDS": seeds, "MIN_AREA": 12000,
                          "OUTPUT_POLYGONS": str(tmp_path / "big.gpkg"), "OUTPUT_SEEDS": str(tmp_path / "seeds.gpkg")})
    ((holes, area),) = holes_and_areas(result)
    assert holes == 0 and area == pytest.approx(160000, rel=0.02)
    assert result["SEEDS_USED"] == 1 and result["POLYGONS"] == 1
    statuses = {f["id"]: f["status"] for f in QgsVectorLayer(result["OUTPUT_SEEDS"], "s", "ogr").getFeatures()}
    assert statuses == {1: "used", 2: "segment below the minimum area"}


def test_a_segment_does_not_flood_a_cover_that_looks_like_another_distant_seed(tmp_path):
    """Fields west, a lake east, and a small pond (the lake's colour) in the fields, each with a
    seed: the fields' segment used to take the lake too, since the relief measured the distance to
    the *nearest* seed colour (the pond's, for the lake) and the lake had no seed of its own (an
    audit: 31 heatmap peaks grew 2 polygons over 77 % of a scene)."""
    from qgis.core import QgsVectorLayer

    rng = np.random.default_rng(4)
    data = np.clip(rng.normal([[[150.0]], [[170.0]], [[90.0]]], 5, (3, 100, 120)), 0, 255)
    lake = np.array([40.0, 60.0, 110.0])[:, None, None]
    data[:, :, 60:] = lake
    data[:, 40:52, 20:32] = lake  # the pond
    raster = write_raster(tmp_path / "fields.tif", data.astype(np.uint8))
    seeds = point_layer([(*xy(80, 30), 0.9, "fields"), (*xy(46, 26), 0.8, "pond")])
    result = run_segment({"INPUT": raster, "SEEDS": seeds, "OUTPUT_POLYGONS": str(tmp_path / "s.gpkg")})
    areas = {f["class"]: f["area"] for f in QgsVectorLayer(result["OUTPUT_POLYGONS"], "s", "ogr").getFeatures()}
    fields = (100 * 60 - 144) * PIXEL * PIXEL
    assert areas["fields"] == pytest.approx(fields, rel=0.03)  # not the lake's 6000 px as well
    assert 0.8 * 144 * PIXEL * PIXEL <= areas["pond"] <= 144 * PIXEL * PIXEL


def test_classless_seeds_keep_covers_apart_and_alike_seeds_make_one_segment(tmp_path):
    """A heatmap's peaks have no class (all 'segment'): their touching segments were dissolved
    into one blob over every cover (an audit: 26 seeds in one polygon over a village, meadows, a
    river and forest). Now a field with three seeds is one segment and the lake beside it another,
    the two sharing their border."""
    from qgis.core import QgsVectorLayer

    rng = np.random.default_rng(5)
    data = np.clip(rng.normal([[[150.0]], [[170.0]], [[90.0]]], 5, (3, 100, 120)), 0, 255)
    data[:, :, 60:] = np.array([40.0, 60.0, 110.0])[:, None, None]  # the lake
    raster = write_raster(tmp_path / "field_lake.tif", data.astype(np.uint8))
    seeds = point_layer([(*xy(20, 15), 0.9, "segment"), (*xy(50, 40), 0.8, "segment"),
                         (*xy(85, 20), 0.7, "segment"), (*xy(50, 90), 0.9, "segment")])
    result = run_segment({"INPUT": raster, "SEEDS": seeds, "OUTPUT_POLYGONS": str(tmp_path / "s.gpkg")})
    field, lake = sorted(QgsVectorLayer(result["OUTPUT_POLYGONS"], "s", "ogr").getFeatures(),
                         key=lambda f: f.geometry().boundingBox().xMinimum())
    assert result["POLYGONS"] == 2 and result["SEEDS_USED"] == 4
    # each cover whole, and the two share their border (a band of background 2 px wide parted them)
    assert field["area"] == lake["area"] == pytest.approx(6000 * PIXEL * PIXEL)
    assert field.geometry().boundingBox().xMaximum() == lake.geometry().boundingBox().xMinimum() == ORIGIN[0] + 60 * PIXEL


def test_segment_purity_benchmark_on_tiny_data(tmp_path):
    """bench/bench_segment_purity.py: a segment half on its class scores 0.5, its coverage counts."""
    from osgeo import ogr, osr

    from helpers import load_script

    values = np.zeros((1, 20, 20), dtype=np.uint8)
    values[0, :, 10:] = 1
    raster = write_raster(tmp_path / "classes.tif", values, nodata=255)
    with rasterio.open(raster, "r+") as ds:
        ds.update_tags(1, CLASS_NAME_0="Forest", CLASS_NAME_1="Water")
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "segments.gpkg"))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    layer = source.CreateLayer("segments", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    feature = ogr.Feature(layer.GetLayerDefn())
    x0, y0 = ORIGIN
    feature.SetGeometry(ogr.CreateGeometryFromWkt(  # columns 5-14 of the top 10 rows: half Forest, half Water
        f"POLYGON(({x0 + 50} {y0}, {x0 + 150} {y0}, {x0 + 150} {y0 - 100}, {x0 + 50} {y0 - 100}, {x0 + 50} {y0}))"))
    feature.SetField("class", "Forest")
    layer.CreateFeature(feature)
    source = None
    (figures,) = [load_script("bench/bench_segment_purity.py").purity(raster, str(tmp_path / "segments.gpkg"))]
    assert figures["polygons"] == 1 and figures["class_purity"] == 0.5 and figures["share_of_map"] == 0.25


def test_a_road_between_two_segments_stays_background():
    """Sharing out the thin band between two segments must not swallow a real thin feature: a
    3 px road of its own colour between two fields (a review: all 300 road pixels went to the
    fields, negative points on the road or not)."""
    from glassbox.core.segment.windows import watershed_window

    rng = np.random.default_rng(0)
    image = np.zeros((100, 100, 3), np.float32)
    image[:, :48] = [0.2, 0.6, 0.2]
    image[:, 48:51] = [0.8, 0.8, 0.8]
    image[:, 51:] = [0.6, 0.5, 0.2]
    image = np.clip(image + rng.normal(0, 0.01, image.shape).astype(np.float32), 0, 1)
    valid = np.ones((100, 100), bool)
    for negatives in ((), [(50, 49)]):
        labels = watershed_window(image, valid, [(50, 20), (50, 80)], negatives, 2.0, groups=["a", "b"])
        assert (labels[:, 48:51] == 0).all()
        assert (labels[:, 5:46] == labels[50, 20]).mean() > 0.99 and (labels[:, 53:95] == labels[50, 80]).mean() > 0.99


def test_a_polygon_names_only_the_seeds_inside_it():
    """A seed's basin or SAM mask can come in pieces; each piece had named the seed, so polygons
    listed seeds up to 2.9 km away and took their scores (an audit: 34 of 105 seed references
    outside their polygon). A seed now belongs to the part holding its pixel; a part holding no
    seed is left out."""
    from osgeo import ogr
    from rasterio.transform import Affine

    from glassbox.core.segment.run import _merge
    from glassbox.core.segment.seeds import Seed, SegmentOptions

    def square(col0, row0, side=10):
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in ((col0, row0), (col0 + side, row0), (col0 + side, row0 + side), (col0, row0 + side), (col0, row0)):
            ring.AddPoint_2D(x, y)
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        return polygon

    seeds = [Seed(0.0, 0.0, 0.9, "x", 1), Seed(0.0, 0.0, 0.3, "x", 2)]
    pieces = {"x": [(square(0, 0), 0), (square(40, 40), 0), (square(20, 0), 1)]}  # seed 1's far piece at 40, 40
    records, too_small, kept, orphans = _merge(pieces, seeds, Affine(10, 0, 500000, 0, -10, 6000000),
                                               SegmentOptions(), "watershed", 1.0, [(5, 5), (5, 25)])
    assert sorted((r[1]["seed_ids"], r[1]["score"]) for r in records) == [("1", 0.9), ("2", 0.3)]
    assert orphans == 1 and too_small == 0 and kept == {0, 1}
