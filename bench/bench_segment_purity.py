"""How well do segments follow the land cover? For each segment layer, the share of its pixels
whose class in a classify map is the segment's own class (``class`` field), and the share of the
map the segments cover. Prints JSON (one object per layer).

Usage::

    .venv/bin/python bench/bench_segment_purity.py demo_output/classes.tif demo_output/segments.gpkg [more.gpkg ...]

The class names come from the class raster's ``CLASS_NAME_<value>`` band metadata (classify writes
them) or, for older maps, its ``.qml`` legend. Segments of class ``segment`` (seeded without a
class) have no class to compare and count only in the coverage.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np


def class_values(raster_path: str) -> dict[str, int]:
    from glassbox.core.io.writers import metadata_class_names

    names = {name: value for value, name in metadata_class_names(raster_path).items()}
    qml = Path(raster_path).with_suffix(".qml")
    if not names and qml.is_file():
        names = {e.get("label"): int(e.get("value")) for e in ElementTree.parse(qml).getroot().iter("paletteEntry")}
    return names


def purity(raster_path: str, segments_path: str) -> dict:
    import rasterio
    from osgeo import ogr
    from rasterio.features import rasterize
    from shapely import wkb

    with rasterio.open(raster_path) as ds:
        classes, transform = ds.read(1), ds.transform
    values = class_values(raster_path)
    source = ogr.Open(segments_path)
    layer = source.GetLayer(0)
    covered = np.zeros(classes.shape, dtype=bool)
    judged = same = count = 0
    for feature in layer:
        count += 1
        inside = rasterize([(wkb.loads(bytes(feature.GetGeometryRef().ExportToWkb())), 1)], out_shape=classes.shape,
                           transform=transform, fill=0).astype(bool)
        covered |= inside
        value = values.get(feature.GetField("class"))
        if value is not None:
            judged += int(inside.sum())
            same += int((classes[inside] == value).sum())
    return {"segments": segments_path, "polygons": count, "share_of_map": round(float(covered.mean()), 3),
            "class_purity": round(same / judged, 3) if judged else None}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("classes", help="class raster of glassbox:classify")
    parser.add_argument("segments", nargs="+", help="segment layers of glassbox:segment")
    args = parser.parse_args(argv)
    print(json.dumps([purity(args.classes, path) for path in args.segments], indent=1))


if __name__ == "__main__":
    main()
