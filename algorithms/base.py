"""What every Glassbox algorithm shares: group, icon, dependency check, error translation."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import json

from qgis.core import (
    Qgis,
    NULL,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureRequest,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPalettedRasterRenderer,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingUtils,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessing,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsRasterLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QUrl
from qgis.PyQt.QtGui import QIcon

from ..dependencies import require

PLUGIN_DIR = Path(__file__).resolve().parent.parent
ICON = str(PLUGIN_DIR / "resources" / "icons" / "glassbox.svg")
MODELS_DIR = PLUGIN_DIR / "resources" / "models"
DEFAULT_MODEL = MODELS_DIR / "eurosat_rgb_resnet18_64_w32_96px.onnx"
#: the shipped models a MODEL left empty chooses from (core.model_choice: the one reading the most
#: of the raster's bands; ties and no fit: the first; missing files are passed over)
#: For 13-band Sentinel-2 stacks that is the fusion model, not paper 1's spatial-spectral CNN: higher
#: on EuroSAT patches (98 % against 80 % cross-validated) and on the demo scene's 209 reference
#: points (49 % of ground points against 36 %; bench/results/bench_real_scene.json).
AUTO_MODELS = (DEFAULT_MODEL, MODELS_DIR / "eurosat_ms_fusion_resnet18.onnx")
DEVICES = ["cpu", "cuda", "auto"]
#: what the dialog shows for DEVICES (qgis_process and scripts give the index, 0-2)
DEVICE_LABELS = ["CPU", "CUDA GPU (fails clearly without one)", "Automatic (a CUDA GPU when there is one, else CPU)"]
MODEL_FILTER = "Glassbox models (*.onnx *.pt *.pth *.ts *.torchscript);;All files (*.*)"


def tr(text: str) -> str:
    """``text`` in the user's language, where a translation is installed (context "Glassbox")."""
    return QCoreApplication.translate("Glassbox", text)


# -- parameters several algorithms declare the same way -----------------------------------
def input_raster_parameter(name: str = "INPUT", label: str = "Input raster", optional: bool = False):
    return QgsProcessingParameterRasterLayer(name, tr(label), optional=optional)


#: (label, key) of the class mappings of polygon class values; scripts refer to a choice by its index
CLASS_MAPPINGS = [
    ("LCDB v5: 33 classes -> 7 class groups (Manaaki Whenua - Landcare Research)", "lcdb"),
    ("None: the field's values are the classes", "none"),
    ("Custom mapping (below)", "custom"),
]
NO_CLASS_MAPPING = 1


def class_mapping_parameters(mapping_name: str = "CLASS_MAPPING", custom_name: str = "CUSTOM_MAPPING",
                             default: int = NO_CLASS_MAPPING):
    """The class mapping choice and its custom text (read with ``GlassboxAlgorithm.class_mapping``)."""
    return [
        QgsProcessingParameterEnum(mapping_name, tr("Class mapping of the field's values"),
                                   [label for label, _key in CLASS_MAPPINGS], defaultValue=default),
        QgsProcessingParameterString(
            custom_name, tr("Custom mapping (values=class; ..., e.g. 1,2,5=Urban; 40,41=Grassland)"),
            optional=True, multiLine=False),
    ]


def with_help(parameter, text: str):
    """``parameter`` with ``text`` as its tooltip (QGIS 3.16+), so its label can stay short."""
    if hasattr(parameter, "setHelp"):
        parameter.setHelp(tr(text))
    return parameter


def mosaic_parameter(name: str = "MOSAIC"):
    return with_help(QgsProcessingParameterMultipleLayers(
        name, tr("Mosaic (several rasters read as one)"), QgsProcessing.TypeRaster, optional=True),
        "Rasters of one CRS and band set (e.g. adjacent granules) read as one virtual raster, instead of or "
        "beside the input raster")


def mask_parameter(name: str = "MASK", action: str = "classify"):
    return QgsProcessingParameterFeatureSource(
        name, tr(f"Mask layer ({action} inside these polygons only)"), [QgsProcessing.TypeVectorPolygon],
        optional=True)


def model_parameter(name: str = "MODEL", label: str = "Model file", default: bool = True,
                    file_filter: str = MODEL_FILTER, auto: bool = False):
    """A model file. With ``default`` it may be left empty and means the shipped model (QGIS
    3.22 rejects a missing non-optional file parameter even when it has a default value, so
    the parameter is optional, shown empty as its label says, and
    :meth:`GlassboxAlgorithm.model_path` fills it in). With
    ``auto`` an empty value means the shipped model that reads the most of the raster's bands
    (no default value, so the dialog shows it empty)."""
    hint = " (empty: automatic choice)" if auto else " (empty: the shipped RGB model)" if default else ""
    detail = ("Left empty: the shipped model that reads the most of the raster's bands (the log says which and why)"
              if auto else f"Left empty: the shipped EuroSAT RGB model, {DEFAULT_MODEL.name}" if default else "")
    return with_help(QgsProcessingParameterFile(
        name, tr(label) + hint, behavior=QgsProcessingParameterFile.File, fileFilter=file_filter,
        defaultValue=None, optional=default,
    ), "An .onnx model, or a Torch .pt with its .json card (or TorchScript). " + detail)


