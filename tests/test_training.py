"""Training: the spatial-spectral network, tile loaders (folders, raster + polygons), scaling,
the training loop (learning, seed, initial weights, cancel) and glassbox:train_classifier."""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.errors
import torch

from glassbox.core.models.architectures import ARCHITECTURES, build_model
from glassbox.core.models.backends import load_model
from glassbox.core.errors import Cancelled, RasterInputError, TrainingDataError
from glassbox.core.training.data import TrainingData, tiles_from_folder, tiles_from_polygons
from glassbox.core.training.loop import TrainOptions, TrainingStopped, load_initial_weights, predict_logits, random_shift, train_classifier
from glassbox.core.training.scaling import compute_scaling
from glassbox.core.training.evaluation import evaluate
from glassbox.core.training.saving import save_model_files

from helpers import write_raster

torch.set_num_threads(2)

PATTERN_CLASSES = ["Field", "Forest", "Water"]
PATTERN_BANDS = ["B1", "B2", "B3"]


def pattern_tiles(per_class: int, size: int = 16, seed: int = 0, bands: int = 3):
    """uint16 tiles (N, bands, size, size) of three classes that differ by a clear pattern
    that survives flips and 90-degree turns: 'Field' = stripes (2 px, random orientation) in
    band 1, 'Forest' = a 2 px checkerboard in band 1, 'Water' = bright band 3. Band means of
    Field and Forest are equal, so telling them apart needs texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    tiles, labels = [], []
    for label in range(3):
        for _ in range(per_class):
            tile = rng.normal(1000, 100, (bands, size, size))
            if label == 0:
                tile[0] += 800 * (((xx if rng.random() < 0.5 else yy) // 2) % 2)
            elif label == 1:
                tile[0] += 800 * ((xx // 2 + yy // 2) % 2)
            else:
                tile[2] += 800
            tiles.append(tile)
            labels.append(label)
    return np.clip(np.stack(tiles), 0, None).astype(np.uint16), np.asarray(labels)


def pattern_data(per_class: int, size: int = 16, seed: int = 0) -> TrainingData:
    tiles, labels = pattern_tiles(per_class, size, seed)
    return TrainingData(tiles, labels, list(PATTERN_CLASSES), list(PATTERN_BANDS),
                        [f"tile {i}" for i in range(labels.size)], description="generated patterns")


def write_tile_folder(root: Path, tiles: np.ndarray, labels: np.ndarray, names=PATTERN_CLASSES,
                      descriptions=None, georeferenced=True) -> Path:
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        if georeferenced:
            write_raster(folder / f"{names[label]}_{i}.tif", tile, descriptions=descriptions)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(folder / f"{names[label]}_{i}.tif", "w", driver="GTiff", width=tile.shape[2],
                                   height=tile.shape[1], count=tile.shape[0], dtype=tile.dtype) as ds:
                    ds.write(tile)
    return root


# -- architecture ---------------------------------------------------------------------------
def test_spatial_spectral_has_a_per_pixel_spectral_branch():
    assert "spatial_spectral" in ARCHITECTURES
    torch.manual_seed(0)
    model = build_model("spatial_spectral", 13, 10, 64).eval()
    x = torch.randn(2, 13, 64, 64)
    assert model(x).shape == (2, 10)
    assert build_model("spatial_spectral", 4, 3, 24).eval()(torch.randn(1, 4, 24, 24)).shape == (1, 3)
    convs = [m for m in model.spectral.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.kernel_size == (1, 1) for m in convs) and convs[0].in_channels == 13
    assert not any(isinstance(m, torch.nn.ReLU) and m.inplace for m in model.modules())
    # spectral features of a pixel depend on that pixel's bands only; spatial ones spread out
    y = x.clone()
    y[:, :, 10, 20] += 5.0
    with torch.no_grad():
        changed = (model.spectral(y) - model.spectral(x)).abs().sum(dim=(0, 1)) > 0
        spread = (model.spatial[:3](y) - model.spatial[:3](x)).abs().sum(dim=(0, 1)) > 0
    assert changed.sum() == 1 and changed[10, 20]
    assert spread.sum() == 9
    with pytest.raises(Exception, match="at least 16"):
        build_model("spatial_spectral", 3, 2, 8)


# -- scaling --------------------------------------------------------------------------------
def test_scaling_from_training_data():
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (20, 3, 8, 8)).astype(np.uint8)
    s = compute_scaling(u8)
    assert s.scale == 1.0 and s.offset == 0.0 and s.clip is None
    np.testing.assert_allclose(s.mean, u8.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(s.std, u8.std(axis=(0, 2, 3)), rtol=1e-9)

    u16 = rng.integers(0, 10000, (30, 2, 16, 16)).astype(np.uint16)
    u16[0, 0, 0, 0] = 65000  # an outlier the robust stretch ignores
    s = compute_scaling(u16)
    lo, hi = np.percentile(u16[:, 0].astype(float), [1, 99])
    assert s.clip == [0.0, 1.0]
    assert s.scale[0] == pytest.approx(1 / (hi - lo), rel=1e-6)
    assert s.offset[0] == pytest.approx(-lo / (hi - lo), rel=1e-6)
    x = s.apply(u16)
    assert abs(float(x[:, 0].mean())) < 1e-4 and float(x[:, 0].std()) == pytest.approx(1.0, abs=1e-3)


# -- loaders --------------------------------------------------------------------------------
def test_folder_of_four_band_geotiffs(tmp_path):
    tiles, labels = pattern_tiles(3, size=16, seed=2)
    tiles = np.concatenate([tiles, tiles[:, :1] // 2], axis=1)  # 4 bands
    root = write_tile_folder(tmp_path / "tiles", tiles, labels, descriptions=["B02", "B03", "B04", "B08"])
    data = tiles_from_folder(root)
    assert data.tiles.shape == (9, 4, 16, 16) and data.tiles.dtype == np.uint16
    assert data.class_names == PATTERN_CLASSES and data.band_names == ["B02", "B03", "B04", "B08"]
    assert data.gsd == pytest.approx(10.0)
    for tile, label, source in zip(data.tiles, data.labels, data.sources):
        assert Path(source).parent.name == PATTERN_CLASSES[label]
        with rasterio.open(source) as ds:
            np.testing.assert_array_equal(ds.read(), tile)
    with pytest.raises(TrainingDataError, match="expected 32x32"):
        tiles_from_folder(root, tile_size=32)

    bad = root / "Water" / "Water_bad.tif"
    write_raster(bad, tiles[0, :3])
    with pytest.raises(TrainingDataError, match=r"Water_bad\.tif.*3 band"):
        tiles_from_folder(root)
    write_raster(bad, tiles[0, :, :8, :8])
    with pytest.raises(TrainingDataError, match=r"Water_bad\.tif.*8x8"):
        tiles_from_folder(root)


def test_folder_of_jpgs_and_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    for name, suffix in (("Crop", ".jpg"), ("Urban", ".png")):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(tmp_path / name / f"{i}{suffix}")
    data = tiles_from_folder(tmp_path)
    assert data.tiles.shape == (4, 3, 12, 12) and data.tiles.dtype == np.uint8
    assert data.band_names == ["red", "green", "blue"] and data.labels.tolist() == [0, 0, 1, 1]
    with Image.open(tmp_path / "Urban" / "1.png") as image:
        np.testing.assert_array_equal(data.tiles[3], np.asarray(image).transpose(2, 0, 1))



def test_folder_mistakes_are_named(tmp_path):
    """Tiles straight in the folder (no class sub-folders), and a class folder without tiles: the
    messages say so (they spoke of no tiles at all, and of polygons)."""
    from PIL import Image

    flat = tmp_path / "Forest"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(flat / f"{i}.jpg")
    with pytest.raises(TrainingDataError, match="holds 3 image tile.* but no class sub-folders"):
        tiles_from_folder(flat)
    (tmp_path / "Empty").mkdir()
    lines = []
    data = tiles_from_folder(tmp_path).without_empty_classes(lines.append)
    assert data.class_names == ["Forest"] and "Forest" not in lines[0]
    assert "Empty have no tile (their folders hold no image tile)" in lines[0]

def _position_raster(path, crs="EPSG:32633", origin=(500000.0, 6001000.0), size=160):
    """2-band uint16 raster whose band 1 = row + 1 and band 2 = column + 1 (10 m pixels)."""
    rows, cols = np.mgrid[0:size, 0:size]
    return write_raster(path, np.stack([rows + 1, cols + 1]).astype(np.uint16), crs=crs, origin=origin,
                        descriptions=["row", "col"])


def _qgs_polygon(wkt):
    from qgis.core import QgsGeometry

    return QgsGeometry.fromWkt(wkt)


X0, Y0 = 500000.0, 6001000.0
#: a grid-aligned rectangle of 48 x 32 px (cols 10..58, rows 20..52): exactly 3 x 2 tiles of 16 px
RECT_WKT = f"POLYGON(({X0 + 100} {Y0 - 520},{X0 + 580} {Y0 - 520},{X0 + 580} {Y0 - 200},{X0 + 100} {Y0 - 200},{X0 + 100} {Y0 - 520}))"
RECT_LOOSE_WKT = (f"POLYGON(({X0 + 98} {Y0 - 522},{X0 + 582} {Y0 - 522},{X0 + 582} {Y0 - 198},{X0 + 98} {Y0 - 198},"
                  f"{X0 + 98} {Y0 - 522}))")
#: a quadrilateral with slanted, off-grid edges in the lower right, with a square hole
QUAD_WKT = (f"POLYGON(({X0 + 605} {Y0 - 1595},{X0 + 1596} {Y0 - 1595},{X0 + 1596} {Y0 - 605},{X0 + 1003} {Y0 - 707},"
            f"{X0 + 605} {Y0 - 1595}),({X0 + 1300} {Y0 - 1400},{X0 + 1400} {Y0 - 1400},{X0 + 1400} {Y0 - 1300},"
            f"{X0 + 1300} {Y0 - 1300},{X0 + 1300} {Y0 - 1400}))")


def _check_tiles_inside(data, polygons_by_class, qgis_app):
    from qgis.core import QgsGeometry, QgsRectangle

    assert data.footprints is not None and len(data.footprints) == data.num_tiles
    for tile, label, (xmin, ymin, xmax, ymax) in zip(data.tiles, data.labels, data.footprints):
        footprint = QgsGeometry.fromRect(QgsRectangle(xmin, ymin, xmax, ymax))
        assert xmax - xmin == pytest.approx(160) and ymax - ymin == pytest.approx(160)
        assert polygons_by_class[data.class_names[label]].contains(footprint)
        # the values are the raster's at that footprint: band 1 = row + 1, band 2 = column + 1
        row0, col0 = round((Y0 - ymax) / 10), round((xmin - X0) / 10)
        assert tile[0, 0, 0] == row0 + 1 and tile[1, 0, 0] == col0 + 1
        assert tile[0, -1, -1] == row0 + 16 and tile[1, -1, -1] == col0 + 16


def test_polygon_sampling_keeps_tiles_inside_their_polygon(tmp_path, qgis_app):
    raster = _position_raster(tmp_path / "r.tif")
    rect, quad = _qgs_polygon(RECT_WKT), _qgs_polygon(QUAD_WKT)
    polygons = [json.loads(rect.asJson()), json.loads(quad.asJson())]
    data = tiles_from_polygons(raster, polygons, ["Water", "Forest"], 16)
    assert data.class_names == ["Forest", "Water"]
    counts = data.class_counts()
    assert counts["Water"] == 6 and counts["Forest"] >= 3
    assert data.band_names == ["row", "col"] and data.gsd == pytest.approx(10.0)
    _check_tiles_inside(data, {"Water": rect, "Forest": quad}, qgis_app)
    assert {s for s in data.sources} == {"polygon 1", "polygon 2"}
    # overlapping candidates every 8 model pixels; at most 4 per polygon
    dense = tiles_from_polygons(raster, polygons, ["Water", "Forest"], 16, stride=8)
    assert dense.class_counts()["Water"] == 5 * 3
    _check_tiles_inside(dense, {"Water": rect, "Forest": quad}, qgis_app)
    few = tiles_from_polygons(raster, polygons, ["Water", "Forest"], 16, stride=8, max_tiles_per_polygon=4)
    assert few.class_counts() == {"Forest": 4, "Water": 4}
    # numbers as labels sort numerically
    numeric = tiles_from_polygons(raster, polygons, [10, 9.0], 16)
    assert numeric.class_names == ["9", "10"]


def test_polygons_outside_the_raster_or_too_small(tmp_path):
    raster = _position_raster(tmp_path / "r.tif")
    far = {"type": "Polygon", "coordinates": [[(0, 0), (100, 0), (100, 100), (0, 0)]]}
    with pytest.raises(RasterInputError, match="none of the 1 polygons overlaps the raster"):
        tiles_from_polygons(raster, [far], ["Water"], 16)
    small = {"type": "Polygon", "coordinates": [[(X0 + 10, Y0 - 100), (X0 + 100, Y0 - 100), (X0 + 100, Y0 - 10),
                                                 (X0 + 10, Y0 - 100)]]}
    with pytest.raises(TrainingDataError, match="no tile of 16x16 pixels") as error:
        tiles_from_polygons(raster, [small], ["Water"], 16)
    assert "at least 160 m across" in str(error.value) and "GSD 5 m" in str(error.value)  # what to change


def test_overlapping_polygons_give_each_tile_one_label(tmp_path, qgis_app):
    """The same rectangle labelled Water twice and Forest once: its 6 tiles are in polygons of two
    classes, so they are left out (and said so); the quadrilateral labelled Forest twice gives
    each of its tiles once."""
    raster = _position_raster(tmp_path / "r.tif")
    rect, quad = json.loads(_qgs_polygon(RECT_WKT).asJson()), json.loads(_qgs_polygon(QUAD_WKT).asJson())
    single = tiles_from_polygons(raster, [quad], ["Forest"], 16)
    lines = []
    data = tiles_from_polygons(raster, [rect, rect, rect, quad, quad], ["Water", "Water", "Forest", "Forest", "Forest"],
                               16, log=lines.append)
    assert data.class_counts() == {"Forest": single.num_tiles, "Water": 0}
    assert len({tuple(f) for f in data.footprints}) == data.num_tiles
    assert any(line.startswith("WARNING: 6 tile(s) lie in overlapping polygons of different classes (Forest / Water)")
               for line in lines), lines
    assert f"{single.num_tiles} repeated tile(s) of overlapping polygons of one class were kept once" in lines
    kept = data.without_empty_classes(lines.append)
    assert kept.class_names == ["Forest"] and (kept.labels == 0).all()
    assert lines[-1].startswith("WARNING: class(es) Water have no tile")


# -- training -------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["spatial_spectral", "paper1_cnn"])
def test_training_learns_a_clear_pattern(tmp_path, architecture):
    data = pattern_data(30, seed=0)
    lines = []
    result = train_classifier(data, architecture, TrainOptions(epochs=3, batch_size=16, lr=3e-3, seed=0, patience=2),
                              log=lines.append)
    module, card, history = result
    assert result.card.accuracy["val_overall"] >= 0.95
    assert 1 <= len(history) <= 3 and history[result.best_epoch - 1]["val_acc"] == result.card.accuracy["val_overall"]
    assert re.search(r"epoch 1/3 loss \d\.\d+ train_acc \d\.\d+ val_acc \d\.\d+", "\n".join(lines))
    assert card.class_names == PATTERN_CLASSES and card.bands == PATTERN_BANDS and card.tile_size == 16
    assert card.architecture["name"] == architecture and card.scaling.clip == [0.0, 1.0]
    assert len(card.scaling.mean) == 3 and card.training["n_val"] == 18 and card.training["n_train"] == 72
    # the saved model (card scaling included) classifies fresh tiles of the same patterns
    files = save_model_files(module, card, tmp_path / "m.pt", tmp_path / "m.onnx")
    assert set(files) == {"weights", "card", "onnx"}
    fresh = pattern_data(10, seed=99)
    for path in (tmp_path / "m.pt", tmp_path / "m.onnx"):
        assert evaluate(load_model(path), fresh).metrics.overall_accuracy >= 0.95



@pytest.mark.parametrize("tiles", [2, 33, 65, 97, 64, 40])
def test_every_training_tile_is_in_one_batch_per_epoch(tiles):
    """A last batch of one tile joins the one before: no tile lost or repeated (with 33 tiles and
    batches of 32 this crashed; with 65 it trained 32 tiles twice and skipped 32)."""
    from glassbox.core.training.loop import _batches

    batches = _batches(np.arange(tiles), 32)
    assert sorted(np.concatenate(batches).tolist()) == list(range(tiles))
    assert min(b.size for b in batches) >= 2


def test_training_on_one_more_tile_than_a_batch():
    """33 training tiles in batches of 32 (a remainder of one) train, as any count does."""
    data = pattern_data(14, seed=3)  # 42 tiles, 9 for validation: 33 to train on
    result = train_classifier(data, "spatial_spectral", TrainOptions(epochs=1, batch_size=32, seed=0, patience=0))
    assert result.card.training["n_train"] == 33


def _polygon_tiles(polygons_per_class: int, tiles_per_polygon: int = 5) -> TrainingData:
    """Tiles as cut from polygons (footprints set), ``sources`` naming each tile's polygon."""
    n = 2 * polygons_per_class * tiles_per_polygon
    labels = np.repeat(np.arange(2 * polygons_per_class) % 2, tiles_per_polygon)
    sources = [f"feature {k // tiles_per_polygon + 1}" for k in range(n)]
    return TrainingData(np.zeros((n, 1, 4, 4), np.uint16), labels, ["A", "B"], ["b1"], sources,
                        footprints=np.zeros((n, 4)))


