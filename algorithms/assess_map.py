"""glassbox:assess_map - the accuracy of a class map against reference points, with area-adjusted
class areas and their 95 % intervals (Olofsson et al. 2014), as an HTML report plus a CSV table."""

from __future__ import annotations

from qgis.core import (
    NULL,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsWkbTypes,
)

from ..core.feedback import callbacks
from .base import FEATURE_ID_FIELDS, GlassboxAlgorithm, check_extension, geometry_kind, legend_names, request_in_crs


class AssessMapAlgorithm(GlassboxAlgorithm):
    INPUT = "INPUT"
    REFERENCE = "REFERENCE"
    CLASS_FIELD = "CLASS_FIELD"
    CLASS_GROUPS = "CLASS_GROUPS"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_CSV = "OUTPUT_CSV"
    OVERALL_ACCURACY = "OVERALL_ACCURACY"
    ADJUSTED_OVERALL_ACCURACY = "ADJUSTED_OVERALL_ACCURACY"
    KAPPA = "KAPPA"
    N_POINTS = "N_POINTS"

    required_modules = ["numpy", "rasterio", "matplotlib"]
    group_id = "classification"

    def name(self):
        return "assess_map"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Assess map accuracy")

    def tags(self):
        return ["accuracy", "assessment", "validation", "error matrix", "confusion matrix", "user's accuracy",
                "producer's accuracy", "area estimation", "olofsson", "reference points", "map"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "How right is a land-cover map, and how much of each class is really there? Compares a class raster "
            "(e.g. the Classes output of 'Classify raster') with reference points whose class you know (field "
            "visits, photo interpretation).\n\n"
            "Reference points: a point layer (any CRS; reprojected to the raster's) and the field that holds each "
            "point's class, by the map's class names (as in the class raster's legend; case does not matter) or "
            "by its class values. Points outside the raster or on nodata are not counted. Points on Unclassified "
            "or Cloud pixels count in strata of their own (errors: the map gives no land-cover class there), so the "
            "areas cover the whole map; points of a class the map never shows count as errors, and that class gets "
            "an estimated area.\n\n"
            "Class groups (optional): when the reference classes are coarser than the map's, merge map classes, "
            "e.g. 'water: SeaLake, River; town: Residential, Industrial; fields: AnnualCrop, PermanentCrop, "
            "Pasture, HerbaceousVegetation'. Each group is then one class of the assessment, named as the "
            "reference names it; map classes in no group stay as they are.\n\n"
            "Output: an HTML report with the share of points on their own class, Cohen's kappa, the error matrix, "
            "and the area-adjusted estimates of good practice (Olofsson et al. 2014): per map class the user's and "
            "producer's accuracy and the estimated area in hectares, each with its 95 % interval, and the "
            "area-adjusted overall accuracy. Optionally the same as CSV.\n\n"
            "The estimates hold for a probability sample: random points, or random points per map class "
            "(stratified; 'Sample reference points' draws them), with points on every mapped class (at least 50 each is good practice; the log "
            "warns otherwise). Points placed where the class is obvious make every figure optimistic."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Class raster (the map)")))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.REFERENCE, self.tr("Reference points"), [QgsProcessing.TypeVectorPoint]))
        # optional only so that the dialog leaves it blank (QGIS would preselect the first field,
        # often the feature id); an empty value is refused before the run (missing_input)
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Reference class field (class names or values)"),
            parentLayerParameterName=self.REFERENCE, defaultValue="ref_class", optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.CLASS_GROUPS, self.tr("Class groups (group: map class, map class; ...), for reference classes "
                                       "coarser than the map's"), optional=True, multiLine=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Accuracy report"), "HTML files (*.html)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_CSV, self.tr("Accuracy table (CSV)"), "CSV files (*.csv)", optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber(self.OVERALL_ACCURACY, self.tr("Share of points on their class (0-1)")))
        self.addOutput(QgsProcessingOutputNumber(self.ADJUSTED_OVERALL_ACCURACY,
                                                 self.tr("Area-adjusted overall accuracy (0-1)")))
        self.addOutput(QgsProcessingOutputNumber(self.KAPPA, self.tr("Cohen's kappa")))
        self.addOutput(QgsProcessingOutputNumber(self.N_POINTS, self.tr("Reference points counted")))

    def missing_input(self, parameters) -> str | None:
        field = parameters.get(self.CLASS_FIELD, self.parameterDefinition(self.CLASS_FIELD).defaultValue())
        if field in (None, "") or (isinstance(field, (list, tuple)) and not field):
            return "choose the reference class field: the field of the reference points that holds each point's class"
        return super().missing_input(parameters)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        layer, raster = self.file_raster(parameters, self.INPUT, context, "the class raster")
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        table = self.parameterAsFileOutput(parameters, self.OUTPUT_CSV, context) or None
        check_extension(report, (".html", ".htm"), "the report")
        check_extension(table, (".csv",), "the accuracy table")
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
        with self.core_errors():
            from ..core.map_accuracy import parse_class_groups
            groups = parse_class_groups(self.parameterAsString(parameters, self.CLASS_GROUPS, context))
        points, classes, unlabelled = self.reference_points(parameters, context, layer.crs(), field, feedback)
        names = legend_names(layer)

        with self.core_errors():
            from ..core.io.map_report import write_map_report
            from ..core.map_accuracy import UNREAD, assess_map

            result = assess_map(raster, points, classes, names, unread=unlabelled, groups=groups,
                                **callbacks(feedback))
            grouped = "; ".join(f"{g} = {' + '.join(m)}" for g, m in groups.items())
            written = write_map_report(report, table, result, raster,
                                       f"{len(points) + unlabelled} points of '{field}' in "
                                       f"{self.reference_name(parameters, context)}"
                                       + (f"; map classes merged into the reference's classes: {grouped}"
                                          if grouped else ""))
        m = result.metrics
        for why, count in result.skipped.items():
            if why != UNREAD:  # warned while reading
                feedback.pushWarning(f"{count} reference point(s) {why}: not counted")
        for warning in result.warnings:
            feedback.pushWarning(warning)
        feedback.pushInfo(
            f"{m.total} points counted: {m.overall_accuracy:.1%} on their own class, kappa {m.kappa:.3f}; "
            f"area-adjusted overall accuracy {result.adjusted_overall:.1%} +/- {result.overall_ci95:.1%} (95 %)")
        feedback.pushInfo("Per map class (user's / producer's accuracy, mapped -> estimated area in ha): " + "; ".join(
            f"{n} {_share(u)} / {_share(p)}, {a:,.0f} -> {e:,.0f}" for n, u, p, a, e in zip(
                result.class_names, result.adjusted_users, result.adjusted_producers, result.mapped_area_ha,
                result.estimated_area_ha)))
        outputs = {self.OUTPUT_REPORT: written["html"], self.OVERALL_ACCURACY: m.overall_accuracy,
                   self.ADJUSTED_OVERALL_ACCURACY: result.adjusted_overall, self.KAPPA: m.kappa, self.N_POINTS: m.total}
        if "csv" in written:
            outputs[self.OUTPUT_CSV] = written["csv"]
        return outputs

    def reference_name(self, parameters, context) -> str:
        source = self.parameterAsSource(parameters, self.REFERENCE, context)
        return source.sourceName() if source is not None else "the reference layer"

    def reference_points(self, parameters, context, crs, field, feedback):
        """(x, y) in ``crs`` and the class of every reference point (multipoints: every part);
        points without a class value are skipped and counted."""
        source = self.parameterAsSource(parameters, self.REFERENCE, context)
        if source is None:
            raise QgsProcessingException("the reference point layer cannot be read")
        if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.PointGeometry:
            kind = geometry_kind(source.wkbType())
            raise QgsProcessingException(
                f"the reference layer holds {kind}, not points: give a point layer"
                + (" (from polygons of known class, e.g. Processing's 'Random points inside polygons', then copy the "
                   "class onto the points with 'Join attributes by location')" if kind == "polygons" else
                   " (a table of coordinates becomes one with 'Create points layer from table')" if kind.startswith("no")
                   else ""))
        if field.lower() in FEATURE_ID_FIELDS:
            raise QgsProcessingException(f"'{field}' is the reference layer's feature id, not a class; choose the field "
                                         "that holds each point's class (its fields: "
                                         + ", ".join(source.fields().names()) + ")")
        if source.fields().lookupField(field) < 0:
            raise QgsProcessingException(f"the reference point layer has no field '{field}'; its fields: "
                                         + (", ".join(source.fields().names()) or "none"))
        request = request_in_crs(source, crs, context, feedback, "the reference point layer")
        points, classes, unlabelled, no_geometry = [], [], 0, 0
        for feature in source.getFeatures(request):
            if feedback.isCanceled():
                raise QgsProcessingException("cancelled; nothing was written")
            value = feature[field]
            geometry = feature.geometry()
            if value is None or value == NULL or str(value).strip() == "" or geometry.isEmpty():
                unlabelled += 1
                no_geometry += geometry.isEmpty()
                continue
            parts = geometry.asMultiPoint() if QgsWkbTypes.isMultiType(geometry.wkbType()) else [geometry.asPoint()]
            for point in parts:
                points.append((point.x(), point.y()))
                classes.append(value)
        if unlabelled:
            feedback.pushWarning(f"{unlabelled} reference point(s) without a geometry or a '{field}' value: skipped")
        if not points:
            raise QgsProcessingException(
                f"the reference point layer has no points with a geometry and a '{field}' value"
                + (f" ({no_geometry} feature(s) without a geometry)" if no_geometry else "")
                + "; choose a layer (and field) that has some")
        return points, classes, unlabelled


def _share(value: float) -> str:
    """A share as a percentage; 'n/a' where no point measured it."""
    return "n/a" if value != value else f"{value:.1%}"
