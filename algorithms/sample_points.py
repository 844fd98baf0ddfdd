"""glassbox:sample_points - stratified random reference points on a class map, for assess_map."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.feedback import callbacks
from .base import (FEATURE_ID_FIELDS, GlassboxAlgorithm, _destination, legend_names, seed_parameter,
                   vector_output_parameter)


class SamplePointsAlgorithm(GlassboxAlgorithm):
    INPUT = "INPUT"
    POINTS_PER_CLASS = "POINTS_PER_CLASS"
    TOTAL_POINTS = "TOTAL_POINTS"
    CLASS_FIELD = "CLASS_FIELD"
    SEED = "SEED"
    OUTPUT = "OUTPUT"
    N_POINTS = "N_POINTS"

    required_modules = ["numpy", "rasterio"]
    group_id = "classification"

    def name(self):
        return "sample_points"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Sample reference points (stratified random)")

    def tags(self):
        return ["accuracy", "assessment", "sample", "sampling design", "stratified", "random points",
                "reference points", "validation", "olofsson", "map"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Where to check a land-cover map: random points drawn within each class of a class raster (stratified "
            "random sampling, the design good practice recommends; Olofsson et al. 2014), ready to be labelled and "
            "then compared with the map by 'Assess map accuracy'.\n\n"
            "Each map class gets the points per class (all its pixels if it has fewer); a total larger than that "
            "adds points in proportion to the classes' areas. Unclassified and Cloud pixels of a Glassbox map are "
            "classes of their own, so the assessment covers the whole map; nodata is never sampled. Points sit on "
            "pixel centres, in the raster's CRS, in random order.\n\n"
            "The output has an empty reference class field: fill it for every point by photo interpretation or a "
            "field visit, without looking at the map (the points do not say which class the map gives them, so the "
            "labelling stays blind). Then run 'Assess map accuracy' with these points and that field. The same "
            "raster and seed give the same points."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Class raster (the map)")))
        self.addParameter(QgsProcessingParameterNumber(
            self.POINTS_PER_CLASS, self.tr("Points per map class (good practice: at least 50)"),
            QgsProcessingParameterNumber.Integer, defaultValue=50, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.TOTAL_POINTS, self.tr("Total points (0: points per class x classes; more: the extra in proportion "
                                       "to class area)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterString(
            self.CLASS_FIELD, self.tr("Name of the reference class field (left empty, to fill in)"),
            defaultValue="ref_class"))
        self.addParameter(seed_parameter(self.SEED))
        self.addParameter(vector_output_parameter(self.OUTPUT, "Reference points to label",
                                                  QgsProcessing.TypeVectorPoint))
        self.addOutput(QgsProcessingOutputNumber(self.N_POINTS, self.tr("Points drawn")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        layer, raster = self.file_raster(parameters, self.INPUT, context, "the class raster")
        per_class = self.parameterAsInt(parameters, self.POINTS_PER_CLASS, context)
        total = self.parameterAsInt(parameters, self.TOTAL_POINTS, context)
        seed = self.parameterAsInt(parameters, self.SEED, context)
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context).strip()
        if not field or field.lower() in FEATURE_ID_FIELDS | {"point_id"}:
            raise QgsProcessingException(f"'{field}' cannot name the reference class field: give a name such as "
                                         "ref_class")
        if (str(_destination(parameters, self.OUTPUT) or "").split("|")[0].lower().endswith(".shp")
                and len(field.encode("utf-8")) > 10):  # the driver would cut it silently
            raise QgsProcessingException(f"a Shapefile field name holds at most 10 bytes: '{field}' would be written "
                                         f"as '{field.encode('utf-8')[:10].decode('utf-8', 'ignore')}' and "
                                         "assess_map would not find it; give a shorter reference class field name "
                                         "or write a GeoPackage")
        self.check_vector_outputs(parameters, [self.OUTPUT])
        names = legend_names(layer)
        with self.core_errors():
            from ..core.io.vectors import points_layer
            from ..core.sampling import stratified_sample

            try:
                sample = stratified_sample(raster, per_class, total, seed, class_names=names, **callbacks(feedback))
            except ValueError as exc:
                raise QgsProcessingException(str(exc)) from exc
            points = points_layer("reference_points", layer.crs().toWkt(), [("point_id", "int"), (field, "str")],
                                  [(xy, {"point_id": i + 1}) for i, xy in enumerate(sample.points)])
        destination = self.write_vector_output(parameters, self.OUTPUT, context, points, feedback)
        feedback.pushInfo(f"{len(sample.points)} points written; fill '{field}' for each, then run Assess map "
                          "accuracy with them")
        return {self.OUTPUT: destination, self.N_POINTS: len(sample.points)}