def test_tiles_from_polygons_are_validated_on_other_polygons():
    """No polygon gives tiles to both sides (its tiles are neighbours, alike, often overlapping);
    about the validation share of each class goes to validation; the card's rule says so."""
    from glassbox.core.training.loop import validation_split

    data = _polygon_tiles(5)
    lines = []
    train, val, rule = validation_split(data, 0.2, seed=0, log=lines.append)
    assert not {data.sources[i] for i in train} & {data.sources[i] for i in val}
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(data.num_tiles))
    assert [int(np.sum(data.labels[val] == c)) for c in (0, 1)] == [5, 5]  # one polygon of 5 per class
    assert rule.startswith("by polygon: 2 of 10 polygons") and not lines


def test_two_polygons_per_class_still_hold_one_out():
    """Two polygons per class cannot give 20 % shares, but whole polygons can still be held out:
    one per class to validation, none on both sides, no warning (a random split was taken)."""
    from glassbox.core.training.loop import validation_split

    data = _polygon_tiles(2)
    lines = []
    train, val, rule = validation_split(data, 0.2, seed=0, log=lines.append)
    assert not {data.sources[i] for i in train} & {data.sources[i] for i in val}
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(data.num_tiles))
    assert [int(np.sum(data.labels[val] == c)) for c in (0, 1)] == [5, 5]
    assert [int(np.sum(data.labels[train] == c)) for c in (0, 1)] == [5, 5]
    assert rule.startswith("by polygon: 2 of 4 polygons") and "at least one on each side" in rule and not lines


