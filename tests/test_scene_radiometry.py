"""core.scene_radiometry: scene statistics, a reference from training tiles, and the switch
between two models by a scene's radiometry."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from glassbox.core.errors import ModelCardError
from glassbox.core.radiometry import corrupt
from glassbox.core.scene_radiometry import (RadiometryReference, SceneSwitch, reference_from_tiles, scene_switch_for,
                                            tile_statistics)


def textured_tiles(n: int, seed: int) -> np.ndarray:
    """``(n, 3, 32, 32)`` 0..255 tiles: smooth random fields of varied brightness plus a little grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 200, (n, 3, 4, 4))
    fields = np.kron(coarse, np.ones((1, 1, 8, 8)))
    return np.clip(fields + rng.normal(0, 6, fields.shape), 0, 255).astype(np.float32)


def scaled(tiles: np.ndarray) -> np.ndarray:
    return ((tiles - 120.0) / 50.0).astype(np.float32)


def test_tile_statistics_see_brightness_noise_and_blur():
    tiles = textured_tiles(16, 0)
    base = tile_statistics(scaled(tiles))
    assert base.shape == (16, 9)
    darker = tile_statistics(scaled(corrupt(tiles, "brightness_x0.6", 255.0)))
    noisy = tile_statistics(scaled(corrupt(tiles, "noise_0.03", 255.0)))
    soft = tile_statistics(scaled(corrupt(tiles, "blur_1px", 255.0)))
    assert np.all(darker[:, :3] < base[:, :3])  # mean
    assert np.all(noisy[:, 6:] > base[:, 6:]) and np.all(soft[:, 6:] < base[:, 6:])  # detail
    with pytest.raises(ValueError):
        tile_statistics(np.zeros((0, 3, 8, 8)))


def test_reference_accepts_new_tiles_of_the_training_kind_and_refuses_changed_radiometry():
    reference = reference_from_tiles(scaled(textured_tiles(600, 0)), ["B04", "B03", "B02"], draw_size=128, draws=100)
    assert len(reference.centre) == len(reference.names) == 9 and reference.threshold > 0
    fresh = textured_tiles(400, 1)
    like, distance = reference.is_like(scaled(fresh))
    assert like, distance
    for name in ("brightness_x0.6", "brightness_x1.4", "noise_0.03", "blur_1px", "haze_0.3"):
        like, distance = reference.is_like(scaled(corrupt(fresh, name, 255.0)))
        assert not like, (name, distance)
    again = RadiometryReference.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert again.distance(scaled(fresh)) == pytest.approx(reference.distance(scaled(fresh)), rel=1e-4)
    with pytest.raises(ModelCardError, match="malformed"):
        RadiometryReference.from_dict({"centre": [0.0]})
    with pytest.raises(ModelCardError, match="positive"):
        RadiometryReference(centre=[0.0], spread=[0.0], threshold=1.0)


def test_scene_switch_file_beside_a_model(tmp_path, tiny_model_files):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("clean.onnx", "robust.onnx"):
        shutil.copy(tiny_model_files["onnx"], folder / name)
    assert scene_switch_for(folder / "clean.onnx") is None
    tiles = textured_tiles(300, 0)[:, :2]
    reference = reference_from_tiles(scaled(tiles), ["B1", "B2"], draw_size=64, draws=50)
    path = folder / "clean.scene_switch.json"
    path.write_text(json.dumps({"like_training": "clean.onnx", "otherwise": "robust.onnx",
                                "radiometry_reference": reference.to_dict()}))
    switch = scene_switch_for(folder / "clean.onnx")
    chosen, distance, reason = switch.choose(scaled(textured_tiles(200, 3)[:, :2]))
    assert chosen.name == "clean.onnx" and "within" in reason
    chosen, distance, reason = switch.choose(scaled(corrupt(textured_tiles(200, 3), "brightness_x1.4", 255.0)[:, :2]))
    assert chosen.name == "robust.onnx" and "beyond" in reason and distance > switch.reference.threshold
    (folder / "robust.onnx").unlink()
    with pytest.raises(ModelCardError, match="not found beside it: robust.onnx"):
        SceneSwitch.load(path)
    path.write_text("{}")
    with pytest.raises(ModelCardError, match="not a usable scene switch"):
        SceneSwitch.load(path)


