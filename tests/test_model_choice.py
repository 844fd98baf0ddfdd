"""MODEL left empty: classify and explain use the shipped model that reads the most of the
raster's bands (core.models.choice.choose_model), and say so in the log."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers import write_raster

#: a Sentinel-2 stack in wavelength order (B8A after B08, not EuroSAT's order)
S2_STACK = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def scene(bands: int, seed: int = 0) -> np.ndarray:
    """uint16 digital numbers of a plausible L1C tile (64 x 64 pixels)."""
    rng = np.random.default_rng(seed)
    return rng.integers(600, 3500, size=(bands, 64, 64)).astype(np.uint16)


@pytest.fixture(scope="module")
def shipped():
    """(the candidate list the algorithms use, the RGB default, the 13-band model chosen first)."""
    from glassbox.algorithms.base import AUTO_MODELS, DEFAULT_MODEL

    multispectral = next(p for p in AUTO_MODELS[1:] if p.is_file())
    return [str(p) for p in AUTO_MODELS], str(DEFAULT_MODEL), str(multispectral)


def test_named_sentinel2_stack_gets_the_13_band_model(tmp_path, shipped):
    from glassbox.core.models.choice import choose_model, read_card

    models, _rgb, multispectral = shipped
    raster = write_raster(tmp_path / "s2.tif", scene(13), descriptions=S2_STACK)
    path, reason = choose_model(raster, models)
    assert path == multispectral
    assert read_card(path).num_bands == 13
    assert "all 13" in reason and "names its bands" in reason and "reads 3" in reason


def test_a_level_2a_stack_says_why_the_13_band_model_was_passed_over(tmp_path, shipped):
    from glassbox.core.models.choice import choose_model

    models, rgb, _multispectral = shipped
    names = [b for b in S2_STACK if b != "B10"]
    raster = write_raster(tmp_path / "l2a.tif", scene(12), descriptions=names)
    path, reason = choose_model(raster, models)
    assert path == rgb
    assert "not chosen" in reason and "no band named B10 (a Level-2A product has none" in reason


def test_13_band_model_of_the_list_is_the_fusion_model(shipped):
    """For 13-band stacks the automatic choice is the fusion model: higher on EuroSAT patches and on
    the demo scene's reference points than paper 1's spatial-spectral CNN
    (bench/results/bench_real_scene.json; see algorithms.base.AUTO_MODELS)."""
    models, _rgb, multispectral = shipped
    assert Path(multispectral).name == "eurosat_ms_fusion_resnet18.onnx"
    assert not any("spatial_spectral" in m for m in models)


@pytest.mark.parametrize("names", [["B04", "B03", "B02"], ["b4", "b3", "b2"], ["B02", "B03", "B04", "B08"]])
def test_rgb_bands_get_the_rgb_model(tmp_path, shipped, names):
    from glassbox.core.models.choice import choose_model

    models, rgb, _ms = shipped
    raster = write_raster(tmp_path / "rgb.tif", scene(len(names)), descriptions=names)
    path, reason = choose_model(raster, models)
    assert path == rgb
    assert "all 3" in reason


def test_unnamed_three_bands_get_the_rgb_model(tmp_path, shipped):
    from glassbox.core.models.choice import choose_model

    models, rgb, _ms = shipped
    raster = write_raster(tmp_path / "plain.tif", scene(3))
    path, reason = choose_model(raster, models)
    assert path == rgb
    assert "does not name its bands" in reason and "raster's order" in reason


def test_unnamed_thirteen_bands_get_the_13_band_model_with_a_warning(tmp_path, shipped):
    from glassbox.core.models.choice import choose_model

    models, _rgb, multispectral = shipped
    path, reason = choose_model(write_raster(tmp_path / "plain13.tif", scene(13)), models)
    assert path == multispectral and "the raster's order" in reason


def test_no_fitting_model_falls_back_to_the_first_and_says_why(tmp_path, shipped):
    from glassbox.core.models.choice import choose_model

    models, rgb, _ms = shipped
    raster = write_raster(tmp_path / "five.tif", scene(5), descriptions=["B02", "B03", "nir", "x", "y"])
    path, reason = choose_model(raster, models)
    assert path == rgb
    assert "no shipped model's bands were found" in reason and "B04" in reason



def test_selected_bands_choose_the_model_reading_that_many(tmp_path, shipped):
    """BANDS set: the model reading as many bands as were selected, whatever the names say (here
    names no shipped card uses, the case where choosing by name fails)."""
    from glassbox.core.models.choice import choose_model

    models, rgb, multispectral = shipped
    raster = write_raster(tmp_path / "odd.tif", scene(13), descriptions=[f"Band {i}" for i in range(1, 14)])
    assert "no shipped model's bands were found" in choose_model(raster, models)[1]
    path, reason = choose_model(raster, models, selected_bands=13)
    assert path == multispectral and "13 bands were selected" in reason
    assert choose_model(raster, models, selected_bands=3)[0] == rgb
    path, reason = choose_model(raster, models, selected_bands=5)
    assert path == rgb and "no shipped model reads 5" in reason

def test_missing_model_files_are_passed_over(tmp_path, shipped):
    from glassbox.core.models.choice import choose_model

    _models, rgb, multispectral = shipped
    raster = write_raster(tmp_path / "s2.tif", scene(13), descriptions=S2_STACK)
    path, _reason = choose_model(raster, [rgb, str(tmp_path / "gone.onnx"), multispectral])
    assert path == multispectral
    assert choose_model(raster, [rgb, str(tmp_path / "gone.onnx")])[0] == rgb


def test_card_read_from_onnx_metadata_without_a_sidecar(tmp_path, tiny_model_files):
    from glassbox.core.models.choice import choose_model, read_card

    alone = tmp_path / "alone.onnx"
    shutil.copy(tiny_model_files["onnx"], alone)
    assert not alone.with_suffix(".json").exists()
    assert read_card(alone).bands == ["B08", "B03"]
    raster = write_raster(tmp_path / "two.tif", scene(2), descriptions=["B03", "B08"])
    assert choose_model(raster, [str(alone)])[0] == str(alone)


# -- through Processing ------------------------------------------------------------------------
def run_logged(algorithm: str, params: dict) -> tuple[dict, list[str]]:
    import processing
    from qgis.core import QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    messages: list[str] = []
    feedback.pushInfo = messages.append
    feedback.pushWarning = messages.append
    return processing.run(algorithm, params, feedback=feedback), messages


@pytest.mark.usefixtures("glassbox_processing")
@pytest.mark.parametrize("bands,expected", [(13, "ms"), (3, "rgb")])
def test_classify_without_model_logs_and_uses_the_choice(tmp_path, shipped, bands, expected):
    _models, rgb, multispectral = shipped
    chosen = multispectral if expected == "ms" else rgb
    names = S2_STACK if bands == 13 else ["B04", "B03", "B02"]
    raster = write_raster(tmp_path / "in.tif", scene(bands, seed=3), descriptions=names)
    result, log = run_logged("glassbox:classify", {"INPUT": raster, "OUTPUT_CLASSES": str(tmp_path / "c.tif"),
                                                   "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")})
    choice = [m for m in log if m.startswith("No model given")]
    assert len(choice) == 1 and Path(chosen).name in choice[0] and f"all {bands}" in choice[0]
    from glassbox.core.models.choice import read_card

    card_name = read_card(chosen).name
    summary = [m for m in log if m.startswith("Classified")]
    assert summary and f"'{card_name}'" in summary[0]
    with rasterio.open(result["OUTPUT_PROBABILITIES"]) as probs:
        assert probs.count == 10 and probs.descriptions[9] == "SeaLake"



@pytest.mark.usefixtures("glassbox_processing")
def test_classify_without_model_takes_the_count_of_selected_bands(tmp_path, shipped):
    """Bands named "Band 1" ... "Band 13": no model is found by name; selecting the 13 bands in
    EuroSAT's order gets the 13-band model and a map (it asked for a model of 3 bands before)."""
    _models, _rgb, multispectral = shipped
    raster = write_raster(tmp_path / "in.tif", scene(13, seed=8), descriptions=[f"Band {i}" for i in range(1, 14)])
    order = [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 9]  # B01..B12 then B8A, the wavelength stack's 9th band
    result, log = run_logged("glassbox:classify", {"INPUT": raster, "BANDS": order,
                                                   "OUTPUT_CLASSES": str(tmp_path / "c.tif")})
    choice = [m for m in log if m.startswith("No model given")]
    assert len(choice) == 1 and Path(multispectral).name in choice[0] and "13 bands were selected" in choice[0]
    with rasterio.open(result["OUTPUT_CLASSES"]) as classes:
        assert classes.read(1).max() < 10