def test_too_few_polygons_fall_back_to_a_random_split_with_a_warning():
    from glassbox.core.training.loop import validation_split

    data = _polygon_tiles(1)  # one polygon per class: whole polygons cannot be held out
    lines = []
    train, val, rule = validation_split(data, 0.2, seed=0, log=lines.append)
    assert val.size == 2 and "too few polygons" in rule
    assert len(lines) == 1 and "validation accuracy is optimistic" in lines[0]
    folder = TrainingData(data.tiles, data.labels, data.class_names, data.band_names, data.sources)  # no footprints
    assert validation_split(folder, 0.2, seed=0, log=lines.append)[2].startswith("stratified random")

def test_same_seed_same_model_and_val_split():
    data = pattern_data(6, seed=4)
    options = dict(epochs=1, batch_size=8, lr=1e-3, patience=0)
    a = train_classifier(data, "spatial_spectral", TrainOptions(seed=7, **options))
    b = train_classifier(data, "spatial_spectral", TrainOptions(seed=7, **options))
    c = train_classifier(data, "spatial_spectral", TrainOptions(seed=8, **options))
    for key, value in a.module.state_dict().items():
        assert torch.equal(value, b.module.state_dict()[key]), key
    assert not torch.equal(a.module.spectral[0].weight, c.module.spectral[0].weight)
    assert a.val_index.tolist() == b.val_index.tolist()
    # stratified: every class gives round(6 * 0.2) = 1 validation tile
    assert np.bincount(data.labels[a.val_index]).tolist() == [1, 1, 1]


def test_resnet18_trains_and_starts_from_a_weights_file(tmp_path):
    torch.manual_seed(0)
    donor = build_model("resnet18", 3, 7, 32)
    torch.save(donor.state_dict(), tmp_path / "resnet18_3band.pth")
    tiles, labels = pattern_tiles(4, size=32, seed=5)
    data = TrainingData(np.concatenate([tiles, tiles[:, :1]], axis=1), labels, PATTERN_CLASSES,
                        ["B1", "B2", "B3", "B4"], [str(i) for i in range(labels.size)])
    fresh = build_model("resnet18", 4, 3, 32)
    lines = []
    loaded, skipped = load_initial_weights(fresh, tmp_path / "resnet18_3band.pth", lines.append)
    assert sorted(k.split(" ")[0] for k in skipped) == ["conv1.weight", "fc.bias", "fc.weight"]
    assert "layer1.0.conv1.weight" in loaded
    assert torch.equal(fresh.layer4[1].conv2.weight, donor.layer4[1].conv2.weight)
    assert "skipped 3" in lines[0] and "conv1.weight" in lines[0]

    log = []
    result = train_classifier(data, "resnet18", TrainOptions(epochs=1, batch_size=4, seed=0,
                                                              weights_path=str(tmp_path / "resnet18_3band.pth")),
                              log=log.append)
    assert result.card.architecture["name"] == "resnet18" and result.card.training["initial_weights"] == "resnet18_3band.pth"
    assert any("skipped 3" in line for line in log) and len(result.history) == 1
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": donor}, pickled)
    with pytest.raises(Exception, match="refused"):
        load_initial_weights(fresh, pickled)


def test_cancel_in_core_stops_within_one_batch():
    data = pattern_data(20)
    steps = []
    with pytest.raises(Cancelled):
        train_classifier(data, "paper1_cnn", TrainOptions(epochs=3, batch_size=4),
                         progress=steps.append, is_cancelled=lambda: len(steps) >= 1)
    assert len(steps) == 1


def _without_seconds(history):
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


@pytest.mark.parametrize("radiometric", [0.0, 1.0])
def test_resumed_training_ends_like_an_uninterrupted_run(tmp_path, radiometric):
    data = pattern_data(12, seed=3)
    options = dict(epochs=4, batch_size=8, lr=3e-3, seed=1, patience=0, shift=2, radiometric=radiometric)
    whole = train_classifier(data, "paper1_cnn", TrainOptions(**options))

    checkpoint = tmp_path / "run" / "checkpoint.pt"
    lines = []
    with pytest.raises(Cancelled, match="checkpoint .* is kept"):  # cancelled in epoch 3's first batch
        train_classifier(data, "paper1_cnn", TrainOptions(checkpoint_path=checkpoint, **options),
                         is_cancelled=lambda: any(line.startswith("epoch 2/4") for line in lines), log=lines.append)
    assert checkpoint.is_file() and not list(checkpoint.parent.glob("*.tmp"))
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    log = []
    resumed = train_classifier(data, "paper1_cnn", TrainOptions(checkpoint_path=checkpoint, **options), log=log.append)
    assert resumed.resumed_after_epoch == 2 and any("resumed from" in line and "after epoch 2" in line for line in log)
    assert [line.split(" loss")[0] for line in log if line.startswith("epoch ")] == ["epoch 3/4", "epoch 4/4"]
    for key, value in whole.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[key]), key
    assert _without_seconds(resumed.history) == _without_seconds(whole.history) and len(resumed.history) == 4
    assert resumed.best_epoch == whole.best_epoch and resumed.card.accuracy == whole.card.accuracy

    # a finished checkpoint gives the same result again without training
    again = train_classifier(data, "paper1_cnn", TrainOptions(checkpoint_path=checkpoint, **options))
    assert again.resumed_after_epoch == 4
    assert all(torch.equal(v, again.module.state_dict()[k]) for k, v in whole.module.state_dict().items())
    # other settings, or other tiles, are refused by name
    with pytest.raises(TrainingDataError, match=r"other settings \(lr: 0.003 in the checkpoint, 0.001 now\)"):
        train_classifier(data, "paper1_cnn", TrainOptions(checkpoint_path=checkpoint, **dict(options, lr=1e-3)))
    other_tiles = pattern_data(12, seed=4)
    with pytest.raises(TrainingDataError, match=r"\(tiles: \[36, 3, 16, 16, \"uint16\", \"\w+\"\] in the checkpoint"):
        train_classifier(other_tiles, "paper1_cnn",
                         TrainOptions(checkpoint_path=checkpoint, **dict(options, scaling=whole.card.scaling)))
    with pytest.raises(TrainingDataError, match="epochs: 4 in the checkpoint, 6 now.*reschedule"):
        train_classifier(data, "paper1_cnn", TrainOptions(checkpoint_path=checkpoint, **dict(options, epochs=6)))
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingDataError, match="cannot read the training checkpoint"):
        train_classifier(data, "paper1_cnn", TrainOptions(checkpoint_path=tmp_path / "other.pt", **options))


