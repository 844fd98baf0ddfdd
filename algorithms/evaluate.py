"""glassbox:evaluate - measure a model's accuracy on labelled tiles (a folder, or a raster with
labelled polygons) and write an HTML report plus a CSV table."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFileDestination,
    QgsProcessingOutputNumber,
)

from ..core.feedback import callbacks
from .base import (GlassboxAlgorithm, advanced, batch_size_parameter, check_extension, device_parameter, model_parameter,
                   tta_parameter)
from .train_classifier import LabelledTilesInput


class EvaluateClassifierAlgorithm(LabelledTilesInput, GlassboxAlgorithm):
    MODEL = "MODEL"
    PRESCALED = "PRESCALED"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    TEST_TIME_AUGMENTATION = "TEST_TIME_AUGMENTATION"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_CSV = "OUTPUT_CSV"
    OVERALL_ACCURACY = "OVERALL_ACCURACY"
    MACRO_F1 = "MACRO_F1"
    KAPPA = "KAPPA"
    N_TILES = "N_TILES"

    required_modules = ["numpy", "rasterio", "onnxruntime", "matplotlib"]

    group_id = "classification"

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Evaluate classifier")

    def tags(self):
        return ["accuracy", "assessment", "validation", "confusion matrix", "precision", "recall", "f1",
                "report", "classification"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Measures how well a model classifies tiles whose class you know, before you trust its map.\n\n"
            "Reference tiles come either from a folder with one sub-folder per class (named exactly like the "
            "model's classes; tiles of the model's size and band count), or from a raster and a polygon layer "
            "with a class field whose values are the model's class names (or codes turned into them by the class "
            "mapping: LCDB v5's 7 groups, or your own such as 71,69=Forest; 20,21=Water; polygons of other values "
            "are skipped and listed in the log): tiles of the model's size are cut "
            "wherever a whole tile fits inside a polygon, read at the model's ground sample distance. Raster "
            "bands: in the model's band order; empty = found by name or taken in order, as in 'Classify "
            "raster'. Use data the model was not trained on.\n\n"
            "Output: an HTML report (open it in QGIS or a browser) with the overall accuracy, per class the "
            "precision (user's accuracy), recall (producer's accuracy) and F1, the confusion matrix as a "
            "picture and a table, and a summary of the model; optionally the numbers as CSV (one row per "
            "class with its confusion-matrix row).\n\n"
            "Advanced: 'tiles are already scaled' applies only the model's mean/std, for tiles that already "
            "hold the model's 0-255 values (e.g. the EuroSAT RGB jpgs for the shipped model, which reads "
            "Sentinel-2 digital numbers).\n\n"
            "Test-time augmentation: each tile is classified as the mean of the model's outputs over its 8 "
            "rotations and flips (8 times slower); measures what 'Classify raster' gives with the same option."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(model_parameter(self.MODEL))
        self.add_labelled_tiles_parameters("Raster bands, in the model's order (empty: from the model card)")
        prescaled = QgsProcessingParameterBoolean(
            self.PRESCALED, self.tr("Tiles are already scaled to the model's 0-255 values (apply only mean/std)"),
            defaultValue=False,
        )
        self.addParameter(advanced(prescaled))
        self.addParameter(batch_size_parameter(self.BATCH_SIZE, 64))
        self.addParameter(device_parameter(self.DEVICE))
        self.addParameter(tta_parameter(self.TEST_TIME_AUGMENTATION))
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Accuracy report"), "HTML files (*.html)")
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_CSV, self.tr("Accuracy table (CSV)"), "CSV files (*.csv)", optional=True, createByDefault=False
            )
        )
        self.addOutput(QgsProcessingOutputNumber(self.OVERALL_ACCURACY, self.tr("Overall accuracy (0-1)")))
        self.addOutput(QgsProcessingOutputNumber(self.MACRO_F1, "Macro-averaged F1"))
        self.addOutput(QgsProcessingOutputNumber(self.KAPPA, self.tr("Cohen's kappa")))
        self.addOutput(QgsProcessingOutputNumber(self.N_TILES, self.tr("Reference tiles")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        model_path = self.model_path(parameters, self.MODEL, context)
        source = self.labelled_tiles_source(parameters, context, feedback)
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        table = self.parameterAsFileOutput(parameters, self.OUTPUT_CSV, context) or None
        check_extension(report, (".html", ".htm"), "the report")
        check_extension(table, (".csv",), "the accuracy table")

        with self.core_errors():
            from ..core.training.run import evaluate_and_report

            evaluation, written = evaluate_and_report(
                model_path, source, report, table,
                device=self.device(parameters, self.DEVICE, context),
                batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                prescaled=self.parameterAsBool(parameters, self.PRESCALED, context),
                **callbacks(feedback),
                test_time_augmentation=self.parameterAsBool(parameters, self.TEST_TIME_AUGMENTATION, context),
            )
        m = evaluation.metrics
        feedback.pushInfo("Per class (precision / recall / F1 / reference tiles): " + "; ".join(
            f"{n} {p:.3f} / {r:.3f} / {f:.3f} / {int(s)}"
            for n, p, r, f, s in zip(m.class_names, m.precision, m.recall, m.f1, m.support) if s
        ))
        outputs = {self.OUTPUT_REPORT: written["html"], self.OVERALL_ACCURACY: m.overall_accuracy,
                   self.MACRO_F1: m.macro_f1, self.KAPPA: m.kappa, self.N_TILES: m.total}
        if "csv" in written:
            outputs[self.OUTPUT_CSV] = written["csv"]
        return outputs