def _field(seed: int, size: int = 256) -> np.ndarray:
    """``(2, size, size)`` digital numbers: blocks of 8 px at random levels plus grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(800, 3000, (2, size // 8, size // 8))
    return np.clip(np.kron(coarse, np.ones((1, 8, 8))) + rng.normal(0, 60, (2, size, size)), 0, 10000)


def test_switch_decision_on_a_raster_as_classify_samples_it(tmp_path, tiny_model_files):
    """bench/scene_switch_decision.py samples a GeoTIFF as classify does; a raster of the
    training kind gets the first model, the same raster 1.4 times brighter the second."""
    from helpers import TINY_BANDS, TINY_TILE, load_script, write_raster

    card = tiny_model_files["card"]
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("clean.onnx", "robust.onnx"):
        shutil.copy(tiny_model_files["onnx"], folder / name)
    training = _field(0, 512)
    tiles = np.stack([training[:, r:r + TINY_TILE, c:c + TINY_TILE]
                      for r in range(0, 512, TINY_TILE) for c in range(0, 512, TINY_TILE)])
    reference = reference_from_tiles(card.scaling.apply(tiles.astype(np.float32)), list(TINY_BANDS), draw_size=128)
    switch = folder / "clean.scene_switch.json"
    switch.write_text(json.dumps({"like_training": "clean.onnx", "otherwise": "robust.onnx",
                                  "radiometry_reference": reference.to_dict()}))
    scene = _field(1)
    bench = load_script("bench/scene_switch_decision.py")
    plain = bench.decide(write_raster(tmp_path / "plain.tif", scene.astype(np.uint16), descriptions=TINY_BANDS), switch)
    bright = bench.decide(write_raster(tmp_path / "bright.tif", (scene * 1.4).astype(np.uint16),
                                       descriptions=TINY_BANDS), switch)
    assert plain["model"] == "clean.onnx" and plain["distance"] <= plain["threshold"]
    assert bright["model"] == "robust.onnx" and bright["distance"] > bright["threshold"]
    assert plain["sampled_tiles"] > 100 and set(plain["deviations"]) == set(reference.names)


def test_classify_measures_the_scene_against_the_reference_beside_the_model(tmp_path, tiny_model_files):
    """core.classify_raster with a model that has a .radiometry.json beside it: the result and the
    log say how far the scene is from the training tiles; a brighter scene gets the warning,
    the outputs are those of the same model without the reference."""
    from helpers import TINY_BANDS, TINY_TILE, write_raster

    from glassbox.core.classify import ClassifyOptions, classify_raster

    card = tiny_model_files["card"]
    folder = tmp_path / "models"
    folder.mkdir()
    model = folder / "tiny.onnx"
    shutil.copy(tiny_model_files["onnx"], model)
    training = _field(0, 512)
    tiles = np.stack([training[:, r:r + TINY_TILE, c:c + TINY_TILE]
                      for r in range(0, 512, TINY_TILE) for c in range(0, 512, TINY_TILE)])
    reference = reference_from_tiles(card.scaling.apply(tiles.astype(np.float32)), list(TINY_BANDS), draw_size=128)
    scene = _field(1)
    plain = write_raster(tmp_path / "plain.tif", scene.astype(np.uint16), descriptions=TINY_BANDS)
    bright = write_raster(tmp_path / "bright.tif", (scene * 1.4).astype(np.uint16), descriptions=TINY_BANDS)

    def run(raster, name, check=True):
        log: list[str] = []
        result = classify_raster(raster, str(model), str(tmp_path / f"{name}_classes.tif"),
                                 options=ClassifyOptions(check_radiometry=check), log=log.append)
        return result, [m for m in log if "scene radiometry" in m]

    without, lines = run(bright, "no_reference")
    assert without.radiometry is None and len(lines) == 1, lines
    assert lines[0].startswith("scene radiometry not checked: no tiny.radiometry.json beside the model")
    (folder / "tiny.radiometry.json").write_text(json.dumps({"radiometry_reference": reference.to_dict()}))
    like, lines = run(plain, "plain")
    assert like.radiometry.like_training and len(lines) == 1 and not lines[0].startswith("WARNING")
    unlike, lines = run(bright, "bright")
    assert not unlike.radiometry.like_training and unlike.radiometry.furthest.startswith("mean")
    assert len(lines) == 1 and lines[0].startswith("WARNING") and "brightness of band" in lines[0]
    import rasterio

    with rasterio.open(tmp_path / "bright_classes.tif") as a, rasterio.open(tmp_path / "no_reference_classes.tif") as b:
        assert np.array_equal(a.read(), b.read())
    off, lines = run(bright, "off", check=False)
    assert off.radiometry is None and not lines


def test_exported_and_ensembled_models_keep_the_reference(tmp_path, tiny_model_files):
    """glassbox:export_onnx and glassbox:ensemble make models that read the same input as their
    sources: the source's radiometry reference comes along (renamed for the new model), so
    classify still checks the scene; a source without one removes an old one beside the target."""
    from helpers import TINY_BANDS

    from glassbox.core.models.backends import card_path_for
    from glassbox.core.models.ensemble import build_ensemble
    from glassbox.core.scene_radiometry import reference_for
    from glassbox.core.training.saving import export_model_file

    folder, out = tmp_path / "models", tmp_path / "out"
    folder.mkdir()
    weights = folder / "tiny.pt"
    shutil.copy(tiny_model_files["torch"], weights)
    shutil.copy(card_path_for(tiny_model_files["torch"]), card_path_for(weights))
    reference = reference_from_tiles(scaled(textured_tiles(64, 0)), list(TINY_BANDS), draw_size=16)
    (folder / "tiny.radiometry.json").write_text(json.dumps({"model": "tiny.pt",
                                                             "radiometry_reference": reference.to_dict()}))
    written = export_model_file(weights, out / "exported.onnx")
    copied = json.loads((out / "exported.radiometry.json").read_text())
    assert written["radiometry"] == str(out / "exported.radiometry.json")
    assert copied["model"] == "exported.onnx" and copied["radiometry_reference"] == reference.to_dict()
    assert reference_for(out / "exported.onnx").to_dict() == reference.to_dict()
    # the raw member has no reference, the masked one has: the ensemble takes the masked one's
    build_ensemble(tiny_model_files["torch"], weights, 0.5, out / "ensemble.onnx")
    assert reference_for(out / "ensemble.onnx").to_dict() == reference.to_dict()
    (folder / "tiny.radiometry.json").write_text("{ damaged")  # not copied, and no traceback
    written = export_model_file(weights, out / "exported.onnx")
    assert written["radiometry"] is None and not (out / "exported.radiometry.json").exists()
    assert (out / "exported.onnx").is_file()
    # a reference written for another model file of the target's stem (b.pt beside b.onnx) stays
    (folder / "tiny.radiometry.json").unlink()
    (out / "other.radiometry.json").write_text(json.dumps({"model": "other.pt",
                                                           "radiometry_reference": reference.to_dict()}))
    export_model_file(weights, out / "other.onnx")
    assert (out / "other.radiometry.json").is_file()


def test_reference_script_for_a_13_band_model(tmp_path):
    """scripts/radiometry_reference.py --multispectral: the reference of the shipped 13-band model
    from 13-band EuroSAT-like tiles, in the card's band order, beside a copy of the model."""
    from helpers import load_script, write_eurosat_ms_folder

    from glassbox.core.models.choice import read_card
    from glassbox.core.scene_radiometry import reference_for

    shipped = Path(__file__).resolve().parent.parent / "resources" / "models" / "eurosat_ms_fusion_resnet18.onnx"
    model = tmp_path / shipped.name
    shutil.copy(shipped, model)
    data = write_eurosat_ms_folder(tmp_path / "ms", per_class=3)
    assert load_script("scripts/radiometry_reference.py").main(
        ["--multispectral", "--data", str(data), "--like-training", str(model), "--draw-size", "8"]) == 0
    reference = reference_for(model)
    bands = read_card(model).bands
    assert reference.names == [f"{k} {b}" for k in ("mean", "std", "detail") for b in bands]
    assert reference.threshold > 0 and reference.draw_size == 8


