"""The shipped models: their cards, their two formats, and (with ../shared/data) the default
model's accuracy through the whole raster pipeline on a mosaic of held-out EuroSAT tiles."""

from pathlib import Path

import numpy as np
import pytest
import rasterio

from glassbox.core.models.backends import load_model
from glassbox.core.models.card import EUROSAT_CLASSES
from glassbox.core.classify import ClassifyOptions, classify_raster

from helpers import write_raster

PLUGIN_DIR = Path(__file__).resolve().parent.parent
MODELS = PLUGIN_DIR / "resources" / "models"
SHIPPED = MODELS / "eurosat_rgb_resnet18_64_w32_96px"  # the default of every algorithm
SHIPPED_FAST = MODELS / "eurosat_rgb_resnet18_64_w32"  # the same network before its 96 px fine-tune
SHIPPED_PAPER1 = MODELS / "eurosat_rgb_paper1_cnn"  # paper 1's network
# name -> (architecture in the card, smallest stated test accuracy)
SHIPPED_ENSEMBLE = MODELS / "eurosat_rgb_resnet18_64_w32_96px_ensemble2"  # ONNX only: the most accurate
RGB_MODELS = {SHIPPED: ("resnet18_64", 0.984), SHIPPED_FAST: ("resnet18_64", 0.98),
              SHIPPED_PAPER1: ("paper1_cnn", 0.92), SHIPPED_ENSEMBLE: ("mean_ensemble", 0.986)}
TWINS = [m for m in RGB_MODELS if m != SHIPPED_ENSEMBLE]  # shipped as ONNX and as Torch
EUROSAT_RGB = PLUGIN_DIR.parent / "shared" / "data" / "eurosat_rgb"


def test_the_algorithms_default_is_the_shipped_model(glassbox_processing):
    from glassbox.algorithms.base import DEFAULT_MODEL

    assert DEFAULT_MODEL == SHIPPED.with_suffix(".onnx") and DEFAULT_MODEL.is_file()
    card = load_model(DEFAULT_MODEL).card  # the fast network, fine-tuned with its tiles run at 96 px
    assert card.architecture == {"name": "resnet18_64", "kwargs": {"width": 32, "input_scale": 1.5}}
    assert card.training["initial_weights"]["model"] == SHIPPED_FAST.with_suffix(".pt").name


@pytest.mark.parametrize("shipped", list(RGB_MODELS), ids=lambda p: p.name)
def test_card_reads_sentinel2_l1c_rgb_and_states_accuracy(shipped):
    architecture, least_accuracy = RGB_MODELS[shipped]
    card = load_model(shipped.with_suffix(".onnx")).card
    assert card.bands == ["B04", "B03", "B02"]
    assert card.scaling.scale == pytest.approx(255 / 2750)
    assert card.scaling.clip == [0, 255]
    assert card.tile_size == 64 and card.gsd == 10.0
    assert card.class_names == [c.name for c in EUROSAT_CLASSES]
    assert card.architecture["name"] == architecture
    assert card.accuracy["test_overall"] >= least_accuracy
    assert "sha256" in card.training["split_rule"]