@pytest.mark.usefixtures("glassbox_processing")
def test_classify_with_a_model_given_does_not_choose(tmp_path, shipped):
    _models, rgb, _ms = shipped
    raster = write_raster(tmp_path / "in.tif", scene(13, seed=4), descriptions=S2_STACK)
    _result, log = run_logged("glassbox:classify", {"INPUT": raster, "MODEL": rgb,
                                                    "OUTPUT_CLASSES": str(tmp_path / "c.tif"),
                                                    "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")})
    assert not [m for m in log if m.startswith("No model given")]
    assert any("B04<-band 4" in m for m in log)  # the RGB model read its three bands by name


@pytest.mark.usefixtures("glassbox_processing")
def test_explain_without_model_uses_the_13_band_model_on_a_stack(tmp_path, shipped):
    _models, _rgb, multispectral = shipped
    raster = write_raster(tmp_path / "in.tif", scene(13, seed=5), descriptions=S2_STACK)
    result, log = run_logged("glassbox:explain", {"INPUT": raster, "OUTPUT_HEATMAP": str(tmp_path / "h.tif"),
                                                  "OUTPUT_BAND_RELEVANCE": str(tmp_path / "r.csv")})
    choice = [m for m in log if m.startswith("No model given")]
    assert len(choice) == 1 and Path(multispectral).name in choice[0]
    assert any(m.startswith("Band relevance (all tiles)") and "B8A" in m for m in log)
    with rasterio.open(result["OUTPUT_HEATMAP"]) as heat:
        assert heat.count == 1 and float(np.nanmax(heat.read(1))) > 0