def test_a_scene_far_beyond_any_season_points_to_the_bands():
    """The demo winter scene (25 spreads, threshold 7.5) reads as another season; an unnamed
    13-band stack in another band order (thousands of spreads) as wrong bands or units."""
    from glassbox.core.scene_radiometry import SceneRadiometry

    winter = SceneRadiometry(distance=25.4, threshold=7.5, tiles=400, furthest="std B10", deviation=3.0)
    shuffled = SceneRadiometry(distance=3319.0, threshold=7.5, tiles=400, furthest="std B10", deviation=3.0)
    assert "another season" in winter.message("m") and "BANDS" not in winter.message("m")
    message = shuffled.message("m")
    assert message.startswith("WARNING") and "443 times" in message
    assert "not the ones the model reads" in message and "BANDS" in message and "contrast of band B10" in message


def test_small_scenes_get_a_threshold_for_their_sample_size():
    """The reference's threshold holds for medians of draw_size tiles; a raster sampled with
    fewer tiles varies more by chance alone, so its threshold grows as sqrt(draw_size / n), and
    training-like tiles of a small raster are not warned about (they were, at 49 tiles)."""
    from glassbox.core.scene_radiometry import measure_scene, threshold_for

    reference = reference_from_tiles(scaled(textured_tiles(512, 0)), ["B08", "B03"], draw_size=128)
    assert threshold_for(reference, 128) == reference.threshold == threshold_for(reference, 1000)
    assert threshold_for(reference, 32) == pytest.approx(2 * reference.threshold)
    small = scaled(textured_tiles(32, 1))
    measured = measure_scene(reference, small)
    assert measured.threshold == pytest.approx(2 * reference.threshold) and measured.tiles == 32
    assert measured.like_training, (measured.distance, measured.threshold)
    assert not measure_scene(reference, scaled(corrupt(textured_tiles(32, 1), "brightness_x0.6", 255.0))).like_training
