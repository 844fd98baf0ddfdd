"""glassbox:explain - Guided Grad-CAM (or Grad-CAM, guided backpropagation) heatmaps, tile by tile."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..core.feedback import callbacks
from .base import (
    GlassboxAlgorithm,
    adapt_always_parameter,
    adapt_parameter,
    adaptation_mode_from,
    bands_parameter,
    batch_size_parameter,
    check_extension,
    cloud_mask_parameter,
    cloud_threshold_parameter,
    device_parameter,
    input_raster_parameter,
    mask_parameter,
    model_parameter,
    mosaic_parameter,
    nodata_parameter,
    stride_parameter,
    vector_output_parameter,
)
from .styles import display_maximum, heatmap_renderer, peak_renderer, save_style, style_on_load, style_vector_output

METHODS = [("guided_gradcam", "Guided Grad-CAM"), ("gradcam", "Grad-CAM"),
           ("guided_backprop", "Guided backpropagation")]
NORMALIZATIONS = [("global", "One scale for the whole raster (comparable tiles)"),
                  ("tile", "Per tile (each tile's maximum = 1)"),
                  ("none", "None (raw attribution magnitude)")]
#: TorchScript cannot be explained (compiled modules run no hooks)
MODEL_FILTER = "Explainable models (*.onnx *.pt *.pth);;All files (*.*)"


class ExplainAlgorithm(GlassboxAlgorithm):
    required_modules = ["numpy", "rasterio", "onnxruntime", "onnx", "scipy", "torch", "captum", "onnx2torch"]

    INPUT = "INPUT"
    MOSAIC = "MOSAIC"
    MODEL = "MODEL"
    BANDS = "BANDS"
    METHOD = "METHOD"
    TARGET = "TARGET"
    TILE_STRIDE = "TILE_STRIDE"
    NORMALIZATION = "NORMALIZATION"
    PEAKS_PER_TILE = "PEAKS_PER_TILE"
    BATCH_SIZE = "BATCH_SIZE"
    NODATA = "NODATA"
    EXTENT = "EXTENT"
    MASK = "MASK"
    DEVICE = "DEVICE"
    ADAPT_TO_SCENE = "ADAPT_TO_SCENE"
    ADAPT_ALWAYS = "ADAPT_ALWAYS"
    CLOUD_MASK = "CLOUD_MASK"
    CLOUD_THRESHOLD = "CLOUD_THRESHOLD"
    OUTPUT_HEATMAP = "OUTPUT_HEATMAP"
    OUTPUT_BAND_RELEVANCE = "OUTPUT_BAND_RELEVANCE"
    OUTPUT_PEAKS = "OUTPUT_PEAKS"

    group_id = "explanation"

    def name(self):
        return "explain"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Explain classification")

    def tags(self):
        return ["explainable", "xai", "grad-cam", "guided grad-cam", "heatmap", "saliency", "attribution",
                "band relevance", "deep learning"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Shows which pixels, and which spectral bands, drove the model's classification, as a heatmap "
            "raster on the input grid (bright = important).\n\n"
            "The raster is cut into the model's tiles, as for classification. For every tile the model's "
            "class score is traced back to the input pixels with Guided Grad-CAM (default: guided "
            "backpropagation times the Grad-CAM map of the last convolution block, upsampled bilinearly), "
            "Grad-CAM (coarse regions) or guided backpropagation (fine detail). A pixel's relevance is the "
            "sum over bands of the absolute attribution; overlapping tiles are blended.\n\n"
            "Model: an .onnx file (converted to Torch and checked to give the same results) or a Torch .pt "
            "state dict with its .json card. TorchScript cannot be explained. Left empty, the shipped model "
            "that reads the most of the raster's bands is used, as in Classify raster (a Sentinel-2 stack with "
            "bands named B01 ... B12, B8A: the 13-band model; bands named B04, B03, B02 or 3 unnamed bands: "
            "the RGB model); the log says which and why.\n"
            "Target class: empty (or 'predicted') explains each tile's predicted class; a class name from "
            "the model card explains that class everywhere.\n"
            "Normalisation: one scale for the whole raster (default; tiles are comparable, identical tiles "
            "get identical values), per tile (each tile's strongest pixel = 1 before overlapping tiles are "
            "averaged, so the written maxima can be lower), or none.\n"
            "Peaks per tile: the strongest local maxima of each tile's heatmap, written as points.\n"
            "Extent / mask layer: explain only that rectangle, or only inside those polygons (pixels outside "
            "them are nodata and give no peaks), as in Classify raster. Mosaic: several rasters of one CRS "
            "and band set (e.g. adjacent granules) explained as one heatmap, as in Classify raster.\n"
            "Adapt to the scene: explain the model after it has re-estimated its normalisation statistics from "
            "this raster, as Classify raster does with the same options (the same tiles, the same decision to "
            "keep or not use the adaptation), so the heatmap explains the map; set it as for the map "
            "(works with the shipped models, any ONNX export that kept its batch-normalisation layers, or Torch weights).\n"
            "Mask clouds (Sentinel-2 L1C): cloud pixels found by s2cloudless, as Classify raster finds them, get no "
            "relevance (nodata in the heatmap) and no peak, and do not count towards the heatmap's scale or the band "
            "relevance; use it with the same setting as for the map, so that Segment seeded by the peaks draws no "
            "segment on cloud.\n\n"
            "Outputs: the heatmap (float32, 0-1, styled with the Magma ramp stretched to its 99th percentile), a band relevance table (CSV: "
            "per class, each band's share of the attribution) and the peak points (created by default; score, class, "
            "rank)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(input_raster_parameter(self.INPUT, "Input raster (or the mosaic below)", optional=True))
        self.addParameter(mosaic_parameter(self.MOSAIC))
        self.addParameter(model_parameter(self.MODEL, file_filter=MODEL_FILTER, auto=True))
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
        self.addParameter(stride_parameter(self.TILE_STRIDE))
        self.addParameter(
            QgsProcessingParameterEnum(
                self.NORMALIZATION, self.tr("Normalisation"), [label for _k, label in NORMALIZATIONS], defaultValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.PEAKS_PER_TILE, self.tr("Peaks per tile"), QgsProcessingParameterNumber.Integer,
                defaultValue=3, minValue=1, maxValue=100,
            )
        )
        self.addParameter(batch_size_parameter(self.BATCH_SIZE, 16))
        self.addParameter(nodata_parameter(self.NODATA))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent to explain"), optional=True))
        self.addParameter(mask_parameter(self.MASK, "explain"))
        self.addParameter(device_parameter(self.DEVICE))
        self.addParameter(adapt_parameter(self.ADAPT_TO_SCENE))
        self.addParameter(adapt_always_parameter(self.ADAPT_ALWAYS))
        self.addParameter(cloud_mask_parameter(self.CLOUD_MASK, "cloud pixels get no relevance and no peak"))
        self.addParameter(cloud_threshold_parameter(self.CLOUD_THRESHOLD))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_HEATMAP, self.tr("Heatmap")))
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_BAND_RELEVANCE, self.tr("Band relevance table"), fileFilter="CSV files (*.csv)",
                optional=True, createByDefault=True,
            )
        )
        # created by default: the points Segment grows its polygons from
        self.addParameter(vector_output_parameter(self.OUTPUT_PEAKS, "Heatmap peaks", QgsProcessing.TypeVectorPoint,
                                                  optional=True, create_by_default=True))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        layer, input_paths = self.input_rasters(parameters, context, self.INPUT, self.MOSAIC)
        input_path = input_paths[0] if len(input_paths) == 1 else input_paths
        bands = self.band_list(parameters, self.BANDS, context, feedback)
        model_path = self.model_path(parameters, self.MODEL, context, input_paths[0], feedback, bands)
        method = METHODS[self.parameterAsEnum(parameters, self.METHOD, context)][0]
        target = (self.parameterAsString(parameters, self.TARGET, context) or "").strip() or None
        normalization = NORMALIZATIONS[self.parameterAsEnum(parameters, self.NORMALIZATION, context)][0]
        stride = self.optional_number(parameters, self.TILE_STRIDE, context, int)
        nodata = self.nodata_value(parameters, self.NODATA, context, layer, feedback)
        peaks_per_tile = self.parameterAsInt(parameters, self.PEAKS_PER_TILE, context)
        batch_size = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        device = self.device(parameters, self.DEVICE, context)
        extent = self.optional_extent(parameters, self.EXTENT, context, layer.crs())
        mask = self.optional_mask(parameters, self.MASK, context, layer.crs(), feedback)

        heatmap_path = self.parameterAsOutputLayer(parameters, self.OUTPUT_HEATMAP, context) or None
        relevance_path = self.parameterAsFileOutput(parameters, self.OUTPUT_BAND_RELEVANCE, context) or None
        want_peaks = self.output_requested(parameters, self.OUTPUT_PEAKS)
        self.check_vector_outputs(parameters, [self.OUTPUT_PEAKS])
        check_extension(heatmap_path, (".tif", ".tiff"), "the heatmap")
        check_extension(relevance_path, (".csv",), "the band relevance table")

        with self.core_errors():
            from ..core.explain.heatmap import ExplainOptions, explain_raster
            from ..core.io.vectors import IN_MEMORY

            result = explain_raster(
                input_path,
                model_path,
                heatmap_path,
                relevance_path,
                IN_MEMORY if want_peaks else None,
                ExplainOptions(method=method, target=target, stride=stride, batch_size=batch_size,
                               normalization=normalization, peaks_per_tile=peaks_per_tile, bands=bands,
                               nodata=nodata, extent=extent, mask=mask, device=device,
                               adapt_to_scene=adaptation_mode_from(self, parameters, context),
                               cloud_mask=self.parameterAsBool(parameters, self.CLOUD_MASK, context),
                               cloud_threshold=self.parameterAsDouble(parameters, self.CLOUD_THRESHOLD, context)),
                **callbacks(feedback),
            )
        feedback.pushInfo(
            f"Explained {result.tiles_explained} of {result.tiles_total} tiles ({result.tiles_skipped} skipped as "
            f"nodata{' or outside the mask' if mask else ''}) in {result.seconds:.1f} s: {result.method}, target {result.target}"
            + (f", Grad-CAM layer '{result.layer}'" if result.method != "guided_backprop" else "")
            + f". Largest raw relevance {result.raw_max:.4g}."
        )
        if result.tiles_explained and not result.raw_max > 0:
            feedback.pushWarning(
                f"the heatmap is zero everywhere: {result.method} found no evidence for the explained class(es) in any "
                "tile (e.g. Grad-CAM for a target class the raster does not show, or tiles much smaller in the scene "
                "than the objects the model knows); try another target or method")
        n_all, shares = result.band_relevance.get("(all)", (0, []))
        if n_all and result.method != "gradcam":
            feedback.pushInfo("Band relevance (all tiles): " + ", ".join(
                f"{b} {100 * s:.1f} %" for b, s in zip(result.card.bands, shares)))
        elif result.method == "gradcam":
            feedback.pushInfo("Grad-CAM has no band dimension: the band relevance table has no band values.")

        outputs = {}
        if heatmap_path:
            # a heatmap of zeros has no histogram to cut (GDAL would print an error): its scale is 0..1
            qml = save_style(heatmap_path, lambda lyr: heatmap_renderer(
                lyr, 0.0, display_maximum(lyr) if result.raw_max > 0 else 1.0))
            style_on_load(context, heatmap_path, qml, "Heatmap")
            outputs[self.OUTPUT_HEATMAP] = heatmap_path
        if relevance_path:
            outputs[self.OUTPUT_BAND_RELEVANCE] = relevance_path
            if heatmap_path and context.willLoadLayerOnCompletion(heatmap_path):
                context.addLayerToLoadOnCompletion(
                    relevance_path,
                    QgsProcessingContext.LayerDetails("Band relevance", context.project(), self.OUTPUT_BAND_RELEVANCE),
                )
        if want_peaks:
            with self.removed_on_failure([heatmap_path, relevance_path]):
                outputs[self.OUTPUT_PEAKS] = self.write_vector_output(parameters, self.OUTPUT_PEAKS, context,
                                                                      result.layers["peaks"], feedback)
            colours = {c.name: c.color for c in result.card.classes}
            style_vector_output(context, outputs[self.OUTPUT_PEAKS],
                                lambda: peak_renderer(colours, list(colours)), "Heatmap peaks")
        return outputs
