"""scripts/render_map.py draws the demo map with QGIS's print layout: tiny rasters and polygons
in, a PNG out whose panels show what they should (class colours, a heatmap ramp, polygon
outlines over true colour)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from helpers import PLUGIN_DIR, qgis_env, write_raster

SCRIPT = PLUGIN_DIR / "scripts" / "render_map.py"
ORIGIN = (500000.0, 6000000.0)
RED, BLUE = (255, 0, 0), (0, 0, 255)
YELLOW = (255, 221, 0)  # render_map's outline for polygons without a .qml
MAGENTA = (255, 0, 255)


@pytest.fixture
def tiny_inputs(tmp_path):
    """A 64 x 32 px scene (bands B02 B03 B04, equal: grey noise in true colour), classes (left red, right blue, colour table),
    a heatmap (a bright square) and one polygon in the middle, no .qml sidecars."""
    import rasterio
    from osgeo import ogr, osr

    rng = np.random.default_rng(0)
    scene = np.repeat(rng.uniform(500, 3000, (1, 32, 64)), 3, axis=0).astype(np.uint16)
    scene_path = write_raster(tmp_path / "scene.tif", scene, origin=ORIGIN, descriptions=["B02", "B03", "B04"])
    classes = np.zeros((1, 32, 64), np.uint8)
    classes[:, :, 32:] = 1
    classes_path = write_raster(tmp_path / "classes.tif", classes, origin=ORIGIN)
    with rasterio.open(classes_path, "r+") as ds:
        ds.write_colormap(1, {0: RED + (255,), 1: BLUE + (255,)})
    heat = np.zeros((1, 32, 64), np.float32)
    heat[:, 8:24, 24:40] = np.linspace(0.2, 1.0, 16, dtype=np.float32)
    heatmap_path = write_raster(tmp_path / "heatmap.tif", heat, origin=ORIGIN)

    polygons_path = str(tmp_path / "segments.gpkg")
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(polygons_path)
    layer = ds.CreateLayer("segments", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetField("class", "Water")
    x0, y0 = ORIGIN
    feature.SetGeometry(ogr.CreateGeometryFromWkt(
        f"POLYGON(({x0 + 100} {y0 - 50},{x0 + 540} {y0 - 50},{x0 + 540} {y0 - 270},{x0 + 100} {y0 - 270},"
        f"{x0 + 100} {y0 - 50}))"))
    layer.CreateFeature(feature)
    ds = None
    return {"input": scene_path, "classes": classes_path, "heatmap": heatmap_path, "polygons": polygons_path}


def render(tmp_path, inputs: dict, *extra: str) -> np.ndarray:
    """Run the script; returns the PNG as (rows, cols, 3) uint8."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    out = tmp_path / "map.png"
    command = [sys.executable, str(SCRIPT), "--input", inputs["input"], "--classes", inputs["classes"],
               "--out", str(out), "--dpi", "60", *extra]
    done = subprocess.run(command, env=qgis_env(tmp_path / "profile"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.exists() and out.stat().st_size > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out) as png:
            return np.moveaxis(png.read()[:3], 0, -1)


def near(image: np.ndarray, colour: tuple, tolerance: int = 12) -> np.ndarray:
    """Per pixel: within ``tolerance`` of ``colour`` in every channel."""
    return (np.abs(image.astype(int) - np.array(colour)) <= tolerance).all(axis=-1)


def test_three_panels_classes_heatmap_and_polygons_over_true_colour(tmp_path, tiny_inputs):
    image = render(tmp_path, tiny_inputs, "--heatmap", tiny_inputs["heatmap"],
                   "--polygons", tiny_inputs["polygons"])
    rows, cols, _ = image.shape
    assert cols > 2.5 * rows, "three panels side by side"
    left, middle, right = (image[:, i * cols // 3:(i + 1) * cols // 3] for i in range(3))
    # classes: both colours in the left panel (map and legend), neither elsewhere
    assert near(left, RED).sum() > 500 and near(left, BLUE).sum() > 500
    assert near(middle, RED).sum() == 0 and near(right, BLUE).sum() == 0
    # heatmap: the Magma ramp (no .qml): near-black background and bright warm colours
    warm = (middle[..., 0] > 200) & (middle[..., 1] > 80) & (middle[..., 2] < 200)
    assert near(middle, (0, 0, 4), 10).sum() > 500 and warm.sum() > 50
    # true colour with the polygon's yellow outline (no .qml) on top, and its legend entry
    assert near(right, YELLOW, 20).sum() > 100
    assert near(left, YELLOW, 20).sum() == 0 and near(middle, YELLOW, 20).sum() == 0
    grey = (right.max(axis=-1) - right.min(axis=-1) < 3) & (right.min(axis=-1) < 250)
    assert len(np.unique(right[grey][:, 0])) > 100, "the noisy grey scene in true colour"


def test_polygons_styled_by_their_qml_sidecar(tmp_path, tiny_inputs, qgis_app):
    from qgis.core import QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsRendererCategory, QgsVectorLayer

    layer = QgsVectorLayer(tiny_inputs["polygons"], "segments", "ogr")
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": "255,0,255,255", "outline_width": "1",
                                         "outline_width_unit": "MM"})
    layer.setRenderer(QgsCategorizedSymbolRenderer("class", [QgsRendererCategory("Water", symbol, "Water")]))
    _message, ok = layer.saveNamedStyle(tiny_inputs["polygons"].replace(".gpkg", ".qml"))
    assert ok
    del layer
    image = render(tmp_path, tiny_inputs, "--polygons", tiny_inputs["polygons"])
    cols = image.shape[1]
    assert near(image[:, cols // 2:], MAGENTA, 20).sum() > 100
    assert near(image, YELLOW, 20).sum() == 0


def test_without_heatmap_and_polygons_the_two_panel_map_is_unchanged(tmp_path, tiny_inputs):
    image = render(tmp_path, tiny_inputs)
    rows, cols, _ = image.shape
    assert 1.5 * rows < cols < 2.5 * rows, "two panels side by side"
    left, right = image[:, : cols // 2], image[:, cols // 2:]
    # true colour on the left, the classes on the right
    assert near(right, RED).sum() > 500 and near(right, BLUE).sum() > 500
    assert near(left, RED).sum() == 0
