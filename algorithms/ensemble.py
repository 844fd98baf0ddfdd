"""glassbox:ensemble - combine a raw and a masked model into one ONNX model that mixes their
logits: L = alpha * L_raw + (1 - alpha) * L_masked (paper 2)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..core.feedback import log_to
from .base import MODEL_FILTER, GlassboxAlgorithm, check_extension


class EnsembleAlgorithm(GlassboxAlgorithm):
    RAW_MODEL = "RAW_MODEL"
    MASKED_MODEL = "MASKED_MODEL"
    ALPHA = "ALPHA"
    OUTPUT = "OUTPUT"
    MAX_DIFFERENCE = "MAX_DIFFERENCE"

    required_modules = ["numpy", "onnxruntime", "torch", "onnx", "onnx2torch"]

    group_id = "training"

    def name(self):
        return "ensemble"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Ensemble of a raw and a masked model")

    def tags(self):
        return ["ensemble", "alpha", "logits", "masked", "fine-tune", "onnx", "combine", "paper 2"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Combines two models of the same classes into one ONNX model, as paper 2 does: the raw model (trained "
            "on ordinary tiles) and the masked model (fine-tuned on tiles whose background was masked, with "
            "'Fine-tune on masked tiles'). For every tile both models give a score per class (logits); the "
            "ensemble's score is alpha x raw + (1 - alpha) x masked, turned into class probabilities afterwards. "
            "Alpha 1 is the raw model alone, 0 the masked model alone; the paper found 0.9 best.\n\n"
            "Models: ONNX, or Torch .pt with its .json card. Both must read the same bands, tile size, resolution "
            "and value scaling (scale, offset, clip; the normalisation means and spreads may differ, as two "
            "training runs with different seeds get, and are reconciled inside the ensemble) and know the same "
            "classes; the error names what differs. With a class "
            "mapping (LCDB's 7 groups), make the raw model with 'Fine-tune on masked tiles' and mask None, as "
            "paper 2 does.\n\n"
            "Output: an .onnx model with its card (alpha and both source models recorded), ready for 'Classify "
            "raster', 'Explain classification' and 'Evaluate classifier'. It is checked to give the mix of both "
            "models' scores. In explanations, Grad-CAM shows the masked model's view (its last layers); guided "
            "backpropagation covers both models."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(
            QgsProcessingParameterFile(self.RAW_MODEL, self.tr("Raw model (ONNX, or Torch with card)"),
                                       behavior=QgsProcessingParameterFile.File, fileFilter=MODEL_FILTER)
        )
        self.addParameter(
            QgsProcessingParameterFile(self.MASKED_MODEL, self.tr("Masked model (ONNX, or Torch with card)"),
                                       behavior=QgsProcessingParameterFile.File, fileFilter=MODEL_FILTER)
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.ALPHA, self.tr("Alpha: weight of the raw model (0-1)"),
                                         QgsProcessingParameterNumber.Double, defaultValue=0.9, minValue=0.0,
                                         maxValue=1.0)
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("Ensemble model (ONNX)"), "ONNX models (*.onnx)")
        )
        self.addOutput(QgsProcessingOutputNumber(self.MAX_DIFFERENCE,
                                                 self.tr("Largest difference from the mixed logits in the check")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        raw = self.parameterAsFile(parameters, self.RAW_MODEL, context)
        masked = self.parameterAsFile(parameters, self.MASKED_MODEL, context)
        alpha = self.parameterAsDouble(parameters, self.ALPHA, context)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        check_extension(output, (".onnx",), "the ensemble model")
        if raw and masked and Path(raw).resolve() == Path(masked).resolve():
            feedback.pushWarning(f"the raw and the masked model are the same file ({Path(raw).name}): the ensemble "
                                 "gives that model's own scores, whatever alpha")
        feedback.setProgress(5)
        with self.core_errors():
            from ..core.models.ensemble import build_ensemble

            if feedback.isCanceled():
                from ..core.errors import Cancelled

                raise Cancelled("cancelled; nothing was written")
            result = build_ensemble(raw, masked, alpha, output, log=log_to(feedback))
        feedback.setProgress(100)
        card = result["card"]
        feedback.pushInfo(f"Ensemble '{card.name}': classes {'; '.join(card.class_names)}; bands "
                          f"{', '.join(card.bands)}. Written: {result['path']}")
        return {self.OUTPUT: result["path"], self.MAX_DIFFERENCE: result["max_abs_diff"]}
