"""Accuracy metrics of a patch classifier from true and predicted class indices (numpy only).

Conventions (the same in the HTML report, the CSV and model cards):

* the confusion matrix ``cm[t, p]`` counts tiles of true class ``t`` predicted as ``p``
  (rows = reference, columns = prediction);
* ``precision[c] = cm[c, c] / cm[:, c].sum()`` (user's accuracy), ``recall[c] = cm[c, c] /
  cm[c, :].sum()`` (producer's accuracy), ``f1 = 2 p r / (p + r)``; a ratio whose denominator
  is 0 (a class never predicted, or without reference tiles) is reported as 0;
* overall accuracy ``trace(cm) / cm.sum()``; for single-label classification the
  micro-averaged precision, recall and F1 all equal it; macro averages are plain means over the
  classes that have reference tiles; Cohen's kappa from the same matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 ``(num_classes, num_classes)`` counts, rows = true class, columns = predicted."""
    true = np.asarray(true, dtype=np.int64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if true.shape != predicted.shape:
        raise ValueError(f"{true.size} true labels but {predicted.size} predictions")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (true, predicted), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


@dataclass
class Metrics:
    """Metrics of one confusion matrix; arrays are per class, in ``class_names`` order."""

    class_names: list[str]
    confusion: np.ndarray  # (K, K) int64, rows = true, columns = predicted
    precision: np.ndarray  # (K,)
    recall: np.ndarray  # (K,)
    f1: np.ndarray  # (K,)
    support: np.ndarray  # (K,) reference tiles per class
    overall_accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    kappa: float

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall_accuracy": self.overall_accuracy,
            "n": self.total,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "kappa": self.kappa,
            "classes": list(self.class_names),
            "per_class": {
                name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for name, p, r, f, s in zip(self.class_names, self.precision, self.recall, self.f1, self.support)
            },
            "confusion_matrix": {"rows": "true class", "cols": "predicted class",
                                 "counts": self.confusion.tolist()},
        }


def metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str]) -> Metrics:
    """All metrics of a confusion matrix (see the module docstring for the definitions)."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {len(class_names)} classes")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    total = int(cm.sum())
    overall = float(tp.sum() / total) if total else 0.0
    present = support > 0
    macro = (lambda a: float(a[present].mean()) if present.any() else 0.0)
    expected = float((support * predicted).sum()) / total**2 if total else 0.0
    kappa = (overall - expected) / (1 - expected) if total and expected < 1 else 0.0
    return Metrics(
        class_names=list(class_names), confusion=cm, precision=precision, recall=recall, f1=f1,
        support=support, overall_accuracy=overall, macro_precision=macro(precision),
        macro_recall=macro(recall), macro_f1=macro(f1), kappa=float(kappa),
    )


def compute_metrics(true: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> Metrics:
    return metrics_from_confusion(confusion_matrix(true, predicted, len(class_names)), class_names)
