"""bench/reproduce_paper2.py end to end on a generated Kahikatea-like folder (photos of two
classes, expert masks for the positives): the table's pipeline, its resumability and the
``--init-model`` start from the shipped EuroSAT RGB network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import load_script

PLUGIN_DIR = Path(__file__).resolve().parent.parent
SHIPPED_RGB = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32.pt"


@pytest.fixture(scope="module")
def kahikatea_like(tmp_path_factory) -> Path:
    """12 positives (a dark-green disc, its mask) and 12 negatives (none), sizes varying like
    the real photos'; written as JPEG photos and PNG masks."""
    from PIL import Image

    root = tmp_path_factory.mktemp("kahikatea_like")
    rng = np.random.default_rng(0)
    for label in ("positive", "negative"):
        (root / "images" / label).mkdir(parents=True)
    (root / "masks" / "positive").mkdir(parents=True)
    for i in range(24):
        h, w = int(rng.integers(60, 90)), int(rng.integers(90, 130))
        photo = np.clip(rng.normal(150, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        label = "positive" if i % 2 else "negative"
        if label == "positive":
            yy, xx = np.mgrid[:h, :w]
            cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), int(rng.integers(10, 18))
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            photo[disc] = (30, 90, 40)
            Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / label / f"img{i}.png")
        Image.fromarray(photo).save(root / "images" / label / f"img{i}.jpg", quality=95)
    return root


def test_reproduce_paper2_smoke_with_init_model(kahikatea_like, tmp_path):
    script = load_script("bench/reproduce_paper2.py")
    args = ["--kahikatea", str(kahikatea_like), "--workdir", str(tmp_path / "work"), "--smoke",
            "--inits", "model", "--init-model", str(SHIPPED_RGB), "--mask-types", "blur,black",
            "--out-json", str(tmp_path / "p2.json"), "--out-md", str(tmp_path / "p2.md")]
    report = script.main(args)

    assert set(report["inits"]) == {"model"}
    assert report["init_model"]["architecture"] == "resnet18_64"
    assert report["init_model"]["kwargs"] == {"width": 32}
    for init, summary in report["inits"].items():
        accuracy = summary["accuracy"]
        expected = {"baseline"} | {f"{m} alpha={a}" for m in ("blur", "black") for a in ("0", "0.8", "0.9")}
        assert set(accuracy) == expected, init
        for entry in accuracy.values():
            assert entry["n"] == 2 and 0.0 <= entry["mean"] <= 1.0
        assert 0.0 <= summary["gradcam_jaccard"]["raw"]["mean"] <= 1.0
        assert set(summary["goal"]) == {"best_ensemble_at_least_0.90", "best_ensemble_at_least_baseline_plus_0.03"}

    # the init 'model' trains the card's architecture from the shipped weights, in its own folder
    fold0 = tmp_path / "work" / "smoke" / "model_eurosat_rgb_resnet18_64_w32" / "seed0" / "fold0"
    card = json.loads((fold0 / "baseline.json").read_text())
    assert card["architecture"] == {"name": "resnet18_64", "kwargs": {"width": 32}}
    assert card["training"]["initial_weights"] == SHIPPED_RGB.name
    masked_card = json.loads((fold0 / "masked_blur.json").read_text())
    assert masked_card["architecture"] == card["architecture"]

    # the accuracies are those of the saved test logits (hand-computed here)
    folds = script.stratified_folds(np.repeat([0, 1], 12), 2, 0)
    labels_sorted = np.repeat([0, 1], 12)  # load_kahikatea lists negatives first
    per_fold = []
    for k in range(2):
        result = json.loads((fold0.parent / f"fold{k}" / "baseline.result.json").read_text())
        per_fold.append(float((np.asarray(result["test_logits"]).argmax(1) == labels_sorted[folds == k]).mean()))
    assert report["inits"]["model"]["accuracy"]["baseline"]["mean"] == pytest.approx(np.mean(per_fold), abs=1e-4)

    table = (tmp_path / "p2.md").read_text()
    assert "resnet18_64 (width 32) started from eurosat_rgb_resnet18_64_w32.pt" in table
    assert json.loads((tmp_path / "p2.json").read_text())["inits"] == report["inits"]

    # a rerun reuses every saved model and gives the same numbers
    before = {p: p.stat().st_mtime_ns for p in fold0.glob("*.pt")}
    again = script.main(args)
    assert again["inits"] == report["inits"]
    assert {p: p.stat().st_mtime_ns for p in fold0.glob("*.pt")} == before


def test_reproduce_paper2_init_model_needs_a_card(kahikatea_like, tmp_path):
    script = load_script("bench/reproduce_paper2.py")
    weights_only = tmp_path / "bare.pt"
    weights_only.write_bytes(SHIPPED_RGB.read_bytes())
    with pytest.raises(SystemExit, match="card"):
        script.main(["--kahikatea", str(kahikatea_like), "--workdir", str(tmp_path / "w"), "--smoke",
                     "--inits", "model", "--init-model", str(weights_only)])
    with pytest.raises(SystemExit):
        script.parse_args(["--kahikatea", str(kahikatea_like), "--workdir", str(tmp_path / "w"), "--inits", "model"])
