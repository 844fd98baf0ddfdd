"""Cross-validated accuracy under the radiometric corruptions of
:data:`glassbox.core.radiometry.CORRUPTIONS`: each fold's held-out tiles are scored clean and
with every corruption applied to their raw values (before the model's own scaling), and the
predictions are pooled over the folds (``--corruptions`` of ``scripts/train_eurosat_ms.py`` and
``scripts/train_eurosat_ms_fusion.py``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..radiometry import CORRUPTIONS, corrupt
from .data import TrainingData


def protocol_text(full_scale: float, seed: int) -> str:
    return (f"each CV fold's held-out tiles, after training on the other folds, scored clean and under each of "
            f"glassbox.core.radiometry.CORRUPTIONS ({', '.join(CORRUPTIONS)}) applied to the raw values "
            f"(full_scale {full_scale:g}, seed {seed}) before the model's own scaling; accuracy pooled over the "
            f"folds and per fold; corrupted_mean = mean over the {len(CORRUPTIONS)} corruptions")


def corrupted_copies(test: TrainingData, full_scale: float, seed: int = 0) -> dict[str, TrainingData]:
    """``{name: test with the corruption name applied to its raw tiles}`` for every corruption."""
    return {name: replace(test, tiles=corrupt(test.tiles, name, full_scale, seed=seed),
                          description=f"{test.description}, {name}".strip(", "))
            for name in CORRUPTIONS}


def corruption_summary(true: np.ndarray, clean: np.ndarray, corrupted: dict[str, np.ndarray], folds: np.ndarray,
                       subset: np.ndarray | None = None) -> dict:
    """Accuracy clean and per corruption, pooled over the folds and per fold, over every tile or the
    tiles of the boolean ``subset``. ``clean`` and each ``corrupted[name]`` hold every tile's
    predicted class (held-out predictions of the CV, aligned with ``true``); ``folds`` its fold index.
    A fold without tiles in the subset has ``None`` as its accuracy."""
    true, folds = np.asarray(true), np.asarray(folds)
    sel = np.ones(true.size, dtype=bool) if subset is None else np.asarray(subset, dtype=bool)
    fold_ids = np.unique(folds)

    def scores(predicted: np.ndarray) -> dict:
        right = np.asarray(predicted) == true
        per_fold = [round(float(right[sel & (folds == f)].mean()), 4) if (sel & (folds == f)).any() else None
                    for f in fold_ids]
        return {"accuracy": round(float(right[sel].mean()), 4) if sel.any() else None, "per_fold": per_fold}

    out = {"n": int(sel.sum()), "n_per_fold": [int((sel & (folds == f)).sum()) for f in fold_ids],
           "clean": scores(clean), "corrupted": {name: scores(corrupted[name]) for name in CORRUPTIONS}}
    right = np.stack([np.asarray(corrupted[name]) == true for name in CORRUPTIONS])  # (corruptions, tiles)
    out["corrupted_mean"] = round(float(right[:, sel].mean()), 4) if sel.any() else None
    out["corrupted_mean_per_fold"] = [round(float(right[:, sel & (folds == f)].mean()), 4)
                                      if (sel & (folds == f)).any() else None for f in fold_ids]
    return out
