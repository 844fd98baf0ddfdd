"""Render a classification, its explanation and segments as a PNG with QGIS's own print layout, headless.

Map panels side by side over the extent of the input, each styled as QGIS styles it on load:

- without ``--heatmap`` and ``--polygons``: the input in true colour, then the classes;
- with either: the classes, the heatmap (``--heatmap``), then the input in true colour with the
  segment polygons drawn on top (``--polygons``).

True colour: bands named B04, B03, B02 by band description, each stretched to its cumulative
2-98 % range. Classes: the raster's ``.qml`` sidecar when there is one, otherwise a paletted
renderer built from its colour table. Heatmap: its ``.qml`` sidecar, otherwise the Magma ramp
from 0 to the 99th percentile. Polygons: their saved style (``.qml`` sidecar, or the default
style in their GeoPackage), otherwise a yellow outline.
Under each panel its legend (class colours; the heatmap's colour ramp; the segment classes
present in the map), a scale bar under the true colour panel, and the data attribution.

Usage (any Python that can ``import qgis``: Debian's /usr/bin/python3 or the repo's venv)::

    python scripts/render_map.py --input scene.tif --classes classes.tif --out map.png \\
        [--heatmap heatmap.tif] [--polygons segments.gpkg] [--title "..."] [--dpi 150]

Sets ``QT_QPA_PLATFORM=offscreen`` itself when unset, so it needs no display.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402 (the environment must be set before Qt loads)
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsColorRampLegendNode,
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsFillSymbol,
    QgsLayoutExporter,
    QgsLayoutItemLabel,
    QgsLayoutItemLegend,
    QgsLayoutItemMap,
    QgsLayoutItemScaleBar,
    QgsLayoutPoint,
    QgsLayoutSize,
    QgsLegendRenderer,
    QgsLegendStyle,
    QgsMapLayerLegendUtils,
    QgsMultiBandColorRenderer,
    QgsPalettedRasterRenderer,
    QgsPrintLayout,
    QgsProject,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRectangle,
    QgsSimpleLegendNode,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsStyle,
    QgsUnitTypes,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QSize, Qt  # noqa: E402
from qgis.PyQt.QtGui import QFont  # noqa: E402

MM = QgsUnitTypes.LayoutMillimeters
MARGIN, GAP = 6.0, 8.0  # layout sizes in mm
MAP_WIDTH = {2: 140.0, 3: 125.0}  # panel width (mm) by number of panels
ATTRIBUTION = "Contains modified Copernicus Sentinel data. {} with Glassbox."


def band_by_name(layer: QgsRasterLayer, name: str, fallback: int) -> int:
    """1-based index of the band whose description is ``name`` (QGIS names such a band
    'Band 04: B04'), else ``fallback``."""
    for band in range(1, layer.bandCount() + 1):
        match = re.match(r"^Band \d+: (.*)$", layer.bandName(band))
        if match and match.group(1).strip().upper() == name:
            return band
    print(f"warning: no band named {name}; using band {fallback}", file=sys.stderr)
    return min(fallback, layer.bandCount())


def true_colour(layer: QgsRasterLayer) -> None:
    """B04/B03/B02 as red/green/blue, each stretched to its cumulative 2-98 % range."""
    provider = layer.dataProvider()
    bands = [band_by_name(layer, name, fb) for name, fb in (("B04", 3), ("B03", 2), ("B02", 1))]
    renderer = QgsMultiBandColorRenderer(provider, *bands)
    setters = (renderer.setRedContrastEnhancement, renderer.setGreenContrastEnhancement,
               renderer.setBlueContrastEnhancement)
    for band, setter in zip(bands, setters):
        low, high = provider.cumulativeCut(band, 0.02, 0.98, QgsRectangle(), 250_000)
        enhancement = QgsContrastEnhancement(provider.dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        enhancement.setMinimumValue(low)
        enhancement.setMaximumValue(high)
        setter(enhancement)
    layer.setRenderer(renderer)


def has_qml(layer) -> bool:
    return Path(layer.source().split("|")[0]).with_suffix(".qml").exists()


def class_style(layer: QgsRasterLayer) -> None:
    """Keep the paletted style loaded from the ``.qml`` sidecar; without one, build it from the
    colour table, leaving out the nodata value and the unused trailing entries of a 256-colour
    table (so the legend lists only the classes)."""
    if has_qml(layer) and isinstance(layer.renderer(), QgsPalettedRasterRenderer):
        return
    provider = layer.dataProvider()
    classes = QgsPalettedRasterRenderer.colorTableToClassData(provider.colorTable(1))
    if not classes:
        raise SystemExit(f"{layer.source()}: no .qml style and no colour table to draw classes with")
    nodata = provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None
    classes = [c for c in classes if c.value != nodata]
    run = 1  # rasterio pads the table with identical (black) entries up to 255: drop them
    while run < len(classes) and classes[-run - 1].color.rgb() == classes[-1].color.rgb():
        run += 1
    if run > 1:
        classes = classes[:-run]
    layer.setRenderer(QgsPalettedRasterRenderer(provider, 1, classes))


def heatmap_style(layer: QgsRasterLayer) -> None:
    """Keep the pseudocolour style of the ``.qml`` sidecar; without one, the Magma ramp from 0 to
    the 99th percentile (relevance is concentrated in few pixels). The legend shows the ramp as
    one horizontal bar from 'low' to 'high relevance'."""
    renderer = layer.renderer()
    if not (has_qml(layer) and isinstance(renderer, QgsSingleBandPseudoColorRenderer)):
        provider = layer.dataProvider()
        _low, high = provider.cumulativeCut(1, 0.0, 0.99, QgsRectangle(), 250_000)
        high = float(high) if high and high > 0 else 1.0
        ramp = QgsStyle.defaultStyle().colorRamp("Magma") or QgsStyle.defaultStyle().colorRamp("Viridis")
        function = QgsColorRampShader(0.0, high, ramp)
        function.setColorRampType(QgsColorRampShader.Interpolated)
        function.classifyColorRamp(11)
        shader = QgsRasterShader()
        shader.setRasterShaderFunction(function)
        renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
        renderer.setClassificationMin(0.0)
        renderer.setClassificationMax(high)
        layer.setRenderer(renderer)
    function = renderer.shader().rasterShaderFunction()
    settings = function.legendSettings()
    settings.setUseContinuousLegend(True)
    settings.setOrientation(Qt.Horizontal)
    settings.setMinimumLabel("low")
    settings.setMaximumLabel("high relevance")
    function.setLegendSettings(settings)


def polygon_style(layer: QgsVectorLayer) -> None:
    """Keep the style of the ``.qml`` sidecar or the one saved in the GeoPackage (where
    ``glassbox:segment`` saves it); without one, a 0.6 mm yellow outline, no fill."""
    if has_qml(layer) or layer.listStylesInDatabase()[0] > 0:
        return
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": "255,221,0,255",
                                         "outline_width": "0.6", "outline_width_unit": "MM"})
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))


def label(layout, text: str, size: float, x: float, y: float, w: float, h: float, bold=False,
          align=Qt.AlignHCenter) -> QgsLayoutItemLabel:
    """A text label at (x, y) mm, w x h mm, ``size`` pt."""
    item = QgsLayoutItemLabel(layout)
    item.setText(text)
    item.setFont(font(size, bold))
    item.setHAlign(align)
    item.setVAlign(Qt.AlignVCenter)
    layout.addLayoutItem(item)
    item.attemptMove(QgsLayoutPoint(x, y, MM))
    item.attemptResize(QgsLayoutSize(w, h, MM))
    return item


def font(size: float, bold: bool = False) -> QFont:
    result = QFont("DejaVu Sans", 1)
    result.setPointSizeF(size)
    result.setBold(bold)
    return result


def map_item(layout, layers, extent, x: float, y: float, w: float, h: float) -> QgsLayoutItemMap:
    """A framed map of ``layers`` (top first) over ``extent`` at (x, y) mm, w x h mm."""
    item = QgsLayoutItemMap(layout)
    layout.addLayoutItem(item)
    item.attemptMove(QgsLayoutPoint(x, y, MM))
    item.attemptResize(QgsLayoutSize(w, h, MM))
    item.setCrs(layers[-1].crs())
    item.setLayers(layers)
    item.setKeepLayerSet(True)
    item.setExtent(extent)
    item.setFrameEnabled(True)
    return item


def size_items(layout) -> None:
    """Paint the page once, small: legends and scale bars size themselves only when painted
    (they need the render DPI)."""
    QgsLayoutExporter(layout).renderPageToImage(0, QSize(200, 100))


@dataclass
class Panel:
    """One map panel: its heading, layers (top first) and what goes under it: ``under(layout,
    map item, x, y, width)`` adds items there and returns their height in mm."""

    title: str
    layers: list
    under: Callable = field(default=lambda layout, item, x, y, width: 0.0)


def build_layout(project, scene, panels: list[Panel], title: str, done: str = "Classified") -> QgsPrintLayout:
    """Title, the panels side by side with what goes under each, then the attribution; the
    page fits the content."""
    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    extent = scene.extent()
    map_w = MAP_WIDTH.get(len(panels), 125.0)
    map_h = min(map_w * extent.height() / extent.width(), 1.5 * map_w)
    page_w = 2 * MARGIN + len(panels) * map_w + (len(panels) - 1) * GAP
    xs = [MARGIN + i * (map_w + GAP) for i in range(len(panels))]
    y = MARGIN
    label(layout, title, 16, MARGIN, y, page_w - 2 * MARGIN, 9, bold=True)
    y += 11
    for x, panel in zip(xs, panels):
        label(layout, panel.title, 11, x, y, map_w, 6)
    y += 7
    items = [map_item(layout, panel.layers, extent, x, y, map_w, map_h) for x, panel in zip(xs, panels)]
    y += map_h + 3
    heights = [panel.under(layout, item, x, y, map_w) for x, panel, item in zip(xs, panels, items)]
    y += max(heights + [8.0]) + 2

    label(layout, ATTRIBUTION.format(done), 7, MARGIN, y, page_w - 2 * MARGIN, 4, align=Qt.AlignLeft)
    y += 4 + MARGIN
    layout.pageCollection().page(0).setPageSize(QgsLayoutSize(page_w, y, MM))
    return layout


def scale_bar(layout, item: QgsLayoutItemMap, x: float, y: float) -> float:
    """A kilometre scale bar linked to ``item`` at (x, y) mm; returns its height in mm."""
    extent = item.extent()
    scalebar = QgsLayoutItemScaleBar(layout)
    scalebar.setStyle("Single Box")
    scalebar.setLinkedMap(item)
    scalebar.setUnits(QgsUnitTypes.DistanceKilometers)
    scalebar.setUnitLabel("km")
    scalebar.setNumberOfSegmentsLeft(0)
    scalebar.setNumberOfSegments(4)
    scalebar.setUnitsPerSegment(nice_step(extent.width() / 1000.0 / 12))
    layout.addLayoutItem(scalebar)
    scalebar.attemptMove(QgsLayoutPoint(x, y, MM))
    size_items(layout)
    return scalebar.sizeWithUnits().height()


def legend_item(layout, layer, x: float, y: float, title: str = "") -> QgsLayoutItemLegend:
    """A legend of ``layer``'s symbols only (no layer or band heading) at (x, y) mm."""
    legend = QgsLayoutItemLegend(layout)
    legend.setTitle(title)
    legend.setAutoUpdateModel(False)
    model = legend.model()
    model.rootGroup().clear()
    node = model.rootGroup().addLayer(layer)
    QgsLegendRenderer.setNodeLegendStyle(node, QgsLegendStyle.Hidden)
    # A raster renderer's first legend node is the band name ("Band 1: class"): drop it.
    nodes = model.layerOriginalLegendNodes(node)
    keep = [i for i, n in enumerate(nodes) if not isinstance(n, QgsSimpleLegendNode)]
    QgsMapLayerLegendUtils.setLegendNodeOrder(node, keep)
    model.refreshLayerLegend(node)
    legend.setStyleFont(QgsLegendStyle.SymbolLabel, font(10))
    legend.setStyleFont(QgsLegendStyle.Title, font(10, bold=True))
    legend.setSymbolWidth(6)
    legend.setSymbolHeight(4)
    legend.setSplitLayer(True)
    legend.setEqualColumnWidth(True)
    legend.setBackgroundEnabled(False)
    legend.setFrameEnabled(False)
    layout.addLayoutItem(legend)
    legend.attemptMove(QgsLayoutPoint(x, y, MM))
    return legend


