"""QGIS styles for Glassbox outputs, saved as ``.qml`` beside each raster (QGIS loads a
same-named .qml automatically, also for outputs of ``qgis_process``) and applied when the
output is loaded into the project."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsColorRampShader,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)
from qgis.PyQt.QtGui import QColor

# Post-processors must outlive processAlgorithm; QGIS does not keep a reference.
_POST_PROCESSORS: list = []


def class_renderer(layer: QgsRasterLayer, classes, extra=()) -> QgsPalettedRasterRenderer:
    """Paletted renderer with the card's class colours and names (``classes``: ClassInfo list)
    and ``extra`` classes that are not the model's, as (value, name, ``#rrggbb``) (e.g.
    Unclassified and Cloud, core.io.writers.EXTRA_CLASSES)."""
    entries = [
        QgsPalettedRasterRenderer.Class(i, QColor(c.color), c.name) for i, c in enumerate(classes)
    ]
    entries += [QgsPalettedRasterRenderer.Class(value, QColor(colour), name) for value, name, colour in extra]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries)


def confidence_renderer(layer: QgsRasterLayer) -> QgsSingleBandPseudoColorRenderer:
    """Confidence 0..1 on the perceptual Viridis ramp (bright = confident)."""
    return heatmap_renderer(layer, 0.0, 1.0, "Viridis")


def save_style(raster_path: str, make_renderer) -> str | None:
    """Build ``make_renderer(layer)`` for the raster and save it as ``<raster>.qml``. The raster is
    opened without GDAL's .aux.xml side files: QGIS computes histograms for a layer's default
    renderer, which GDAL then kept beside the raster (1.5 MB for a probability raster)."""
    from osgeo import gdal

    previous = gdal.GetConfigOption("GDAL_PAM_ENABLED")
    gdal.SetConfigOption("GDAL_PAM_ENABLED", "NO")
    try:
        layer = QgsRasterLayer(raster_path, Path(raster_path).stem, "gdal")
        if not layer.isValid():
            return None
        layer.setRenderer(make_renderer(layer))
        qml = str(Path(raster_path).with_suffix(".qml"))
        _message, ok = layer.saveNamedStyle(qml)
        del layer
        return qml if ok else None
    finally:
        gdal.SetConfigOption("GDAL_PAM_ENABLED", previous)


class LoadStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies a saved .qml to the output layer when QGIS loads it."""

    def __init__(self, qml: str, name: str):
        super().__init__()
        self.qml = qml
        self.name = name

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        if layer is not None and self.qml:
            layer.loadNamedStyle(self.qml)
            layer.setName(self.name)
            layer.triggerRepaint()


def style_on_load(context, path: str, qml: str | None, name: str) -> None:
    if not qml or not context.willLoadLayerOnCompletion(path):
        return
    processor = LoadStyle(qml, name)
    _POST_PROCESSORS.append(processor)
    context.layerToLoadOnCompletionDetails(path).setPostProcessor(processor)


