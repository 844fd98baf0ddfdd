"""EuroSAT 13-band tiles in only some of EuroSAT's class folders still get EuroSAT's band names
(B01..B12, B8A), so classify matches a Sentinel-2 stack by name; 13 unnamed bands that are not
recognised stay band_1.. with a warning."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import write_eurosat_ms_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SUBSET = ["Forest", "Pasture", "Residential", "SeaLake"]


def _subset_folder(root, keep=SUBSET, per_class=2):
    folder = write_eurosat_ms_folder(root, per_class=per_class)
    for d in folder.iterdir():
        if d.name not in keep:
            shutil.rmtree(d)
    return folder


def _data(bands, class_names, size=64, names=None):
    from glassbox.core.training.data import TrainingData

    n = len(class_names)
    return TrainingData(tiles=np.zeros((n, bands, size, size), dtype=np.uint16), labels=np.arange(n),
                        class_names=list(class_names), band_names=names or [f"band_{b + 1}" for b in range(bands)],
                        sources=[f"t{i}" for i in range(n)])


def test_detection_accepts_any_subset_of_eurosat_classes():
    from glassbox.core.models.card import EUROSAT_CLASSES
    from glassbox.core.training.datasets import EUROSAT_MS_BANDS
    from glassbox.core.training.run import name_eurosat_bands

    every = [c.name for c in EUROSAT_CLASSES]
    for classes in (every, SUBSET, ["River"]):
        log: list[str] = []
        assert name_eurosat_bands(_data(13, classes), log.append).band_names == EUROSAT_MS_BANDS, classes
        assert len(log) == 1 and "named as EuroSAT stores them" in log[0] and not log[0].startswith("WARNING")
    # the other conditions stay: 13 bands, 64 px, unnamed, EuroSAT's spelling
    assert name_eurosat_bands(_data(3, SUBSET)).band_names == ["band_1", "band_2", "band_3"]
    assert name_eurosat_bands(_data(13, SUBSET, size=32)).band_names[0] == "band_1"
    assert name_eurosat_bands(_data(13, ["forest", "SeaLake"])).band_names[0] == "band_1"
    named = ["B%02d" % b for b in range(1, 14)]
    log = []
    assert name_eurosat_bands(_data(13, SUBSET, names=named), log.append).band_names == named
    assert log == []


def test_unrecognised_13_band_tiles_warn_that_bands_are_unnamed():
    from glassbox.core.training.run import name_eurosat_bands

    log: list[str] = []
    data = name_eurosat_bands(_data(13, ["Forest", "Glacier"]), log.append)
    assert data.band_names == [f"band_{b + 1}" for b in range(13)]
    assert len(log) == 1 and log[0].startswith("WARNING: ")
    assert "in their order" in log[0] and "BANDS" in log[0]
    log = []
    name_eurosat_bands(_data(4, ["Glacier"]), log.append)  # not 13 bands: nothing to say
    assert log == []


def _train(folder, tmp_path, log):
    from glassbox.core.training.loop import TrainOptions
    from glassbox.core.training.run import TileSource, train_and_save

    options = TrainOptions(epochs=1, batch_size=8, lr=1e-3, val_fraction=0.0, patience=0, seed=0, threads=1)
    _, written = train_and_save(TileSource(folder=str(folder)), "paper1_cnn", options, tmp_path / "model.pt",
                                log=log.append)
    return json.loads(open(written["card"]).read())


def test_training_on_a_subset_of_eurosat_folders_names_the_bands(tmp_path):
    from glassbox.core.training.datasets import EUROSAT_MS_BANDS

    folder = _subset_folder(tmp_path / "ms")
    log: list[str] = []
    card = _train(folder, tmp_path, log)
    assert card["bands"] == EUROSAT_MS_BANDS and card["bands"][-1] == "B8A"
    assert [c["name"] if isinstance(c, dict) else c for c in card["classes"]] == SUBSET
    assert not any(line.startswith("WARNING") and "no names" in line for line in log)
    # EuroSAT's class names get the shipped models' colours (Forest green, SeaLake blue), not a fallback palette
    from glassbox.core.models.card import EUROSAT_CLASSES

    eurosat = {c.name: c.color for c in EUROSAT_CLASSES}
    assert {c["name"]: c["color"] for c in card["classes"]} == {name: eurosat[name] for name in SUBSET}


def test_training_with_a_foreign_class_folder_keeps_unnamed_bands_and_warns(tmp_path):
    folder = _subset_folder(tmp_path / "ms", keep=["Forest", "SeaLake"])
    (folder / "SeaLake").rename(folder / "Lake")
    log: list[str] = []
    card = _train(folder, tmp_path, log)
    assert card["bands"] == [f"band_{b + 1}" for b in range(13)]
    warnings = [line for line in log if line.startswith("WARNING") and "no names" in line]
    assert len(warnings) == 1 and "BANDS" in warnings[0]
