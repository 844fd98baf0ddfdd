"""glassbox:segment - polygons of the objects explanation seed points sit on (seeded watershed or
Segment Anything through samgeo)."""

from __future__ import annotations

from qgis.core import (
    NULL,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsWkbTypes,
)

from ..core.feedback import log_to
from ..core.segment import DEFAULT_MIN_SCORE
from .base import (
    GlassboxAlgorithm,
    advanced,
    bands_parameter,
    batch_size_parameter,
    device_parameter,
    input_raster_parameter,
    model_parameter,
    mask_parameter,
    mosaic_parameter,
    nodata_parameter,
    request_in_crs,
    vector_output_parameter,
)
from .explain import MODEL_FILTER
from .styles import segment_renderer, style_vector_output

METHODS = [("watershed", "Seeded watershed (scikit-image; no model file needed)"),
           ("sam", "Segment Anything (samgeo; needs a SAM checkpoint file)")]
CHECKPOINT_FILTER = "Segment Anything checkpoints (*.pth *.pt);;All files (*.*)"
BASE_MODULES = ["numpy", "rasterio", "scipy", "skimage"]
SAM_MODULES = ["torch", "segment_anything", "samgeo"]
MODEL_MODULES = ["torch", "onnx", "onnxruntime", "captum", "onnx2torch"]