def heatmap_renderer(layer: QgsRasterLayer, minimum: float = 0.0, maximum: float = 1.0,
                     ramp_name: str = "Magma") -> QgsSingleBandPseudoColorRenderer:
    """Explanation heatmap on a perceptual ramp (Magma: dark = irrelevant, bright = important),
    linear from ``minimum`` to ``maximum`` (0..1 for normalised heatmaps)."""
    ramp = QgsStyle.defaultStyle().colorRamp(ramp_name) or QgsStyle.defaultStyle().colorRamp("Viridis")
    shader_fn = QgsColorRampShader(minimum, maximum, ramp)
    shader_fn.setColorRampType(QgsColorRampShader.Interpolated)
    shader_fn.classifyColorRamp(11)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(shader_fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(minimum)
    renderer.setClassificationMax(maximum)
    return renderer


def segment_renderer(colours: dict, classes):
    """Segment polygons by their ``class`` field: a semi-transparent fill (alpha 90 of 255) and a
    solid outline in the class colour (``colours``: class name -> ``#rrggbb``)."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsRendererCategory

    categories = []
    for name in classes:
        colour = QColor(colours.get(name, "#ff7f00"))
        fill = QColor(colour)
        fill.setAlpha(90)
        symbol = QgsFillSymbol.createSimple({
            "color": f"{fill.red()},{fill.green()},{fill.blue()},{fill.alpha()}",
            "outline_color": f"{colour.red()},{colour.green()},{colour.blue()},255",
            "outline_width": "0.6",
            "outline_width_unit": "MM",
        })
        categories.append(QgsRendererCategory(name, symbol, str(name)))
    return QgsCategorizedSymbolRenderer("class", categories)


def peak_renderer(colours: dict, classes):
    """Heatmap peaks by their ``class`` field: dots in the class colour (``colours``: class name
    -> ``#rrggbb``) with a dark outline, 1.6 to 4 mm across by ``score`` (0-1)."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsMarkerSymbol, QgsProperty, QgsRendererCategory

    categories = []
    for name in classes:
        colour = QColor(colours.get(name, "#ff7f00"))
        symbol = QgsMarkerSymbol.createSimple({
            "name": "circle", "color": f"{colour.red()},{colour.green()},{colour.blue()},255",
            "outline_color": "35,35,35,255", "outline_width": "0.2", "size_unit": "MM"})
        # scores are 0-1 on the global and tile scales, raw attribution magnitudes with "none"
        symbol.setDataDefinedSize(QgsProperty.fromExpression('1.6 + 2.4 * min(1, max(0, coalesce("score", 0)))'))
        categories.append(QgsRendererCategory(name, symbol, str(name)))
    return QgsCategorizedSymbolRenderer("class", categories)


def save_vector_style(source: str, make_renderer) -> str | None:
    """Build ``make_renderer()`` for the vector file ``source`` (a path, or ``path|layername=..``)
    and save it where QGIS finds it when the layer is loaded: in a GeoPackage, as the layer's
    default style in the file's ``layer_styles`` table (a GeoPackage can hold other layers, and a
    ``<file>.qml`` beside it would style all of them, or overwrite a style of the user's); for
    other formats, as ``<file>.qml`` beside it. Returns where it was saved, or None."""
    from qgis.core import QgsVectorLayer

    path = Path(str(source).split("|")[0])
    layer = QgsVectorLayer(str(source), path.stem, "ogr")
    if not layer.isValid():
        return None
    layer.setRenderer(make_renderer())
    if path.suffix.lower() == ".gpkg":
        error = layer.saveStyleToDatabase("glassbox", "saved by Glassbox", True, "")
        return None if error else f"{source} (layer_styles)"
    qml = str(path.with_suffix(".qml"))
    _message, ok = layer.saveNamedStyle(qml)
    return qml if ok else None


class ApplyRenderer(QgsProcessingLayerPostProcessorInterface):
    """Gives a vector output layer its renderer and name when QGIS loads it (memory layers and
    database tables have no .qml beside them)."""

    def __init__(self, make_renderer, name: str):
        super().__init__()
        self.make_renderer = make_renderer
        self.name = name

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        if layer is not None:
            layer.setRenderer(self.make_renderer())
            layer.setName(self.name)
            layer.triggerRepaint()


def style_vector_output(context, dest_id: str, make_renderer, name: str) -> None:
    """Style a feature-sink output: a .qml beside a file destination (so ``qgis_process`` users
    get the style too) and the renderer applied when QGIS loads the layer."""
    from .base import destination_file

    if destination_file(dest_id):
        save_vector_style(dest_id, make_renderer)
    if context.willLoadLayerOnCompletion(dest_id):
        processor = ApplyRenderer(make_renderer, name)
        _POST_PROCESSORS.append(processor)
        context.layerToLoadOnCompletionDetails(dest_id).setPostProcessor(processor)


def display_maximum(layer: QgsRasterLayer, fraction: float = 0.99, max_side: int = 1024) -> float:
    """The value below which ``fraction`` of the layer's valid pixels lie (a cumulative cut,
    from a decimated read of at most ``max_side`` pixels a side), for stretching a heatmap's
    colours: relevance is concentrated in few pixels, so a ramp up to the maximum would show an
    almost black map. Only the display changes; the values stay as computed. Read here rather than
    with QGIS's cumulativeCut, whose 250,000-bucket histogram GDAL kept in a .aux.xml of up to
    1.5 MB beside the heatmap."""
    import numpy as np
    import rasterio

    with rasterio.open(layer.source()) as dataset:
        step = max(1.0, max(dataset.width, dataset.height) / max_side)
        shape = (max(1, int(dataset.height / step)), max(1, int(dataset.width / step)))
        values = dataset.read(1, out_shape=shape, masked=True).compressed()
    values = values[np.isfinite(values)]
    upper = float(np.quantile(values, fraction)) if values.size else 0.0
    return upper if upper > 0 else 1.0


