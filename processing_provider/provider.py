"""The Glassbox Processing provider (id ``glassbox``)."""

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..algorithms.classify import ClassifyRasterAlgorithm
from ..algorithms.ensemble import EnsembleAlgorithm
from ..algorithms.evaluate import EvaluateClassifierAlgorithm
from ..algorithms.explain import ExplainAlgorithm
from ..algorithms.explanation_quality import ExplanationQualityAlgorithm
from ..algorithms.export_onnx import ExportOnnxAlgorithm
from ..algorithms.finetune_masked import FinetuneMaskedAlgorithm
from ..algorithms.segment import SegmentAlgorithm
from ..algorithms.train_classifier import TrainClassifierAlgorithm

ICON = str(Path(__file__).resolve().parent.parent / "resources" / "icons" / "glassbox.svg")


class GlassboxProvider(QgsProcessingProvider):
    def id(self):
        return "glassbox"

    def name(self):
        return "Glassbox"

    def longName(self):  # noqa: N802 (QGIS API name)
        return "Glassbox: explainable land-cover classification"

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802 (QGIS API name)
        return ICON

    def loadAlgorithms(self):  # noqa: N802 (QGIS API name)
        for algorithm in (
            ClassifyRasterAlgorithm(),
            ExplainAlgorithm(),
            ExplanationQualityAlgorithm(),
            TrainClassifierAlgorithm(),
            EvaluateClassifierAlgorithm(),
            ExportOnnxAlgorithm(),
            SegmentAlgorithm(),
            FinetuneMaskedAlgorithm(),
            EnsembleAlgorithm(),
        ):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 (QGIS API name)
        return ["tif"]