def fit_columns(layout, legend: QgsLayoutItemLegend, layer, width: float) -> float:
    """Lay ``legend`` out in as many columns (up to 4) as fit ``width`` mm, but no more than its
    rows need; returns its height in mm."""
    size_items(layout)
    entries = len(legend.model().layerLegendNodes(legend.model().rootGroup().findLayer(layer)))
    columns = min(4, max(entries, 1))
    while columns > 1:
        legend.setColumnCount(columns)
        legend.adjustBoxSize()
        if legend.sizeWithUnits().width() <= width:
            break
        columns -= 1
    while columns > 1 and math.ceil(entries / (columns - 1)) == math.ceil(entries / columns):
        columns -= 1  # as many rows with fewer columns: no ragged last column
    legend.setColumnCount(columns)
    legend.adjustBoxSize()
    return legend.sizeWithUnits().height()


def class_legend(classes):
    """Under the class panel: the class colours and names."""
    def under(layout, item, x, y, width):
        return fit_columns(layout, legend_item(layout, classes, x, y), classes, width)
    return under


def heatmap_legend(heatmap):
    """Under the heatmap panel: its colour ramp as one bar, half the panel wide."""
    def under(layout, item, x, y, width):
        legend = legend_item(layout, heatmap, x + width / 4, y)
        legend.setSymbolWidth(width / 2)
        legend.setSymbolHeight(4)
        for node in legend.model().layerLegendNodes(legend.model().rootGroup().findLayer(heatmap)):
            if isinstance(node, QgsColorRampLegendNode):
                node.setIconSize(QSize(int(width / 2), 4))
        size_items(layout)
        legend.adjustBoxSize()
        return legend.sizeWithUnits().height()
    return under


