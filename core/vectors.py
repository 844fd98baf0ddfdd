"""Writing vector layers (GeoPackage) through OGR: points, tile footprints and polygons.

Every Glassbox vector output goes through :func:`write_vector`, staged like the rasters so a
failed run leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import OutputError

#: field kinds: "int", "real", "str"
FIELD_KINDS = ("int", "real", "str")
#: geometry kinds: "point" -> (x, y); "box" -> (xmin, ymin, xmax, ymax); "geojson" -> a
#: GeoJSON-like geometry dict; all in the layer's CRS
GEOMETRY_KINDS = ("point", "box", "geojson")


def box_geometry(xmin: float, ymin: float, xmax: float, ymax: float) -> Any:
    """An OGR polygon of an axis-aligned rectangle."""
    from osgeo import ogr

    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)):
        ring.AddPoint_2D(float(x), float(y))
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def _geometry(kind: str, value: Any) -> Any:
    import json

    from osgeo import ogr

    if kind == "point":
        point = ogr.Geometry(ogr.wkbPoint)
        point.AddPoint_2D(float(value[0]), float(value[1]))
        return point
    if kind == "box":
        return box_geometry(*value)
    return ogr.CreateGeometryFromJson(json.dumps(value))


def write_vector(path: str | Path, crs_wkt: str, layer_name: str, geometry_kind: str,
                 fields: Sequence[tuple[str, str]], records: Sequence[tuple[Any, dict[str, Any]]]) -> None:
    """Write a GeoPackage layer to ``path`` (normally a staged temporary path).

    ``fields``: ``(name, kind)`` with kind in :data:`FIELD_KINDS`; ``records``:
    ``(geometry, {field: value})`` with geometry as :data:`GEOMETRY_KINDS` describes, in the
    CRS given by ``crs_wkt``. Missing or None values stay NULL; no records give an empty layer.
    """
    from osgeo import ogr, osr

    kinds = {"int": ogr.OFTInteger, "real": ogr.OFTReal, "str": ogr.OFTString}
    layer_types = {"point": ogr.wkbPoint, "box": ogr.wkbPolygon, "geojson": ogr.wkbUnknown}
    if geometry_kind not in layer_types:
        raise ValueError(f"geometry kind '{geometry_kind}' is not one of {GEOMETRY_KINDS}")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    if ds is None:
        raise OutputError(f"cannot create GeoPackage {path}")
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    layer = ds.CreateLayer(layer_name, srs, layer_types[geometry_kind])
    if layer is None:
        raise OutputError(f"cannot create layer '{layer_name}' in {path}")
    for name, kind in fields:
        if kind not in kinds:
            raise ValueError(f"field kind '{kind}' is not one of {FIELD_KINDS}")
        layer.CreateField(ogr.FieldDefn(name, kinds[kind]))
    layer.StartTransaction()
    for geometry, values in records:
        feature = ogr.Feature(layer.GetLayerDefn())
        for name, _kind in fields:
            if values.get(name) is not None:
                feature.SetField(name, values[name])
        feature.SetGeometry(_geometry(geometry_kind, geometry))
        layer.CreateFeature(feature)
    layer.CommitTransaction()
    ds = None
