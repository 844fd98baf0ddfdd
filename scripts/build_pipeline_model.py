"""Write resources/processing_models/classify_explain_segment.model3, the Processing model
"Classify, explain and segment": glassbox:classify, glassbox:explain and glassbox:segment (seeded
by explain's heatmap peaks) on one raster or a mosaic.

Run with a Python that has QGIS (e.g. ``.venv/bin/python scripts/build_pipeline_model.py``).
Every setting of a step that has a default is written into the model with that value (QGIS's
Graphical Modeler calls a model whose steps leave required settings unset invalid, although it
runs); the algorithms are read from the plugin's own classes, no provider needs to be loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = PLUGIN_DIR / "resources" / "processing_models" / "classify_explain_segment.model3"

NAME = "Classify, explain and segment"
HELP = (
    "Classifies a raster with a Glassbox model, explains the classification (Guided Grad-CAM "
    "heatmap and its strongest peaks) and draws polygons around the objects under the peaks "
    "(seeded watershed): glassbox:classify, glassbox:explain and glassbox:segment in one run, "
    "with their default settings.\n\n"
    "Input raster, or Mosaic: one raster, or several rasters of the same CRS and bands read as one "
    "(e.g. the granules of a region); give either or both.\n\n"
    "Model: an .onnx file, or a Torch .pt file with its .json card beside it; empty means the "
    "shipped model that reads the most of the raster's bands (the 13-band Sentinel-2 model for a "
    "Sentinel-2 stack with named bands, else the RGB model); the log says which and why.\n\n"
    "Mask layer (optional): polygons of an area of interest; the raster is classified, explained and "
    "segmented only inside them (outputs cover their extent; nodata outside them, segments cut at their "
    "edge).\n\n"
    "Outputs: the class raster, the heatmap raster, the heatmap peak points and the segment "
    "polygons (in the raster's CRS)."
)

#: (model output name, child id, child output, description)
OUTPUTS = [
    ("classes", "classify", "OUTPUT_CLASSES", "Classes"),
    ("heatmap", "explain", "OUTPUT_HEATMAP", "Heatmap"),
    ("peaks", "explain", "OUTPUT_PEAKS", "Heatmap peaks"),
    ("polygons", "segment", "OUTPUT_POLYGONS", "Segments"),
]


def step_algorithm(algorithm_id: str):
    """The Glassbox algorithm ``algorithm_id`` (``glassbox:<name>``), its parameters declared."""
    from glassbox.algorithms.classify import ClassifyRasterAlgorithm
    from glassbox.algorithms.explain import ExplainAlgorithm
    from glassbox.algorithms.segment import SegmentAlgorithm

    classes = {"glassbox:classify": ClassifyRasterAlgorithm, "glassbox:explain": ExplainAlgorithm,
               "glassbox:segment": SegmentAlgorithm}
    algorithm = classes[algorithm_id]()
    algorithm.initAlgorithm()
    return algorithm


def build_model():
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildDependency,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessing,
        QgsProcessingParameterBoolean,
        QgsProcessingParameterFeatureSource,
        QgsProcessingParameterFile,
        QgsProcessingParameterMultipleLayers,
        QgsProcessingParameterRasterLayer,
    )
    from qgis.PyQt.QtCore import QPointF

    model = QgsProcessingModelAlgorithm(NAME, "Pipelines", "pipelines")
    model.setHelpContent({"ALG_DESC": HELP, "ALG_CREATOR": "Glassbox",
                          "INPUT": "The raster to classify, explain and segment (or give a mosaic).",
                          "MOSAIC": "Rasters of the same CRS and bands read as one (instead of or beside the input).",
                          "MODEL": "Model file (empty: the shipped model that fits the raster's bands).",
                          "MASK": "Polygons of the area to work in (empty: the whole raster).",
                          "CLOUD_MASK": "Sentinel-2 L1C only: cloud pixels (s2cloudless) become class Cloud in the "
                                        "map and get no relevance and no peak, so no segment grows on cloud."})

    def add_input(definition, x):
        component = QgsProcessingModelParameter(definition.name())
        component.setPosition(QPointF(x, 60))
        model.addModelParameter(definition, component)

    add_input(QgsProcessingParameterRasterLayer("INPUT", "Input raster (or the mosaic below)", optional=True), 120)
    add_input(QgsProcessingParameterMultipleLayers(
        "MOSAIC", "Mosaic (several rasters read as one)",
        QgsProcessing.TypeRaster, optional=True), 840)
    # Optional and without a default value: an absolute path would not survive installation
    # elsewhere. Left empty, each Glassbox algorithm uses the shipped model itself.
    add_input(QgsProcessingParameterFile(
        "MODEL", "Model file (empty: automatic choice)",
        behavior=QgsProcessingParameterFile.File,
        fileFilter="Glassbox models (*.onnx *.pt *.pth);;All files (*.*)", optional=True), 360)
    add_input(QgsProcessingParameterFeatureSource(
        "MASK", "Mask layer (classify, explain and segment inside these polygons only; empty: the whole raster)",
        [QgsProcessing.TypeVectorPolygon], optional=True), 600)
    add_input(QgsProcessingParameterBoolean(
        "CLOUD_MASK", "Mask clouds (Sentinel-2 L1C, s2cloudless): cloud becomes class Cloud, with no relevance "
        "and no segment",
        defaultValue=False), 1080)

    def from_input(name):
        return [QgsProcessingModelChildParameterSource.fromModelParameter(name)]

    def child(child_id, algorithm_id, description, x, y, sources, after=()):
        algorithm = QgsProcessingModelChildAlgorithm(algorithm_id)
        if after:  # run in the documented order (classify, explain, segment), not the modeler's choice
            algorithm.setDependencies([QgsProcessingModelChildDependency(other) for other in after])
        algorithm.setChildId(child_id)
        algorithm.setDescription(description)
        algorithm.setPosition(QPointF(x, y))
        for name, source in sources.items():
            algorithm.addParameterSources(name, source)
        step = step_algorithm(algorithm_id)  # referenced while its parameter definitions are read
        for definition in step.parameterDefinitions():
            if definition.isDestination() or definition.name() in sources or definition.defaultValue() is None:
                continue
            algorithm.addParameterSources(
                definition.name(), [QgsProcessingModelChildParameterSource.fromStaticValue(definition.defaultValue())])
        outputs = {}
        for output_name, owner, child_output, output_description in OUTPUTS:
            if owner == child_id:
                output = QgsProcessingModelOutput(output_name, output_description)
                output.setChildId(child_id)
                output.setChildOutputName(child_output)
                output.setMandatory(True)
                output.setPosition(QPointF(x + 200, y + 60 + 30 * len(outputs)))
                outputs[output_name] = output
        algorithm.setModelOutputs(outputs)
        model.addChildAlgorithm(algorithm)

    raster_and_model = {"INPUT": from_input("INPUT"), "MOSAIC": from_input("MOSAIC"), "MODEL": from_input("MODEL"),
                        "MASK": from_input("MASK")}
    with_clouds = dict(raster_and_model, CLOUD_MASK=from_input("CLOUD_MASK"))
    child("classify", "glassbox:classify", "Classify raster", 120, 200, with_clouds)
    child("explain", "glassbox:explain", "Explain classification", 420, 200, with_clouds, after=["classify"])
    child("segment", "glassbox:segment", "Segment from explanations", 420, 400, {
        "INPUT": from_input("INPUT"),
        "MOSAIC": from_input("MOSAIC"),
        "MASK": from_input("MASK"),
        "SEEDS": [QgsProcessingModelChildParameterSource.fromChildOutput("explain", "OUTPUT_PEAKS")],
    })
    if hasattr(model, "setParameterOrder"):  # QGIS 3.26+; older QGIS orders the inputs by name
        model.setParameterOrder(["INPUT", "MOSAIC", "MODEL", "MASK", "CLOUD_MASK"])
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", default=str(DEFAULT_OUTPUT), help="the .model3 to write")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication, QgsProcessingModelAlgorithm

    app = QgsApplication([], False)
    app.initQgis()
    try:
        model = build_model()
        if not model.toFile(args.output):
            sys.exit(f"cannot write {args.output}")
        check = QgsProcessingModelAlgorithm()
        if not check.fromFile(args.output):
            sys.exit(f"{args.output} was written but QGIS cannot load it")
        print(f"wrote {args.output}")
    finally:
        app.exitQgis()


if __name__ == "__main__":
    main()
