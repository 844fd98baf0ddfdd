"""glassbox:export_onnx - convert a Torch model with its card to ONNX carrying the same card,
checking that both give the same outputs."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from .base import GlassboxAlgorithm, advanced, check_extension

TORCH_FILTER = "Torch models (*.pt *.pth *.ts *.torchscript);;All files (*.*)"


class ExportOnnxAlgorithm(GlassboxAlgorithm):
    MODEL = "MODEL"
    TOLERANCE = "TOLERANCE"
    OUTPUT = "OUTPUT"
    MAX_DIFFERENCE = "MAX_DIFFERENCE"

    required_modules = ["numpy", "onnxruntime", "torch", "onnx"]

    group_id = "training"

    def name(self):
        return "export_onnx"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Export model to ONNX")

    def tags(self):
        return ["onnx", "torch", "export", "convert", "model"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Converts a Torch model (a .pt state dict with its .json model card beside it, or TorchScript "
            "with a card) to ONNX, with the same model card inside the ONNX file. ONNX models run in "
            "'Classify raster' without PyTorch installed, and usually faster.\n\n"
            "The export is checked: both models classify the same random tiles and their class "
            "probabilities must agree within the tolerance (default 0.0001); otherwise nothing is written. "
            "The largest difference found is reported."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, self.tr("Torch model (with its .json card beside it)"), behavior=QgsProcessingParameterFile.File,
                fileFilter=TORCH_FILTER,
            )
        )
        tolerance = QgsProcessingParameterNumber(
            self.TOLERANCE, self.tr("Largest allowed difference between Torch and ONNX outputs"),
            QgsProcessingParameterNumber.Double, defaultValue=1e-4, minValue=0.0,
        )
        self.addParameter(advanced(tolerance))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("ONNX model"), "ONNX models (*.onnx)"))
        self.addOutput(QgsProcessingOutputNumber(self.MAX_DIFFERENCE, self.tr("Largest difference (logits or probabilities)")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        model_path = self.parameterAsFile(parameters, self.MODEL, context)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        check_extension(output, (".onnx",), "the ONNX model")
        tolerance = self.parameterAsDouble(parameters, self.TOLERANCE, context)
        feedback.setProgress(5)
        with self.core_errors():
            from ..core.training.saving import export_model_file

            if feedback.isCanceled():
                from ..core.errors import Cancelled

                raise Cancelled("cancelled; nothing was written")
            result = export_model_file(model_path, output, tolerance=tolerance)
        feedback.setProgress(100)
        feedback.pushInfo(
            f"Exported '{result['card'].name}' to {result['path']}; on {result['tiles_compared']} random tiles "
            f"the largest difference from Torch is {result['max_abs_diff_probabilities']:.2e} in class "
            f"probabilities and {result['max_abs_diff_logits']:.2e} in logits (allowed {tolerance:g})."
        )
        return {self.OUTPUT: result["path"], self.MAX_DIFFERENCE: max(result["max_abs_diff_probabilities"],
                                                                      result["max_abs_diff_logits"])}