@pytest.mark.parametrize("shipped", TWINS, ids=lambda p: p.name)
def test_onnx_and_torch_twins_agree(shipped):
    onnx_model = load_model(shipped.with_suffix(".onnx"))
    torch_model = load_model(shipped.with_suffix(".pt"))
    batch = np.random.default_rng(0).normal(0, 1, (8, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(onnx_model.predict_proba(batch), torch_model.predict_proba(batch), atol=1e-4)


@pytest.mark.skipif(not EUROSAT_RGB.is_dir(), reason="needs ../shared/data/eurosat_rgb")
def test_classifies_a_mosaic_of_held_out_tiles(tmp_path):
    """12 x 10 held-out test tiles, turned back into Sentinel-2 digital numbers (x 2750/255),
    laid out as one UTM raster and classified with stride = tile size: each tile's pixels must
    get the tile's class, for at least 95 % of tiles."""
    from PIL import Image

    from glassbox.core.training.datasets import split_of

    rng = np.random.default_rng(1)
    names = [c.name for c in EUROSAT_CLASSES]
    tiles, labels = [], []
    for label, name in enumerate(names):
        files = sorted(f for f in (EUROSAT_RGB / name).glob("*.jpg") if split_of(f.name) == "test")
        for f in rng.choice(files, 12, replace=False):
            tiles.append(np.asarray(Image.open(f).convert("RGB"), np.float32).transpose(2, 0, 1))
            labels.append(label)
    order = rng.permutation(len(tiles))
    rows, cols = 10, 12
    mosaic = np.zeros((3, rows * 64, cols * 64), np.float32)
    truth = np.zeros((rows, cols), int)
    for k, i in enumerate(order):
        r, c = divmod(k, cols)
        mosaic[:, r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = tiles[i]
        truth[r, c] = labels[i]
    dn = np.round(mosaic * 2750 / 255).astype(np.uint16) + 1  # +1: keep 0 free for nodata
    raster = write_raster(tmp_path / "mosaic.tif", dn, nodata=0, descriptions=["B04", "B03", "B02"])
    out = tmp_path / "classes.tif"
    classify_raster(raster, SHIPPED.with_suffix(".onnx"), str(out), options=ClassifyOptions(stride=64))
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    predicted = classes[32::64, 32::64]
    assert (classes.reshape(rows, 64, cols, 64) == predicted[:, None, :, None]).all(), "one class per tile"
    accuracy = (predicted == truth).mean()
    assert accuracy >= 0.95, f"mosaic tile accuracy {accuracy:.3f}"


# -- the shipped 13-band Sentinel-2 model -----------------------------------------------------
SHIPPED_MS = PLUGIN_DIR / "resources" / "models" / "eurosat_ms_spatial_spectral"
EUROSAT_MS = PLUGIN_DIR.parent / "shared" / "data" / "eurosat_ms_subset"
EUROSAT_MS_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
SAFE_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def test_13_band_card_states_bands_and_cross_validated_accuracy():
    card = load_model(SHIPPED_MS.with_suffix(".onnx")).card
    assert card.bands == EUROSAT_MS_ORDER
    assert card.architecture["name"] == "spatial_spectral"
    assert card.class_names == [c.name for c in EUROSAT_CLASSES]
    assert card.tile_size == 64 and card.gsd == 10.0
    assert card.accuracy["cv_folds"] == 5
    assert 0.5 < card.accuracy["cv_mean"] < 1.0


def test_13_band_onnx_and_torch_twins_agree():
    onnx_model = load_model(SHIPPED_MS.with_suffix(".onnx"))
    torch_model = load_model(SHIPPED_MS.with_suffix(".pt"))
    batch = np.random.default_rng(0).normal(0, 1, (4, 13, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(onnx_model.predict_proba(batch), torch_model.predict_proba(batch), atol=1e-4)


def test_13_band_stack_in_safe_order_is_read_by_band_name(tmp_path):
    """A Sentinel-2 stack in the usual order (B8A after B08) with band names gives the same
    result as the same data in the card's order (B8A last) with no names: the reader matches
    bands by name, not position."""
    rng = np.random.default_rng(3)
    data = {b: rng.integers(500, 3500, (128, 128)).astype(np.uint16) for b in SAFE_ORDER}
    safe = write_raster(tmp_path / "safe.tif", np.stack([data[b] for b in SAFE_ORDER]), descriptions=SAFE_ORDER)
    card_order = write_raster(tmp_path / "card_order.tif", np.stack([data[b] for b in EUROSAT_MS_ORDER]))
    logs: list[str] = []
    for name, raster in (("safe", safe), ("card", card_order)):
        classify_raster(raster, SHIPPED_MS.with_suffix(".onnx"), str(tmp_path / f"{name}_classes.tif"),
                        probabilities_path=str(tmp_path / f"{name}_probs.tif"), log=logs.append,
                        options=ClassifyOptions(stride=64))
    with rasterio.open(tmp_path / "safe_probs.tif") as a, rasterio.open(tmp_path / "card_probs.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-6)
    assert any("matched by name" in m and "B8A<-band 9" in m for m in logs)
    assert any("raster's order" in m and "B8A<-band 13" in m for m in logs)


@pytest.mark.skipif(not EUROSAT_MS.is_dir(), reason="needs ../shared/data/eurosat_ms_subset")
def test_13_band_model_classifies_real_eurosat_ms_patches_in_their_utm_grid(tmp_path, glassbox_processing):
    """Real georeferenced 13-band L1C patches through processing.run: output in the patch's
    UTM grid. These patches were in the final model's training data, so this checks the
    pipeline (bands, scaling, grid), not generalisation: that is the card's cross-validation."""
    import processing

    hits = 0
    patches = [sorted((EUROSAT_MS / c.name).glob("*.tif"))[0] for c in EUROSAT_CLASSES]
    for label, patch in enumerate(patches):
        out = tmp_path / f"{patch.stem}_classes.tif"
        processing.run("glassbox:classify", {
            "INPUT": str(patch), "MODEL": str(SHIPPED_MS.with_suffix(".onnx")), "OUTPUT_CLASSES": str(out),
            "OUTPUT_PROBABILITIES": str(tmp_path / f"{patch.stem}_p.tif")})
        with rasterio.open(patch) as src, rasterio.open(out) as ds:
            assert ds.crs == src.crs and ds.transform.almost_equals(src.transform) and ds.shape == src.shape
            values, counts = np.unique(ds.read(1), return_counts=True)
        hits += int(values[np.argmax(counts)] == label)
    assert hits >= 8, f"{hits}/10 training patches classified as their class"


def test_the_ensemble_holds_two_96px_networks_and_beats_the_default_on_validation():
    """The ensemble file = the mean of the logits of the default network and of its seed-1
    twin (not shipped alone): its logits follow the default's but are not the same."""
    ensemble = load_model(SHIPPED_ENSEMBLE.with_suffix(".onnx"))
    assert [m["kwargs"] for m in ensemble.card.architecture["members"]] == [{"width": 32, "input_scale": 1.5}] * 2
    assert ensemble.card.accuracy["val_overall"] > load_model(SHIPPED.with_suffix(".onnx")).card.accuracy["val_overall"]
    batch = np.random.default_rng(2).normal(0, 1, (6, 3, 64, 64)).astype(np.float32)
    mean_logits = ensemble.predict_logits(batch)
    first = load_model(SHIPPED.with_suffix(".onnx")).predict_logits(batch)
    assert not np.allclose(mean_logits, first, atol=1e-3)  # a second, different member
    assert np.corrcoef(mean_logits.ravel(), first.ravel())[0, 1] > 0.9