@pytest.mark.usefixtures("glassbox_processing")
def test_explanation_quality_chooses_the_model_as_explain_does(tmp_path, shipped):
    """explanation_quality measures the explanations explain would draw: with no model it takes
    the same choice (the 13-band model on a named Sentinel-2 stack), and says so."""
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    _models, _rgb, multispectral = shipped
    raster = write_raster(tmp_path / "in.tif", scene(13, seed=6), descriptions=S2_STACK)
    truth = QgsVectorLayer("Polygon?crs=EPSG:32633", "truth", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt("POLYGON((500000 6000000, 500640 6000000, 500640 5999360, "
                                            "500000 5999360, 500000 6000000))"))
    assert truth.dataProvider().addFeatures([feature])[0]
    result, log = run_logged("glassbox:explanation_quality", {
        "INPUT": raster, "GROUND_TRUTH": truth, "OUTPUT_REPORT": str(tmp_path / "q.html"),
        "OUTPUT_CSV": str(tmp_path / "q.csv")})
    choice = [m for m in log if m.startswith("No model given")]
    assert len(choice) == 1 and Path(multispectral).name in choice[0], log
    assert result["TILES"] > 0


@pytest.mark.usefixtures("glassbox_processing")
def test_classify_warns_when_the_scene_is_unlike_the_defaults_training_tiles(tmp_path, shipped):
    """The shipped RGB default has a radiometry reference beside it: on a raster of speckle (no
    EuroSAT tile looks like it) classify's log says how far the scene is and warns; the map is
    still written."""
    _models, rgb, _ms = shipped
    assert Path(rgb).with_name(Path(rgb).stem + ".radiometry.json").is_file()
    rng = np.random.default_rng(6)
    speckle = rng.integers(600, 3500, size=(3, 256, 256)).astype(np.uint16)
    raster = write_raster(tmp_path / "speckle.tif", speckle, descriptions=["B04", "B03", "B02"])
    import processing
    from qgis.core import QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    infos: list[str] = []
    warnings: list[str] = []
    feedback.pushInfo, feedback.pushWarning = infos.append, warnings.append
    result = processing.run("glassbox:classify", {"INPUT": raster, "OUTPUT_CLASSES": str(tmp_path / "c.tif")},
                            feedback=feedback)
    assert len(warnings) == 1 and warnings[0].startswith("scene radiometry"), (warnings, infos)
    assert "unlike the data the model was trained on" in warnings[0]
    assert not [m for m in infos if "scene radiometry" in m]
    assert result["RADIOMETRY_DISTANCE"] > result["RADIOMETRY_THRESHOLD"] > 0  # also Processing outputs
    with rasterio.open(result["OUTPUT_CLASSES"]) as classes:
        assert classes.read(1).max() < 10


