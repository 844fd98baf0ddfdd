"""Reading: band selection, nodata, resampling to the model's resolution."""

import numpy as np
import pytest
import rasterio

from glassbox.core.classify import ClassifyOptions, classify_raster
from glassbox.core.errors import RasterInputError
from glassbox.core.io.raster import RasterSource, normalise_band_name, select_bands

from helpers import TINY_TILE, two_halves, write_raster


def test_band_names_are_normalised():
    assert normalise_band_name("b4") == "B04"
    assert normalise_band_name(" B8a ") == "B8A"
    assert normalise_band_name("B12") == "B12"
    assert normalise_band_name("nir") == "NIR"


def test_select_bands_by_name_order_and_request():
    names = ["B01", "B02", "B03", "B04", "B08"]
    assert select_bands(names, 5, ["B04", "B03", "B02"], None) == [4, 3, 2]
    assert select_bands([None, None, None], 3, ["B04", "B03", "B02"], None) == [1, 2, 3]
    assert select_bands(names, 5, ["B04", "B03", "B02"], [1, 2, 5]) == [1, 2, 5]
    with pytest.raises(RasterInputError, match="B04"):
        select_bands([None] * 5, 5, ["B04", "B03", "B02"], None)
    with pytest.raises(RasterInputError, match="3 bands"):
        select_bands(names, 5, ["B04", "B03", "B02"], [1, 2])
    with pytest.raises(RasterInputError, match="do not exist"):
        select_bands(names, 5, ["B04", "B03", "B02"], [1, 2, 9])


def test_band_selection_changes_the_result(tmp_path, tiny_model_files):
    """Bands are picked by name from a 4-band raster: swapping the names swaps the classes."""
    scene = two_halves(32, 64).astype(np.uint16)
    dummy = np.full((1, 32, 64), 7, np.uint16)
    raster = write_raster(tmp_path / "four.tif", np.concatenate([dummy, scene[1:2], dummy, scene[0:1]]),
                          descriptions=["B01", "B03", "B05", "B08"])
    out = tmp_path / "cls.tif"
    classify_raster(raster, tiny_model_files["onnx"], str(out), options=ClassifyOptions(stride=TINY_TILE))
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    assert (classes[:, :24] == 0).mean() > 0.95 and (classes[:, 40:] == 1).mean() > 0.95
    # the same raster with bands chosen the other way round: B08 <- band 2, B03 <- band 4
    classify_raster(raster, tiny_model_files["onnx"], str(out), options=ClassifyOptions(stride=TINY_TILE, bands=[2, 4]))
    with rasterio.open(out) as ds:
        swapped = ds.read(1)
    assert (swapped[:, :24] == 1).mean() > 0.95 and (swapped[:, 40:] == 0).mean() > 0.95


def test_mostly_nodata_tiles_are_skipped_and_nodata_stays_nodata(tmp_path, tiny_model_files):
    scene = two_halves(48, 48)
    scene[:, :20, :] = 0  # rows 0-19: nodata; with 16 px tiles the first tile row is all nodata
    scene[:, 30, 5] = 0  # one nodata pixel inside a classified tile
    raster = write_raster(tmp_path / "nd.tif", scene, nodata=0)
    out_c, out_p = tmp_path / "c.tif", tmp_path / "p.tif"
    result = classify_raster(raster, tiny_model_files["onnx"], str(out_c), str(out_p),
                             options=ClassifyOptions(stride=TINY_TILE))
    assert result.tiles_total == 9 and result.tiles_skipped == 3
    with rasterio.open(out_c) as ds:
        classes = ds.read(1)
        assert ds.nodata == 255
    with rasterio.open(out_p) as ds:
        probs = ds.read()
    assert (classes[:20] == 255).all()
    assert classes[30, 5] == 255 and np.all(probs[:, 30, 5] == -1)
    assert (classes[20:, :] != 255).sum() == 28 * 48 - 1
    np.testing.assert_allclose(probs[:, 20:, 30].sum(axis=0), 1.0, rtol=1e-5)


def test_nodata_parameter_overrides_raster(tmp_path, tiny_model_files):
    scene = two_halves(32, 32)
    scene[:, :, :16] = 9  # a fill value the raster does not declare
    raster = write_raster(tmp_path / "fill.tif", scene)
    out = tmp_path / "c.tif"
    classify_raster(raster, tiny_model_files["onnx"], str(out), options=ClassifyOptions(stride=TINY_TILE, nodata=9))
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    assert (classes[:, :16] == 255).all() and (classes[:, 16:] == 1).all()


def test_raster_at_other_resolution_is_read_at_model_gsd(tmp_path, tiny_model_files):
    """A 5 m raster: a 16 px tile of the 10 m model covers 32x32 raster pixels; the outputs stay
    on the 5 m grid."""
    scene = two_halves(64, 128)
    raster = write_raster(tmp_path / "fine.tif", scene, pixel=5.0)
    with RasterSource(raster, None, ["B08", "B03"]) as src:
        assert src.footprint_for(TINY_TILE, 10.0) == (32, 32)
    out = tmp_path / "c.tif"
    result = classify_raster(raster, tiny_model_files["onnx"], str(out), options=ClassifyOptions(stride=TINY_TILE))
    assert result.footprint == (32, 32) and result.tiles_total == 2 * 4
    with rasterio.open(out) as ds, rasterio.open(raster) as src:
        assert ds.transform == src.transform and ds.shape == src.shape
        classes = ds.read(1)
    assert (classes[:, :64] == 0).all() and (classes[:, 64:] == 1).all()


