"""A raster in other units than the model reads is refused before any tile is classified, with the
conversion to use (core.io.units): an 8-bit image or reflectance 0..1 given to the shipped
Sentinel-2 models, which read L1C digital numbers. Both used to give a map of one class."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from helpers import write_raster


def true_colour_dn(seed: int = 0) -> np.ndarray:
    """uint16 L1C digital numbers of a 128 x 128 scene with texture (bands B04, B03, B02)."""
    rng = np.random.default_rng(seed)
    return rng.integers(400, 2600, size=(3, 128, 128)).astype(np.uint16)


@pytest.fixture(scope="module")
def rgb_card():
    from glassbox.algorithms.base import DEFAULT_MODEL
    from glassbox.core.models.choice import read_card

    return read_card(DEFAULT_MODEL)


def mismatch(path, card, nodata=None):
    from glassbox.core.io.units import units_mismatch

    with rasterio.open(path) as ds:
        return units_mismatch(ds, [1, 2, 3], card.scaling, card.name, nodata)


def test_eight_bit_image_is_named_with_its_conversion(tmp_path, rgb_card):
    dn = true_colour_dn()
    raster = write_raster(tmp_path / "rgb8.tif", (dn * 255 / 2750).clip(0, 255).astype(np.uint8))
    message = mismatch(raster, rgb_card)
    assert message and "8-bit image" in message and "gdal_translate -ot UInt16 -scale 0 255 0 2750" in message


def test_reflectance_is_named_with_its_conversion(tmp_path, rgb_card):
    raster = write_raster(tmp_path / "refl.tif", (true_colour_dn() / 10000).astype(np.float32))
    message = mismatch(raster, rgb_card)
    assert message and "reflectance 0-1" in message and "* 10000" in message


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_digital_numbers_pass_however_dark(tmp_path, rgb_card, dtype):
    """Dark water in L1C digital numbers (100-400) is not mistaken for 8-bit or reflectance."""
    dark = np.random.default_rng(1).integers(100, 400, size=(3, 128, 128)).astype(dtype)
    assert mismatch(write_raster(tmp_path / "dark.tif", dark), rgb_card) is None


def test_reflectance_nodata_border_is_left_out(tmp_path, rgb_card):
    """A -9999 nodata border does not hide reflectance values (nor a NaN one)."""
    data = (true_colour_dn() / 10000).astype(np.float32)
    data[:, :20] = -9999
    data[:, -20:] = np.nan
    raster = write_raster(tmp_path / "refl_nodata.tif", data, nodata=-9999)
    assert "reflectance 0-1" in mismatch(raster, rgb_card, nodata=-9999)


def test_models_of_8_bit_images_take_8_bit_images_and_refuse_16_bit(tmp_path):
    """A model of 8-bit photos (scale 1, training values within 0..255) reads a Byte raster, and a
    raster of 16-bit digital numbers in every band is refused with a stretch to 8 bits."""
    from glassbox.core.io.units import model_top_values, units_mismatch
    from glassbox.core.models.card import Scaling

    photos = Scaling(mean=[100.0] * 3, std=[50.0] * 3)
    assert model_top_values(photos, 3) is None
    dn = true_colour_dn(seed=4)
    for data, refused in ((dn, True), ((dn * 255 / 2750).astype(np.uint8), False), (dn // 10, False)):
        path = write_raster(tmp_path / f"x{data.dtype}{int(data.max())}.tif", data)
        with rasterio.open(path) as ds:
            message = units_mismatch(ds, [1, 2, 3], photos, "aerial photos")
        assert bool(message) == refused, (data.dtype, message)
        assert not refused or ("reads 8-bit images" in message and "gdal_translate -ot Byte -scale 0 " in message)


@pytest.mark.usefixtures("glassbox_processing")
@pytest.mark.parametrize("kind", ["8bit", "reflectance"])
def test_classify_refuses_other_units_and_writes_nothing(tmp_path, kind):
    import processing
    from qgis.core import QgsProcessingException

    dn = true_colour_dn(seed=2)
    data = (dn * 255 / 2750).astype(np.uint8) if kind == "8bit" else (dn / 10000).astype(np.float32)
    raster = write_raster(tmp_path / "in.tif", data, descriptions=["B04", "B03", "B02"])
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="8-bit image" if kind == "8bit" else "reflectance 0-1"):
        processing.run("glassbox:classify", {"INPUT": raster, "OUTPUT_CLASSES": str(out / "classes.tif")})
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.usefixtures("glassbox_processing")
def test_classify_takes_the_converted_image(tmp_path):
    """The conversion the message gives (8-bit x 2750 / 255, as UInt16) is classified."""
    import processing

    dn = true_colour_dn(seed=3)
    converted = ((dn * 255 / 2750).astype(np.uint8).astype(np.float64) * 2750 / 255).astype(np.uint16)
    raster = write_raster(tmp_path / "in.tif", converted, descriptions=["B04", "B03", "B02"])
    result = processing.run("glassbox:classify", {"INPUT": raster, "OUTPUT_CLASSES": str(tmp_path / "c.tif")})
    with rasterio.open(result["OUTPUT_CLASSES"]) as classes:
        assert classes.read(1).max() < 10


def test_the_offset_of_newer_sentinel2_products_is_refused_with_its_removal(tmp_path, rgb_card):
    """Products of processing baseline 04.00 on (25 January 2022) add 1000 to every digital number;
    read as older ones, every band is 1000 too bright (an audit's map: 96 % Industrial)."""
    from glassbox.algorithms.base import AUTO_MODELS
    from glassbox.core.io.units import units_mismatch
    from glassbox.core.models.choice import read_card

    dn = true_colour_dn()
    tagged = write_raster(tmp_path / "rgb_offset.tif", dn + 1000)
    with rasterio.open(tagged, "r+") as ds:
        ds.update_tags(RADIO_ADD_OFFSET="-1000")
    message = mismatch(tagged, rgb_card)
    assert message and "RADIO_ADD_OFFSET=-1000" in message and "gdal_translate -scale 1000 65535 0 64535" in message
    assert mismatch(write_raster(tmp_path / "rgb.tif", dn), rgb_card) is None
    # a reader's band offset and scale say it too (reflectance = DN x 0.0001 - 0.1)
    scaled = write_raster(tmp_path / "rgb_scaled.tif", dn + 1000)
    with rasterio.open(scaled, "r+") as ds:
        ds.scales, ds.offsets = (0.0001,) * 3, (-0.1,) * 3
    assert "offset -0.1 with scale 0.0001" in mismatch(scaled, rgb_card)
    # untagged: told by the cirrus band, which holds a few tens in L1C and over 1000 with the offset
    card = read_card(AUTO_MODELS[1])  # the 13-band default
    rng = np.random.default_rng(4)
    stack = rng.integers(300, 3000, size=(13, 64, 64)).astype(np.uint16)
    stack[card.bands.index("B10")] = rng.integers(5, 40, size=(64, 64))
    names = list(card.bands)
    for offset, refused in ((0, False), (1000, True)):
        path = write_raster(tmp_path / f"l1c_{offset}.tif", stack + offset, descriptions=names)
        with rasterio.open(path) as ds:
            message = units_mismatch(ds, list(range(1, 14)), card.scaling, card.name, None, names)
        assert bool(message) == refused and (not refused or "band B10, the cirrus band" in message)
