"""glassbox:classify's honest gaps: MIN_CONFIDENCE (unsure pixels become class Unclassified)
and CLOUD_MASK (s2cloudless cloud pixels become class Cloud), through QGIS Processing on real
rasters with a real model, and core.clouds' windowed cloud mask."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rasterio
from qgis.core import QgsPalettedRasterRenderer, QgsProcessingException, QgsProcessingFeedback, QgsRasterLayer

import processing
from helpers import QGIS_PLUGIN_PRELUDE, PLUGIN_DIR, QGIS_PROCESS, TINY_TILE, pattern_tile, qgis_env, write_raster

pytestmark = pytest.mark.usefixtures("glassbox_processing")

S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
# Sentinel-2 L1C top-of-atmosphere digital numbers (reflectance x 10000) of typical surfaces, B01..B12:
# a thick, bright cloud is nearly flat and white from blue to NIR, lower in the SWIR, dark in the
# B09 water-vapour band and, being high, lifts the B10 cirrus band above the surface's near-zero
THICK_CLOUD = [7200, 7000, 6900, 6900, 7100, 7300, 7400, 7500, 7500, 3200, 600, 4800, 3300]
VEGETATION = [1300, 1000, 850, 600, 1100, 2100, 2500, 2800, 2900, 800, 20, 1800, 900]
WATER = [1200, 900, 700, 500, 450, 380, 350, 300, 280, 100, 8, 150, 100]


class LogFeedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.lines = []

    def pushInfo(self, info):  # noqa: N802 (QGIS API name)
        self.lines.append(info)
        super().pushInfo(info)

    def line(self, start):
        return next((x for x in self.lines if x.startswith(start)), None)


def run_classify(raster, model, out_dir, feedback=None, **extra):
    out_dir.mkdir(exist_ok=True)
    params = {"INPUT": str(raster), "MODEL": str(model), "TILE_STRIDE": TINY_TILE // 2,
              "OUTPUT_CLASSES": str(out_dir / "classes.tif"), "OUTPUT_PROBABILITIES": str(out_dir / "probabilities.tif")}
    params.update(extra)
    return processing.run("glassbox:classify", params, feedback=feedback)


def category_names(path):
    from osgeo import gdal

    return gdal.Info(str(path))  # GDAL 3.6's Python GetCategoryNames() returns None


def renderer_labels(path):
    layer = QgsRasterLayer(str(path), "classes")  # picks up the saved .qml
    assert isinstance(layer.renderer(), QgsPalettedRasterRenderer)
    return {c.value: (c.label, c.color.name()) for c in layer.renderer().classes()}


def half_unsure_scene(rows=64, cols=64, seed=3):
    """Left half the tiny model's 'Vegetation' pattern (it is sure), right half both bands at the
    middle of its two patterns (it is not: highest probability about 0.5-0.65)."""
    rng = np.random.default_rng(seed)
    left = pattern_tile(0, max(rows, cols), rng)[:, :rows, : cols // 2]
    right = 1800 + rng.normal(0, 250, (2, rows, cols - cols // 2))
    return np.concatenate([left, right], axis=2).clip(1, None).astype(np.uint16)


def test_min_confidence_writes_unsure_pixels_as_unclassified(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", half_unsure_scene(), descriptions=["B08", "B03"])
    feedback = LogFeedback()
    strict = run_classify(raster, tiny_model_files["onnx"], tmp_path / "strict", feedback, MIN_CONFIDENCE=0.9,
                          OUTPUT_CONFIDENCE=str(tmp_path / "strict" / "confidence.tif"), ADAPT_TO_SCENE=False)
    off = run_classify(raster, tiny_model_files["onnx"], tmp_path / "off", MIN_CONFIDENCE=0.0, ADAPT_TO_SCENE=False)

    with rasterio.open(strict["OUTPUT_CLASSES"]) as cls:
        classes = cls.read(1)
        assert cls.colormap(1)[254][:3] == (0x9A, 0x9A, 0x9A)  # neutral grey
        assert cls.nodata == 255
    with rasterio.open(strict["OUTPUT_CONFIDENCE"]) as conf:
        confidence = conf.read(1)
    unclassified = classes == 254
    # exactly the pixels whose highest class probability is below 0.9, and only in the unsure half
    np.testing.assert_array_equal(unclassified, confidence < 0.9)
    assert unclassified[:, 36:].mean() > 0.9 and not unclassified[:, :28].any()
    assert (classes[:, :28] == 0).all()
    assert "254: Unclassified" in category_names(strict["OUTPUT_CLASSES"])
    assert renderer_labels(strict["OUTPUT_CLASSES"])[254] == ("Unclassified", "#9a9a9a")
    n = int(unclassified.sum())
    assert feedback.line("Unclassified: ") == (
        f"Unclassified: {n} pixels ({100 * n / classes.size:.1f} %) with a highest class probability below 0.9")
    assert f"Unclassified {100 * n / classes.size:.1f} %" in feedback.line("Class shares")

    with rasterio.open(off["OUTPUT_CLASSES"]) as cls:
        plain = cls.read(1)
    assert not (plain == 254).any() and set(np.unique(plain)) <= {0, 1}
    np.testing.assert_array_equal(plain[~unclassified], classes[~unclassified])
    assert "Unclassified" not in category_names(off["OUTPUT_CLASSES"])
    assert 254 not in renderer_labels(off["OUTPUT_CLASSES"])
    with rasterio.open(strict["OUTPUT_PROBABILITIES"]) as a, rasterio.open(off["OUTPUT_PROBABILITIES"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())  # probabilities stay as they are


def s2_scene(rows=96, cols=96, cloud=(slice(24, 56), slice(30, 62)), seed=0):
    """13 named Sentinel-2 L1C bands (uint16 DN): vegetation left, water right, a thick cloud
    over both; 3 % multiplicative noise."""
    rng = np.random.default_rng(seed)
    scene = np.empty((13, rows, cols), np.float64)
    scene[:, :, : cols // 2] = np.array(VEGETATION, float)[:, None, None]
    scene[:, :, cols // 2:] = np.array(WATER, float)[:, None, None]
    if cloud is not None:
        scene[:, cloud[0], cloud[1]] = np.array(THICK_CLOUD, float)[:, None, None]
    scene *= 1 + rng.normal(0, 0.03, scene.shape)
    return scene.clip(1, None).astype(np.uint16)


def test_cloud_mask_marks_the_cloud_and_not_the_land(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "s2.tif", s2_scene(), descriptions=S2_BANDS, nodata=0)
    feedback = LogFeedback()
    masked = run_classify(raster, tiny_model_files["onnx"], tmp_path / "masked", feedback, CLOUD_MASK=True)
    plain = run_classify(raster, tiny_model_files["onnx"], tmp_path / "plain")
    with rasterio.open(masked["OUTPUT_CLASSES"]) as cls:
        classes = cls.read(1)
        assert cls.colormap(1)[253][:3] == (0xF2, 0xF2, 0xEE)
    cloud = classes == 253
    assert cloud[26:54, 32:60].all()  # the cloud, but for its outermost pixels
    near = np.zeros_like(cloud)
    near[24 - 8: 56 + 8, 30 - 8: 62 + 8] = True  # smoothing (4 px) and dilation (2 px) may widen it
    assert not cloud[~near].any()
    assert "253: Cloud" in category_names(masked["OUTPUT_CLASSES"])
    assert renderer_labels(masked["OUTPUT_CLASSES"])[253] == ("Cloud", "#f2f2ee")
    assert 254 not in renderer_labels(masked["OUTPUT_CLASSES"])  # no MIN_CONFIDENCE, no Unclassified
    n = int(cloud.sum())
    assert feedback.line("Cloud: ") == (f"Cloud: {n} pixels ({100 * n / classes.size:.1f} % of the classified "
                                        "area), kept out of the class shares")
    shares = feedback.line("Class shares (cloud-free pixels): ")
    assert shares and "Cloud" not in shares
    land = ~cloud
    with rasterio.open(plain["OUTPUT_CLASSES"]) as cls:
        np.testing.assert_array_equal(cls.read(1)[land], classes[land])
    with rasterio.open(masked["OUTPUT_PROBABILITIES"]) as a, rasterio.open(plain["OUTPUT_PROBABILITIES"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def tile_features(path):
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(str(path), "tiles", "ogr")
    assert layer.isValid()
    return list(layer.getFeatures())


def test_tile_grid_says_cloud_and_unclassified_as_the_class_raster(tmp_path, tiny_model_files):
    """OUTPUT_TILES follows MIN_CONFIDENCE (a tile whose own confidence is below it is
    Unclassified, 254) and CLOUD_MASK (a tile whose mapped pixels are more than half Cloud in the
    class raster is Cloud, 253, with that share in ``cloud_share``); confidence and probabilities
    stay the model's."""
    raster = write_raster(tmp_path / "s2.tif", s2_scene(), descriptions=S2_BANDS, nodata=0)
    out = tmp_path / "cloud"
    masked = run_classify(raster, tiny_model_files["onnx"], out, CLOUD_MASK=True, OUTPUT_TILES=str(out / "tiles.gpkg"))
    with rasterio.open(masked["OUTPUT_CLASSES"]) as cls:
        classes, transform = cls.read(1), cls.transform
    tiles = tile_features(masked["OUTPUT_TILES"])
    assert tiles and all(not f.geometry().isNull() for f in tiles)
    kinds = set()
    for feature in tiles:
        box = feature.geometry().boundingBox()
        row0, col0 = rasterio.transform.rowcol(transform, box.xMinimum() + 1, box.yMaximum() - 1)
        row1, col1 = rasterio.transform.rowcol(transform, box.xMaximum() - 1, box.yMinimum() + 1)
        window = classes[max(row0, 0):row1 + 1, max(col0, 0):col1 + 1]
        mapped = window[window != 255]
        share = float((mapped == 253).mean())
        assert feature["cloud_share"] == pytest.approx(share, abs=1e-9)
        expected = ("Cloud", 253) if share > 0.5 else (feature["class"], feature["class_id"])
        assert (feature["class"], feature["class_id"]) == expected
        assert expected[1] != 253 or feature["confidence"] == pytest.approx(
            max(feature[f] for f in feature.fields().names() if f.startswith("p_")))
        kinds.add(feature["class"] == "Cloud")
    assert kinds == {True, False}  # cloud tiles and clear tiles both present

    scene = write_raster(tmp_path / "unsure.tif", half_unsure_scene(), descriptions=["B08", "B03"])
    out = tmp_path / "unsure"
    strict = run_classify(scene, tiny_model_files["onnx"], out, MIN_CONFIDENCE=0.9, ADAPT_TO_SCENE=False,
                          OUTPUT_TILES=str(out / "tiles.gpkg"))
    tiles = tile_features(strict["OUTPUT_TILES"])
    unsure = [f for f in tiles if f["confidence"] < 0.9]
    assert unsure and all((f["class"], f["class_id"]) == ("Unclassified", 254) for f in unsure)
    assert all(f["class"] in ("Vegetation", "Water") for f in tiles if f["confidence"] >= 0.9)
    assert "cloud_share" not in tiles[0].fields().names()


