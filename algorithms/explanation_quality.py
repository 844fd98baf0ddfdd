"""glassbox:explanation_quality - score explanations against ground-truth polygons."""

from __future__ import annotations

import json

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsWkbTypes,
)

from .base import DEFAULT_MODEL, GlassboxAlgorithm, check_extension
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
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_CSV = "OUTPUT_CSV"
    MEAN_IOU = "MEAN_IOU"
    POINTING_GAME = "POINTING_GAME"
    DELETION_AUC = "DELETION_AUC"
    RANDOM_DELETION_AUC = "RANDOM_DELETION_AUC"
    TILES = "TILES"

    def name(self):
        return "explanation_quality"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return "Evaluate explanation quality"

    def tags(self):
        return ["explainable", "xai", "grad-cam", "iou", "jaccard", "pointing game", "deletion", "faithfulness"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return (
            "Measures how well the explanations of a model match ground truth and how faithful they are. "
            "Every tile that intersects the ground-truth polygons is explained (as in 'Explain "
            "classification') and scored:\n"
            "- IoU (Jaccard): the heatmap, smoothed by 1 model pixel and thresholded at a fraction of the "
            "tile's maximum (default 0.5), against the polygons inside the tile;\n"
            "- pointing game: whether the heatmap's maximum lies inside the polygons;\n"
            "- deletion AUC: pixels are deleted from the most to the least relevant and the probability of the "
            "explained class is recorded; the area under that curve is low for a faithful heatmap. The same "
            "curve with a random pixel order is given for reference.\n\n"
            "Ground truth: a polygon layer in any CRS (reprojected to the raster's) outlining what should "
            "explain the class, e.g. the objects of the target class.\n"
            "Outputs: an HTML report and a CSV with one row per tile and a final row of means."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, "Model (ONNX, or Torch with card)", behavior=QgsProcessingParameterFile.File,
                fileFilter=MODEL_FILTER, defaultValue=str(DEFAULT_MODEL),
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.GROUND_TRUTH, "Ground truth polygons", [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterBand(
                self.BANDS, "Bands, in the model's order (empty: from the model card)", None, self.INPUT,
                optional=True, allowMultiple=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.METHOD, "Method", [label for _k, label in METHODS], defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.TARGET, "Target class (empty or 'predicted': each tile's predicted class)",
                defaultValue="", optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE_STRIDE, "Tile stride in model pixels (empty: one tile, tiles side by side)",
                QgsProcessingParameterNumber.Integer, optional=True, minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD, "IoU threshold (fraction of each tile's heatmap maximum)",
                QgsProcessingParameterNumber.Double, defaultValue=0.5, minValue=0.01, maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.DELETION_STEPS, "Deletion curve steps", QgsProcessingParameterNumber.Integer,
                defaultValue=20, minValue=1, maxValue=1000,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.BATCH_SIZE, "Batch size (tiles per model call)", QgsProcessingParameterNumber.Integer,
                defaultValue=16, minValue=1, maxValue=4096,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, "Quality report", fileFilter="HTML files (*.html)")
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_CSV, "Quality per tile", fileFilter="CSV files (*.csv)", optional=True,
                createByDefault=True,
            )
        )
        self.addOutput(QgsProcessingOutputNumber(self.MEAN_IOU, "Mean IoU"))
        self.addOutput(QgsProcessingOutputNumber(self.POINTING_GAME, "Pointing game hit rate"))
        self.addOutput(QgsProcessingOutputNumber(self.DELETION_AUC, "Mean deletion AUC"))
        self.addOutput(QgsProcessingOutputNumber(self.RANDOM_DELETION_AUC, "Mean deletion AUC, random order"))
        self.addOutput(QgsProcessingOutputNumber(self.TILES, "Tiles evaluated"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException("the input raster cannot be read")
        if layer.providerType() != "gdal":
            raise QgsProcessingException("the input must be a file-based raster (GDAL), not a web or virtual layer")
        input_path = layer.source().split("|")[0]
        model_path = self.parameterAsFile(parameters, self.MODEL, context) or str(DEFAULT_MODEL)
        bands = self.parameterAsInts(parameters, self.BANDS, context) or None
        method = METHODS[self.parameterAsEnum(parameters, self.METHOD, context)][0]
        target = (self.parameterAsString(parameters, self.TARGET, context) or "").strip() or None
        stride = None
        if parameters.get(self.TILE_STRIDE) not in (None, ""):
            stride = self.parameterAsInt(parameters, self.TILE_STRIDE, context)
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context)
        steps = self.parameterAsInt(parameters, self.DELETION_STEPS, context)
        batch_size = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        truth = self._ground_truth(parameters, context, layer.crs(), feedback)
        report_path = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context) or None
        csv_path = self.parameterAsFileOutput(parameters, self.OUTPUT_CSV, context) or None
        check_extension(report_path, (".html", ".htm"), self.OUTPUT_REPORT)
        check_extension(csv_path, (".csv",), self.OUTPUT_CSV)

        with self.core_errors():
            from ..core.explanation_quality import QualityOptions, evaluate_explanation_quality

            result = evaluate_explanation_quality(
                input_path, model_path, truth, csv_path, report_path,
                QualityOptions(method=method, target=target, stride=stride, batch_size=batch_size,
                               threshold=threshold, deletion_steps=steps, bands=bands),
                progress=feedback.setProgress,
                is_cancelled=feedback.isCanceled,
                log=feedback.pushInfo,
            )
        outputs = {
            self.MEAN_IOU: result.mean_iou,
            self.POINTING_GAME: result.pointing_game,
            self.DELETION_AUC: result.deletion_auc,
            self.RANDOM_DELETION_AUC: result.random_deletion_auc,
            self.TILES: len(result.tiles),
        }
        if report_path:
            outputs[self.OUTPUT_REPORT] = report_path
        if csv_path:
            outputs[self.OUTPUT_CSV] = csv_path
        return outputs

    def _ground_truth(self, parameters, context, crs, feedback):
        source = self.parameterAsSource(parameters, self.GROUND_TRUTH, context)
        if source is None:
            raise QgsProcessingException("the ground truth layer cannot be read")
        if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.PolygonGeometry:
            raise QgsProcessingException("the ground truth layer must contain polygons")
        request = QgsFeatureRequest().setDestinationCrs(crs, context.transformContext())
        geometries = []
        for feature in source.getFeatures(request):
            if feedback.isCanceled():
                break
            geometry = feature.geometry()
            if geometry and not geometry.isEmpty():
                geometries.append(json.loads(geometry.asJson()))
        if not geometries:
            raise QgsProcessingException("the ground truth layer has no polygons")
        return geometries