@pytest.mark.usefixtures("glassbox_processing")
def test_explain_gives_the_same_radiometry_warning(tmp_path, shipped):
    import processing
    from qgis.core import QgsProcessingFeedback

    _models, rgb, _ms = shipped
    rng = np.random.default_rng(7)
    raster = write_raster(tmp_path / "speckle.tif", rng.integers(600, 3500, size=(3, 256, 256)).astype(np.uint16),
                          descriptions=["B04", "B03", "B02"])
    feedback = QgsProcessingFeedback()
    infos: list[str] = []
    warnings: list[str] = []
    feedback.pushInfo, feedback.pushWarning = infos.append, warnings.append
    result = processing.run("glassbox:explain", {"INPUT": raster, "MODEL": rgb, "TILE_STRIDE": 64,
                                                 "OUTPUT_HEATMAP": str(tmp_path / "h.tif")}, feedback=feedback)
    assert len(warnings) == 1 and warnings[0].startswith("scene radiometry"), (warnings, infos)
    with rasterio.open(result["OUTPUT_HEATMAP"]) as heat:
        assert float(np.nanmax(heat.read(1))) > 0


def test_a_virtual_stack_of_band_files_is_named_by_its_files(tmp_path, shipped):
    """gdalbuildvrt -separate over a product's band files leaves the band descriptions empty; in
    file order B8A comes after B08, not last as the 13-band model reads it. The bands are named by
    their files instead (an audit: B8A was fed as B09, 12 % of the map changed)."""
    from osgeo import gdal

    from glassbox.core.io.raster import RasterSource, band_descriptions
    from glassbox.core.models.choice import choose_model, read_card

    models, _rgb, multispectral = shipped
    order = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    data = scene(13)
    files = [write_raster(tmp_path / f"T33UUU_20170216T102101_{name}.tif", data[i:i + 1]) for i, name in
             enumerate(order)]
    vrt = str(tmp_path / "stack.vrt")
    gdal.BuildVRT(vrt, files, separate=True).FlushCache()
    with rasterio.open(vrt) as ds:
        assert ds.descriptions == (None,) * 13 and band_descriptions(ds) == order
    path, reason = choose_model(vrt, models)
    assert path == multispectral and "names its bands" in reason
    card = read_card(path)
    source = RasterSource(vrt, None, card.bands)
    try:
        assert [order[b - 1] for b in source.bands] == list(card.bands)  # B8A found at band 9
        assert source.band_note.startswith("bands matched by name")
    finally:
        source.close()


