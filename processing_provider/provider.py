"""The Glassbox Processing provider (id ``glassbox``)."""

from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProcessingModelAlgorithm, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..algorithms.assess_map import AssessMapAlgorithm
from ..algorithms.base import help_page_url
from ..algorithms.classify import ClassifyRasterAlgorithm
from ..algorithms.ensemble import EnsembleAlgorithm
from ..algorithms.evaluate import EvaluateClassifierAlgorithm
from ..algorithms.explain import ExplainAlgorithm
from ..algorithms.explanation_quality import ExplanationQualityAlgorithm
from ..algorithms.export_onnx import ExportOnnxAlgorithm
from ..algorithms.finetune_masked import FinetuneMaskedAlgorithm
from ..algorithms.sample_points import SamplePointsAlgorithm
from ..algorithms.segment import SegmentAlgorithm
from ..algorithms.train_classifier import TrainClassifierAlgorithm

ICON = str(Path(__file__).resolve().parent.parent / "resources" / "icons" / "glassbox.svg")
MODELS_DIR = Path(__file__).resolve().parent.parent / "resources" / "processing_models"


def declares_its_parameters(algorithm) -> bool:
    """Whether ``algorithm`` declares its parameters without an error, tried on a copy. QGIS calls
    ``initAlgorithm`` from C++ while the provider loads, where a Python error aborts the whole
    process (every algorithm of the toolbox and every qgis_process run with it); a broken algorithm
    is left out instead, and QGIS's message log says why."""
    try:
        algorithm.createInstance().initAlgorithm({})
        return True
    except Exception as exc:  # noqa: BLE001 (any error: this algorithm only is left out)
        import traceback

        QgsMessageLog.logMessage(f"{algorithm.name()} left out of the toolbox: {exc}\n{traceback.format_exc()}",
                                 "Glassbox", Qgis.Critical)
        return False


class GlassboxModel(QgsProcessingModelAlgorithm):
    """A shipped Processing model (.model3): its id is ``glassbox:<file name without .model3>``,
    its display name the model's own name."""

    def __init__(self, path, definition=None):
        super().__init__()
        self.path = str(path)
        self.model_id = Path(path).stem
        self.loaded = self.fromFile(self.path) if definition is None else self.loadVariant(definition)
        self.setSourceFilePath(self.path)

    def name(self):
        return self.model_id

    def displayName(self):  # noqa: N802 (QGIS API name)
        return super().name() or self.model_id

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802 (QGIS API name)
        return ICON

    def helpUrl(self):  # noqa: N802 (QGIS API name)
        """The model's reference page in the plugin's docs/, as for the algorithms."""
        return help_page_url(self.model_id)

    def createInstance(self):  # noqa: N802 (QGIS API name)
        return GlassboxModel(self.path, self.toVariant())


def shipped_models():
    """The models of resources/processing_models that QGIS can read."""
    models = [GlassboxModel(path) for path in sorted(MODELS_DIR.glob("*.model3"))]
    return [model for model in models if model.loaded]


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
        self.models = shipped_models()
        for algorithm in (
            ClassifyRasterAlgorithm(),
            ExplainAlgorithm(),
            ExplanationQualityAlgorithm(),
            TrainClassifierAlgorithm(),
            EvaluateClassifierAlgorithm(),
            AssessMapAlgorithm(),
            SamplePointsAlgorithm(),
            ExportOnnxAlgorithm(),
            SegmentAlgorithm(),
            FinetuneMaskedAlgorithm(),
            EnsembleAlgorithm(),
        ):
            if declares_its_parameters(algorithm):
                self.addAlgorithm(algorithm)
        for model in self.models:
            self.addAlgorithm(model)
        self.attach_models()

    def attach_models(self):
        """A model's steps name Glassbox algorithms, which the registry finds only once this
        provider is registered (not yet while QGIS loads it): until then a model lacks its
        outputs. So the models are read again when the provider has been added."""
        registry = QgsApplication.processingRegistry()
        if registry.providerById(self.id()) is not self:
            if not getattr(self, "waiting_for_registry", False):
                registry.providerAdded.connect(self.provider_added)
                self.waiting_for_registry = True
            return
        for model in self.models:
            model.loadVariant(model.toVariant())

    def provider_added(self, provider_id):
        if provider_id == self.id():
            QgsApplication.processingRegistry().providerAdded.disconnect(self.provider_added)
            self.waiting_for_registry = False
            self.attach_models()

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 (QGIS API name)
        return ["tif"]