class SegmentAlgorithm(GlassboxAlgorithm):
    required_modules = BASE_MODULES

    INPUT = "INPUT"
    MOSAIC = "MOSAIC"
    MASK = "MASK"
    SEEDS = "SEEDS"
    HEATMAP = "HEATMAP"
    MODEL = "MODEL"
    TARGET = "TARGET"
    METHOD = "METHOD"
    SAM_CHECKPOINT = "SAM_CHECKPOINT"
    SAM_MODEL_TYPE = "SAM_MODEL_TYPE"
    NEGATIVE_POINTS = "NEGATIVE_POINTS"
    PEAKS_PER_TILE = "PEAKS_PER_TILE"
    MIN_SCORE = "MIN_SCORE"
    WINDOW_SIZE = "WINDOW_SIZE"
    SIMPLIFY_TOLERANCE = "SIMPLIFY_TOLERANCE"
    MIN_AREA = "MIN_AREA"
    BANDS = "BANDS"
    SMOOTHING = "SMOOTHING"
    NODATA = "NODATA"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"
    OUTPUT_SEEDS = "OUTPUT_SEEDS"
    SEEDS_USED = "SEEDS_USED"
    SEEDS_OUTSIDE = "SEEDS_OUTSIDE"
    SEEDS_NODATA = "SEEDS_NODATA"
    SEEDS_WEAK = "SEEDS_WEAK"
    POLYGONS = "POLYGONS"

    group_id = "segmentation"

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Segment from explanations")

    def tags(self):
        return ["segmentation", "segment anything", "sam", "samgeo", "watershed", "grad-cam", "seed points",
                "polygons", "vectorise", "explainable", "xai"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Draws polygons around the objects that explanation seed points sit on, as an editable vector "
            "layer: the explanation's strongest points (e.g. Grad-CAM peaks) mark what the model recognised, "
            "and a segmentation method finds the outline of the object under each point.\n\n"
            "Seed points, from exactly one of:\n"
            "- Seed points: a point layer, e.g. the 'Heatmap peaks' of 'Explain classification' (fields score, "
            "class, colour; any point layer works: a missing score counts as 1, a missing class as 'segment'; "
            "a field 'label' = 0 marks a background point; a 'colour' (#rrggbb) styles that class's segments);\n"
            "- Heatmap: a heatmap raster, e.g. from 'Explain classification'; its strongest local maxima per "
            "64-pixel tile become seeds;\n"
            "- Model: the model is explained (Grad-CAM) tile by tile in memory and its peaks become seeds, "
            "with the explained class.\n"
            "Seeds scoring below the minimum score, outside the raster or on nodata are skipped and counted.\n"
            "Mosaic: several rasters of one CRS and band set (e.g. the granules classified and explained as one "
            "mosaic) segmented as one raster.\n"
            "Mask layer: polygons of an area of interest; segments stay inside them (pixels outside count as "
            "nodata) and seeds outside them are skipped with those on nodata.\n\n"
            "Method:\n"
            "- Seeded watershed (scikit-image), the default, needs no model file: each seed's segment grows "
            "over pixels whose colour and texture resemble the seed's and stops at edges.\n"
            "- Segment Anything (SAM, through samgeo): needs a checkpoint file you downloaded yourself "
            "(sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth from the segment-anything "
            "project on GitHub, or MobileSAM's mobile_sam.pt with the mobile_sam package); Glassbox never "
            "downloads one. Choose the matching model type.\n"
            "Negative points: per window, this many low-relevance points (heatmap or model seeds only) tell "
            "the method what is not the object.\n\n"
            "Large rasters are processed in windows (window size, pixels), never whole; pieces of an object "
            "found in neighbouring windows are merged into one polygon. Bands: 1 to 3 for Segment Anything (shown to it "
            "as RGB), any number for the watershed (default: the true-colour bands by name, else the first three), stretched between their 2nd and "
            "98th percentiles.\n"
            "Simplify tolerance (layer units) smooths the pixel-edged outlines; polygons smaller than the "
            "minimum area (square metres on the ground) are dropped.\n\n"
            "Output: a polygon layer (a temporary layer, any vector file format or a database table) in the "
            "raster's CRS with class, score (the best of its seeds), "
            "seed_ids, n_seeds, area (square metres on the ground) and method; optionally the seed points with what "
            "became of each."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        from ..core.segment.sam import model_types

        self.model_types = list(model_types())
        labels = list(model_types().values())
        self.addParameter(input_raster_parameter(self.INPUT, "Input raster (or the mosaic below)", optional=True))
        self.addParameter(mosaic_parameter(self.MOSAIC))
        self.addParameter(mask_parameter(self.MASK, "segment"))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.SEEDS, self.tr("Seed points (e.g. heatmap peaks of 'Explain classification')"),
                [QgsProcessing.TypeVectorPoint], optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterLayer(self.HEATMAP, self.tr("or: heatmap raster to take seed points from"),
                                              optional=True)
        )
        self.addParameter(model_parameter(self.MODEL, "or: model to explain for seed points (ONNX, or Torch with card)",
                                          default=False, file_filter=MODEL_FILTER))
        self.parameterDefinition(self.MODEL).setFlags(
            self.parameterDefinition(self.MODEL).flags() | QgsProcessingParameterDefinition.FlagOptional)
        self.addParameter(
            QgsProcessingParameterString(
                self.TARGET, self.tr("Target class for model seeds (empty: each tile's predicted class)"),
                defaultValue="", optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, self.tr("Method"), [label for _k, label in METHODS],
                                                     defaultValue=0))
        self.addParameter(
            QgsProcessingParameterFile(
                self.SAM_CHECKPOINT, self.tr("SAM checkpoint (Segment Anything only; never downloaded)"),
                behavior=QgsProcessingParameterFile.File, fileFilter=CHECKPOINT_FILTER, optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterEnum(self.SAM_MODEL_TYPE, self.tr("SAM model type"), labels, defaultValue=0))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.NEGATIVE_POINTS, self.tr("Negative points per window (from low-relevance areas; 0 = none)"),
                QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0, maxValue=50,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.PEAKS_PER_TILE, self.tr("Peaks per tile (heatmap or model seeds)"), QgsProcessingParameterNumber.Integer,
                defaultValue=3, minValue=1, maxValue=100,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_SCORE, self.tr("Minimum seed score (weaker seeds are skipped; heatmap and model scores are 0-1)"),
                QgsProcessingParameterNumber.Double, defaultValue=DEFAULT_MIN_SCORE, minValue=0.0, maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.WINDOW_SIZE, self.tr("Window size (pixels)"), QgsProcessingParameterNumber.Integer,
                defaultValue=1024, minValue=32, maxValue=8192,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.SIMPLIFY_TOLERANCE, self.tr("Simplify tolerance (layer units; 0 = keep pixel edges)"),
                QgsProcessingParameterNumber.Double, defaultValue=0.0, minValue=0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_AREA, self.tr("Minimum polygon area (square metres)"), QgsProcessingParameterNumber.Double,
                defaultValue=0.0, minValue=0.0,
            )
        )
        self.addParameter(bands_parameter(
            self.BANDS, self.INPUT,
            "Bands to segment, shown as RGB (empty: true colour by name, else the first three)"))
        more = [
            QgsProcessingParameterNumber(
                self.SMOOTHING, self.tr("Watershed smoothing (pixels)"), QgsProcessingParameterNumber.Double,
                defaultValue=2.0, minValue=0.0, maxValue=50.0,
            ),
            nodata_parameter(self.NODATA),
            batch_size_parameter(self.BATCH_SIZE, 16),
        ]
        for parameter in more:
            self.addParameter(advanced(parameter))
        self.addParameter(device_parameter(self.DEVICE))
        self.addParameter(vector_output_parameter(self.OUTPUT_POLYGONS, "Segments", QgsProcessing.TypeVectorPolygon))
        self.addParameter(vector_output_parameter(self.OUTPUT_SEEDS, "Seed points used", QgsProcessing.TypeVectorPoint,
                                                  optional=True))
        for key, label in ((self.SEEDS_USED, "Seed points segmented"),
                           (self.SEEDS_OUTSIDE, "Seed points outside the raster"),
                           (self.SEEDS_NODATA, "Seed points on nodata"),
                           (self.SEEDS_WEAK, "Seed points below the minimum score"),
                           (self.POLYGONS, "Polygons written")):
            self.addOutput(QgsProcessingOutputNumber(key, label))

    # -- seeds from a point layer ----------------------------------------------------------------
    def point_seeds(self, parameters, context, crs, feedback):
        """Rows (x, y in ``crs``, score or None, class or None, feature id, positive) of the
        seed point layer (multipoints give one row per point), and class -> colour from a
        ``colour`` field (#rrggbb, as explain's peaks carry)."""
        source = self.parameterAsSource(parameters, self.SEEDS, context)
        if source is None:
            raise QgsProcessingException("the seed point layer cannot be read")
        if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.PointGeometry:
            raise QgsProcessingException("the seed layer must contain points")
        by_name = {n.lower(): n for n in source.fields().names()}
        score_field, class_field, label_field = by_name.get("score"), by_name.get("class"), by_name.get("label")
        colour_field = by_name.get("colour") or by_name.get("color")
        request = request_in_crs(source, crs, context, feedback, "the seed point layer")
        rows, skipped, colours = [], 0, {}
        for feature in source.getFeatures(request):
            if feedback.isCanceled():
                raise QgsProcessingException("cancelled; nothing was written")
            geometry = feature.geometry()
            if geometry is None or geometry.isEmpty():
                skipped += 1
                continue
            score = _value(feature, score_field, float)
            name = _value(feature, class_field, str)
            label = _value(feature, label_field, float)
            colour = _value(feature, colour_field, str)
            if name and colour and colour.startswith("#"):
                colours.setdefault(name, colour)
            points = geometry.asMultiPoint() if geometry.isMultipart() else [geometry.asPoint()]
            for point in points:
                rows.append((point.x(), point.y(), score, name, int(feature.id()), label is None or label != 0))
        if skipped:
            feedback.pushInfo(f"{skipped} seed feature(s) without a geometry were skipped")
        if not rows:
            raise QgsProcessingException("the seed point layer has no points; choose a point layer that has some")
        missing = [f for f, field in (("score", score_field), ("class", class_field)) if field is None]
        if missing:
            feedback.pushInfo(f"the seed layer has no field {' or '.join(missing)}: "
                              "scores count as 1, classes as 'segment'")
        return rows, colours

    def seed_sources(self, parameters) -> tuple[list[str], str | None]:
        """The seed-source parameters given, and why they do not make exactly one (None if they do)."""
        given = [key for key in (self.SEEDS, self.HEATMAP, self.MODEL) if parameters.get(key) not in (None, "")]
        if len(given) == 1:
            return given, None
        return given, ("give exactly one source of seed points: Seed points (a point layer), a Heatmap raster or a "
                       "Model" + (f" (got {', '.join(given)})" if given else ""))

    def missing_input(self, parameters) -> str | None:
        """Also one seed source, exactly."""
        return self.seed_sources(parameters)[1] or super().missing_input(parameters)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        layer, input_paths = self.input_rasters(parameters, context, self.INPUT, self.MOSAIC)
        input_path = input_paths[0] if len(input_paths) == 1 else input_paths
        with self.core_errors():  # before the seeds are placed in its CRS (a heatmap's peaks are reprojected)
            from ..core.io.raster import open_raster

            for path in input_paths:
                open_raster(path, "the raster").close()
        crs = layer.crs()
        given, problem = self.seed_sources(parameters)  # checked again: a model's step runs without the dialog
        if problem:
            raise QgsProcessingException(problem)
        source_kind = given[0]
        method = METHODS[self.parameterAsEnum(parameters, self.METHOD, context)][0]
        from ..core.segment.sam import model_types

        types = getattr(self, "model_types", None) or list(model_types())
        model_type = types[self.parameterAsEnum(parameters, self.SAM_MODEL_TYPE, context)]
        checkpoint = self.parameterAsFile(parameters, self.SAM_CHECKPOINT, context) or None
        negatives = self.parameterAsInt(parameters, self.NEGATIVE_POINTS, context)
        peaks_per_tile = self.parameterAsInt(parameters, self.PEAKS_PER_TILE, context)
        min_score = self.parameterAsDouble(parameters, self.MIN_SCORE, context)
        window = self.parameterAsInt(parameters, self.WINDOW_SIZE, context)
        tolerance = self.parameterAsDouble(parameters, self.SIMPLIFY_TOLERANCE, context)
        min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        bands = self.band_list(parameters, self.BANDS, context, feedback)
        smoothing = self.parameterAsDouble(parameters, self.SMOOTHING, context)
        nodata = self.nodata_value(parameters, self.NODATA, context, layer, feedback)
        batch_size = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        device = self.device(parameters, self.DEVICE, context)
        target = (self.parameterAsString(parameters, self.TARGET, context) or "").strip() or None
        want_seeds = self.output_requested(parameters, self.OUTPUT_SEEDS)
        self.check_vector_outputs(parameters, [self.OUTPUT_POLYGONS, self.OUTPUT_SEEDS])

        self.required_modules = list(BASE_MODULES)
        if method == "sam":
            self.required_modules += SAM_MODULES
        if source_kind == self.MODEL:
            self.required_modules += [m for m in MODEL_MODULES if m not in self.required_modules]
        point_rows, point_colours = (self.point_seeds(parameters, context, crs, feedback) if source_kind == self.SEEDS
                                     else (None, {}))
        if point_rows is not None and negatives:
            feedback.pushInfo("Negative points from low-relevance areas need a heatmap or a model as the seed source; "
                              "of the seed layer, only points with label = 0 are used as negative points.")
        heatmap_path = self.file_raster(parameters, self.HEATMAP, context, "the heatmap raster")[1] \
            if source_kind == self.HEATMAP else None
        model_path = self.parameterAsFile(parameters, self.MODEL, context) if source_kind == self.MODEL else None
        mask = self.optional_mask(parameters, self.MASK, context, crs, feedback)

        with self.core_errors():
            from ..core.segment.sam import check_checkpoint
            from ..core.io.vectors import IN_MEMORY
            from ..core.segment.seeds import DEFAULT_CLASS, Seed, SeedSet, SegmentOptions, seeds_from_heatmap, seeds_from_model
            from ..core.segment.run import segment_raster
            from ..core.io.mosaic import raster_or_mosaic

            if method == "sam":
                check_checkpoint(checkpoint)  # fail before any explaining
            # a mosaic is built once, for the seeds and the segments alike
            with raster_or_mosaic(input_path, log_to(feedback)) as raster_path:
                split = 0.0 if point_rows is not None else 30.0
                seeds_progress = lambda p: feedback.setProgress(split * p / 100.0)  # noqa: E731
                if point_rows is not None:
                    seed_set = SeedSet([Seed(x, y, 1.0 if s is None else s, name or DEFAULT_CLASS, fid, positive)
                                        for x, y, s, name, fid, positive in point_rows],
                                       class_colours=point_colours,
                                       source=f"{len(point_rows)} points of the seed layer")
                elif heatmap_path is not None:
                    seed_set = seeds_from_heatmap(heatmap_path, crs.toWkt(), peaks_per_tile,
                                                  negatives_per_tile=negatives, is_cancelled=feedback.isCanceled,
                                                  progress=seeds_progress)
                else:
                    seed_set = seeds_from_model(raster_path, model_path, peaks_per_tile, target=target,
                                                negatives_per_tile=negatives, batch_size=batch_size, device=device,
                                                nodata=nodata, is_cancelled=feedback.isCanceled,
                                                progress=seeds_progress, log=log_to(feedback))
                feedback.pushInfo(f"Seeds: {seed_set.source}")
                options = SegmentOptions(method=method, sam_checkpoint=checkpoint, sam_model_type=model_type,
                                         negative_points=negatives, window_size=window, simplify_tolerance=tolerance,
                                         min_area=min_area, min_score=min_score, bands=bands, nodata=nodata,
                                         smoothing=smoothing, device=device, mask=mask)
                result = segment_raster(
                    raster_path, seed_set, IN_MEMORY, options,
                    progress=lambda p: feedback.setProgress(split + (100.0 - split) * p / 100.0),
                    is_cancelled=feedback.isCanceled, log=log_to(feedback),
                    seeds_path=IN_MEMORY if want_seeds else None,
                )
        feedback.pushInfo(
            f"{result.polygons} polygon(s) from {result.seeds_used} of {result.seeds_total} seed point(s) in "
            f"{result.windows} window(s), {result.seconds:.1f} s. Skipped: {result.seeds_outside} outside the raster, "
            f"{result.seeds_nodata} on nodata{' or outside the mask' if mask is not None else ''}, {result.seeds_weak} below the minimum score"
            + (f"; {result.seeds_without_segment} gave no segment" if result.seeds_without_segment else "")
            + (f". Negative points used: {result.negatives_used}" if result.negatives_used else "") + "."
        )
        written = []
        with self.removed_on_failure(written):
            polygons_id = self.write_vector_output(parameters, self.OUTPUT_POLYGONS, context,
                                                   result.layers["polygons"], feedback)
            written.append(polygons_id)
            seeds_id = None
            if want_seeds:
                seeds_id = self.write_vector_output(parameters, self.OUTPUT_SEEDS, context, result.layers["seeds"],
                                                    feedback)
                written.append(seeds_id)
        classes = sorted(result.class_colours)
        style_vector_output(context, polygons_id, lambda: segment_renderer(result.class_colours, classes), "Segments")
        outputs = {
            self.OUTPUT_POLYGONS: polygons_id,
            self.SEEDS_USED: result.seeds_used,
            self.SEEDS_OUTSIDE: result.seeds_outside,
            self.SEEDS_NODATA: result.seeds_nodata,
            self.SEEDS_WEAK: result.seeds_weak,
            self.POLYGONS: result.polygons,
        }
        if seeds_id:
            outputs[self.OUTPUT_SEEDS] = seeds_id
        return outputs


def _value(feature, field, kind):
    """``kind(feature[field])``, or None when the field is missing, NULL or not convertible."""
    if field is None:
        return None
    value = feature[field]
    if value is None or value == NULL:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None