def bands_parameter(name: str = "BANDS", parent: str = "INPUT",
                    label: str = "Bands in the model's order (empty: automatic)"):
    return with_help(QgsProcessingParameterBand(name, tr(label), None, parent, optional=True, allowMultiple=True),
                     "Left empty: the bands the model card names, found by the raster's band descriptions (or, "
                     "for a raster that names none, in its own order; the log says which band feeds which)")


def stride_parameter(name: str = "TILE_STRIDE", label: str = "Tile stride in model pixels (empty: half a tile)"):
    return QgsProcessingParameterNumber(name, tr(label), QgsProcessingParameterNumber.Integer, optional=True, minValue=1)


def advanced(parameter):
    """``parameter``, shown under the dialog's "Advanced parameters": tuning and overrides a GIS
    user rarely needs (batch size, device, nodata override, random seed, early stopping ...)."""
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def batch_size_parameter(name: str = "BATCH_SIZE", default: int = 32):
    return advanced(QgsProcessingParameterNumber(
        name, tr("Batch size (tiles per model call)"), QgsProcessingParameterNumber.Integer,
        defaultValue=default, minValue=1, maxValue=4096,
    ))


def nodata_parameter(name: str = "NODATA"):
    return advanced(QgsProcessingParameterNumber(
        name, tr("Nodata value (empty: the raster's own)"), QgsProcessingParameterNumber.Double, optional=True
    ))


def cloud_mask_parameter(name: str = "CLOUD_MASK", effect: str = "cloud pixels become class Cloud"):
    return QgsProcessingParameterBoolean(name, tr(f"Mask clouds (Sentinel-2 L1C, s2cloudless): {effect}"),
                                         defaultValue=False)


def cloud_threshold_parameter(name: str = "CLOUD_THRESHOLD"):
    return advanced(QgsProcessingParameterNumber(
        name, tr("Cloud probability threshold (with Mask clouds)"), QgsProcessingParameterNumber.Double,
        defaultValue=0.6, minValue=0.0, maxValue=1.0))


def seed_parameter(name: str = "SEED"):
    return advanced(QgsProcessingParameterNumber(name, tr("Random seed"), QgsProcessingParameterNumber.Integer,
                                                 defaultValue=0, minValue=0))


def tta_parameter(name: str = "TEST_TIME_AUGMENTATION"):
    return QgsProcessingParameterBoolean(
        name, tr("Test-time augmentation: average over the 8 rotations and flips of each tile (8 times slower)"),
        defaultValue=False,
    )


#: the scene adaptation ADAPT_TO_SCENE asks for by default
ADAPT_TO_SCENE_DEFAULT = False


def adapt_parameter(name: str = "ADAPT_TO_SCENE"):
    return QgsProcessingParameterBoolean(
        name, tr("Adapt to the scene (re-estimate the model's normalisation from this raster)"),
        defaultValue=ADAPT_TO_SCENE_DEFAULT)


def adapt_always_parameter(name: str = "ADAPT_ALWAYS"):
    return advanced(QgsProcessingParameterBoolean(
        name, tr("Keep the scene adaptation even if the adapted model is much less sure of this raster"),
        defaultValue=False))


def adaptation_mode_from(algorithm, parameters, context, adapt: str = "ADAPT_TO_SCENE",
                         always: str = "ADAPT_ALWAYS") -> str:
    """The core's adaptation mode ("off", "auto", "always") from the two parameters."""
    if not algorithm.parameterAsBool(parameters, adapt, context):
        return "off"
    return "always" if algorithm.parameterAsBool(parameters, always, context) else "auto"


def vector_output_parameter(name: str, label: str, layer_type: int, optional: bool = False,
                            create_by_default: bool | None = None):
    """A feature sink: the user picks a temporary layer, any OGR file format or a database
    table. Optional outputs are not created unless asked for, or ``create_by_default``."""
    create = (not optional) if create_by_default is None else create_by_default
    return QgsProcessingParameterFeatureSink(name, tr(label), layer_type, optional=optional, createByDefault=create)


def device_parameter(name: str = "DEVICE"):
    return advanced(QgsProcessingParameterEnum(name, tr("Device"), [tr(label) for label in DEVICE_LABELS],
                                               defaultValue=0))


#: toolbox groups: id -> name
GROUPS = {
    "classification": "Classification",
    "explanation": "Explanation",
    "segmentation": "Segmentation",
    "training": "Training and models",
}


def _frames_released_on_error(process):
    """``processAlgorithm`` whose error keeps no layer or array alive. QGIS 3.22 keeps the Python
    exception a ``processAlgorithm`` raises (a reference it never releases), and with it the
    frames of its traceback and everything in them: the run's layers, arrays and datasets stayed
    in memory until QGIS exited, and were destroyed after its data providers (a crash at exit).
    The frames' locals are released before the exception leaves."""
    import functools
    import traceback

    @functools.wraps(process)
    def run(self, parameters, context, feedback):
        try:
            return process(self, parameters, context, feedback)
        except BaseException as exc:  # noqa: B902 (re-raised below)
            error = exc
        del parameters, context, feedback
        seen = set()
        link = error
        while link is not None and id(link) not in seen:  # the exception and those it was raised from
            seen.add(id(link))
            traceback.clear_frames(link.__traceback__)
            link = link.__cause__ or link.__context__
        raise error

    return run


