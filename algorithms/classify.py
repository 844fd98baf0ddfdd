"""glassbox:classify - classify a raster layer tile by tile with an ONNX or Torch model."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterExtent,
    QgsProcessingOutputNumber,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..core.feedback import callbacks
from .base import (
    GlassboxAlgorithm,
    advanced,
    adapt_always_parameter,
    adapt_parameter,
    cloud_mask_parameter,
    cloud_threshold_parameter,
    adaptation_mode_from,
    bands_parameter,
    batch_size_parameter,
    check_extension,
    device_parameter,
    input_raster_parameter,
    mask_parameter,
    model_parameter,
    mosaic_parameter,
    nodata_parameter,
    stride_parameter,
    tta_parameter,
    vector_output_parameter,
)
from .styles import class_renderer, confidence_renderer, save_style, style_on_load


class ClassifyRasterAlgorithm(GlassboxAlgorithm):
    INPUT = "INPUT"
    MOSAIC = "MOSAIC"
    MODEL = "MODEL"
    BANDS = "BANDS"
    TILE_STRIDE = "TILE_STRIDE"
    BATCH_SIZE = "BATCH_SIZE"
    NODATA = "NODATA"
    EXTENT = "EXTENT"
    MASK = "MASK"
    DEVICE = "DEVICE"
    TEST_TIME_AUGMENTATION = "TEST_TIME_AUGMENTATION"
    ADAPT_TO_SCENE = "ADAPT_TO_SCENE"
    ADAPT_ALWAYS = "ADAPT_ALWAYS"
    MIN_CONFIDENCE = "MIN_CONFIDENCE"
    CLOUD_MASK = "CLOUD_MASK"
    CLOUD_THRESHOLD = "CLOUD_THRESHOLD"
    WORKERS = "WORKERS"
    DASK_SCHEDULER = "DASK_SCHEDULER"
    OUTPUT_CLASSES = "OUTPUT_CLASSES"
    OUTPUT_PROBABILITIES = "OUTPUT_PROBABILITIES"
    OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"
    OUTPUT_TILES = "OUTPUT_TILES"
    RADIOMETRY_DISTANCE = "RADIOMETRY_DISTANCE"
    RADIOMETRY_THRESHOLD = "RADIOMETRY_THRESHOLD"

    group_id = "classification"

    def name(self):
        return "classify"

    def displayName(self):  # noqa: N802 (QGIS API name)
        return self.tr("Classify raster")

    def tags(self):
        return ["classification", "land cover", "deep learning", "onnx", "torch", "sentinel-2", "cnn"]

    def shortHelpString(self):  # noqa: N802 (QGIS API name)
        return self.tr(
            "Classifies a raster layer into land-cover classes, tile by tile, with a deep-learning "
            "model (ONNX, or Torch with a model card). Left empty, the model is chosen from the raster's "
            "bands, and the log says which and why: the shipped model that reads the most of them (or, with "
            "Bands set, as many as were selected). A "
            "Sentinel-2 L1C stack whose bands are named B01 ... B12, B8A (band descriptions, any order) gets "
            "the 13-band model (the RGB network with a spectral branch); a raster with bands named "
            "B04, B03, B02, or with exactly 3 unnamed bands, gets the RGB network (a ResNet18), which reads "
            "the red, green and blue bands of a Sentinel-2 L1C image at 10 m. Both know the 10 EuroSAT "
            "classes (crops, forest, pasture, residential, water, ...); their accuracies, and where they "
            "fail (other seasons, haze, cloud), are in the plugin folder's docs/models.md (and the README of its repository).\n\n"
            "The raster is cut into square tiles of the model's size (64 x 64 pixels at 10 m = 640 m "
            "for the default). A raster whose pixel size differs from the model's is read resampled to "
            "the model's resolution; the outputs stay on the input raster's grid and CRS.\n\n"
            "Model: an .onnx file, or a Torch .pt file with its .json card beside it.\n"
            "Bands: the raster bands to feed the model, in the model's band order. Left empty, bands "
            "are found by their names (band descriptions such as B04), or taken in order when the "
            "raster has exactly as many bands as the model reads.\n"
            "Tile stride: model pixels from one tile to the next. Smaller than the tile size, tiles "
            "overlap and their results are blended (smoother map, slower). Empty = half a tile.\n"
            "Batch size: tiles sent to the model at once (more = faster, more memory).\n"
            "Nodata value: overrides the raster's own. Tiles that are more than half nodata are skipped "
            "and written as nodata; nodata pixels stay nodata.\n"
            "Extent / Mask layer: only classify inside the extent and/or inside the mask polygons.\n"
            "Device: cpu, cuda (an NVIDIA GPU; fails clearly if there is none) or auto.\n"
            "Test-time augmentation: each tile is classified as the mean of the model's outputs over its 8 "
            "rotations and flips (land cover seen from above has no preferred orientation): 8 times slower, "
            "usually a little more accurate.\n"
            "Adapt to the scene: before classifying, the model re-learns the brightness and contrast statistics "
            "of its internal layers (batch normalisation) from about 1000 tiles of this raster, without labels; "
            "its learnt weights are not changed. It makes the model far less sensitive to a scene that is "
            "darker, brighter, hazier, noisier or blurrier than its training tiles, and costs about 20-60 s. A "
            "raster of almost one land cover (open sea, one forest) would be normalised towards it and "
            "mapped wrongly; the adapted model is then much less sure of the raster's tiles, so it is not "
            "used (the log says so and gives the figures) and the model as trained classifies the raster. "
            "Advanced: 'Keep the scene adaptation even if...' uses it regardless. A raster too small for "
            "adaptation (under 32 tiles) or a model without normalisation layers is classified as trained. "
            "Works with the shipped models and with any ONNX export that kept its batch-normalisation layers "
            "(Glassbox's exports do), without PyTorch; an older ONNX export needs its Torch .pt of the same "
            "name beside it.\n"
            "Scene radiometry: for a model with a radiometry reference beside it (every shipped model, and "
            "models trained here from 64 tiles or more), the "
            "median brightness, contrast and fine detail of about 1000 of the raster's tiles are compared with "
            "those of the model's training tiles; the log warns when the scene looks unlike them (another "
            "season, atmosphere or sensor, or a land-cover mix far from the training data's: expect a less "
            "accurate map), and the outputs 'Scene radiometry distance' and its threshold give the figures "
            "(empty without a reference).\n"
            "Minimum confidence (advanced): a model always picks one of its classes, even for what it "
            "never saw (snow, cloud, a landscape unlike its training tiles). Pixels whose highest class "
            "probability is below this value (0-1; e.g. 0.6) are written as class 'Unclassified' "
            "(value 254, grey) instead of a guess, and their number is logged. 0 = off (default). The "
            "probability and confidence rasters keep the model's values.\n"
            "Mask clouds (Sentinel-2 L1C): finds cloud with s2cloudless (Sentinel Hub's cloud detector, "
            "its model ships with the package; nothing is downloaded) and writes cloud pixels as class "
            "'Cloud' (value 253, near white); they are counted apart and left out of the class shares. "
            "The raster must hold the L1C bands B01, B02, B04, B05, B08, B8A, B09, B10, B11 and B12 named "
            "in its band descriptions (e.g. a 13-band stack), as top-of-atmosphere digital numbers "
            "(reflectance x 10000; for products of processing baseline 04.00 or later, from 25 January 2022, "
            "subtract the 1000 offset first). L2A data lacks B10 and is refused. Adds roughly 15 s per "
            "million pixels.\n"
            "Cloud probability threshold (advanced): pixels above it are cloud (default 0.6; s2cloudless's "
            "own 0.4 also takes bright bare winter fields for cloud).\n\n"
            "Mosaic: several rasters (same CRS, same bands) classified as one, e.g. the granules of a region; "
            "they are read through a virtual raster (VRT), and a .vrt file works as the input raster too. "
            "Given beside the input raster, it joins the mosaic.\n"
            "Worker processes (advanced): the raster is classified in row bands of tiles, by this many "
            "processes at once. 0 (default) = all CPU cores when there are at least 1000 tiles, else one; "
            "1 = in QGIS's own process. The outputs are the same, byte for byte, for any number.\n"
            "Dask scheduler (advanced): the address of a Dask distributed scheduler (e.g. tcp://host:8786): "
            "its workers classify the row bands instead, reading the raster and the model by the same "
            "path (a shared disk, or a GDAL URL such as /vsicurl/...); they need Glassbox's Python "
            "packages and Glassbox itself importable. QGIS writes the outputs.\n"
            "Resume: a run that lasts more than a few seconds keeps its finished row bands in a hidden "
            "folder beside the first output (named after it: .classes.tif.glassbox-resume for "
            "classes.tif). If it is killed or cancelled, running it again with the same input, model, "
            "options and outputs continues from there and writes the same result; the folder is removed "
            "when a run succeeds.\n\n"
            "Outputs: the class raster (styled with the model's colours and class names); on request "
            "the probability raster (one 32-bit float band per class, 0-1: tens of times the class "
            "raster's size and, on two cores, about a fifth of the run time, so it is written only "
            "when asked for), the "
            "confidence raster (highest class probability, 0-1) and a polygon layer of the tiles "
            "with their class and probabilities (Unclassified and Cloud as in the class raster). "
            "Class values: 0, 1, ... the model's classes, 253 Cloud, 254 Unclassified, 255 nodata."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API name)
        self.addParameter(input_raster_parameter(self.INPUT, "Input raster (or the mosaic below)", optional=True))
        self.addParameter(mosaic_parameter(self.MOSAIC))
        self.addParameter(model_parameter(self.MODEL, auto=True))
        self.addParameter(bands_parameter(self.BANDS, self.INPUT))
        self.addParameter(stride_parameter(self.TILE_STRIDE))
        self.addParameter(batch_size_parameter(self.BATCH_SIZE, 32))
        self.addParameter(nodata_parameter(self.NODATA))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent to classify"), optional=True))
        self.addParameter(mask_parameter(self.MASK, "classify"))
        self.addParameter(device_parameter(self.DEVICE))
        self.addParameter(tta_parameter(self.TEST_TIME_AUGMENTATION))
        self.addParameter(adapt_parameter(self.ADAPT_TO_SCENE))
        self.addParameter(adapt_always_parameter(self.ADAPT_ALWAYS))
        min_confidence = QgsProcessingParameterNumber(
            self.MIN_CONFIDENCE, self.tr("Minimum confidence: below it a pixel is Unclassified (0 = off)"),
            QgsProcessingParameterNumber.Double, defaultValue=0.0, minValue=0.0, maxValue=1.0)
        self.addParameter(advanced(min_confidence))
        self.addParameter(cloud_mask_parameter(self.CLOUD_MASK))
        self.addParameter(cloud_threshold_parameter(self.CLOUD_THRESHOLD))
        workers = QgsProcessingParameterNumber(
            self.WORKERS, self.tr("Worker processes (0 = all CPU cores for large rasters, 1 = in this process)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0)
        self.addParameter(advanced(workers))
        scheduler = QgsProcessingParameterString(
            self.DASK_SCHEDULER, self.tr("Dask scheduler address (e.g. tcp://host:8786; empty = this computer)"),
            optional=True)
        self.addParameter(advanced(scheduler))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_CLASSES, self.tr("Classes")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_PROBABILITIES, self.tr("Class probabilities"), optional=True, createByDefault=False))
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_CONFIDENCE, self.tr("Confidence"), optional=True, createByDefault=False
            )
        )
        self.addOutput(QgsProcessingOutputNumber(
            self.RADIOMETRY_DISTANCE, self.tr("Scene radiometry distance from the model's training tiles (spreads)")))
        self.addOutput(QgsProcessingOutputNumber(
            self.RADIOMETRY_THRESHOLD, self.tr("Largest scene radiometry distance like the training tiles")))
        self.addParameter(vector_output_parameter(self.OUTPUT_TILES, "Tile grid", QgsProcessing.TypeVectorPolygon,
                                                  optional=True))

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API name)
        """A negative or fractional WORKERS is refused saying what is allowed (QGIS's own check
        only says the value is incorrect)."""
        value = parameters.get(self.WORKERS)
        if isinstance(value, (int, float, str)) and str(value).strip() != "":
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if number < 0 or number != int(number):
                return False, self.tr("Worker processes (WORKERS) must be 0 (all CPU cores) or a whole number of "
                                      "processes, 1 or more; got {}").format(value)
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API name)
        layer, input_paths = self.input_rasters(parameters, context)
        input_path = input_paths[0] if len(input_paths) == 1 else input_paths
        bands = self.band_list(parameters, self.BANDS, context, feedback)
        model_path = self.model_path(parameters, self.MODEL, context, input_paths[0], feedback, bands)
        stride = self.optional_number(parameters, self.TILE_STRIDE, context, int)
        nodata = self.nodata_value(parameters, self.NODATA, context, layer, feedback)
        batch_size = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        device = self.device(parameters, self.DEVICE, context)
        extent = self.optional_extent(parameters, self.EXTENT, context, layer.crs())
        mask = self.optional_mask(parameters, self.MASK, context, layer.crs(), feedback)

        outputs = {
            key: self.parameterAsOutputLayer(parameters, key, context) or None
            for key in (self.OUTPUT_CLASSES, self.OUTPUT_PROBABILITIES, self.OUTPUT_CONFIDENCE)
        }
        want_tiles = self.output_requested(parameters, self.OUTPUT_TILES)
        self.check_vector_outputs(parameters, [self.OUTPUT_TILES])
        for key in (self.OUTPUT_CLASSES, self.OUTPUT_PROBABILITIES, self.OUTPUT_CONFIDENCE):
            check_extension(outputs[key], (".tif", ".tiff"), self.parameterDefinition(key).description())

        min_confidence = self.parameterAsDouble(parameters, self.MIN_CONFIDENCE, context)
        cloud_mask = self.parameterAsBool(parameters, self.CLOUD_MASK, context)
        workers = self.parameterAsInt(parameters, self.WORKERS, context)
        scheduler = self.parameterAsString(parameters, self.DASK_SCHEDULER, context).strip() or None
        with self.core_errors():
            from ..core.classify import ClassifyOptions, classify_raster
            from ..core.io.writers import CLOUD, EXTRA_CLASSES, UNCLASSIFIED
            from ..core.io.vectors import IN_MEMORY

            result = classify_raster(
                input_path,
                model_path,
                outputs[self.OUTPUT_CLASSES],
                outputs[self.OUTPUT_PROBABILITIES],
                outputs[self.OUTPUT_CONFIDENCE],
                IN_MEMORY if want_tiles else None,
                ClassifyOptions(stride=stride, batch_size=batch_size, bands=bands, nodata=nodata,
                                extent=extent, mask=mask, device=device,
                                test_time_augmentation=self.parameterAsBool(
                                    parameters, self.TEST_TIME_AUGMENTATION, context),
                                adapt_to_scene=adaptation_mode_from(self, parameters, context),
                                min_confidence=min_confidence, cloud_mask=cloud_mask,
                                cloud_threshold=self.parameterAsDouble(parameters, self.CLOUD_THRESHOLD, context),
                                workers=workers, dask_scheduler=scheduler),
                **callbacks(feedback),
            )
        feedback.pushInfo(
            f"Classified {result.tiles_classified} of {result.tiles_total} tiles "
            f"({result.tiles_skipped} skipped as nodata{' or outside the mask' if mask else ''}) in {result.seconds:.1f} s with "
            f"'{result.card.name}' on bands {result.bands}, {result.ran or 'all from saved row bands'}."
        )
        if result.row_bands_resumed:
            feedback.pushInfo(f"Resumed: {result.row_bands_resumed} of {result.row_bands} row bands "
                              f"({result.tiles_resumed} tiles) came from an interrupted run.")
        counts = dict(result.class_pixel_counts)
        if min_confidence > 0:
            counts["Unclassified"] = result.unclassified_pixels
        total = sum(counts.values()) or 1
        shares = ", ".join(f"{n} {100 * c / total:.1f} %" for n, c in counts.items() if c)
        feedback.pushInfo(f"Class shares{' (cloud-free pixels)' if cloud_mask else ''}: {shares}")
        names = list(result.class_pixel_counts)
        if all(n.strip().lstrip("-").isdigit() for n in names) and any(n.strip() != str(i) for i, n in enumerate(names)):
            feedback.pushInfo("The class raster holds class numbers, not the classes' codes: "
                              + ", ".join(f"{i} = {n}" for i, n in enumerate(names[:12]))
                              + (", ..." if len(names) > 12 else "")
                              + " (its legend and CLASS_NAME_<value> metadata give the codes; to compare with a code "
                              "raster, reclassify it, e.g. with Reclassify by table)")
        top_class, top_count = max(result.class_pixel_counts.items(), key=lambda item: item[1], default=("", 0))
        if (result.tiles_classified >= 16 and result.tiles_certain >= 0.99 * result.tiles_classified
                and top_count >= 0.99 * sum(result.class_pixel_counts.values())):
            feedback.pushWarning(
                f"every tile went to {top_class} with a probability of 1.0: a model this sure of a whole raster is "
                "usually reading values far outside what it was trained on. Check the model card's scaling (scale, "
                "offset, clip, mean, std) against the training code (docs/models.md, Bringing your own model); on a "
                "raster of one land cover, ignore this")
        if min_confidence > 0:
            feedback.pushInfo(f"Unclassified: {result.unclassified_pixels} pixels "
                              f"({100 * result.unclassified_pixels / total:.1f} %) with a highest class probability "
                              f"below {min_confidence:g}")
        if cloud_mask:
            share = 100 * result.cloud_pixels / max(1, total + result.cloud_pixels)
            feedback.pushInfo(f"Cloud: {result.cloud_pixels} pixels ({share:.1f} % of the classified area), "
                              "kept out of the class shares")
        extra = [(v, *EXTRA_CLASSES[v]) for v, on in ((UNCLASSIFIED, min_confidence > 0), (CLOUD, cloud_mask)) if on]

        classes_path = outputs[self.OUTPUT_CLASSES]
        if classes_path:
            qml = save_style(classes_path, lambda lyr: class_renderer(lyr, result.card.classes, extra))
            style_on_load(context, classes_path, qml, "Classes")
        confidence_path = outputs[self.OUTPUT_CONFIDENCE]
        if confidence_path:
            qml = save_style(confidence_path, confidence_renderer)
            style_on_load(context, confidence_path, qml, "Confidence")
        probabilities_path = outputs[self.OUTPUT_PROBABILITIES]
        if probabilities_path:  # QGIS would show bands 1-3 as an RGB composite: one class's 0-1 instead
            qml = save_style(probabilities_path, confidence_renderer)
            style_on_load(context, probabilities_path, qml,
                          f"Probabilities (band 1: {result.card.class_names[0]}; other classes in bands 2-"
                          f"{result.card.num_classes})")
        outputs = {key: path for key, path in outputs.items() if path}
        radiometry = result.radiometry
        outputs[self.RADIOMETRY_DISTANCE] = None if radiometry is None else round(radiometry.distance, 3)
        outputs[self.RADIOMETRY_THRESHOLD] = None if radiometry is None else round(radiometry.threshold, 3)
        if want_tiles:
            with self.removed_on_failure(list(outputs.values())):
                outputs[self.OUTPUT_TILES] = self.write_vector_output(parameters, self.OUTPUT_TILES, context,
                                                                      result.layers["tiles"], feedback)
        return outputs