def test_stop_after_an_epoch_then_resume_with_a_longer_schedule(tmp_path):
    data = pattern_data(12, seed=3)
    checkpoint = tmp_path / "checkpoint.pt"
    options = dict(epochs=3, batch_size=8, lr=3e-3, seed=0, patience=0, checkpoint_path=checkpoint)
    with pytest.raises(TrainingStopped, match="after epoch 1 as asked") as stopped:
        train_classifier(data, "paper1_cnn", TrainOptions(stop_after_epoch=1, **options))
    assert stopped.value.epoch == 1 and isinstance(stopped.value, Cancelled)
    lr_after_one = torch.load(checkpoint, weights_only=True)["optimiser"]["param_groups"][0]["lr"]
    log = []
    result = train_classifier(data, "paper1_cnn", TrainOptions(reschedule=True, **dict(options, epochs=5)),
                              log=log.append)
    assert len(result.history) == 5 and result.history[0]["lr"] == pytest.approx(lr_after_one)
    assert result.card.training["schedule_changes"] == [{"after_epoch": 1, "from_epochs": 3, "to_epochs": 5}]
    assert any("rebuilt for 3 -> 5 epochs" in line for line in log)
    # from epoch 2 on the learning rate follows a one-cycle schedule over 5 epochs (4 steps each: 30 tiles)
    optimiser = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=20, pct_start=0.25)
    expected = []
    for step in range(1, 21):
        optimiser.step()
        schedule.step()
        if step % 4 == 0:
            expected.append(optimiser.param_groups[0]["lr"])
    assert [entry["lr"] for entry in result.history[1:]] == pytest.approx(expected[1:])
    # a stop time that an epoch cannot meet stops at the next epoch end
    with pytest.raises(TrainingStopped, match="another epoch would end after the stop time"):
        train_classifier(data, "paper1_cnn", TrainOptions(stop_at=time.time(), **dict(options, checkpoint_path=tmp_path / "c2.pt")))
    with pytest.raises(TrainingDataError, match="needs a checkpoint path"):
        train_classifier(data, "paper1_cnn", TrainOptions(epochs=2, stop_after_epoch=1))


def test_given_split_random_shift_and_distillation():
    data = pattern_data(16, seed=2)
    n = data.num_tiles
    test = np.arange(0, n, 4)  # every 4th tile is neither trained nor validated on
    val = np.arange(1, n, 4)
    train = np.setdiff1d(np.arange(n), np.concatenate([test, val]))
    # a teacher that is sure of the wrong class (label + 1): with full weight on it the student follows it
    wrong = (data.labels + 1) % 3
    teacher = np.full((n, 3), -4.0, dtype=np.float32)
    teacher[np.arange(n), wrong] = 4.0
    common = dict(epochs=4, batch_size=8, lr=3e-3, seed=0, patience=0, shift=3)
    # no validation tiles (they would pick the epoch by the true labels): the last epoch is kept
    result = train_classifier(data, "paper1_cnn", TrainOptions(
        split=(train, []), split_description="every 4th tile", teacher_logits=teacher, distill_weight=1.0,
        distill_temperature=1.0, **common))
    assert result.train_index.tolist() == train.tolist() and result.val_index.size == 0
    assert result.card.training["n_train"] == train.size and result.card.training["split"] == "every 4th tile"
    assert "random translation up to 3 px" in result.card.training["augmentation"]
    assert result.card.training["distillation"]["weight"] == 1.0
    logits = predict_logits(result.module, data.tiles[test], result.card.scaling)
    assert (logits.argmax(1) == wrong[test]).mean() >= 0.8
    # teacher logits may also be given for the training tiles only; weight 0 ignores them
    labels_only = train_classifier(data, "paper1_cnn", TrainOptions(
        split=(train, val), teacher_logits=teacher[train], distill_weight=0.0, **common))
    assert labels_only.val_index.tolist() == val.tolist() and labels_only.card.training["n_val"] == val.size
    assert (predict_logits(labels_only.module, data.tiles[test], labels_only.card.scaling).argmax(1)
            == data.labels[test]).mean() >= 0.8
    with pytest.raises(TrainingDataError, match="teacher logit rows"):
        train_classifier(data, "paper1_cnn", TrainOptions(split=(train, val), teacher_logits=teacher[:5], **common))
    with pytest.raises(TrainingDataError, match="names a tile twice"):
        train_classifier(data, "paper1_cnn", TrainOptions(split=(train, train[:2]), **common))


def test_random_shift_translates_with_reflection():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    shifted = [random_shift(x, 2, generator) for _ in range(8)]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    windows = [padded[:, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
    for out in shifted:
        for i in range(2):
            assert any(torch.equal(out[i], w[i]) for w in windows)
    assert any(not torch.equal(out, x) for out in shifted)
    assert torch.equal(random_shift(x, 0, generator), x)


def test_training_refuses_a_single_class():
    data = pattern_data(3)
    data.labels[:] = 0
    with pytest.raises(TrainingDataError, match="at least 2 classes"):
        train_classifier(data, "paper1_cnn", TrainOptions(epochs=1))


def test_a_class_with_one_tile_is_warned_of_and_has_no_validation_f1():
    data = pattern_data(6, seed=4)
    lonely = int(np.flatnonzero(data.labels == 2)[0])
    data = data.subset([i for i in range(data.num_tiles) if data.labels[i] != 2 or i == lonely])
    lines = []
    result = train_classifier(data, "paper1_cnn", TrainOptions(epochs=1, batch_size=8), log=lines.append)
    name = data.class_names[2]
    assert any(line.startswith(f"WARNING: class(es) {name} have no validation tile") for line in lines), lines
    f1 = result.card.accuracy["per_class_f1_val"]
    assert f1[name] is None and all(isinstance(f1[n], float) for n in data.class_names[:2])


# -- glassbox:train_classifier through Processing -------------------------------------------
def _polygon_layer(crs="EPSG:32633", items=()):
    from qgis.core import QgsFeature, QgsField, QgsVectorLayer
    from qgis.PyQt.QtCore import QVariant

    layer = QgsVectorLayer(f"Polygon?crs={crs}", "labels", "memory")
    layer.dataProvider().addAttributes([QgsField("name", QVariant.String), QgsField("landcover", QVariant.String)])
    layer.updateFields()
    features = []
    for geometry, name, landcover in items:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geometry)
        feature["name"] = name
        feature["landcover"] = landcover
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


def test_train_from_raster_and_polygons_in_another_crs(tmp_path, glassbox_processing, qgis_app):
    import processing
    from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject,
                           QgsVectorLayer)

    raster = _position_raster(tmp_path / "r.tif")
    utm, wgs84 = QgsCoordinateReferenceSystem("EPSG:32633"), QgsCoordinateReferenceSystem("EPSG:4326")
    to_wgs84 = QgsCoordinateTransform(utm, wgs84, QgsProject.instance())
    # the rectangle 2 m larger on every side, so reprojection round-off cannot cost a tile
    rect, quad = _qgs_polygon(RECT_LOOSE_WKT), _qgs_polygon(QUAD_WKT)
    given = []
    for geometry in (rect, quad):
        g = _qgs_polygon(geometry.asWkt())
        g.transform(to_wgs84)
        given.append(g)
    # feature 1 has no class (skipped), feature 4 is too small for a tile: the log and the samples
    # name polygons by feature id, as the attribute table shows them
    tiny = _qgs_polygon(f"POLYGON(({X0 + 1200} {Y0 - 200},{X0 + 1230} {Y0 - 200},{X0 + 1230} {Y0 - 230},"
                        f"{X0 + 1200} {Y0 - 230},{X0 + 1200} {Y0 - 200}))")
    tiny.transform(to_wgs84)
    layer = _polygon_layer("EPSG:4326", [(given[1], "unlabelled", None), (given[0], "first", "Water"),
                                         (given[1], "second", "Forest"), (tiny, "tiny", "Water")])
    out = tmp_path / "out"
    out.mkdir()
    from qgis.core import QgsProcessingFeedback

    lines = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = lines.append
    result = processing.run("glassbox:train_classifier", {
        "INPUT": raster, "POLYGONS": layer, "CLASS_FIELD": "landcover", "TILE_SIZE": 16, "ARCHITECTURE": 1,
        "EPOCHS": 1, "BATCH_SIZE": 4, "OUTPUT_MODEL": str(out / "model.pt"), "OUTPUT_ONNX": str(out / "model.onnx"),
        "OUTPUT_SAMPLES": str(out / "samples.gpkg"),
    }, feedback=feedback)
    assert any(line.startswith("feature 4 (Water): no 16-pixel tile") for line in lines), lines
    card = json.loads((out / "model.json").read_text())
    assert [c["name"] for c in card["classes"]] == ["Forest", "Water"]  # the landcover field, not 'name'
    assert "too few polygons to split by polygon" in card["training"]["split"]  # one polygon per class
    assert card["training"]["class_field"] == "landcover"  # what an evaluation on polygons must pass again
    assert card["training"]["class_mapping"]["name"] == "none"
    assert card["bands"] == ["row", "col"] and card["gsd"] == pytest.approx(10.0) and card["tile_size"] == 16
    assert load_model(out / "model.onnx").card.to_dict() == card
    samples = QgsVectorLayer(result["OUTPUT_SAMPLES"], "samples", "ogr")
    assert samples.isValid() and samples.crs().authid() == "EPSG:32633"
    back = QgsCoordinateTransform(wgs84, utm, QgsProject.instance())
    by_class = {}
    for g, landcover in zip(given, ("Water", "Forest")):
        g = _qgs_polygon(g.asWkt())
        g.transform(back)
        by_class[landcover] = g
    features = list(samples.getFeatures())
    classes = [f["class"] for f in features]
    assert classes.count("Water") == 6 and classes.count("Forest") >= 3
    assert {f["split"] for f in features} == {"train", "val"}
    assert {(f["class"], f["source"]) for f in features} == {("Water", "feature 2"), ("Forest", "feature 3")}
    for feature in features:
        assert by_class[feature["class"]].contains(feature.geometry())