def test_a_mosaic_of_virtual_stacks_keeps_the_band_names(tmp_path):
    """Two products' band files stacked with gdalbuildvrt -separate, then mosaicked with
    gdalbuildvrt: the mosaic's bands take the names the stacks give them (an audit: the mosaic
    had lost them, and its bands were read in file order)."""
    from osgeo import gdal

    from glassbox.core.io.raster import band_descriptions

    order = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    data = scene(13)
    stacks = []
    for product, x0 in (("T33UUU", 0.0), ("T33UVU", 640.0)):
        folder = tmp_path / product
        folder.mkdir()
        files = [write_raster(folder / f"{product}_20170216T102101_{name}.tif", data[i:i + 1], origin=(500000.0 + x0, 6000000.0))
                 for i, name in enumerate(order)]
        stacks.append(str(folder / "stack.vrt"))
        gdal.BuildVRT(stacks[-1], files, separate=True).FlushCache()
    mosaic = str(tmp_path / "mosaic.vrt")
    gdal.BuildVRT(mosaic, stacks).FlushCache()
    with rasterio.open(mosaic) as ds:
        assert ds.count == 13 and ds.descriptions == (None,) * 13
        assert band_descriptions(ds) == order
    named = []  # GeoTIFF stacks that name their bands, B8A ninth: gdalbuildvrt over them drops the names
    for product, x0 in (("T33UUU", 0.0), ("T33UVU", 640.0)):
        named.append(write_raster(tmp_path / f"{product}.tif", data, origin=(500000.0 + x0, 6000000.0),
                                  descriptions=order))
    over_tiffs = str(tmp_path / "over_tiffs.vrt")
    gdal.BuildVRT(over_tiffs, named).FlushCache()
    with rasterio.open(over_tiffs) as ds:
        assert ds.descriptions == (None,) * 13 and band_descriptions(ds) == order
    described = str(tmp_path / "described.vrt")  # a stack whose bands were given descriptions
    gdal.Translate(described, stacks[0], format="VRT").FlushCache()
    vrt = gdal.Open(described, gdal.GA_Update)
    vrt.GetRasterBand(1).SetDescription("coastal")
    vrt = None
    with rasterio.open(described) as ds:
        assert band_descriptions(ds)[:2] == ["coastal", "B02"]


@pytest.mark.parametrize("layout", ["band-number", "file-name", "no dark band"])
def test_an_unnamed_13_band_stack_is_read_in_the_order_its_cirrus_band_shows(tmp_path, shipped, layout):
    """A 13-band Sentinel-2 stack without band names (gdalwarp -dstalpha, many exports) in
    band-number order (B8A ninth) had been read in the shipped card's file-name order (B8A last):
    B8A fed as B09 and so on (an audit). Its cirrus band B10, by far the darkest, tells the two
    orders apart; with no such band the raster's own order stays, with its warning."""
    from glassbox.core.io.raster import RasterSource
    from glassbox.core.io.units import S2_BAND_NUMBER_ORDER, S2_FILE_NAME_ORDER
    from glassbox.core.models.choice import read_card

    _models, _rgb, multispectral = shipped
    card = read_card(multispectral)
    order = S2_FILE_NAME_ORDER if layout == "file-name" else S2_BAND_NUMBER_ORDER
    data = scene(13, seed=3)
    if layout != "no dark band":
        data[order.index("B10")] = data[order.index("B10")] // 100  # cirrus: a few tens
    raster = write_raster(tmp_path / "unnamed.tif", data)
    source = RasterSource(raster, None, card.bands, None, card)
    try:
        if layout == "no dark band":
            assert source.bands == list(range(1, 14)) and "raster's order" in source.band_note
        else:
            assert [order[b - 1] for b in source.bands] == list(card.bands)
            assert source.band_note.startswith("WARNING: the raster does not name its bands; band "
                                               f"{order.index('B10') + 1} is by far the darkest")
    finally:
        source.close()
