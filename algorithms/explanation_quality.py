"""glassbox:explanation_quality - score explanations against ground-truth polygons."""

from __future__ import annotations

import math

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.feedback import callbacks
from .base import (
    GlassboxAlgorithm,
    advanced,
    bands_parameter,
    batch_size_parameter,
    check_extension,
    input_raster_parameter,
    model_parameter,
    stride_parameter,
)
from .explain import METHODS, MODEL_FILTER


class ExplanationQualityAlgorithm(GlassboxAlgorithm):
    required_modules = ["numpy", "rasterio", "onnxruntime", "onnx", "scipy", "torch", "captum", "onnx2torch"]

    INPUT = "INPUT"
    MODEL = "MODEL"
    BANDS = "BANDS"
    GROUND_TRUTH = "GROUND_TRUTH"
    METHOD = "METHOD"
    TARGET = "TARGET"
    TILE_STRIDE = "TILE_STRIDE"
    THRESHOLD = "THRESHOLD"
    DELETION_STEPS = "DELETION_STEPS"
    BATCH_SIZE = "BATCH_SIZE"
    SANITY_CHECK = "SANITY_CHECK"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_CSV = "OUTPUT_CSV"
    MEAN_IOU = "MEAN_IOU"
    POINTING_GAME = "POINTING_GAME"
    DELETION_AUC = "DELETION_AUC"
    RANDOM_DELETION_AUC = "RANDOM_DELETION_AUC"
    REVERSE_DELETION_AUC = "REVERSE_DELETION_AUC"
    TILES = "TILES"
    RANDOMIZED_OUTPUT_SPEARMAN = "RANDOMIZED_OUTPUT_SPEARMAN"
    CLASS_SPEARMAN = "CLASS_SPEARMAN"

    group_id = "explanation"

    def name(self):
        return "explanation_quality"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Evaluate explanation quality")

    def tags(self):
        return ["explainable", "xai", "grad-cam", "iou", "jaccard", "pointing game", "deletion", "faithfulness"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Measures how well the explanations of a model match ground truth and how faithful they are. "
            "Every tile that intersects the ground-truth polygons is explained (as in 'Explain "
            "classification') and scored:\n"
            "- IoU (Jaccard): the heatmap, smoothed by 1 model pixel and thresholded at a fraction of the "
            "tile's maximum (default 0.5), against the polygons inside the tile;\n"
            "- pointing game: whether the heatmap's maximum lies inside the polygons;\n"
            "- deletion AUC: pixels are deleted from the most to the least relevant and the probability of the "
            "explained class is recorded; the area under that curve is low for a faithful heatmap. Its "
            "reference is the same heatmap deleted least relevant first (a faithful heatmap's is higher); the "
            "curve for scattered random pixels is given too, a floor rather than a reference (scattered "
            "deletion wrecks a tile faster than any compact one). Set the target class to the class of the "
            "ground truth: left empty, each tile explains its predicted class, whatever the polygons show;\n"
            "- sanity check (on up to 128 of the tiles): the model's learnt weights are replaced by random ones "
            "from the output layer down, and the heatmaps compared with the trained model's (rank correlation; "
            "a heatmap that barely changes shows the image's structure more than the model's reasons), and the "
            "heatmap of the explained class is compared with that of the next most probable class.\n\n"
            "Ground truth: a polygon layer in any CRS (reprojected to the raster's) outlining what should "
            "explain the class, e.g. the objects of the target class.\n"
            "Outputs: an HTML report and a CSV with one row per tile and a final row of means."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(input_raster_parameter(self.INPUT))
        self.addParameter(model_parameter(self.MODEL, file_filter=MODEL_FILTER, auto=True))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.GROUND_TRUTH, self.tr("Ground truth polygons"), [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(bands_parameter(self.BANDS, self.INPUT))
        self.addParameter(
            QgsProcessingParameterEnum(self.METHOD, self.tr("Method"), [label for _k, label in METHODS], defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.TARGET, self.tr("Target class (empty or 'predicted': each tile's predicted class)"),
                defaultValue="", optional=True,
            )
        )
        self.addParameter(stride_parameter(self.TILE_STRIDE, "Tile stride in model pixels (empty: one tile, tiles side by side)"))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD, self.tr("IoU threshold (fraction of each tile's heatmap maximum)"),
                QgsProcessingParameterNumber.Double, defaultValue=0.5, minValue=0.01, maxValue=1.0,
            )
        )
        self.addParameter(advanced(
            QgsProcessingParameterNumber(
                self.DELETION_STEPS, self.tr("Deletion curve steps"), QgsProcessingParameterNumber.Integer,
                defaultValue=20, minValue=1, maxValue=1000,
            )
        ))
        self.addParameter(batch_size_parameter(self.BATCH_SIZE, 16))
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.SANITY_CHECK, self.tr("Sanity check: do the heatmaps change when the model's weights are randomized?"),
                defaultValue=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Quality report"), fileFilter="HTML files (*.html)")
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_CSV, self.tr("Quality per tile"), fileFilter="CSV files (*.csv)", optional=True,
                createByDefault=True,
            )
        )
        self.addOutput(QgsProcessingOutputNumber(self.MEAN_IOU, self.tr("Mean IoU")))
        self.addOutput(QgsProcessingOutputNumber(self.POINTING_GAME, self.tr("Pointing game hit rate")))
        self.addOutput(QgsProcessingOutputNumber(self.DELETION_AUC, self.tr("Mean deletion AUC")))
        self.addOutput(QgsProcessingOutputNumber(self.RANDOM_DELETION_AUC,
                                                 self.tr("Mean deletion AUC, scattered random pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.REVERSE_DELETION_AUC,
                                                 self.tr("Mean deletion AUC, least relevant first")))
        self.addOutput(QgsProcessingOutputNumber(self.TILES, self.tr("Tiles evaluated")))
        self.addOutput(QgsProcessingOutputNumber(
            self.RANDOMIZED_OUTPUT_SPEARMAN,
            self.tr("Sanity check: heatmap correlation after randomizing the output layer")))
        self.addOutput(QgsProcessingOutputNumber(
            self.CLASS_SPEARMAN, self.tr("Sanity check: heatmap correlation with the next most probable class")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        layer, input_path = self.file_raster(parameters, self.INPUT, context)
        bands = self.band_list(parameters, self.BANDS, context, feedback)
        model_path = self.model_path(parameters, self.MODEL, context, input_path, feedback, bands)
        method = METHODS[self.parameterAsEnum(parameters, self.METHOD, context)][0]
        target = (self.parameterAsString(parameters, self.TARGET, context) or "").strip() or None
        stride = self.optional_number(parameters, self.TILE_STRIDE, context, int)
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context)
        steps = self.parameterAsInt(parameters, self.DELETION_STEPS, context)
        batch_size = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        sanity_check = self.parameterAsBool(parameters, self.SANITY_CHECK, context)
        truth, _ = self.polygons(parameters, self.GROUND_TRUTH, context, layer.crs(), feedback,
                                 "the ground truth layer")
        report_path = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context) or None
        csv_path = self.parameterAsFileOutput(parameters, self.OUTPUT_CSV, context) or None
        check_extension(report_path, (".html", ".htm"), "the quality report")
        check_extension(csv_path, (".csv",), "the quality table")

        with self.core_errors():
            from ..core.explain.quality import QualityOptions, evaluate_explanation_quality

            result = evaluate_explanation_quality(
                input_path, model_path, truth, csv_path, report_path,
                QualityOptions(method=method, target=target, stride=stride, batch_size=batch_size,
                               threshold=threshold, deletion_steps=steps, bands=bands,
                               randomization_check=sanity_check),
                **callbacks(feedback),
            )
        outputs = {
            self.MEAN_IOU: result.mean_iou,
            self.POINTING_GAME: result.pointing_game,
            self.DELETION_AUC: result.deletion_auc if math.isfinite(result.deletion_auc) else None,
            self.RANDOM_DELETION_AUC: result.random_deletion_auc,
            self.REVERSE_DELETION_AUC: result.reverse_deletion_auc if math.isfinite(result.reverse_deletion_auc) else None,
            self.TILES: len(result.tiles),
        }
        if result.sanity is not None:  # NaN (every heatmap constant) is left empty, as without the check
            for key, value in ((self.RANDOMIZED_OUTPUT_SPEARMAN, result.sanity.stages[0].spearman_mean),
                               (self.CLASS_SPEARMAN, result.sanity.class_spearman)):
                outputs[key] = value if math.isfinite(value) else None
        if report_path:
            outputs[self.OUTPUT_REPORT] = report_path
        if csv_path:
            outputs[self.OUTPUT_CSV] = csv_path
        return outputs