def test_train_from_folder_through_processing(tmp_path, glassbox_processing):
    import processing
    from qgis.core import QgsProcessingFeedback

    tiles, labels = pattern_tiles(12, size=16, seed=11)
    root = write_tile_folder(tmp_path / "tiles", tiles, labels, georeferenced=False)
    out = tmp_path / "out"
    out.mkdir()
    messages = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802
            messages.append(info)
            super().pushInfo(info)

    result = processing.run("glassbox:train_classifier", {
        "INPUT_FOLDER": str(root), "EPOCHS": 2, "BATCH_SIZE": 8, "LEARNING_RATE": 0.003,
        "BANDS": "B02, B03,B04", "OUTPUT_MODEL": str(out / "m.pt"), "OUTPUT_ONNX": str(out / "m.onnx"),
    }, feedback=Feedback())
    assert sorted(os.listdir(out)) == ["m.json", "m.onnx", "m.pt"]
    assert result["OUTPUT_MODEL"] == str(out / "m.pt") and 0 <= result["VALIDATION_ACCURACY"] <= 1
    assert any(re.match(r"epoch 2/2 loss .* train_acc .* val_acc", m) for m in messages)
    torch_model, onnx_model = load_model(out / "m.pt"), load_model(out / "m.onnx")
    card = torch_model.card
    assert card == onnx_model.card and card.bands == ["B02", "B03", "B04"] and card.gsd == 10.0
    assert card.architecture["name"] == "spatial_spectral" and card.accuracy["n_val"] == 6
    x = card.scaling.apply(tiles[:8])
    np.testing.assert_allclose(torch_model.predict_proba(x), onnx_model.predict_proba(x), atol=1e-4)
    # the state dict loads with weights_only=True
    assert isinstance(torch.load(out / "m.pt", weights_only=True), dict)