class GlassboxAlgorithm(QgsProcessingAlgorithm):
    """Base class; subclasses set ``group_id`` (a key of :data:`GROUPS`) and
    ``required_modules`` for the packages they import."""

    required_modules = ["numpy", "rasterio", "onnxruntime"]
    group_id = "classification"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "processAlgorithm" in vars(cls):
            cls.processAlgorithm = _frames_released_on_error(vars(cls)["processAlgorithm"])

    def icon(self):
        return QIcon(ICON)

    def tr(self, text: str) -> str:
        return tr(text)

    def group(self):
        return self.tr(GROUPS[self.group_id])

    def groupId(self):  # noqa: N802 (QGIS API name)
        return self.group_id

    def helpUrl(self):  # noqa: N802 (QGIS API name)
        """The algorithm's reference page, shipped in the plugin's docs/ (opens offline, as HTML)."""
        return help_page_url(self.name())

    def createInstance(self):  # noqa: N802 (QGIS API name)
        return type(self)()

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        """Before any work: no two outputs may be written to the same file (the second would
        replace the first, which the run then reports as written), and no output may be one of
        the run's input files (it would be overwritten while it is read)."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        problem = self.missing_input(parameters) or self.output_path_conflict(parameters, context)
        return (False, problem) if problem else (True, "")

    def missing_input(self, parameters) -> str | None:
        """What a run lacks that no single parameter's check sees (shown by the dialog before the
        run starts, rather than in the log once it has): an input raster or a mosaic, where either
        may be given."""
        names = {definition.name() for definition in self.parameterDefinitions()}
        if {"INPUT", "MOSAIC"} <= names and parameters.get("INPUT") in (None, "") and not parameters.get("MOSAIC"):
            return "no input: choose an input raster, or the rasters of a mosaic"
        return None

    def output_path_conflict(self, parameters, context) -> str | None:
        """Why the outputs' files clash with each other or with an input file, or None."""
        inputs, outputs = {}, {}
        for definition in self.parameterDefinitions():
            name, label = definition.name(), f"'{definition.description().strip()}'"
            if definition.isDestination():
                value = _destination(parameters, name)
                if value in (None, "") or (hasattr(value, "isNull") and value.isNull()):
                    continue
                key = _file_key(str(value))
                if key is None:
                    continue
                for key, label in [(key, label), *_written_beside(key, label)]:
                    for other, other_label in outputs.items():
                        if other[0] == key[0] and (other[1] is None or key[1] is None or other[1] == key[1]):
                            return (f"{other_label} and {label} are both to be written to {key[0]}: the second "
                                    "would replace the first; give each output its own file")
                    outputs[key] = label
            elif definition.type() in _FILE_INPUT_TYPES:
                for source in _input_sources(parameters.get(name), context):
                    inputs.setdefault(source, label)
        for (path, _layer), label in outputs.items():
            if path in inputs:
                return (f"{label} would overwrite the input {inputs[path]} ({path}) while it is read; "
                        "write the output to another file")
        return None

    @contextmanager
    def core_errors(self):
        """Run core code: missing packages and core's typed errors become
        QgsProcessingException with the same message."""
        try:
            require(self.required_modules)
        except ImportError as exc:
            raise QgsProcessingException(str(exc)) from exc
        from ..core.errors import GlassboxError

        try:
            yield
        except GlassboxError as exc:
            raise QgsProcessingException(str(exc)) from exc


    # -- vector outputs ----------------------------------------------------------------------
    @staticmethod
    def output_requested(parameters, name) -> bool:
        """True when the (optional) output ``name`` was asked for."""
        value = _destination(parameters, name)
        return value not in (None, "") and not (hasattr(value, "isNull") and value.isNull())

    def write_vector_output(self, parameters, name, context, layer, feedback) -> str:
        """Write a core :class:`VectorLayer` (features with WKB geometries) to the feature sink
        ``name``; returns its destination id (a file path or a layer id)."""
        shapefile = str(_destination(parameters, name) or "").split("|")[0].lower().endswith(".shp")
        fields = QgsFields()
        for field_name, kind in layer.fields:
            length = SHAPEFILE_TEXT_BYTES if shapefile and kind == "str" else 0
            fields.append(QgsField(field_name, _FIELD_TYPES[kind], len=length))
        wkb_type = QgsWkbTypes.Point if layer.geometry_type == "Point" else QgsWkbTypes.Polygon
        crs = QgsCoordinateReferenceSystem.fromWkt(layer.crs_wkt)
        target = _file_destination(parameters, name)
        table_file = _table_file(str(_destination(parameters, name) or ""))
        into_existing_file = table_file is not None and table_file.is_file()
        folder_of = target or table_file
        if folder_of is not None:  # as for raster outputs, a missing folder is made (OGR would not)
            try:
                folder_of.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise QgsProcessingException(f"cannot make the folder of {folder_of}: {exc.strerror or exc}") from exc
        try:
            sink, dest_id = self.parameterAsSink(parameters, name, context, fields, wkb_type, crs)
        except QgsProcessingException as exc:
            raise QgsProcessingException(f"{exc}; choose a writable file or folder, or a temporary layer") from exc
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, name))
        if into_existing_file:  # on failure drop this table only, never the user's file
            self._tables_in_existing_files.add(dest_id)
        names = [field_name for field_name, _kind in layer.fields]
        shortened: dict[str, int] = {}
        try:
            for wkb, values in layer.features:
                if feedback.isCanceled():
                    raise QgsProcessingException("cancelled; nothing was written")
                geometry = QgsGeometry()
                geometry.fromWkb(wkb)
                if geometry.isNull():
                    raise QgsProcessingException(f"a feature of {name} has no readable geometry; nothing was written")
                feature = QgsFeature(fields)
                feature.setGeometry(geometry)
                attributes = [values.get(n) for n in names]
                if shapefile:
                    attributes = [_fit_shapefile_text(v, n, shortened) for v, n in zip(attributes, names)]
                feature.setAttributes(attributes)
                if not sink.addFeature(feature, QgsFeatureSink.FastInsert):
                    error = sink.lastError() if hasattr(sink, "lastError") else ""
                    raise QgsProcessingException(f"cannot write {name}: {error or 'the destination refused a feature'}")
            if not sink.flushBuffer():
                raise QgsProcessingException(f"cannot write {name}: {sink.lastError()}")
        except BaseException:
            sink = None
            self._remove_output(dest_id)
            raise
        sink = None  # closes a file destination
        for field_name, count in shortened.items():
            feedback.pushWarning(f"{count} value(s) of the field '{field_name}' of {name} were longer than a "
                                 f"Shapefile text field holds ({SHAPEFILE_TEXT_BYTES} bytes) and were shortened; "
                                 "write a GeoPackage to keep them whole")
        return dest_id

    def check_vector_outputs(self, parameters, names) -> None:
        """Before any work: each requested vector output written to a file must be writable (a
        database table or temporary layer is left to QGIS)."""
        from ..core.errors import OutputError
        from ..core.io.outputs import check_output_path

        for name in names:
            if not self.output_requested(parameters, name):
                continue
            target = _file_destination(parameters, name) or _table_file(str(_destination(parameters, name) or ""))
            if target is None:
                continue
            try:
                check_output_path(str(target), self.parameterDefinition(name).description())
            except OutputError as exc:
                raise QgsProcessingException(str(exc)) from exc

    @contextmanager
    def removed_on_failure(self, paths):
        """On an exception, remove the files in ``paths`` (written earlier by this run: core's
        raster outputs, a file destination of a sink) and their sidecars, so a run that fails
        while writing its last output leaves nothing behind."""
        try:
            yield
        except BaseException:
            for path in paths:
                self._remove_output(path)
            raise

    @property
    def _tables_in_existing_files(self) -> set:
        """Destination ids of vector outputs written as a table into a file that existed before."""
        if not hasattr(self, "_existing_file_tables"):
            self._existing_file_tables = set()
        return self._existing_file_tables

    def _remove_output(self, path) -> None:
        if path and str(path) in self._tables_in_existing_files:
            drop_table(str(path))
        else:
            remove_output_file(destination_file(path))

    # -- reading parameters several algorithms share ----------------------------------------
    def file_raster(self, parameters, name, context, what="the input raster"):
        """The raster layer of parameter ``name`` and its file path (GDAL rasters only)."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(f"{what} cannot be read")
        if layer.providerType() != "gdal":
            raise QgsProcessingException(f"{what} must be a file-based raster (GDAL), not a web or virtual layer")
        return layer, layer.source().split("|")[0]

    def input_rasters(self, parameters, context, input_name="INPUT", mosaic_name="MOSAIC"):
        """The first raster layer and the file paths of the input raster and/or the mosaic's
        rasters (GDAL rasters only), at least one, each once."""
        layers, paths = [], []
        if parameters.get(input_name) not in (None, ""):
            layer, path = self.file_raster(parameters, input_name, context)
            layers.append(layer)
            paths.append(path)
        for i, layer in enumerate(self.parameterAsLayerList(parameters, mosaic_name, context) or [], start=1):
            if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
                raise QgsProcessingException(f"raster {i} of the mosaic cannot be read")
            if layer.providerType() != "gdal":
                raise QgsProcessingException(f"raster {i} of the mosaic must be a file-based raster (GDAL), "
                                             "not a web or virtual layer")
            layers.append(layer)
            paths.append(layer.source().split("|")[0])
        if not layers:
            raise QgsProcessingException("no input: choose an input raster, or the rasters of a mosaic")
        return layers[0], list(dict.fromkeys(paths))

    def optional_mask(self, parameters, name, context, crs, feedback):
        """The polygons of an optional mask parameter in ``crs``, or None when it is empty."""
        if parameters.get(name) in (None, ""):
            return None
        mask, _ = self.polygons(parameters, name, context, crs, feedback, "the mask layer")
        return mask

    def class_mapping(self, parameters, context, mapping_name="CLASS_MAPPING", custom_name="CUSTOM_MAPPING"):
        """The ``core.masking.lcdb.ClassMapping`` chosen, or None (the field's values are the classes)."""
        from ..core.masking.lcdb import lcdb_preset, parse_mapping

        key = CLASS_MAPPINGS[self.parameterAsEnum(parameters, mapping_name, context)][1]
        custom = (self.parameterAsString(parameters, custom_name, context) or "").strip()
        if key == "lcdb":
            return lcdb_preset()
        if key == "none":
            return None
        if not custom:
            raise QgsProcessingException("choose 'Custom mapping' only with a mapping, e.g. 1,2,5=Urban; 40,41=Grassland")
        with self.core_errors():
            return parse_mapping(custom)

    def model_path(self, parameters, name, context, raster_path=None, feedback=None, bands=None):
        """The model file of parameter ``name``; left empty, the shipped default, or with
        ``raster_path`` the shipped model (:data:`AUTO_MODELS`) that reads the most of that
        raster's bands, or as many as the user selected (``bands``) (core.models.choice), saying
        which and why in ``feedback``'s log."""
        given = parameters.get(name) not in (None, "")
        path = self.parameterAsFile(parameters, name, context) if given else ""
        if path or raster_path is None:
            return path or str(DEFAULT_MODEL)
        with self.core_errors():
            from ..core.models.choice import choose_model

            path, reason = choose_model(raster_path, [str(p) for p in AUTO_MODELS], len(bands) if bands else None)
        if feedback is not None:
            feedback.pushInfo(f"No model given: using {Path(path).name}, because {reason}.")
        return path

    def band_list(self, parameters, name, context, feedback):
        """The bands of a band parameter (None when empty), with a warning when one is chosen more
        than once (the model is then fed the same band in two places, seldom what was meant)."""
        bands = self.parameterAsInts(parameters, name, context) or None
        if bands and len(set(bands)) < len(bands):
            feedback.pushWarning(f"band(s) {', '.join(str(b) for b in sorted({b for b in bands if bands.count(b) > 1}))} "
                                 f"chosen more than once in {self.parameterDefinition(name).description()}: "
                                 f"{', '.join(map(str, bands))}")
        return bands

    def device(self, parameters, name, context):
        return DEVICES[self.parameterAsEnum(parameters, name, context)]

    def optional_number(self, parameters, name, context, kind):
        """``kind(value)`` of an optional number parameter, or None when it is empty."""
        value = parameters.get(name)
        if value is None or value == "":
            return None
        return kind(self.parameterAsDouble(parameters, name, context))

    def nodata_value(self, parameters, name, context, layer, feedback):
        """The nodata value to use: the parameter ``name`` when given; otherwise the layer's own
        *additional no data value* (Layer Properties > Transparency) when it is one value set on
        every band; otherwise None (the raster file's nodata). Other additional no-data settings
        (ranges, values that differ between bands) cannot be used, since Glassbox reads the file;
        a warning says so rather than classifying those pixels silently."""
        nodata = self.optional_number(parameters, name, context, float)
        provider = layer.dataProvider() if layer is not None else None
        if provider is None:
            return nodata
        per_band = [[(r.min(), r.max()) for r in provider.userNoDataValues(band)]
                    for band in range(1, provider.bandCount() + 1)]
        if not any(per_band):
            return nodata
        if nodata is not None:
            feedback.pushInfo(f"nodata {nodata:g} (NODATA) is used; the layer's additional no-data values in "
                              "QGIS are not")
            return nodata
        ranges = {r for band in per_band for r in band}
        if len(ranges) == 1 and all(len(band) == 1 for band in per_band):
            (low, high), = ranges
            if low == high:
                feedback.pushInfo(f"nodata {low:g}: the layer's additional no-data value (Layer Properties > "
                                  "Transparency)")
                return float(low)
        feedback.pushWarning(
            "the layer has additional no-data values set in QGIS (Layer Properties > Transparency: "
            + "; ".join(f"band {i}: " + ", ".join(f"{a:g}" if a == b else f"{a:g} to {b:g}" for a, b in band)
                        for i, band in enumerate(per_band, start=1) if band)
            + ") that Glassbox cannot use: it reads the raster file, and takes one nodata value for all bands. "
            "Those pixels are processed as data; give one value as NODATA, or draw a MASK")
        return nodata

    def optional_extent(self, parameters, name, context, crs):
        """(xmin, ymin, xmax, ymax) in ``crs`` of an optional extent parameter, or None."""
        if parameters.get(name) in (None, ""):
            return None
        rect = self.parameterAsExtent(parameters, name, context, crs)
        if rect.isNull():
            return None
        return rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()

    def polygons(self, parameters, name, context, crs, feedback, what="the polygon layer", label_field=None,
                 with_ids=False):
        """The polygons of a feature-source parameter as GeoJSON-like dicts in ``crs`` (and,
        with ``label_field``, each polygon's value of that field; with ``with_ids``, a third list:
        each polygon's feature id, as the attribute table shows it). Features without a geometry
        (or without a label) are skipped and counted in the log."""
        source = self.parameterAsSource(parameters, name, context)
        if source is None:
            raise QgsProcessingException(f"{what} cannot be read")
        if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.PolygonGeometry:
            raise QgsProcessingException(f"{what} must contain polygons, not {geometry_kind(source.wkbType())}")
        if label_field is not None and source.fields().lookupField(label_field) < 0:
            names = ", ".join(source.fields().names()) or "none"
            raise QgsProcessingException(f"{what} has no field '{label_field}'; its fields: {names}")
        request = request_in_crs(source, crs, context, feedback, what)
        geometries, labels, ids, repaired, skipped, no_geometry = [], [], [], [], 0, 0
        for feature in source.getFeatures(request):
            if feedback.isCanceled():
                raise QgsProcessingException("cancelled; nothing was written")
            geometry = feature.geometry()
            label = feature[label_field] if label_field is not None else None
            unlabelled = label_field is not None and (label is None or label == NULL or str(label).strip() == "")
            if geometry is None or geometry.isEmpty() or unlabelled:
                skipped += 1
                no_geometry += geometry is None or geometry.isEmpty()
                continue
            if not geometry.isGeosValid():
                geometry = _repaired(geometry)
                repaired.append(feature.id())
                if geometry is None:
                    skipped += 1
                    continue
            geometries.append(json.loads(geometry.asJson()))
            labels.append(label)
            ids.append(feature.id())
        if repaired:
            shown = ", ".join(str(i) for i in repaired[:10]) + (", ..." if len(repaired) > 10 else "")
            feedback.pushWarning(f"{len(repaired)} feature(s) of {what} have invalid geometries (e.g. self-intersecting "
                                 f"rings; feature id {shown}): used as QGIS's Fix geometries repairs them; check them "
                                 "with Vector > Geometry Tools > Check Validity")
        if skipped:
            feedback.pushInfo(f"{skipped} feature(s) of {what} without a geometry or a value were skipped")
        if not geometries:
            raise QgsProcessingException(
                f"{what} has no polygons" + (f" with a geometry and a '{label_field}' value" if label_field else "")
                + (f" ({no_geometry} feature(s) without a geometry)" if no_geometry else "")
                + ("; choose a layer (and field) that has some" if label_field else "; choose a layer that has some"))
        return (geometries, labels, ids) if with_ids else (geometries, labels)


def _repaired(geometry):
    """The polygons of ``geometry`` made valid (as QGIS's 'Fix geometries' does), or None when
    nothing of an area is left."""
    fixed = geometry.makeValid()
    if fixed.type() != QgsWkbTypes.PolygonGeometry:
        fixed = fixed.convertToType(QgsWkbTypes.PolygonGeometry, True)
    return None if fixed is None or fixed.isNull() or fixed.isEmpty() else fixed


def _destination(parameters, name):
    """The value given for the output ``name``: a path, ``TEMPORARY_OUTPUT``, a URI, or None."""
    value = parameters.get(name)
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink.staticValue()
    return value


#: the parameter types whose values can be files the run reads
_FILE_INPUT_TYPES = {"raster", "source", "vector", "file", "multilayer", "layer", "mesh"}


def _file_key(text: str) -> tuple[str, str | None] | None:
    """(real path, layer name) of a file destination such as ``out.gpkg|layername=a``; None for a
    temporary output, memory layer or database URI."""
    if text == "TEMPORARY_OUTPUT" or (":" in text.split("/")[0] and not Path(text).is_absolute()):
        return None
    path, _sep, options = text.partition("|")
    layer = None
    for option in options.split("|"):
        if option.startswith("layername="):
            layer = option[len("layername="):]
    return os.path.realpath(path), layer


#: Torch model files, whose card is written beside them as <stem>.json
_TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


def _written_beside(key: tuple[str, str | None], label: str) -> list[tuple[tuple[str, None], str]]:
    """Files an output writes besides its own: a Torch model's card (``<stem>.json``)."""
    path = Path(key[0])
    if path.suffix.lower() in _TORCH_SUFFIXES:
        return [((str(path.with_suffix(".json")), None), f"the model card of {label}")]
    return []


def _input_sources(value, context) -> list[str]:
    """The real paths of the existing files behind an input parameter's value (a path, a layer,
    a layer id or name, a feature source definition, or a list of those)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [path for item in value for path in _input_sources(item, context)]
    if isinstance(value, QgsProcessingFeatureSourceDefinition):
        value = value.source.staticValue()
    if hasattr(value, "source") and callable(value.source):  # a map layer
        value = value.source()
    if not isinstance(value, str) or not value:
        return []
    candidate = value.split("|")[0]
    if not Path(candidate).is_file():
        layer = QgsProcessingUtils.mapLayerFromString(value, context, False)
        if layer is None:
            return []
        candidate = layer.source().split("|")[0]
    return [os.path.realpath(candidate)] if Path(candidate).is_file() else []


#: the longest text a Shapefile (dBASE) field holds, in bytes
SHAPEFILE_TEXT_BYTES = 254


def _fit_shapefile_text(value, field_name: str, shortened: dict[str, int]):
    """``value`` cut to fit a Shapefile text field: a comma-separated list (such as
    ``seed_ids``) at its last whole item, followed by ``,...``; counted in ``shortened``."""
    if not isinstance(value, str) or len(value.encode("utf-8")) <= SHAPEFILE_TEXT_BYTES:
        return value
    shortened[field_name] = shortened.get(field_name, 0) + 1
    room = SHAPEFILE_TEXT_BYTES - len(",...")
    head = value.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    if "," in head and not value.encode("utf-8")[room:room + 1] == b",":
        head = head[:head.rindex(",")]
    return head + ",..."


def _field_types() -> dict:
    """QgsField types by kind: QMetaType from QGIS 3.38 on (QVariant's types are deprecated there
    and absent from PyQt6, QGIS 4), QVariant's before (QGIS 3.22-3.36 accept only those)."""
    if Qgis.QGIS_VERSION_INT >= 33800:
        from qgis.PyQt.QtCore import QMetaType

        return {"int": QMetaType.Type.Int, "real": QMetaType.Type.Double, "str": QMetaType.Type.QString}
    from qgis.PyQt.QtCore import QVariant

    return {"int": QVariant.Int, "real": QVariant.Double, "str": QVariant.String}  # Qt6-safe: QGIS < 3.38 only


_FIELD_TYPES = _field_types()


def _file_destination(parameters, name) -> Path | None:
    """The file a vector output parameter writes (its ``|layername=`` part dropped), or None for
    a temporary layer and ``memory:``, ``ogr:``, ``postgres:`` ... destinations."""
    text = str(_destination(parameters, name) or "")
    if not text or text == "TEMPORARY_OUTPUT" or ":" in text.split("/")[0] and not Path(text).is_absolute():
        return None
    return Path(text.split("|")[0])


#: field names GDAL and QGIS give a layer's feature ids (GeoPackage, SQLite, PostGIS via OGR)
FEATURE_ID_FIELDS = {"fid", "ogc_fid"}


def legend_names(layer) -> dict[int, str] | None:
    """Class value -> class name from a raster layer's paletted legend (the ``.qml`` Classify
    raster writes beside its class raster); None without one. A bare colour table (no ``.qml``)
    lists all its entries under their numbers: those are not class names."""
    names = None
    if isinstance(layer.renderer(), QgsPalettedRasterRenderer):
        legend = {int(c.value): c.label for c in layer.renderer().classes()}
        names = {value: label for value, label in legend.items() if label and label != str(value)} or None
    return names or _metadata_class_names(layer.source())


def _metadata_class_names(path: str) -> dict[int, str] | None:
    """Class value -> name from the ``CLASS_NAME_<value>`` band metadata that classify writes
    inside the class GeoTIFF (so a .tif without its .qml and .aux.xml still names its classes)."""
    try:
        from ..core.io.writers import metadata_class_names
    except ImportError:  # rasterio missing: the run's own check names it
        return None
    return metadata_class_names(path) or None


def geometry_kind(wkb_type) -> str:
    """'points', 'lines', 'polygons', or 'no geometry (a table)' for a layer's WKB type."""
    kind = QgsWkbTypes.geometryType(wkb_type)
    return {QgsWkbTypes.PointGeometry: "points", QgsWkbTypes.LineGeometry: "lines",
            QgsWkbTypes.PolygonGeometry: "polygons"}.get(kind, "no geometry (a table)")


def request_in_crs(source, crs, context, feedback, what: str) -> QgsFeatureRequest:
    """A feature request giving ``source``'s geometries in ``crs``; a layer without a known CRS
    (:func:`has_crs`) is taken to be in ``crs`` already, with a warning naming it as ``what``."""
    request = QgsFeatureRequest()
    if has_crs(source.sourceCrs()):
        request.setDestinationCrs(crs, context.transformContext())
    else:
        feedback.pushWarning(f"{what} has no CRS: its coordinates are taken to be in the raster's CRS "
                             f"({crs.authid() or crs.description()}); set the layer's CRS if they are not")
    return request


def has_crs(crs) -> bool:
    """Whether a layer's CRS is known: not invalid, and not the placeholder a GeoPackage without
    a spatial reference gets ("Undefined geographic SRS" / "Undefined Cartesian SRS", GPKG srs_id
    0 / -1), which QGIS takes for valid degrees so that reprojection loses every geometry."""
    return crs.isValid() and not crs.description().lower().startswith("undefined ")


def destination_file(dest_id) -> str | None:
    """The file behind a sink's destination id (``path`` or ``path|layername=...``), or None
    for a memory layer or a database table."""
    if not dest_id:
        return None
    path = Path(str(dest_id).split("|")[0])
    return str(path) if path.is_file() else None


#: the files a vector format writes beside its main file (OGR's Shapefile and MapInfo drivers)
_FORMAT_SIDECARS = {
    ".shp": (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".fix", ".qpj"),
    ".tab": (".dat", ".id", ".map", ".ind"),
    ".mif": (".mid",),
}


_MD_LINK = re.compile(r"\]\((?!https?:|#)([^)#\s]+?)(\.md)?(#[^)\s]*)?\)")


def help_page_url(name: str) -> str:
    """``file://`` URL of the reference page ``docs/algorithms/<name>.md`` rendered as HTML (with
    Qt's Markdown reader, into the user's cache folder; a browser shows it, where a .md file would
    open as text or not at all), links to the other pages kept working; the .md itself when it
    cannot be rendered; "" when there is no page."""
    pages = PLUGIN_DIR / "docs" / "algorithms"
    page = pages / f"{name}.md"
    if not page.is_file():
        return ""
    try:
        import hashlib
        import tempfile

        from qgis.PyQt.QtCore import QStandardPaths
        from qgis.PyQt.QtGui import QTextDocument

        cache = QStandardPaths.writableLocation(QStandardPaths.CacheLocation) or tempfile.gettempdir()
        # one folder per plugin location: the pages link to files of this copy of the plugin, so
        # pages rendered by another copy (an upgrade, a second profile, a renamed folder) do not serve
        where = hashlib.sha1(str(PLUGIN_DIR).encode("utf-8")).hexdigest()[:12]
        folder = Path(cache) / "glassbox-help" / where
        folder.mkdir(parents=True, exist_ok=True)

        def link(match):
            target, md, anchor = match.group(1), match.group(2), match.group(3) or ""
            if md and "/" not in target and (pages / f"{target}.md").is_file():
                return f"]({target}.html{anchor})"
            resolved = (pages / f"{target}{md or ''}").resolve()
            return f"]({QUrl.fromLocalFile(str(resolved)).toString()}{anchor})"

        html = folder / f"{name}.html"
        for source in pages.glob("*.md"):
            target = folder / f"{source.stem}.html"
            if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
                continue
            document = QTextDocument()
            document.setMarkdown(_MD_LINK.sub(link, source.read_text(encoding="utf-8")))
            target.write_text(document.toHtml(), encoding="utf-8")
        return QUrl.fromLocalFile(str(html)).toString()
    except Exception:  # no GUI, an old Qt, an unwritable cache: the Markdown page as it is
        return QUrl.fromLocalFile(str(page)).toString()


def remove_output_file(path) -> None:
    """Remove an output file this run created and its sidecars (.qml, .aux.xml, GeoPackage
    -wal/-shm/-journal, the other files of a Shapefile or MapInfo layer)."""
    if not path:
        return
    path = Path(str(path).split("|")[0])
    sidecars = [path.with_suffix(s) for s in _FORMAT_SIDECARS.get(path.suffix.lower(), ())]
    for candidate in (path, path.with_suffix(".qml"), Path(str(path) + ".aux.xml"), Path(str(path) + ".xml"),
                      *(Path(str(path) + s) for s in ("-wal", "-shm", "-journal")), *sidecars):
        if candidate.is_file():
            candidate.unlink()


def _table_file(text: str) -> Path | None:
    """The file of a destination that writes one table into a file: ``ogr:dbname='x.gpkg'
    table="t" (geom)`` (QGIS's *Save to GeoPackage*) or ``x.gpkg|layername=t``; None otherwise (a
    plain file path, which QGIS replaces whole, a temporary layer, another database)."""
    if text.startswith("ogr:"):
        from qgis.core import QgsDataSourceUri

        database = QgsDataSourceUri(text[len("ogr:"):]).database()
        return Path(database) if database else None
    if "|layername=" in text:
        return Path(text.split("|")[0])
    return None


def drop_table(dest_id: str) -> None:
    """Delete the layer ``layername`` of ``file|layername=...`` and its saved styles (GeoPackage
    ``layer_styles`` rows), leaving the file and its other layers as they were."""
    from osgeo import ogr

    path, name = _file_key(str(dest_id)) or (None, None)
    if path is None or name is None:
        return
    dataset = ogr.Open(path, 1)
    if dataset is None:
        return
    try:
        for index in range(dataset.GetLayerCount()):
            if dataset.GetLayer(index).GetName() == name:
                dataset.DeleteLayer(index)
                break
        if dataset.GetLayerByName("layer_styles") is not None:
            quoted = name.replace("'", "''")
            dataset.ExecuteSQL(f"DELETE FROM layer_styles WHERE f_table_name = '{quoted}'")
    finally:
        dataset = None


def check_extension(path: str, allowed: tuple[str, ...], what: str) -> None:
    """Check a file output before any work is done: its extension, and that it can be written
    (not a folder, its folder not a file nor read-only)."""
    if path and Path(path).suffix.lower() not in allowed:
        raise QgsProcessingException(f"{what} must be written as {' or '.join(allowed)}, not {path}")
    if path:
        from ..core.errors import OutputError
        from ..core.io.outputs import check_output_path

        try:
            check_output_path(path, what)
        except OutputError as exc:
            raise QgsProcessingException(str(exc)) from exc
