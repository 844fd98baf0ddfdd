"""glassbox:train_classifier - train a land-cover tile classifier from labelled tiles or from a
raster with labelled polygons; writes Torch weights + card and optionally ONNX."""

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
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.feedback import callbacks
from .base import (GlassboxAlgorithm, advanced, check_extension, class_mapping_parameters, device_parameter,
                   seed_parameter, vector_output_parameter)

#: the Network choices: label shown, core.architectures name, its keyword arguments (new ones go last:
#: models and scripts refer to a choice by its index)
NETWORKS = [
    ("Spatial-spectral CNN (spatial_spectral; paper 1)", "spatial_spectral", {}),
    ("Small CNN (paper1_cnn; paper 1's, fast)", "paper1_cnn", {}),
    ("ResNet18 (resnet18)", "resnet18", {}),
    ("ResNet18 for small tiles (resnet18_64)", "resnet18_64", {}),
    ("ResNet18 for small tiles, half width (resnet18_64 half width; the RGB default's)", "resnet18_64",
     {"width": 32}),
]


class LabelledTilesInput:
    """Parameters and reading shared by the algorithms that take labelled tiles: a folder of
    tiles (one sub-folder per class) OR a raster with a polygon layer and its class field."""

    INPUT_FOLDER = "INPUT_FOLDER"
    INPUT = "INPUT"
    POLYGONS = "POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    CLASS_MAPPING = "CLASS_MAPPING"
    CUSTOM_MAPPING = "CUSTOM_MAPPING"
    RASTER_BANDS = "RASTER_BANDS"
    MAX_TILES_PER_POLYGON = "MAX_TILES_PER_POLYGON"

    def add_labelled_tiles_parameters(self, bands_label: str) -> None:
        self.addParameter(
            QgsProcessingParameterFile(
                self.INPUT_FOLDER, self.tr("Folder of labelled tiles (one sub-folder per class)"),
                behavior=QgsProcessingParameterFile.Folder, optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("or: raster to cut tiles from"), optional=True))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.POLYGONS, self.tr("Labelled polygons (with the raster)"), [QgsProcessing.TypeVectorPolygon], optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.CLASS_FIELD, self.tr("Class field of the polygons"), parentLayerParameterName=self.POLYGONS,
                optional=True,
            )
        )
        for parameter in class_mapping_parameters(self.CLASS_MAPPING, self.CUSTOM_MAPPING):
            self.addParameter(parameter)
        self.addParameter(
            QgsProcessingParameterBand(
                self.RASTER_BANDS, bands_label, None, self.INPUT, optional=True, allowMultiple=True
            )
        )
        limit = QgsProcessingParameterNumber(
            self.MAX_TILES_PER_POLYGON, self.tr("Maximum tiles per polygon (0 = all that fit)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0,
        )
        self.addParameter(advanced(limit))

    def labelled_tiles_source(self, parameters, context, feedback):
        """A ``core.training.run.TileSource`` from the parameters (polygons reprojected to the
        raster's CRS, labels from the class field)."""
        from ..core.training.run import TileSource

        folder = self.parameterAsFile(parameters, self.INPUT_FOLDER, context)
        has_raster = parameters.get(self.INPUT) not in (None, "")
        has_polygons = parameters.get(self.POLYGONS) not in (None, "")
        if folder and (has_raster or has_polygons):
            raise QgsProcessingException(
                "give either a folder of labelled tiles, or a raster with labelled polygons, not both"
            )
        mapping = self.class_mapping(parameters, context, self.CLASS_MAPPING, self.CUSTOM_MAPPING)
        if folder:
            if mapping is not None:
                raise QgsProcessingException("a class mapping applies to the polygons' class values; a folder's "
                                             "sub-folder names are its classes: leave the mapping at 'None'")
            return TileSource(folder=folder)
        if not (has_raster and has_polygons):
            raise QgsProcessingException(
                "no labelled tiles: choose a folder of tiles (one sub-folder per class), or a raster "
                "together with a polygon layer and its class field"
            )
        layer, raster_path = self.file_raster(parameters, self.INPUT, context, "the raster")
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
        if not field:
            raise QgsProcessingException("choose the class field of the polygon layer")
        geometries, labels, ids = self.polygons(parameters, self.POLYGONS, context, layer.crs(), feedback,
                                                "the polygon layer", label_field=field, with_ids=True)
        max_tiles = self.parameterAsInt(parameters, self.MAX_TILES_PER_POLYGON, context)
        return TileSource(
            raster=raster_path, polygons=geometries, labels=labels, polygon_ids=ids,
            band_indices=self.band_list(parameters, self.RASTER_BANDS, context, feedback),
            max_tiles_per_polygon=max_tiles, mapping=mapping, class_field=field,
        )


class TrainClassifierAlgorithm(LabelledTilesInput, GlassboxAlgorithm):
    TILE_SIZE = "TILE_SIZE"
    GSD = "GSD"
    BANDS = "BANDS"
    ARCHITECTURE = "ARCHITECTURE"
    EPOCHS = "EPOCHS"
    BATCH_SIZE = "BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    VALIDATION_PERCENT = "VALIDATION_PERCENT"
    PATIENCE = "PATIENCE"
    SEED = "SEED"
    INITIAL_WEIGHTS = "INITIAL_WEIGHTS"
    DEVICE = "DEVICE"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_ONNX = "OUTPUT_ONNX"
    OUTPUT_SAMPLES = "OUTPUT_SAMPLES"
    VALIDATION_ACCURACY = "VALIDATION_ACCURACY"

    required_modules = ["numpy", "rasterio", "onnxruntime", "torch", "onnx"]

    group_id = "training"

    def name(self):
        return "train_classifier"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Train classifier")

    def tags(self):
        return ["train", "training", "classification", "land cover", "deep learning", "cnn", "resnet",
                "torch", "onnx", "labelled tiles", "polygons"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Trains your own land-cover model: a network that gives one class to each square tile of "
            "an image. The result can be used by 'Classify raster'.\n\n"
            "Labelled tiles come either from a folder with one sub-folder per class, named after the class, "
            "holding image tiles (jpg, png or GeoTIFF, any number of bands; all tiles the same size and "
            "band count), or from a raster and a polygon layer with a class field: tiles are cut from the "
            "raster wherever a whole tile fits inside a polygon (tiles on a grid, next to each other, inside "
            "each polygon) and get that polygon's class. Polygons in another CRS are reprojected. Class mapping: "
            "'None' takes the field's values as the classes; 'LCDB v5' groups LCDB codes or names (e.g. "
            "Class_2018) into LCDB's 7 groups with LCDB's colours; 'Custom' takes your own, e.g. 1,2,5=Urban; "
            "40,41=Grassland. Polygons of values a mapping does not name are skipped and listed in the log.\n\n"
            "Network: spatial_spectral (paper 1: a convolution branch for texture plus a per-pixel branch "
            "for the relations between bands, recommended), paper1_cnn (paper 1's CNN, small and fast), "
            "resnet18 (larger; can start from a ResNet18 weights file you give: layers whose shape does not "
            "fit, like the first one for other band counts, keep a random start), resnet18_64 (ResNet18 without "
            "the max pool after its first layer: sees more detail in small tiles such as 64 px; about 4 times "
            "slower; the same weights files fit) or resnet18_64 half width (the same with half the channels: "
            "the shipped default model's network, nearly as fast as paper1_cnn).\n"
            "Tile size: pixels per side (empty: the folder's tiles' size, or 64). Ground sample distance: "
            "metres per pixel the model works at (empty: the raster's, or the GeoTIFF tiles', else 10 m); "
            "a raster is read resampled to it. Band names: names to store in the model, comma-separated, "
            "in band order (e.g. B04,B03,B02), so 'Classify raster' finds the bands by name.\n\n"
            "Training: the tiles are split at random (seed) into training and validation tiles per class "
            "(validation %); tiles from polygons are split by polygon (all tiles of a polygon on one side). Tiles are flipped and turned by 90 degrees at random. After each epoch (a pass "
            "over all training tiles) the log shows loss and accuracy; training stops early when validation "
            "accuracy has not improved for 'patience' epochs, and the best epoch is kept. The same seed "
            "gives the same model.\n\n"
            "Outputs: the Torch model (.pt) with its model card (.json) beside it, and optionally the same "
            "model as ONNX (.onnx, card inside). The card holds classes, colours, bands, the scaling "
            "computed from the training tiles, tile size, ground sample distance and validation accuracy. "
            "For a raster, optionally a layer of the tiles used (class, train/val). Validation tiles come "
            "from the same data as the training tiles; check the model on separate data with 'Evaluate "
            "classifier'. Cancelling leaves no files."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.add_labelled_tiles_parameters("Raster bands to use (empty: all bands)")
        self.addParameter(QgsProcessingParameterEnum(self.ARCHITECTURE, self.tr("Network"), [label for label, _, _ in NETWORKS], defaultValue=0))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE_SIZE, self.tr("Tile size in pixels (empty: the tiles' size, or 64)"),
                QgsProcessingParameterNumber.Integer, optional=True, minValue=8, maxValue=1024,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.GSD, self.tr("Ground sample distance in metres per pixel (empty: from the data, else 10)"),
                QgsProcessingParameterNumber.Double, optional=True, minValue=0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.BANDS, self.tr("Band names, comma-separated, in band order (empty: from the data)"), optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.EPOCHS, self.tr("Epochs (at most)"), QgsProcessingParameterNumber.Integer,
                                         defaultValue=30, minValue=1, maxValue=10000)
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size (tiles per step)"),
                                         QgsProcessingParameterNumber.Integer, defaultValue=32, minValue=2,
                                         maxValue=4096)
        )
        self.addParameter(
            QgsProcessingParameterNumber(self.LEARNING_RATE, self.tr("Learning rate (peak)"), QgsProcessingParameterNumber.Double,
                                         defaultValue=0.001, minValue=1e-7, maxValue=1.0)
        )
        self.addParameter(advanced(
            QgsProcessingParameterNumber(self.VALIDATION_PERCENT, self.tr("Validation tiles (% of each class)"),
                                         QgsProcessingParameterNumber.Integer, defaultValue=20, minValue=0,
                                         maxValue=90)
        ))
        self.addParameter(advanced(
            QgsProcessingParameterNumber(self.PATIENCE, self.tr("Patience: stop after this many epochs without improvement "
                                                             "(0 = never stop early)"), QgsProcessingParameterNumber.Integer,
                                         defaultValue=5, minValue=0)
        ))
        self.addParameter(seed_parameter(self.SEED))
        self.addParameter(
            QgsProcessingParameterFile(
                self.INITIAL_WEIGHTS, self.tr("Start from weights (Torch state dict .pt/.pth, optional)"),
                behavior=QgsProcessingParameterFile.File, fileFilter="Torch weights (*.pt *.pth);;All files (*.*)",
                optional=True,
            )
        )
        self.addParameter(device_parameter(self.DEVICE))
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Trained model (Torch)"), "Torch models (*.pt)")
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_ONNX, self.tr("Trained model (ONNX)"), "ONNX models (*.onnx)", optional=True, createByDefault=True
            )
        )
        self.addParameter(vector_output_parameter(self.OUTPUT_SAMPLES, "Training tiles (raster input only)",
                                                  QgsProcessing.TypeVectorPolygon, optional=True))
        self.addOutput(QgsProcessingOutputNumber(self.VALIDATION_ACCURACY, self.tr("Validation accuracy (0-1)")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        source = self.labelled_tiles_source(parameters, context, feedback)
        weights = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        onnx = self.parameterAsFileOutput(parameters, self.OUTPUT_ONNX, context) or None
        want_samples = self.output_requested(parameters, self.OUTPUT_SAMPLES)
        self.check_vector_outputs(parameters, [self.OUTPUT_SAMPLES])
        check_extension(weights, (".pt", ".pth"), "the Torch model")
        check_extension(onnx, (".onnx",), "the ONNX model")
        names = [n.strip() for n in self.parameterAsString(parameters, self.BANDS, context).split(",") if n.strip()]
        initial = self.parameterAsFile(parameters, self.INITIAL_WEIGHTS, context) or None
        _, architecture, architecture_kwargs = NETWORKS[self.parameterAsEnum(parameters, self.ARCHITECTURE, context)]

        with self.core_errors():
            from ..core.training.loop import TrainOptions
            from ..core.training.run import train_and_save
            from ..core.io.vectors import IN_MEMORY

            options = TrainOptions(
                epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
                batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                lr=self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
                val_fraction=self.parameterAsInt(parameters, self.VALIDATION_PERCENT, context) / 100.0,
                patience=self.parameterAsInt(parameters, self.PATIENCE, context),
                seed=self.parameterAsInt(parameters, self.SEED, context),
                weights_path=initial,
                device=self.device(parameters, self.DEVICE, context),
                gsd=self.optional_number(parameters, self.GSD, context, float),
                architecture_kwargs=dict(architecture_kwargs),
            )
            result, written = train_and_save(
                source, architecture, options, weights, onnx, IN_MEMORY if want_samples else None,
                tile_size=self.optional_number(parameters, self.TILE_SIZE, context, int),
                band_names=names or None,
                **callbacks(feedback),
            )
        accuracy = result.card.accuracy.get("val_overall")
        feedback.pushInfo(
            f"Model '{result.card.name}': classes {'; '.join(result.card.class_names)}; bands "
            f"{', '.join(result.card.bands)}; kept epoch {result.best_epoch} of {len(result.history)}"
            + (f"; validation accuracy {accuracy:.2%}" if accuracy is not None else "")
            + ". Written: " + ", ".join(written.values())
        )
        outputs = {self.OUTPUT_MODEL: written["weights"], self.VALIDATION_ACCURACY: accuracy}
        if "onnx" in written:
            outputs[self.OUTPUT_ONNX] = written["onnx"]
        if want_samples:
            with self.removed_on_failure(written.values()):
                outputs[self.OUTPUT_SAMPLES] = self.write_vector_output(parameters, self.OUTPUT_SAMPLES, context,
                                                                        result.layers["samples"], feedback)
        return outputs
