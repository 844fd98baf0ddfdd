"""scripts/train_eurosat_ms.py (paper 1's spatial-spectral 13-band network) on tiny generated data:
cross-validation only (--no-export --metrics-out) with --corruptions; and
core.training.corruption_cv's pooled and per-fold figures counted by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import load_script, write_eurosat_ms_folder


def test_corruption_summary_counts_by_hand():
    from glassbox.core.radiometry import CORRUPTIONS
    from glassbox.core.training.corruption_cv import corruption_summary

    true = np.array([0, 1, 0, 1, 0, 1])
    folds = np.array([0, 0, 0, 1, 1, 1])
    clean = true.copy()
    clean[0] = 1  # fold 0: 2/3, fold 1: 3/3
    corrupted = {name: true.copy() for name in CORRUPTIONS}
    corrupted["noise_0.03"] = 1 - true  # all wrong
    corrupted["blur_1px"][3:] = 1 - true[3:]  # fold 1 wrong
    s = corruption_summary(true, clean, corrupted, folds)
    assert s["n"] == 6 and s["n_per_fold"] == [3, 3]
    assert s["clean"] == {"accuracy": round(5 / 6, 4), "per_fold": [round(2 / 3, 4), 1.0]}
    assert s["corrupted"]["noise_0.03"] == {"accuracy": 0.0, "per_fold": [0.0, 0.0]}
    assert s["corrupted"]["blur_1px"] == {"accuracy": 0.5, "per_fold": [1.0, 0.0]}
    k = len(CORRUPTIONS)
    assert s["corrupted_mean"] == round((k - 1.5) / k, 4)
    assert s["corrupted_mean_per_fold"] == [round((k - 1) / k, 4), round((k - 2) / k, 4)]
    sub = corruption_summary(true, clean, corrupted, folds, subset=np.array([1, 0, 0, 0, 0, 0], bool))
    assert sub["n_per_fold"] == [1, 0] and sub["clean"] == {"accuracy": 0.0, "per_fold": [0.0, None]}
    assert sub["corrupted_mean_per_fold"][1] is None


def test_training_script_cv_with_corruptions_writes_the_fields(tmp_path):
    from glassbox.core.radiometry import CORRUPTIONS

    data = write_eurosat_ms_folder(tmp_path / "ms")
    out, metrics_path = tmp_path / "out" / "ss", tmp_path / "m.json"
    script = load_script("scripts/train_eurosat_ms.py")
    assert script.main(["--data", str(data), "--out", str(out), "--folds", "3", "--epochs", "1", "--threads", "1",
                        "--skip-split", "--no-export", "--metrics-out", str(metrics_path), "--corruptions"]) == 0
    assert not out.parent.exists()  # --no-export writes no model
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    c = metrics["corruptions"]
    assert "CORRUPTIONS" in c["protocol"]
    every = c["all_patches"]
    assert every["n"] == 30 and every["n_per_fold"] == [10, 10, 10]
    assert every["clean"]["accuracy"] == pytest.approx(metrics["cv_mean"], abs=1e-4)  # equal folds
    assert every["clean"]["per_fold"] == [round(r["accuracy"], 4) for r in metrics["per_fold"]]
    assert list(every["corrupted"]) == list(CORRUPTIONS)
    for entry in every["corrupted"].values():
        assert 0 <= entry["accuracy"] <= 1 and len(entry["per_fold"]) == 3
    assert every["corrupted_mean"] == pytest.approx(np.mean([e["accuracy"] for e in every["corrupted"].values()]),
                                                    abs=1e-3)
    assert len(every["corrupted_mean_per_fold"]) == 3