def test_cloud_mask_needs_the_s2cloudless_bands(tmp_path, tiny_model_files):
    raster = write_raster(tmp_path / "two.tif", half_unsure_scene(32, 32), descriptions=["B08", "B03"])
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="no band named B01, B02, B04, B05, B8A, B09, B10, B11, B12"):
        run_classify(raster, tiny_model_files["onnx"], out, CLOUD_MASK=True)
    assert not any(out.iterdir())


def test_cloud_mask_of_windows_equals_the_whole(tmp_path):
    from glassbox.core.clouds import CloudMasker
    from glassbox.core.io.raster import Area

    raster = write_raster(tmp_path / "s2.tif", s2_scene(80, 70, cloud=(slice(10, 40), slice(5, 30))),
                          descriptions=S2_BANDS, nodata=0)
    with rasterio.open(raster) as ds:
        area = Area(5, 3, 70, 60)
        whole = CloudMasker(ds, area).rows(0, 70)
        masker = CloudMasker(ds, area)
        windows = np.concatenate([masker.rows(first, min(9, 70 - first)) for first in range(0, 70, 9)])
        full = CloudMasker(ds, Area(0, 0, 80, 70)).rows(0, 80)[5:75, 3:63]
    assert whole.shape == (70, 60) and 0.1 < whole.mean() < 0.5
    np.testing.assert_array_equal(windows, whole)
    np.testing.assert_array_equal(full, whole)


