"""scripts/train_eurosat_rgb.py on a generated EuroSAT-like folder: a fresh run, then a
fine-tune that starts from its weights (``--init-weights``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import load_script

PLUGIN_DIR = Path(__file__).resolve().parent.parent
SHIPPED_RGB = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32.pt"
EUROSAT_NAMES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                 "PermanentCrop", "Residential", "River", "SeaLake"]


@pytest.fixture(scope="module")
def eurosat_like(tmp_path_factory) -> Path:
    """30 JPEG tiles (64 px) per EuroSAT class name; each class its own colour plus noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("eurosat_like")
    rng = np.random.default_rng(0)
    colours = rng.integers(20, 236, (len(EUROSAT_NAMES), 3))
    for label, name in enumerate(EUROSAT_NAMES):
        (root / name).mkdir()
        for i in range(30):
            tile = np.clip(colours[label] + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(tile).save(root / name / f"{name}_{i}.jpg", quality=95)
    return root


def run(script, *argv: str) -> int:
    return script.main([*argv, "--threads", "1", "--batch-size", "16"])


def test_fine_tune_starts_from_the_given_weights_and_keeps_their_scaling(eurosat_like, tmp_path):
    script = load_script("scripts/train_eurosat_rgb.py")
    first = tmp_path / "first"
    assert run(script, "--data", str(eurosat_like), "--epochs", "4", "--lr", "3e-3",
               "--workdir", str(tmp_path / "w1"), "--out", str(first)) == 0
    first_card = json.loads(first.with_suffix(".json").read_text())
    assert first_card["accuracy"]["test_overall"] >= 0.9  # colours are easy: the run really learnt

    # one epoch at a learning rate far too small to learn anything from a random start: the
    # accuracy can only come from the initial weights
    tuned = tmp_path / "tuned"
    assert run(script, "--data", str(eurosat_like), "--epochs", "1", "--lr", "1e-7",
               "--init-weights", f"{first}.pt", "--workdir", str(tmp_path / "w2"), "--out", str(tuned)) == 0
    card = json.loads(tuned.with_suffix(".json").read_text())
    assert card["accuracy"]["test_overall"] >= 0.9
    assert card["training"]["initial_weights"]["model"] == "first.pt"
    assert card["scaling"]["mean"] == first_card["scaling"]["mean"]

    scratch = tmp_path / "scratch"
    assert run(script, "--data", str(eurosat_like), "--epochs", "1", "--lr", "1e-7",
               "--workdir", str(tmp_path / "w3"), "--out", str(scratch)) == 0
    assert json.loads(scratch.with_suffix(".json").read_text())["accuracy"]["test_overall"] < 0.5


def test_init_weights_of_another_architecture_are_refused(eurosat_like, tmp_path):
    script = load_script("scripts/train_eurosat_rgb.py")
    with pytest.raises(SystemExit, match="resnet18_64, not a paper1_cnn"):
        run(script, "--data", str(eurosat_like), "--epochs", "1", "--init-weights", str(SHIPPED_RGB),
            "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "m"))
