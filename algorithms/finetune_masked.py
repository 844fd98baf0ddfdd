"""glassbox:finetune_masked - fine-tune a model on tiles whose background (outside the polygons
of the tile's land-cover class) is masked, from a raster and a polygon layer such as LCDB."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..core.feedback import callbacks
from .base import (GlassboxAlgorithm, advanced, check_extension, class_mapping_parameters, device_parameter,
                   input_raster_parameter, seed_parameter, vector_output_parameter)

DEFAULT_CLASS_FIELD = "Class_2018"
#: (label, core mask type)
MASK_TYPES = [
    ("White", "white"),
    ("Black", "black"),
    ("Median of the training data", "median"),
    ("Gaussian blur", "blur"),
    ("None: raw tiles (e.g. the raw model of an ensemble)", "none"),
]


class FinetuneMaskedAlgorithm(GlassboxAlgorithm):
    INPUT = "INPUT"
    POLYGONS = "POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    CLASS_MAPPING = "CLASS_MAPPING"
    CUSTOM_MAPPING = "CUSTOM_MAPPING"
    BASE_MODEL = "BASE_MODEL"
    BANDS = "BANDS"
    MASK_TYPE = "MASK_TYPE"
    TILES_PER_POLYGON = "TILES_PER_POLYGON"
    MIN_INSIDE_PERCENT = "MIN_INSIDE_PERCENT"
    BLUR_SIGMA = "BLUR_SIGMA"
    EPOCHS = "EPOCHS"
    BATCH_SIZE = "BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    VALIDATION_PERCENT = "VALIDATION_PERCENT"
    PATIENCE = "PATIENCE"
    SEED = "SEED"
    DEVICE = "DEVICE"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_ONNX = "OUTPUT_ONNX"
    OUTPUT_SAMPLES = "OUTPUT_SAMPLES"
    VALIDATION_ACCURACY = "VALIDATION_ACCURACY"

    required_modules = ["numpy", "rasterio", "onnxruntime", "torch", "onnx", "scipy"]

    group_id = "training"

    def name(self):
        return "finetune_masked"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Fine-tune on masked tiles (LCDB polygons)")

    def tags(self):
        return ["masked", "mask", "fine-tune", "finetune", "training", "lcdb", "land cover database", "polygons",
                "background", "ensemble", "explainability", "paper 2"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Teaches a model to look at the land cover itself, not at its surroundings (paper 2). Tiles are cut "
            "from the raster around the polygons of a land-cover layer (such as the New Zealand Land Cover "
            "Database, LCDB); in every tile, everything outside the polygons of the tile's own class is replaced "
            "by a mask, and a copy of the base model is trained further on these tiles. Combine the result with "
            "the raw model in 'Ensemble of a raw and a masked model'.\n\n"
            "Polygons: any CRS (LCDB is in NZTM, EPSG:2193); they are reprojected to the raster's CRS.\n"
            "Class field: the polygons' land-cover code (default Class_2018, LCDB's 2018 class).\n"
            "Class mapping: LCDB v5 groups LCDB's 33 classes into its 7 top-level groups (Artificial Surfaces; "
            "Bare or Lightly-vegetated Surfaces; Water Bodies; Cropland; Grassland, Sedge and Saltmarsh; Scrub "
            "and Shrubland; Forest), as the paper grouped them; source: Manaaki Whenua - Landcare Research, "
            "LCDB v5 class table. It matches LCDB codes or class names (so Name_2018 works too). 'None' uses "
            "the field's values as classes. 'Custom' reads the mapping below, e.g. 1,2,5=Urban; 40,41=Grassland "
            "(or JSON such as {\"Urban\": [1, 2, 5]}). Polygons whose value is not mapped (e.g. LCDB code 0, "
            "Not land) are skipped and listed in the log.\n"
            "Base model: a Torch model (.pt with its .json card) to start from, e.g. the raw model from 'Train "
            "classifier'. Its network, bands, tile size, resolution and scaling are kept. When its classes "
            "differ from the mapped ones, its last layer starts afresh (the log says so).\n"
            "Mask: white or black (the brightest / darkest value the model distinguishes), the median of the "
            "training tiles (the paper used ImageNet's median, which means nothing for satellite bands), a "
            "Gaussian blur of the tile, or none (raw tiles: trains the raw model of an ensemble with the mapped "
            "classes).\n"
            "Tiles: a tile is taken where its centre lies inside a polygon and at least the given share (default "
            "50 %) of it lies inside, so it also shows background to mask; at most 'tiles per polygon' per "
            "polygon (a seeded random choice; 0 = all). Tiles with nodata are skipped.\n"
            "Training: as in 'Train classifier' (validation share of each class, early stopping, flips and "
            "turns, the same seed gives the same model). The log and the card give the validation accuracy on "
            "masked tiles and on the same tiles unmasked.\n\n"
            "Outputs: the Torch model (.pt) with its card (.json; it records the mask, the class mapping and the "
            "base model), optionally the same model as ONNX and a layer of the tiles used. Cancelling or an "
            "error leaves no files. A polygon layer that does not overlap the raster is an error."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(input_raster_parameter(self.INPUT, "Raster"))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.POLYGONS, self.tr("Land-cover polygons (e.g. LCDB)"), [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.CLASS_FIELD, self.tr("Class field (default Class_2018, LCDB's 2018 class code)"),
                defaultValue=DEFAULT_CLASS_FIELD, parentLayerParameterName=self.POLYGONS, optional=True,
            )
        )
        for parameter in class_mapping_parameters(self.CLASS_MAPPING, self.CUSTOM_MAPPING, default=0):
            self.addParameter(parameter)
        self.addParameter(
            QgsProcessingParameterFile(
                self.BASE_MODEL, self.tr("Base model (Torch .pt with its .json card)"),
                behavior=QgsProcessingParameterFile.File, fileFilter="Torch models (*.pt *.pth);;All files (*.*)",
            )
        )
        self.addParameter(
            QgsProcessingParameterBand(
                self.BANDS, self.tr("Raster bands, in the model's order (empty: from the model card)"), None, self.INPUT,
                optional=True, allowMultiple=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.MASK_TYPE, self.tr("Background mask"), [m[0] for m in MASK_TYPES], defaultValue=2)
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.TILES_PER_POLYGON, self.tr("Maximum tiles per polygon (0 = all that fit)"),
                                         QgsProcessingParameterNumber.Integer, defaultValue=20, minValue=0)
        )
        more = [
            QgsProcessingParameterNumber(self.MIN_INSIDE_PERCENT, self.tr("Share of a tile inside its polygon (%, at least)"),
                                         QgsProcessingParameterNumber.Integer, defaultValue=50, minValue=1,
                                         maxValue=100),
            QgsProcessingParameterNumber(self.BLUR_SIGMA, self.tr("Blur sigma in model pixels (empty: tile size / 16)"),
                                         QgsProcessingParameterNumber.Double, optional=True, minValue=0.1),
            QgsProcessingParameterNumber(self.VALIDATION_PERCENT, self.tr("Validation tiles (% of each class)"),
                                         QgsProcessingParameterNumber.Integer, defaultValue=20, minValue=0,
                                         maxValue=90),
            QgsProcessingParameterNumber(self.PATIENCE, self.tr("Patience: stop after this many epochs without improvement "
                                                             "(0 = never stop early)"), QgsProcessingParameterNumber.Integer,
                                         defaultValue=5, minValue=0),
        ]
        self.addParameter(
            QgsProcessingParameterNumber(self.EPOCHS, self.tr("Epochs (at most)"), QgsProcessingParameterNumber.Integer,
                                         defaultValue=10, minValue=1, maxValue=10000)
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size (tiles per step)"),
                                         QgsProcessingParameterNumber.Integer, defaultValue=32, minValue=2,
                                         maxValue=4096)
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.LEARNING_RATE, self.tr("Learning rate (peak)"),
                                         QgsProcessingParameterNumber.Double, defaultValue=0.0003, minValue=1e-7,
                                         maxValue=1.0)
        )
        self.addParameter(seed_parameter(self.SEED))
        for parameter in more:
            self.addParameter(advanced(parameter))
        self.addParameter(device_parameter(self.DEVICE))
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Fine-tuned model (Torch)"), "Torch models (*.pt)")
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_ONNX, self.tr("Fine-tuned model (ONNX)"), "ONNX models (*.onnx)", optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(vector_output_parameter(self.OUTPUT_SAMPLES, "Training tiles", QgsProcessing.TypeVectorPolygon,
                                                  optional=True))
        self.addOutput(QgsProcessingOutputNumber(self.VALIDATION_ACCURACY, self.tr("Validation accuracy on masked tiles (0-1)")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        layer, raster_path = self.file_raster(parameters, self.INPUT, context, "the raster")
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context) or DEFAULT_CLASS_FIELD
        base = self.parameterAsFile(parameters, self.BASE_MODEL, context)
        if not base:
            raise QgsProcessingException("choose the base model (a Torch .pt with its .json card)")
        weights = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        onnx = self.parameterAsFileOutput(parameters, self.OUTPUT_ONNX, context) or None
        want_samples = self.output_requested(parameters, self.OUTPUT_SAMPLES)
        self.check_vector_outputs(parameters, [self.OUTPUT_SAMPLES])
        check_extension(weights, (".pt", ".pth"), "the Torch model")
        check_extension(onnx, (".onnx",), "the ONNX model")
        mask_type = MASK_TYPES[self.parameterAsEnum(parameters, self.MASK_TYPE, context)][1]

        with self.core_errors():
            mapping = self.class_mapping(parameters, context, self.CLASS_MAPPING, self.CUSTOM_MAPPING)
            geometries, values, ids = self.polygons(parameters, self.POLYGONS, context, layer.crs(), feedback,
                                                    "the polygon layer", label_field=field, with_ids=True)
            feedback.pushInfo(f"{len(geometries)} polygons with a '{field}' value, in the raster's CRS "
                              f"{layer.crs().authid() or layer.crs().description()}")
            from ..core.masking.finetune import MaskedFinetuneOptions, finetune_masked
            from ..core.io.vectors import IN_MEMORY

            options = MaskedFinetuneOptions(
                mask_type=mask_type,
                epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
                batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                lr=self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
                seed=self.parameterAsInt(parameters, self.SEED, context),
                val_fraction=self.parameterAsInt(parameters, self.VALIDATION_PERCENT, context) / 100.0,
                patience=self.parameterAsInt(parameters, self.PATIENCE, context),
                tiles_per_polygon=self.parameterAsInt(parameters, self.TILES_PER_POLYGON, context),
                min_inside=self.parameterAsInt(parameters, self.MIN_INSIDE_PERCENT, context) / 100.0,
                blur_sigma=self.optional_number(parameters, self.BLUR_SIGMA, context, float),
                device=self.device(parameters, self.DEVICE, context),
                extra_training={"class_field": field},
            )
            run = finetune_masked(
                raster_path, geometries, values, base, mapping, options, weights, onnx,
                IN_MEMORY if want_samples else None,
                band_indices=self.band_list(parameters, self.BANDS, context, feedback), polygon_ids=ids,
                **callbacks(feedback),
            )
        card = run.result.card
        accuracy = card.accuracy.get("val_overall")
        feedback.pushInfo(
            f"Model '{card.name}': classes {'; '.join(card.class_names)}; mask {mask_type}; kept epoch "
            f"{run.result.best_epoch} of {len(run.result.history)}"
            + ("" if accuracy is None else f"; validation accuracy {accuracy:.2%}" if mask_type == "none" else
               f"; validation accuracy {accuracy:.2%} (masked tiles), "
               f"{card.accuracy.get('val_overall_unmasked', float('nan')):.2%} (unmasked)")
            + ". Written: " + ", ".join(run.written.values())
        )
        outputs = {self.OUTPUT_MODEL: run.written["weights"], self.VALIDATION_ACCURACY: accuracy}
        if "onnx" in run.written:
            outputs[self.OUTPUT_ONNX] = run.written["onnx"]
        if want_samples:
            with self.removed_on_failure(run.written.values()):
                outputs[self.OUTPUT_SAMPLES] = self.write_vector_output(parameters, self.OUTPUT_SAMPLES, context,
                                                                        run.result.layers["samples"], feedback)
        return outputs