def true_colour_under(polygons):
    """Under the true colour panel: the scale bar, then the segment classes drawn in the map."""
    def under(layout, item, x, y, width):
        height = scale_bar(layout, item, x, y)
        if polygons is None:
            return height
        by_class = isinstance(polygons.renderer(), QgsCategorizedSymbolRenderer)
        legend = legend_item(layout, polygons, x, y + height + 2, "Segments by class of their seeds" if by_class else "")
        legend.setLinkedMap(item)
        legend.setLegendFilterByMapEnabled(True)  # only the classes the map shows
        return height + 2 + fit_columns(layout, legend, polygons, width)
    return under


def nice_step(value: float) -> float:
    """Largest 1/2/5 x 10^n not above ``value`` (a scale bar segment length)."""
    power = 10 ** math.floor(math.log10(value))
    return max(step * power for step in (1, 2, 5) if step * power <= value)


def render(input_path: str, classes_path: str, out: str, title: str, dpi: float,
           heatmap_path: str | None = None, polygons_path: str | None = None) -> None:
    """Load the layers, style them, lay them out and write the PNG (QGIS must be running)."""
    project = QgsProject.instance()
    scene = QgsRasterLayer(input_path, "Input", "gdal")
    classes = QgsRasterLayer(classes_path, "Classes", "gdal")  # loads <classes>.qml if present
    rasters = [(scene, input_path), (classes, classes_path)]
    heatmap = polygons = None
    if heatmap_path:
        heatmap = QgsRasterLayer(heatmap_path, "Heatmap", "gdal")
        rasters.append((heatmap, heatmap_path))
    for layer, path in rasters:
        if not layer.isValid():
            raise SystemExit(f"cannot open raster {path}")
    if polygons_path:
        polygons = QgsVectorLayer(polygons_path, "Segments", "ogr")
        if not polygons.isValid():
            raise SystemExit(f"cannot open vector layer {polygons_path}")
        if QgsWkbTypes.geometryType(polygons.wkbType()) != QgsWkbTypes.PolygonGeometry:
            raise SystemExit(f"{polygons_path}: not a polygon layer")
    true_colour(scene)
    class_style(classes)
    if heatmap is not None:
        heatmap_style(heatmap)
    if polygons is not None:
        polygon_style(polygons)
    project.setCrs(scene.crs())  # an unset project CRS makes PROJ complain while laying out
    project.addMapLayers([layer for layer in (scene, classes, heatmap, polygons) if layer is not None])

    rgb_title = "Input (true colour: B04, B03, B02)"
    if heatmap is None and polygons is None:
        panels = [Panel(rgb_title, [scene], true_colour_under(None)),
                  Panel("Classes", [classes], class_legend(classes))]
    else:
        panels = [Panel("Classes", [classes], class_legend(classes))]
        if heatmap is not None:
            panels.append(Panel("Explanation heatmap (bright = drove the class)", [heatmap], heatmap_legend(heatmap)))
        panels.append(Panel(rgb_title if polygons is None else "True colour (B04, B03, B02) with segments",
                            [layer for layer in (polygons, scene) if layer is not None], true_colour_under(polygons)))
    done = ", ".join(["Classified"] + ["explained"] * (heatmap is not None) + ["segmented"] * (polygons is not None))
    layout = build_layout(project, scene, panels, title, done.replace(", s", " and s") if polygons else done)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # renderPageToImage + save rather than exportToImage: the latter then tries to write
    # georeferencing into the PNG through GDAL, which fails noisily for PNG.
    image = QgsLayoutExporter(layout).renderPageToImage(0, QSize(), dpi)
    if image.isNull() or not image.save(out, "PNG"):
        raise SystemExit(f"cannot write {out}")
    del layout  # before the layers go, or Qt warns about timers on exit
    project.removeAllMapLayers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="the classified scene (bands described B02, B03, B04, ...)")
    parser.add_argument("--classes", required=True, help="class raster (uint8, colour table and/or .qml sidecar)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--heatmap", help="explanation heatmap raster (its .qml sidecar styles it)")
    parser.add_argument("--polygons", help="segment polygons (e.g. .gpkg; its .qml sidecar styles it) drawn over "
                                           "the true colour")
    parser.add_argument("--title", default="Glassbox land-cover classification")
    parser.add_argument("--dpi", type=float, default=150)
    args = parser.parse_args()

    app = QgsApplication([], False)
    QgsApplication.setPrefixPath("/usr", True)
    app.initQgis()
    try:
        render(args.input, args.classes, args.out, args.title, args.dpi, args.heatmap, args.polygons)
    finally:
        app.exitQgis()
    print(args.out)


if __name__ == "__main__":
    main()