def test_web_mercator_pixels_are_measured_on_the_ground(tmp_path):
    """EPSG:3857 'metres' are 1 / cos(latitude) ground metres: at 60 degrees N a 20-unit Web
    Mercator pixel is 10 m on the ground, so a 16 px tile of a 10 m model covers 16 x 16 pixels,
    not 32 x 32; UTM (scale within 0.04 % of 1) keeps its nominal metres."""
    from glassbox.core.io.raster import pixel_size_metres

    scene = two_halves(64, 64)
    y_60n = 8_399_737.89  # EPSG:3857 northing of 60 degrees N
    mercator = write_raster(tmp_path / "mercator.tif", scene, crs="EPSG:3857", origin=(1_000_000.0, y_60n + 640.0),
                            pixel=20.0)
    with rasterio.open(mercator) as ds:
        width, height = pixel_size_metres(ds)
    assert width == pytest.approx(10.0, rel=0.005) and height == pytest.approx(10.0, rel=0.005)
    with RasterSource(mercator, None, ["B08", "B03"]) as src:
        assert src.footprint_for(TINY_TILE, 10.0) == (16, 16)
    utm = write_raster(tmp_path / "utm.tif", scene)
    with rasterio.open(utm) as ds:
        assert pixel_size_metres(ds) == (10.0, 10.0)


def test_raster_smaller_than_a_tile(tmp_path, tiny_model_files):
    scene = two_halves(12, 10)[:, :, :5]  # 12 x 5 px of 'Vegetation'
    raster = write_raster(tmp_path / "small.tif", scene, nodata=0)
    out = tmp_path / "c.tif"
    result = classify_raster(raster, tiny_model_files["onnx"], str(out),
                             options=ClassifyOptions(min_valid_fraction=0.1))
    assert result.tiles_total == 1
    with rasterio.open(out) as ds:
        assert ds.shape == (12, 5)
        assert (ds.read(1) == 0).all()


def test_a_raster_coarser_than_the_model_is_warned_of(tmp_path, tiny_model_files):
    """20 m pixels for a 10 m model: tiles are upsampled (as documented) and the log says the
    model sees less detail than it was trained on; 10 m and 5 m rasters give no such warning."""
    lines = {}
    for pixel in (20.0, 10.0, 5.0):
        raster = write_raster(tmp_path / f"r{pixel:g}.tif", two_halves(64, 96), pixel=pixel)
        lines[pixel] = []
        classify_raster(raster, tiny_model_files["onnx"], str(tmp_path / f"c{pixel:g}.tif"),
                        log=lines[pixel].append)
    assert any("coarser than the model's 10 m" in line for line in lines[20.0]), lines[20.0]
    assert not any("coarser" in line for line in lines[10.0] + lines[5.0])


def test_band_descriptions_as_exports_write_them():
    """'B4 (Red)', 'B04_10m' and colour names are Sentinel-2 bands; a raster order taken for lack
    of names is a warning; an unnamed stack is told so (an audit: 'blue, green, red' was fed to the
    model in the opposite order, with an info line only)."""
    from glassbox.core.errors import RasterInputError
    from glassbox.core.io.raster import describe_band_choice

    assert normalise_band_name("B4 (Red)") == "B04" and normalise_band_name("B04_10m") == "B04"
    assert normalise_band_name("B8A - Narrow NIR") == "B8A" and normalise_band_name("B11") == "B11"
    assert normalise_band_name("B4_red") == "B04" and normalise_band_name("B11 SWIR 1") == "B11"
    rgb = ["B04", "B03", "B02"]
    assert select_bands(["blue", "green", "red"], 3, rgb, None) == [3, 2, 1]
    assert select_bands(["Red", "Green", "Blue"], 3, ["RED", "GREEN", "BLUE"], None) == [1, 2, 3]
    note = describe_band_choice(["Band 2", "Band 3", "Band 4"], rgb, [1, 2, 3], None)
    assert note.startswith("WARNING: bands taken in the raster's order") and "band 1 'Band 2'" in note
    assert describe_band_choice([None] * 3, rgb, [1, 2, 3], None).startswith("WARNING:")
    with pytest.raises(RasterInputError, match="4 bands without names"):
        select_bands([None] * 4, 4, rgb, None)


def test_an_unnamed_16_bit_rgb_raster_is_read_by_its_colour_interpretation(tmp_path):
    """A 16-bit GeoTIFF whose bands say Red, Green, Blue (GDAL's colour interpretation) but have no
    descriptions had been read in file order: a model of B02, B03, B04 got red as blue (an audit).
    GDAL's own default for 8-bit images (red, green, blue in order) says nothing and is not used."""
    from rasterio.enums import ColorInterp

    from glassbox.core.io.raster import band_descriptions, select_bands

    data = np.random.default_rng(0).integers(0, 3000, (3, 16, 16)).astype(np.uint16)
    path = write_raster(tmp_path / "rgb16.tif", data)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    with rasterio.open(path) as ds:
        names = band_descriptions(ds)
        assert names == ["red", "green", "blue"]
        assert select_bands(names, 3, ["B02", "B03", "B04"], None) == [3, 2, 1]
    eight_bit = write_raster(tmp_path / "rgb8.tif", data.astype(np.uint8))
    with rasterio.open(eight_bit) as ds:
        assert [c.name for c in ds.colorinterp] == ["red", "green", "blue"]  # GDAL's default
        assert band_descriptions(ds) == [None, None, None]
