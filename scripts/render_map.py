"""Render a classification as a PNG with QGIS's own print layout, headless.

Two map panels side by side over the extent of the input: left the input in true colour
(bands named B04, B03, B02 by band description, each stretched to its cumulative 2-98 %
range), right the class raster as QGIS styles it on load (its ``.qml`` sidecar when there is
one, otherwise a paletted renderer built from its colour table), and below them a legend of
the classes, a scale bar and the data attribution.

Usage (any Python that can ``import qgis``: Debian's /usr/bin/python3 or the repo's venv)::

    python scripts/render_map.py --input scene.tif --classes classes.tif --out map.png \\
        [--title "..."] [--dpi 150]

Sets ``QT_QPA_PLATFORM=offscreen`` itself when unset, so it needs no display.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402 (the environment must be set before Qt loads)
    QgsApplication,
    QgsContrastEnhancement,
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
    QgsRectangle,
    QgsSimpleLegendNode,
    QgsUnitTypes,
)
from qgis.PyQt.QtCore import QSize, Qt  # noqa: E402
from qgis.PyQt.QtGui import QFont  # noqa: E402

MM = QgsUnitTypes.LayoutMillimeters
MARGIN, GAP, MAP_WIDTH = 6.0, 8.0, 140.0  # layout sizes in mm
ATTRIBUTION = "Contains modified Copernicus Sentinel data. Classified with Glassbox."


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


def class_style(layer: QgsRasterLayer) -> None:
    """Keep the paletted style loaded from the ``.qml`` sidecar; without one, build it from the
    colour table, leaving out the nodata value and the unused trailing entries of a 256-colour
    table (so the legend lists only the classes)."""
    has_qml = Path(layer.source()).with_suffix(".qml").exists()
    if has_qml and isinstance(layer.renderer(), QgsPalettedRasterRenderer):
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


def label(layout, text: str, size: float, x: float, y: float, w: float, h: float, bold=False,
          align=Qt.AlignHCenter) -> QgsLayoutItemLabel:
    """A text label at (x, y) mm, w x h mm, ``size`` pt."""
    item = QgsLayoutItemLabel(layout)
    item.setText(text)
    font = QFont("DejaVu Sans", 1)
    font.setPointSizeF(size)
    font.setBold(bold)
    item.setFont(font)
    item.setHAlign(align)
    item.setVAlign(Qt.AlignVCenter)
    layout.addLayoutItem(item)
    item.attemptMove(QgsLayoutPoint(x, y, MM))
    item.attemptResize(QgsLayoutSize(w, h, MM))
    return item


def map_item(layout, layer, extent, x: float, y: float, w: float, h: float) -> QgsLayoutItemMap:
    """A framed map of ``layer`` alone over ``extent`` at (x, y) mm, w x h mm."""
    item = QgsLayoutItemMap(layout)
    layout.addLayoutItem(item)
    item.attemptMove(QgsLayoutPoint(x, y, MM))
    item.attemptResize(QgsLayoutSize(w, h, MM))
    item.setCrs(layer.crs())
    item.setLayers([layer])
    item.setKeepLayerSet(True)
    item.setExtent(extent)
    item.setFrameEnabled(True)
    return item


def build_layout(project, scene, classes, title: str) -> QgsPrintLayout:
    """Title, two panels, then scale bar, legend and attribution; the page fits the content."""
    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    extent = scene.extent()
    map_h = min(MAP_WIDTH * extent.height() / extent.width(), 1.5 * MAP_WIDTH)
    page_w = 2 * MARGIN + 2 * MAP_WIDTH + GAP
    right_x = MARGIN + MAP_WIDTH + GAP
    y = MARGIN
    label(layout, title, 16, MARGIN, y, page_w - 2 * MARGIN, 9, bold=True)
    y += 11
    label(layout, "Input (true colour: B04, B03, B02)", 11, MARGIN, y, MAP_WIDTH, 6)
    label(layout, "Classes", 11, right_x, y, MAP_WIDTH, 6)
    y += 7
    left = map_item(layout, scene, extent, MARGIN, y, MAP_WIDTH, map_h)
    map_item(layout, classes, extent, right_x, y, MAP_WIDTH, map_h)
    y += map_h + 3

    scalebar = QgsLayoutItemScaleBar(layout)
    scalebar.setStyle("Single Box")
    scalebar.setLinkedMap(left)
    scalebar.setUnits(QgsUnitTypes.DistanceKilometers)
    scalebar.setUnitLabel("km")
    scalebar.setNumberOfSegmentsLeft(0)
    scalebar.setNumberOfSegments(4)
    scalebar.setUnitsPerSegment(nice_step(extent.width() / 1000.0 / 12))
    layout.addLayoutItem(scalebar)
    scalebar.attemptMove(QgsLayoutPoint(MARGIN, y, MM))

    legend = class_legend(layout, classes, right_x, y)
    y += max(legend.sizeWithUnits().height(), 14) + 2

    label(layout, ATTRIBUTION, 7, MARGIN, y, page_w - 2 * MARGIN, 4, align=Qt.AlignLeft)
    y += 4 + MARGIN
    layout.pageCollection().page(0).setPageSize(QgsLayoutSize(page_w, y, MM))
    return layout


def class_legend(layout, classes, x: float, y: float) -> QgsLayoutItemLegend:
    """Legend of the class colours and names only (no layer or band heading), placed under
    the right panel in as many columns as fit its width."""
    legend = QgsLayoutItemLegend(layout)
    legend.setTitle("")
    legend.setAutoUpdateModel(False)
    model = legend.model()
    model.rootGroup().clear()
    node = model.rootGroup().addLayer(classes)
    QgsLegendRenderer.setNodeLegendStyle(node, QgsLegendStyle.Hidden)
    # The paletted renderer's first legend node is the band name ("Band 1: class"): drop it.
    nodes = model.layerOriginalLegendNodes(node)
    keep = [i for i, n in enumerate(nodes) if not isinstance(n, QgsSimpleLegendNode)]
    QgsMapLayerLegendUtils.setLegendNodeOrder(node, keep)
    model.refreshLayerLegend(node)
    font = QFont("DejaVu Sans", 1)
    font.setPointSizeF(10)
    legend.setStyleFont(QgsLegendStyle.SymbolLabel, font)
    legend.setSymbolWidth(6)
    legend.setSymbolHeight(4)
    legend.setSplitLayer(True)
    legend.setEqualColumnWidth(True)
    legend.setBackgroundEnabled(False)
    layout.addLayoutItem(legend)
    legend.attemptMove(QgsLayoutPoint(x, y, MM))
    # The legend sizes itself only once it has been painted (it needs the render DPI).
    QgsLayoutExporter(layout).renderPageToImage(0, QSize(200, 100))
    for columns in range(min(4, len(keep)), 0, -1):
        legend.setColumnCount(columns)
        legend.adjustBoxSize()
        if legend.sizeWithUnits().width() <= MAP_WIDTH:
            break
    return legend


def nice_step(value: float) -> float:
    """Largest 1/2/5 x 10^n not above ``value`` (a scale bar segment length)."""
    power = 10 ** math.floor(math.log10(value))
    return max(step * power for step in (1, 2, 5) if step * power <= value)


def render(input_path: str, classes_path: str, out: str, title: str, dpi: float) -> None:
    """Load both rasters, style them, lay them out and write the PNG (QGIS must be running)."""
    project = QgsProject.instance()
    scene = QgsRasterLayer(input_path, "Input", "gdal")
    classes = QgsRasterLayer(classes_path, "Classes", "gdal")  # loads <classes>.qml if present
    for layer, path in ((scene, input_path), (classes, classes_path)):
        if not layer.isValid():
            raise SystemExit(f"cannot open raster {path}")
    true_colour(scene)
    class_style(classes)
    project.setCrs(scene.crs())  # an unset project CRS makes PROJ complain while laying out
    project.addMapLayers([scene, classes])
    layout = build_layout(project, scene, classes, title)
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
    parser.add_argument("--title", default="Glassbox land-cover classification")
    parser.add_argument("--dpi", type=float, default=150)
    args = parser.parse_args()

    app = QgsApplication([], False)
    QgsApplication.setPrefixPath("/usr", True)
    app.initQgis()
    try:
        render(args.input, args.classes, args.out, args.title, args.dpi)
    finally:
        app.exitQgis()
    print(args.out)


if __name__ == "__main__":
    main()