def test_s2cloudless_not_imported_unless_asked(tmp_path, tiny_model_files):
    """Loading the plugin and classifying without CLOUD_MASK import neither s2cloudless nor
    lightgbm (a fresh process with QGIS); with it, lightgbm is loaded but not the s2cloudless
    package, whose sentinelhub -> pyproj import crashes QGIS at exit."""
    raster = write_raster(tmp_path / "s2.tif", s2_scene(32, 32), descriptions=S2_BANDS, nodata=0)
    script = QGIS_PLUGIN_PRELUDE + textwrap.dedent(
        """
        plugin = module.classFactory(None)
        plugin.initProcessing()
        heavy = ("s2cloudless", "lightgbm", "sentinelhub", "pyproj")
        print("LOADED", [m for m in heavy if m in sys.modules])
        import processing
        processing.run("glassbox:classify", {"INPUT": sys.argv[2], "MODEL": sys.argv[3], "CLOUD_MASK": False,
                                             "OUTPUT_CLASSES": sys.argv[4], "OUTPUT_PROBABILITIES": sys.argv[5]})
        print("CLASSIFIED", [m for m in heavy if m in sys.modules])
        processing.run("glassbox:classify", {"INPUT": sys.argv[2], "MODEL": sys.argv[3], "CLOUD_MASK": True,
                                             "OUTPUT_CLASSES": sys.argv[4], "OUTPUT_PROBABILITIES": sys.argv[5]})
        print("MASKED", [m for m in heavy if m in sys.modules])
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(PLUGIN_DIR), raster, str(tiny_model_files["onnx"]),
                           str(tmp_path / "c.tif"), str(tmp_path / "p.tif")],
                          capture_output=True, text=True, timeout=300)
    assert "LOADED []" in done.stdout and "CLASSIFIED []" in done.stdout, done.stdout + done.stderr
    assert "MASKED ['lightgbm']" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stderr


def test_detector_equals_s2cloudless(tmp_path):
    """core.clouds.CloudDetector gives s2cloudless.S2PixelCloudDetector's probabilities and mask
    (the package imported in a plain Python without QGIS)."""
    scene = s2_scene(48, 48, cloud=(slice(10, 30), slice(12, 40)))
    np.save(tmp_path / "scene.npy", scene)
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from s2cloudless import S2PixelCloudDetector
        from glassbox.core.clouds import AVERAGE_OVER, DILATION, CloudDetector
        scene = np.load(sys.argv[1])
        x = np.moveaxis(scene[[0, 1, 3, 4, 7, 8, 9, 10, 11, 12]], 0, -1).astype(np.float32) / 10000
        ours = CloudDetector(0.6)
        theirs = S2PixelCloudDetector(threshold=0.6, average_over=AVERAGE_OVER, dilation_size=DILATION)
        p = ours.probabilities(x)
        q = theirs.get_cloud_probability_maps(x[None])[0]
        assert np.array_equal(p, q), abs(p - q).max()
        assert np.array_equal(ours.mask(p), theirs.get_mask_from_prob(q[None])[0].astype(bool))
        print("EQUAL", round(float(ours.mask(p).mean()), 3))
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "scene.npy")], capture_output=True,
                          text=True, timeout=300)
    assert "EQUAL" in done.stdout, done.stdout + done.stderr
    assert 0.2 < float(done.stdout.split("EQUAL")[1]) < 0.5


def test_cloud_mask_through_qgis_process_exits_cleanly(tmp_path, qgis_profile, tiny_model_files):
    raster = write_raster(tmp_path / "s2.tif", s2_scene(), descriptions=S2_BANDS, nodata=0)
    out = tmp_path / "classes.tif"
    done = subprocess.run([QGIS_PROCESS, "run", "glassbox:classify", "--", f"INPUT={raster}",
                           f"MODEL={tiny_model_files['onnx']}", "CLOUD_MASK=true", "MIN_CONFIDENCE=0.5",
                           f"OUTPUT_CLASSES={out}", f"OUTPUT_PROBABILITIES={tmp_path / 'p.tif'}"],
                          env=qgis_env(qgis_profile), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Cloud: " in done.stdout
    with rasterio.open(out) as cls:
        assert (cls.read(1)[26:54, 32:60] == 253).all()


def test_explain_gives_cloud_no_relevance_and_no_peak(tmp_path, tiny_model_files):
    """Peaks on cloud grew segments of land cover there (an audit: 208 of 379 peaks on a cloudy
    crop, 26 'Industrial' segments); with CLOUD_MASK the cloud is nodata in the heatmap and holds
    no peak, as classify's map leaves it out."""
    from qgis.core import QgsVectorLayer

    raster = write_raster(tmp_path / "s2.tif", s2_scene(), descriptions=S2_BANDS, nodata=0)
    common = {"INPUT": raster, "MODEL": str(tiny_model_files["onnx"]), "TILE_STRIDE": TINY_TILE // 2,
              "PEAKS_PER_TILE": 3}
    runs = {}
    for name, extra in (("plain", {}), ("masked", {"CLOUD_MASK": True})):
        runs[name] = processing.run("glassbox:explain", {**common, **extra,
                                                         "OUTPUT_HEATMAP": str(tmp_path / f"{name}.tif"),
                                                         "OUTPUT_PEAKS": str(tmp_path / f"{name}.gpkg")})
    core = np.zeros((96, 96), bool)
    core[26:54, 32:60] = True  # the cloud but for its outermost pixels
    near = np.zeros_like(core)
    near[24 - 8: 56 + 8, 30 - 8: 62 + 8] = True
    heat = {}
    for name, result in runs.items():
        with rasterio.open(result["OUTPUT_HEATMAP"]) as ds:
            heat[name], nodata, inverse = ds.read(1), ds.nodata, ~ds.transform
    assert (heat["masked"][core] == nodata).all() and (heat["plain"][core] != nodata).all()
    assert (heat["masked"][~near] != nodata).all()

    def rows_cols(path):
        points = [f.geometry().asPoint() for f in QgsVectorLayer(path, "peaks", "ogr").getFeatures()]
        return [tuple(int(v) for v in (inverse * (p.x(), p.y()))[::-1]) for p in points]

    assert any(core[r, c] for r, c in rows_cols(runs["plain"]["OUTPUT_PEAKS"]))
    masked_peaks = rows_cols(runs["masked"]["OUTPUT_PEAKS"])
    assert masked_peaks and not any(core[r, c] for r, c in masked_peaks)


def test_held_cloud_bits_answer_as_the_masker_and_keep_cloudy_tiles_out_of_the_scene_sample(tmp_path,
                                                                                             tiny_model_files):
    """With CLOUD_MASK the scene's radiometry check and adaptation sample only tiles under half
    cloud: the adaptation had been computed from cloudy tiles too, so a crop and the whole scene
    adapted differently (an audit: 81 % agreement on cloud-free pixels)."""
    from dataclasses import replace

    from glassbox.core.adaptation import sample_scene_tiles
    from glassbox.core.clouds import CloudBits, CloudMasker
    from glassbox.core.io.raster import Area, RasterSource
    from glassbox.core.tiles.grid import Tile
    from glassbox.core.tiles.loop import plan_tiles

    raster = write_raster(tmp_path / "s2.tif", s2_scene(80, 70, cloud=(slice(10, 40), slice(5, 30))),
                          descriptions=S2_BANDS, nodata=0)
    with rasterio.open(raster) as ds:
        area = Area(5, 3, 70, 60)
        bits = CloudBits(CloudMasker(ds, area), band_rows=16)
        whole = CloudMasker(ds, area).rows(0, 70)
    np.testing.assert_array_equal(bits.rows(0, 70), whole)
    np.testing.assert_array_equal(bits.rows(33, 5), whole[33:38])
    assert bits.pixels == int(whole.sum())
    tile = Tile(0, 0, 10, 4, 20, 24)
    assert bits.tile_share(tile) == pytest.approx(whole[10:30, 4:28].mean())
    assert bits.tile_mask(tile, 12).shape == (12, 12)

    card = tiny_model_files["card"]
    source = RasterSource(raster, None, card.bands, 0, card)
    try:
        plan = plan_tiles(source, card, None, None, None)
        with rasterio.open(raster) as ds:
            cloud = CloudBits(CloudMasker(ds, plan.area))
        every, planned = sample_scene_tiles(plan, card, 10_000)
        clear, _ = sample_scene_tiles(replace(plan, sample_filter=cloud.clear), card, 10_000)
    finally:
        source.close()
    assert 0 < len(clear) < len(every) <= planned
