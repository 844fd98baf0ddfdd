"""The real-scene check (issue 19): the committed reference points and bench/bench_real_scene.py."""

import csv
import json
from collections import Counter

import numpy as np
import pytest

from helpers import PLUGIN_DIR, load_script, write_raster

POINTS = PLUGIN_DIR / "bench" / "reference" / "T33UUU_20170216_points.gpkg"
REVIEW = PLUGIN_DIR / "bench" / "reference" / "T33UUU_20170216_review.csv"
#: the demo scene's grid (scripts/demo_data.py): 1536 x 768 px of 10 m from (330000, 5822040), EPSG:32633
SCENE_BOUNDS = (330000.0, 5822040.0 - 7680.0, 330000.0 + 15360.0, 5822040.0)


def _points():
    from osgeo import ogr

    ds = ogr.Open(str(POINTS))
    layer = ds.GetLayer(0)
    epsg = layer.GetSpatialRef().GetAuthorityCode(None)
    rows = [(f.GetField("id"), f.GetField("ref_class"), f.GetField("row"), f.GetField("col"),
             f.GetGeometryRef().GetX(), f.GetGeometryRef().GetY()) for f in layer]
    return epsg, rows


def test_committed_reference_points_cover_every_class_inside_the_scene():
    epsg, rows = _points()
    assert epsg == "32633"
    assert len(rows) >= 200
    counts = Counter(r[1] for r in rows)
    assert set(counts) == {"water", "forest", "town", "fields", "cloud"}
    assert min(counts.values()) >= 20, counts
    xmin, ymin, xmax, ymax = SCENE_BOUNDS
    for _, _, row, col, x, y in rows:
        assert xmin < x < xmax and ymin < y < ymax
        assert (x, y) == (xmin + (col + 0.5) * 10, ymax - (row + 0.5) * 10)  # pixel centres


def test_review_file_accounts_for_every_point_and_gives_every_rejection_a_reason():
    review = list(csv.DictReader(open(REVIEW)))
    accepted = {int(r["id"]) for r in review if r["verdict"] == "accept"}
    rejected = [r for r in review if r["verdict"] == "reject"]
    assert {r["verdict"] for r in review} == {"accept", "reject"}
    assert all(r["note"] for r in rejected)
    _, rows = _points()
    assert {r[0] for r in rows} == accepted


def test_agreement_counts_the_classes_that_match_each_reference_class():
    bench = load_script("bench/bench_real_scene.py")
    refs = ["water", "water", "forest", "town", "fields", "cloud"]
    got = ["River", "Forest", "Forest", "Industrial", "Highway", "Cloud"]
    result = bench.agreement(refs, got)
    assert result["agreement"] == round(4 / 6, 4)
    assert result["agreement_ground"] == round(3 / 5, 4)
    assert result["per_class"] == {"water": 0.5, "forest": 1.0, "town": 1.0, "fields": 0.0, "cloud": 1.0}
    assert result["confusion"]["water"] == {"River": 1, "Forest": 1}


def test_bench_runs_end_to_end_on_a_small_scene(tmp_path, capsys):
    """The shipped RGB default on a small 3-band raster with four points; the reported class at
    each point is the one the classes raster has there."""
    from osgeo import ogr, osr

    bench = load_script("bench/bench_real_scene.py")
    rng = np.random.default_rng(0)
    data = rng.integers(300, 2500, (3, 160, 160)).astype(np.uint16)
    scene = write_raster(tmp_path / "scene.tif", data, origin=(330000.0, 5822040.0),
                         descriptions=["B04", "B03", "B02"])
    gpkg = tmp_path / "points.gpkg"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    layer = ds.CreateLayer("reference_points", srs, ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("ref_class", ogr.OFTString))
    for ref, (x, y) in zip(["water", "forest", "fields", "town"],
                           [(330105, 5821935), (331205, 5821935), (330105, 5820505), (331205, 5820505)]):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField("ref_class", ref)
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint_2D(x, y)
        f.SetGeometry(g)
        layer.CreateFeature(f)
    ds = None
    model = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32_96px.onnx"
    assert bench.main(["--scene", scene, "--points", str(gpkg), "--models", str(model),
                       "--no-cloud-mask", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["points"] == 4
    entry = report["models"][model.name]["as_is"]
    assert sum(sum(c.values()) for c in entry["confusion"].values()) == 4
    # the same points read from a classification made here
    from glassbox.core.classify import classify_raster
    from glassbox.core.models.backends import OnnxModel

    onnx = OnnxModel(model, threads=1)
    classify_raster(scene, onnx, str(tmp_path / "classes.tif"))
    names = bench.class_at(tmp_path / "classes.tif", bench.read_points(gpkg), list(onnx.card.class_names))
    assert bench.class_at(tmp_path / "classes.tif", bench.read_points(gpkg)) == names  # names from the raster
    expected = bench.agreement(["water", "forest", "fields", "town"], names)
    assert entry["agreement"] == expected["agreement"]
    assert entry["confusion"] == expected["confusion"]


@pytest.mark.parametrize("script", ["scripts/reference_points.py"])
def test_reference_point_rules_pick_only_pixels_inside_their_rule(script):
    """Rule masks are shrunk to 7 x 7 windows: a lone water pixel yields no candidate, a 20 x 20 lake does."""
    module = load_script(script)
    shape = (60, 60)
    bands = {n: np.full(shape, 1300.0, np.float32) for n in ("B02", "B03", "B04", "B08", "B11")}
    bands["B08"][:] = 1800
    bands["B11"][:] = 2000
    for sl in [(slice(5, 6), slice(5, 6)), (slice(30, 50), slice(30, 50))]:
        bands["B03"][sl], bands["B08"][sl], bands["B11"][sl] = 1200, 500, 200
    water = module.rule_masks(bands)["water"]
    assert not water[:15, :15].any()
    assert water[33:47, 33:47].all() and water.sum() == 14 * 14
    picked = module.sample(water, 10, np.random.default_rng(0), spacing_px=5)
    assert all(water[r, c] for r, c in picked)
    assert all((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 >= 25 for i, a in enumerate(picked) for b in picked[:i])