def test_a_trained_model_ships_its_radiometry_reference_and_classify_uses_it(tmp_path, glassbox_processing):
    """Trained from 72 tiles, the model gets <stem>.radiometry.json beside its .pt and .onnx; a
    scene of tiles like the training ones reads as like them, the same scene darkened to a quarter
    is warned of, and as reflectance (digital numbers / 10000) it is refused (other units)."""
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    tiles, labels = pattern_tiles(24, size=16, seed=11)
    root = write_tile_folder(tmp_path / "tiles", tiles, labels, georeferenced=False)
    out = tmp_path / "out"
    processing.run("glassbox:train_classifier", {
        "INPUT_FOLDER": str(root), "EPOCHS": 1, "BATCH_SIZE": 8, "BANDS": "B02,B03,B04",
        "OUTPUT_MODEL": str(out / "m.pt"), "OUTPUT_ONNX": str(out / "model.onnx")})
    assert sorted(os.listdir(out)) == ["m.json", "m.pt", "m.radiometry.json", "model.onnx", "model.radiometry.json"]
    reference = json.loads((out / "m.radiometry.json").read_text())["radiometry_reference"]
    assert reference["draw_size"] == 72 // 4 and reference["threshold"] > 0

    scene_tiles, _ = pattern_tiles(22, size=16, seed=5)
    rows = [np.concatenate(list(scene_tiles[i * 8:(i + 1) * 8]), axis=2) for i in range(8)]
    scene = np.concatenate(rows, axis=1)  # 8 x 8 tiles of the three patterns, (3, 128, 128)
    digital = write_raster(tmp_path / "dn.tif", scene, descriptions=["B02", "B03", "B04"])
    darker = write_raster(tmp_path / "dark.tif", scene // 4, descriptions=["B02", "B03", "B04"])
    reflectance = write_raster(tmp_path / "refl.tif", scene.astype(np.float32) / 10000,
                               descriptions=["B02", "B03", "B04"])
    with pytest.raises(QgsProcessingException, match="reflectance 0-1"):
        processing.run("glassbox:classify", {"INPUT": reflectance, "MODEL": str(out / "model.onnx"),
                                             "OUTPUT_CLASSES": str(tmp_path / "refl_classes.tif")})
    for raster, like in ((digital, True), (darker, False)):
        warnings, infos = [], []
        feedback = QgsProcessingFeedback()
        feedback.pushInfo, feedback.pushWarning = infos.append, warnings.append
        result = processing.run("glassbox:classify", {
            "INPUT": raster, "MODEL": str(out / "model.onnx"), "OUTPUT_CLASSES": str(tmp_path / f"{like}.tif")},
            feedback=feedback)
        assert (result["RADIOMETRY_DISTANCE"] <= result["RADIOMETRY_THRESHOLD"]) == like, result
        assert bool(warnings) != like and all(w.startswith("scene radiometry") for w in warnings), (warnings, infos)


def test_half_width_resnet_network_choice_is_stored_in_the_card(tmp_path, glassbox_processing):
    import processing

    from glassbox.algorithms.train_classifier import NETWORKS

    tiles, labels = pattern_tiles(6, size=32, seed=13)
    root = write_tile_folder(tmp_path / "tiles", tiles, labels, georeferenced=False)
    choice = [kwargs for _, _, kwargs in NETWORKS].index({"width": 32})  # "... half width ..."
    processing.run("glassbox:train_classifier", {
        "INPUT_FOLDER": str(root), "EPOCHS": 1, "BATCH_SIZE": 6, "ARCHITECTURE": choice,
        "OUTPUT_MODEL": str(tmp_path / "m.pt"),
    })
    model = load_model(tmp_path / "m.pt")  # rebuilt from the card: the width must be there
    assert model.card.architecture == {"name": "resnet18_64", "kwargs": {"width": 32}}
    assert model.predict_proba(model.card.scaling.apply(tiles[:2])).shape == (2, 3)


def test_a_class_whose_polygons_lie_off_the_raster_is_left_out(tmp_path, glassbox_processing, qgis_app):
    """A layer larger than the raster: the class found only off the raster is left out of the
    model with a warning instead of stopping the training."""
    import processing
    from qgis.core import QgsProcessingFeedback

    raster = _position_raster(tmp_path / "r.tif")
    far = _qgs_polygon(f"POLYGON(({X0 + 90000} {Y0 - 500},{X0 + 90500} {Y0 - 500},{X0 + 90500} {Y0},{X0 + 90000} {Y0},"
                       f"{X0 + 90000} {Y0 - 500}))")
    layer = _polygon_layer("EPSG:32633", [(_qgs_polygon(RECT_WKT), "a", "Water"), (_qgs_polygon(QUAD_WKT), "b", "Forest"),
                                          (far, "c", "Glacier")])
    warnings = []

    class Feedback(QgsProcessingFeedback):
        def pushWarning(self, text):  # noqa: N802 (QGIS API name)
            warnings.append(text)

    out = tmp_path / "out"
    processing.run("glassbox:train_classifier", {
        "INPUT": raster, "POLYGONS": layer, "CLASS_FIELD": "landcover", "TILE_SIZE": 16, "ARCHITECTURE": 1,
        "EPOCHS": 1, "BATCH_SIZE": 4, "OUTPUT_MODEL": str(out / "model.pt")}, feedback=Feedback())
    card = json.loads((out / "model.json").read_text())
    assert [c["name"] for c in card["classes"]] == ["Forest", "Water"]
    assert any(w.startswith("class(es) Glacier have no tile") for w in warnings), warnings


def test_train_from_lcdb_codes_through_the_lcdb_class_mapping(tmp_path, glassbox_processing, qgis_app):
    """CLASS_MAPPING = LCDB v5: polygons labelled with LCDB codes train a model of LCDB's groups,
    coloured as LCDB colours them; a folder of tiles with a mapping is refused clearly."""
    import processing
    from qgis.core import QgsProcessingException

    from glassbox.core.masking.lcdb import LCDB_GROUPS

    raster = _position_raster(tmp_path / "r.tif")
    layer = _polygon_layer("EPSG:32633", [(_qgs_polygon(RECT_WKT), "a", "20"), (_qgs_polygon(QUAD_WKT), "b", "71")])
    out = tmp_path / "out"
    processing.run("glassbox:train_classifier", {
        "INPUT": raster, "POLYGONS": layer, "CLASS_FIELD": "landcover", "CLASS_MAPPING": 0, "TILE_SIZE": 16,
        "ARCHITECTURE": 1, "EPOCHS": 1, "BATCH_SIZE": 4, "OUTPUT_MODEL": str(out / "model.pt")})
    card = json.loads((out / "model.json").read_text())
    colours = dict(LCDB_GROUPS)
    assert [(c["name"], c["color"]) for c in card["classes"]] == [("Water Bodies", colours["Water Bodies"]),
                                                                   ("Forest", colours["Forest"])]  # LCDB's order
    tiles, labels = pattern_tiles(4, size=16, seed=11)
    root = write_tile_folder(tmp_path / "tiles", tiles, labels, georeferenced=False)
    with pytest.raises(QgsProcessingException, match="a folder's sub-folder names are its classes"):
        processing.run("glassbox:train_classifier", {"INPUT_FOLDER": str(root), "CLASS_MAPPING": 0,
                                                     "OUTPUT_MODEL": str(tmp_path / "out2" / "m.pt")})
    assert not (tmp_path / "out2").exists()
    from glassbox.core.errors import ClassMappingError
    from glassbox.core.masking.lcdb import lcdb_preset
    from glassbox.core.training.run import TileSource

    with pytest.raises(ClassMappingError, match="a folder's sub-folder names are its classes"):
        TileSource(folder=str(root), mapping=lcdb_preset()).load(16)


def test_polygons_without_a_crs_are_warned_of_and_a_missing_field_lists_the_fields(tmp_path, glassbox_processing,
                                                                                   qgis_app):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    raster = _position_raster(tmp_path / "r.tif")
    layer = _polygon_layer("", [(_qgs_polygon(RECT_WKT), "a", "Water"), (_qgs_polygon(QUAD_WKT), "b", "Forest")])
    assert not layer.crs().isValid()
    warnings = []

    class Feedback(QgsProcessingFeedback):
        def pushWarning(self, text):  # noqa: N802 (QGIS API name)
            warnings.append(text)

    params = {"INPUT": raster, "POLYGONS": layer, "CLASS_FIELD": "landcover", "TILE_SIZE": 16, "ARCHITECTURE": 1,
              "EPOCHS": 1, "BATCH_SIZE": 4, "OUTPUT_MODEL": str(tmp_path / "out" / "model.pt")}
    processing.run("glassbox:train_classifier", params, feedback=Feedback())
    assert any("has no CRS" in w and "EPSG:32633" in w for w in warnings), warnings
    with pytest.raises(QgsProcessingException, match="has no field 'cover'; its fields: name, landcover"):
        processing.run("glassbox:train_classifier", dict(params, CLASS_FIELD="cover",
                                                         OUTPUT_MODEL=str(tmp_path / "out2" / "model.pt")))


def test_unusable_settings_are_refused_before_any_tile_is_cut(tmp_path, glassbox_processing, qgis_app):
    """A tile size the network cannot take and initial weights that are not a state dict are
    refused before the raster is read (the log has no tile count yet)."""
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    raster = _position_raster(tmp_path / "r.tif")
    layer = _polygon_layer("EPSG:32633", [(_qgs_polygon(RECT_WKT), "a", "Water"), (_qgs_polygon(QUAD_WKT), "b", "Forest")])
    text_weights = tmp_path / "weights.pt"
    text_weights.write_text("not a Torch file")
    params = {"INPUT": raster, "POLYGONS": layer, "CLASS_FIELD": "landcover", "TILE_SIZE": 16, "ARCHITECTURE": 1,
              "EPOCHS": 1, "BATCH_SIZE": 4, "OUTPUT_MODEL": str(tmp_path / "out" / "model.pt")}
    for change, message in (({"TILE_SIZE": 24}, "divisible by 16"),
                            ({"INITIAL_WEIGHTS": str(text_weights)}, r"weights.pt: cannot read Torch weights \(not a "
                                                                     "Torch file")):
        lines = []
        feedback = QgsProcessingFeedback()
        feedback.pushInfo = lines.append
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("glassbox:train_classifier", dict(params, **change), feedback=feedback)
        assert not [line for line in lines if "tiles" in line], lines
    assert not (tmp_path / "out").exists()


def test_polygon_layer_outside_the_raster_is_a_clear_error(tmp_path, glassbox_processing):
    import processing
    from qgis.core import QgsProcessingException

    raster = _position_raster(tmp_path / "r.tif")
    layer = _polygon_layer("EPSG:32633", [(_qgs_polygon("POLYGON((0 0,1000 0,1000 1000,0 0))"), "x", "Water")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException, match="none of the 1 polygons overlaps the raster"):
        processing.run("glassbox:train_classifier", {
            "INPUT": raster, "POLYGONS": layer, "CLASS_FIELD": "landcover", "TILE_SIZE": 16,
            "OUTPUT_MODEL": str(out / "m.pt"), "OUTPUT_ONNX": str(out / "m.onnx"),
        })
    with pytest.raises(QgsProcessingException, match="either a folder .* or a raster"):
        processing.run("glassbox:train_classifier", {
            "INPUT": raster, "INPUT_FOLDER": str(tmp_path), "POLYGONS": layer, "CLASS_FIELD": "landcover",
            "OUTPUT_MODEL": str(out / "m.pt"),
        })
    assert os.listdir(out) == []


def test_cancel_stops_training_within_one_batch_and_leaves_no_model(tmp_path, glassbox_processing):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    tiles, labels = pattern_tiles(16, size=16, seed=12)
    root = write_tile_folder(tmp_path / "tiles", tiles, labels)
    out = tmp_path / "out"
    out.mkdir()
    feedback = QgsProcessingFeedback()
    progress = []

    def cancel(value):
        progress.append(value)
        feedback.cancel()

    feedback.progressChanged.connect(cancel)
    with pytest.raises(QgsProcessingException, match="cancelled; no model was written"):
        processing.run("glassbox:train_classifier", {
            "INPUT_FOLDER": str(root), "EPOCHS": 5, "BATCH_SIZE": 4, "ARCHITECTURE": 1,
            "OUTPUT_MODEL": str(out / "m.pt"), "OUTPUT_ONNX": str(out / "m.onnx"),
        }, feedback=feedback)
    # one batch of 4 tiles out of 5 epochs x 10 batches ran, then training stopped
    assert len(progress) == 1 and progress[0] == pytest.approx(100 / 50)
    assert os.listdir(out) == []


def test_radiometric_augmentation_changes_training_and_is_recorded():
    data = pattern_data(12, seed=3)
    options = dict(epochs=2, batch_size=8, lr=3e-3, seed=1, patience=0)
    plain = train_classifier(data, "paper1_cnn", TrainOptions(**options))
    robust = train_classifier(data, "paper1_cnn", TrainOptions(radiometric=1.0, **options))
    assert not all(torch.equal(v, robust.module.state_dict()[k]) for k, v in plain.module.state_dict().items())
    assert "random radiometry at strength 1" in robust.card.training["augmentation"]
    assert "radiometry" not in plain.card.training["augmentation"]


def test_radiometric_fraction_changes_only_that_share_of_a_batch():
    from glassbox.core.training.loop import _changed_radiometry

    raw = np.random.default_rng(0).integers(0, 256, (400, 3, 8, 8), dtype=np.uint8)
    half = _changed_radiometry(raw, 255.0, np.random.default_rng(1), TrainOptions(radiometric=1.0,
                                                                                  radiometric_fraction=0.5))
    changed = np.any(half != raw, axis=(1, 2, 3))
    assert 0.4 < changed.mean() < 0.6 and raw.dtype == half.dtype
    everything = _changed_radiometry(raw, 255.0, np.random.default_rng(1), TrainOptions(radiometric=1.0))
    assert np.any(everything != raw, axis=(1, 2, 3)).mean() > 0.95


def test_radiometric_fraction_is_checked_and_recorded():
    data = pattern_data(12, seed=3)
    options = dict(epochs=1, batch_size=8, lr=3e-3, seed=1, patience=0, radiometric=1.0)
    with pytest.raises(TrainingDataError, match="share of tiles with random radiometry"):
        train_classifier(data, "paper1_cnn", TrainOptions(radiometric_fraction=0.0, **options))
    result = train_classifier(data, "paper1_cnn", TrainOptions(radiometric_fraction=0.5, **options))
    assert "random radiometry at strength 1 on 50% of the tiles" in result.card.training["augmentation"]


def test_freeze_batchnorm_keeps_the_running_statistics_and_trains_scale_and_shift():
    data = pattern_data(6, size=32, seed=3)
    start = {k: v.clone() for k, v in build_model("resnet18_64", in_channels=data.tiles.shape[1],
                                                   num_classes=len(data.class_names), tile_size=data.tiles.shape[-1],
                                                   width=8).state_dict().items()}
    options = dict(epochs=2, batch_size=8, lr=3e-3, seed=1, patience=0, initial_state=start,
                   architecture_kwargs={"width": 8})
    frozen = train_classifier(data, "resnet18_64", TrainOptions(freeze_batchnorm=True, **options))
    free = train_classifier(data, "resnet18_64", TrainOptions(**options))
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    affine = [k for k in start if k.startswith("bn1.") and k.endswith(("weight", "bias"))]
    assert stats and affine
    assert all(torch.equal(frozen.module.state_dict()[k], start[k]) for k in stats)
    assert not all(torch.equal(free.module.state_dict()[k], start[k]) for k in stats)
    assert not all(torch.equal(frozen.module.state_dict()[k], start[k]) for k in affine)
    assert "frozen" in frozen.card.training["batchnorm"] and "batchnorm" not in free.card.training


def test_a_checkpoint_from_before_a_new_setting_resumes_when_the_setting_is_off(tmp_path):
    """Settings added to checkpoints later (radiometric augmentation) count as off in an older
    checkpoint, so a long run started before them still resumes; with the setting on it does not."""
    data = pattern_data(12, seed=3)
    checkpoint = tmp_path / "checkpoint.pt"
    options = dict(epochs=2, batch_size=8, lr=3e-3, seed=0, patience=0, checkpoint_path=checkpoint)
    with pytest.raises(TrainingStopped):
        train_classifier(data, "paper1_cnn", TrainOptions(stop_after_epoch=1, **options))
    old = torch.load(checkpoint, weights_only=True)
    for key in ("radiometric", "radiometric_full_scale"):
        del old["config"][key]
    torch.save(old, checkpoint)
    resumed = train_classifier(data, "paper1_cnn", TrainOptions(**options))
    assert resumed.resumed_after_epoch == 1
    with pytest.raises(TrainingDataError, match="radiometric: 0.0 in the checkpoint, 1.0 now"):
        train_classifier(data, "paper1_cnn", TrainOptions(radiometric=1.0, **dict(options, epochs=3)),)


def test_a_fresh_input_corrector_leaves_the_classifier_s_logits_unchanged():
    torch.manual_seed(0)
    corrected = build_model("corrected", in_channels=3, num_classes=4, tile_size=32,
                            classifier="resnet18_64", classifier_kwargs={"width": 8}).eval()
    x = torch.randn(5, 3, 32, 32)
    assert torch.equal(corrected(x), corrected.classifier(x))
    x[0, 0, :4, :4] += 3.0  # the correction is per tile: one changed tile moves no other
    assert torch.equal(corrected(x), corrected.classifier(x))


def test_training_only_the_corrector_keeps_the_classifier_and_its_statistics():
    data = pattern_data(6, size=32, seed=3)
    classifier = build_model("resnet18_64", in_channels=data.tiles.shape[1], num_classes=len(data.class_names),
                             tile_size=data.tiles.shape[-1], width=8)
    start = {f"classifier.{k}": v.clone() for k, v in classifier.state_dict().items()}
    result = train_classifier(data, "corrected", TrainOptions(
        epochs=2, batch_size=8, lr=3e-3, seed=1, patience=0, initial_state=start, train_only="corrector",
        radiometric=1.0, architecture_kwargs={"classifier": "resnet18_64", "classifier_kwargs": {"width": 8}}))
    state = result.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in start.items())  # weights and running statistics
    corrector = [k for k in state if k.startswith("corrector.")]
    assert corrector and any(state[k].abs().sum() > 0 for k in corrector if k.endswith("local_fit.6.weight"))
    assert "corrector" in result.card.training["trained_part"]
    with pytest.raises(TrainingDataError, match="cannot train only 'lens'"):
        train_classifier(data, "corrected", TrainOptions(
            epochs=1, batch_size=8, train_only="lens",
            architecture_kwargs={"classifier": "resnet18_64", "classifier_kwargs": {"width": 8}}))


def test_keep_last_returns_the_last_epoch_whatever_the_validation_says():
    data = pattern_data(6, size=32, seed=3)
    options = dict(epochs=3, batch_size=8, lr=3e-3, seed=1, patience=0)
    last = train_classifier(data, "paper1_cnn", TrainOptions(keep="last", **options))
    assert last.best_epoch == 3 and len(last.history) == 3
    with pytest.raises(TrainingDataError, match="keep must be"):
        train_classifier(data, "paper1_cnn", TrainOptions(keep="first", **options))


def test_eurosat_tiles_without_band_names_get_eurosats_order():
    """EuroSAT's files do not name their bands; a model trained on them must, or classify feeds a
    Sentinel-2 stack (B8A after B08) in its own order and shifts five bands. Only 64 px tiles of
    EuroSAT's classes (all ten here; subsets: test_eurosat_subset_bands.py) with 13 unnamed bands are
    named; anything else is left alone."""
    from glassbox.core.models.card import EUROSAT_CLASSES
    from glassbox.core.training.data import TrainingData
    from glassbox.core.training.datasets import EUROSAT_MS_BANDS
    from glassbox.core.training.run import name_eurosat_bands

    classes = [c.name for c in EUROSAT_CLASSES]
    log: list[str] = []

    def data(bands, size=64, class_names=classes, names=None):
        return TrainingData(tiles=np.zeros((10, bands, size, size), dtype=np.uint16), labels=np.arange(10),
                            class_names=class_names, band_names=names or [f"band_{b + 1}" for b in range(bands)],
                            sources=[f"t{i}" for i in range(10)])

    assert name_eurosat_bands(data(13), log.append).band_names == EUROSAT_MS_BANDS
    assert EUROSAT_MS_BANDS[-1] == "B8A" and "named as EuroSAT stores them" in log[0]
    assert name_eurosat_bands(data(3)).band_names == ["band_1", "band_2", "band_3"]  # 8-bit jpgs: no S2 names
    assert name_eurosat_bands(data(13, size=32)).band_names[0] == "band_1"
    assert name_eurosat_bands(data(4)).band_names[0] == "band_1"
    other = [f"class{i}" for i in range(10)]
    assert name_eurosat_bands(data(13, class_names=other)).band_names[0] == "band_1"
    named = ["B%02d" % b for b in range(1, 14)]
    assert name_eurosat_bands(data(13, names=named)).band_names == named


def test_band_choice_line_says_whose_names_are_missing():
    from glassbox.core.io.raster import describe_band_choice

    unnamed_raster = describe_band_choice([None, None], ["B08", "B03"], [1, 2], None)
    assert "the raster's order (it does not name them)" in unnamed_raster
    unnamed_model = describe_band_choice(["B08", "B03"], ["band_1", "band_2"], [1, 2], None)
    assert "the model's band names (band_1, band_2) are not the raster's" in unnamed_model


def test_scaling_mismatch_names_data_the_model_was_not_made_for():
    """16-bit digital numbers given to a model of 8-bit images (or PRESCALED 16-bit tiles) land
    hundreds of standard deviations from its training data: named; data like it is not."""
    from glassbox.core.models.card import Scaling
    from glassbox.core.training.scaling import scaling_mismatch

    rng = np.random.default_rng(0)
    eight_bit = Scaling(scale=1.0, offset=0.0, mean=[100.0, 90.0], std=[40.0, 35.0])
    like = rng.normal(100, 40, size=(20, 2, 8, 8)).clip(0, 255)
    assert scaling_mismatch(like.astype(np.uint8), eight_bit, ["red", "green"]) is None
    digital_numbers = rng.integers(800, 3000, size=(20, 2, 8, 8)).astype(np.uint16)
    message = scaling_mismatch(digital_numbers, eight_bit, ["red", "green"])
    assert message and message.startswith("after the model's scaling the tiles' ") and "standard deviations" in message
    assert scaling_mismatch(digital_numbers, Scaling(scale=1 / 3000.0, offset=0.0), ["a", "b"]) is None  # no mean/std


def test_tiles_from_polygons_log_which_band_feeds_which(tmp_path):
    """Fine-tuning and evaluation on a raster say how the model's bands were found, as classify does."""
    from glassbox.core.training.data import tiles_from_polygons

    raster = write_raster(tmp_path / "scene.tif", np.ones((2, 64, 64), dtype=np.uint16), descriptions=["B03", "B08"])
    polygon = {"type": "Polygon", "coordinates": [[(500000, 6000000), (500640, 6000000), (500640, 5999360),
                                                   (500000, 5999360), (500000, 6000000)]]}
    log: list[str] = []
    tiles_from_polygons(raster, [polygon], ["a"], 16, band_names=["B08", "B03"], log=log.append)
    assert "bands matched by name: B08<-band 2, B03<-band 1" in log


def test_a_turned_field_too_narrow_for_the_corner_grid_still_gives_a_tile(tmp_path, qgis_app):
    """A square field turned 45 degrees (half-diagonal 19.8 px): a 16 px tile fits only near its
    centre, which the grid from its bounding box's corner misses; the quarter-tile grid finds it
    (the polygon gave no tile, and the log said none fits)."""
    raster = _position_raster(tmp_path / "r.tif")
    cx, cy, h = X0 + 800, Y0 - 800, 198
    diamond = _qgs_polygon(f"POLYGON(({cx - h} {cy},{cx} {cy + h},{cx + h} {cy},{cx} {cy - h},{cx - h} {cy}))")
    lines = []
    data = tiles_from_polygons(raster, [json.loads(diamond.asJson())], ["Field"], 16, log=lines.append)
    assert data.num_tiles == 1
    _check_tiles_inside(data, {"Field": diamond}, qgis_app)
    assert any("1 tile(s) found on a grid a quarter tile apart" in line for line in lines), lines


def test_one_polygon_of_a_class_leaves_the_other_classes_held_out_by_polygon():
    """Class C has one polygon: its tiles are split at random (named in the warning and the rule);
    A and B, of 3 polygons each, are still held out by polygon (all three classes were split at
    random)."""
    from glassbox.core.training.loop import validation_split

    labels = np.repeat([0, 0, 0, 1, 1, 1, 2], 5)
    sources = [f"feature {k // 5 + 1}" for k in range(labels.size)]
    data = TrainingData(np.zeros((labels.size, 1, 4, 4), np.uint16), labels, ["A", "B", "C"], ["b1"], sources,
                        footprints=np.zeros((labels.size, 4)))
    lines = []
    train, val, rule = validation_split(data, 0.2, seed=0, log=lines.append)
    shared = {data.sources[i] for i in train} & {data.sources[i] for i in val}
    assert shared == {"feature 7"}  # C's one polygon, on both sides
    assert [int(np.sum(labels[val] == c)) for c in (0, 1, 2)] == [5, 5, 1]
    assert "class(es) C (one polygon each) split tile by tile at random" in rule
    assert len(lines) == 1 and "class(es) C have one polygon each" in lines[0]


def test_polygons_outside_the_raster_are_counted_in_one_line(tmp_path, qgis_app):
    """A national layer over a small raster: one log line with the count and the first names,
    not one line per polygon."""
    raster = _position_raster(tmp_path / "r.tif")
    inside = json.loads(_qgs_polygon(RECT_WKT).asJson())
    far = [json.loads(_qgs_polygon(f"POLYGON(({X0 + 5000 + k * 100} {Y0},{X0 + 5050 + k * 100} {Y0},"
                                   f"{X0 + 5050 + k * 100} {Y0 - 50},{X0 + 5000 + k * 100} {Y0}))").asJson())
           for k in range(7)]
    lines = []
    data = tiles_from_polygons(raster, [inside] + far, ["Water"] * 8, 16, log=lines.append)
    assert data.num_tiles == 6
    outside = [line for line in lines if "outside the raster" in line]
    assert outside == ["7 polygon(s) lie outside the raster and were skipped: polygon 2, polygon 3, polygon 4, "
                       "polygon 5, polygon 6 and 2 more"]


def test_class_values_differing_only_in_case_are_named_in_a_warning(tmp_path, qgis_app):
    """'Grass' and 'grass ' in a hand-digitised layer become two classes competing for one cover;
    the log names them (an audit)."""
    raster = _position_raster(tmp_path / "r.tif")
    polygons = [json.loads(_qgs_polygon(RECT_WKT).asJson()), json.loads(_qgs_polygon(QUAD_WKT).asJson())]
    messages = []
    data = tiles_from_polygons(raster, polygons, ["Grass", "grass "], 16, log=messages.append)
    assert data.class_names == ["Grass", "grass"]
    assert any(m.startswith("WARNING: class values that differ only in upper/lower case") and "'Grass'; 'grass'" in m
               for m in messages)
    quiet = []
    tiles_from_polygons(raster, polygons, ["Water", "Forest"], 16, log=quiet.append)
    assert not any("upper/lower case" in m for m in quiet)


def test_polygon_split_holds_out_about_the_share_when_a_class_has_one_polygon():
    """One class of a single polygon sends every class to the per-class polygon split; it took
    polygons until the target was passed, so one large polygon drawn last held out 40-50 % of a
    class (an audit: 112 of 223 'grass' tiles). Polygons are now taken only when they bring the
    count nearer the share."""
    from glassbox.core.training.loop import _polygon_per_class_split

    sizes = [25, 87, 30, 40, 41]  # grass: 223 tiles in 5 polygons
    labels = np.array([0] * sum(sizes) + [1] * 7)
    sources = np.array([f"grass {k}" for k, n in enumerate(sizes) for _ in range(n)] + ["crop"] * 7)
    for seed in range(8):
        train, val, single = _polygon_per_class_split(labels, sources, 0.2, seed)
        held = int(np.sum(labels[val] == 0))
        assert single == [1]
        assert 25 <= held <= 72, (seed, held)  # the share (44.6) within a polygon's reach, never half the class
        assert set(sources[val][labels[val] == 0]).isdisjoint(sources[train][labels[train] == 0])
        assert np.any(labels[train] == 0) and np.any(labels[val] == 0)


def test_a_class_mapping_gives_its_class_order_as_finetune_masked_does(tmp_path, qgis_app):
    """train_classifier sorted mapped classes alphabetically while finetune_masked kept the
    mapping's order, so a raw and a masked model of one mapping wrote other values with other
    legends (an audit). Both keep the mapping's order now."""
    from glassbox.core.masking.lcdb import parse_mapping
    from glassbox.core.training.run import TileSource

    raster = _position_raster(tmp_path / "r.tif")
    polygons = [json.loads(_qgs_polygon(RECT_WKT).asJson()), json.loads(_qgs_polygon(QUAD_WKT).asJson())]
    mapping = parse_mapping("21=Water; 71=Forest")
    data = TileSource(raster=raster, polygons=polygons, labels=[21, 71], mapping=mapping).load(16)
    assert mapping.classes == ["Water", "Forest"] and data.class_names == ["Water", "Forest"]
    assert {data.class_names[label] for label, source in zip(data.labels, data.sources)
            if source == "polygon 1"} == {"Water"}


def test_a_folder_of_tiles_of_slightly_different_pixel_sizes_gets_their_typical_size(tmp_path):
    """EuroSAT's 13-band tiles have 9.94-10.05 m pixels; the first one's 10.016 m had become the
    model's GSD, so every 10 m scene was resampled by 0.16 % (an audit)."""
    from glassbox.core.training.data import tiles_from_folder

    rng = np.random.default_rng(0)
    for name, pixel in (("a", 10.016), ("b", 9.94), ("c", 10.05)):
        (tmp_path / "tiles" / name).mkdir(parents=True)
        write_raster(tmp_path / "tiles" / name / f"{name}.tif", rng.integers(0, 3000, (2, 16, 16)).astype(np.uint16),
                     pixel=pixel)
    messages = []
    assert tiles_from_folder(tmp_path / "tiles", log=messages.append).gsd == 10.0
    assert any("9.94 to 10.05 m" in m for m in messages)
    (tmp_path / "aerial" / "a").mkdir(parents=True)
    write_raster(tmp_path / "aerial" / "a" / "a.tif", np.zeros((3, 16, 16), np.uint8), pixel=0.3012)
    assert tiles_from_folder(tmp_path / "aerial").gsd == 0.3
    (tmp_path / "odd" / "a").mkdir(parents=True)
    write_raster(tmp_path / "odd" / "a" / "a.tif", np.zeros((3, 16, 16), np.uint8), pixel=12.5)
    assert tiles_from_folder(tmp_path / "odd").gsd == 12.5


def test_numeric_folder_classes_sort_as_numbers_and_a_reversed_mapping_shows_both_sides(tmp_path):
    """Folders 1, 2, 10 sorted as text (1, 10, 2) while the same values from polygons sort as
    numbers; a mapping written the wrong way round ('Urban=1,2') said only that it mapped nothing
    (an audit)."""
    from glassbox.core.errors import ClassMappingError
    from glassbox.core.masking.lcdb import mapped_classes, parse_mapping
    from glassbox.core.training.datasets import scan_tile_folder

    for name in ("1", "10", "2"):
        (tmp_path / name).mkdir()
        write_raster(tmp_path / name / "a.tif", np.zeros((1, 8, 8), np.uint8))
    assert scan_tile_folder(tmp_path)[2] == ["1", "2", "10"]
    with pytest.raises(ClassMappingError, match="the field holds e.g. '1', '2', the mapping maps 'urban'"):
        mapped_classes([1, 2, 1], parse_mapping("Urban=1,2"))
