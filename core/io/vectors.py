"""Vector outputs as data: :class:`VectorLayer` holds features in memory (geometries as WKB);
:func:`write_gpkg` writes one to a GeoPackage through OGR for callers outside QGIS.

Inside QGIS the algorithms hand a :class:`VectorLayer` to a Processing feature sink, so the user
chooses the format (temporary layer, any OGR format, a database table). Geometries are built
and exported with OGR (GDAL's Python bindings), never with shapely: QGIS executables such as
``qgis_process`` load QGIS's own GEOS into the global symbol namespace, and a shapely wheel's
bundled GEOS then runs part of QGIS's copy; its coordinate and WKB/WKT export break there
(coordinates come out empty, which wrote polygons with NULL geometry). OGR uses the GEOS that
QGIS itself links, so it agrees in every process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import OutputError

#: field kinds: "int", "real", "str"
FIELD_KINDS = ("int", "real", "str")
#: layer geometry types
GEOMETRY_TYPES = ("Point", "Polygon")


class InMemory:
    """Marker for a vector output that is built and returned but not written to a file."""

    def __repr__(self) -> str:
        return "IN_MEMORY"


#: pass as a core function's vector output path to get the layer back in its result only
IN_MEMORY = InMemory()


@dataclass
class VectorLayer:
    """Features of one vector output, in memory.

    ``crs_wkt``: the CRS of every geometry; ``geometry_type``: one of :data:`GEOMETRY_TYPES`;
    ``fields``: ``(name, kind)`` with kind in :data:`FIELD_KINDS`; ``features``:
    ``(wkb, {field: value})``, geometry as ISO WKB bytes, missing or None values meaning NULL.
    """

    name: str
    crs_wkt: str
    geometry_type: str
    fields: list[tuple[str, str]]
    features: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.geometry_type not in GEOMETRY_TYPES:
            raise ValueError(f"geometry type '{self.geometry_type}' is not one of {GEOMETRY_TYPES}")
        for name, kind in self.fields:
            if kind not in FIELD_KINDS:
                raise ValueError(f"field kind '{kind}' of '{name}' is not one of {FIELD_KINDS}")

    def __len__(self) -> int:
        return len(self.features)


def point_wkb(x: float, y: float) -> bytes:
    """WKB of a 2D point."""
    from osgeo import ogr

    point = ogr.Geometry(ogr.wkbPoint)
    point.AddPoint_2D(float(x), float(y))
    return bytes(point.ExportToIsoWkb())


def box_geometry(xmin: float, ymin: float, xmax: float, ymax: float) -> Any:
    """An OGR polygon of an axis-aligned rectangle."""
    from osgeo import ogr

    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)):
        ring.AddPoint_2D(float(x), float(y))
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def box_wkb(xmin: float, ymin: float, xmax: float, ymax: float) -> bytes:
    """WKB of an axis-aligned rectangle."""
    return bytes(box_geometry(xmin, ymin, xmax, ymax).ExportToIsoWkb())


def geojson_geometry(geometry: dict[str, Any]) -> Any:
    """An OGR geometry of a GeoJSON-like geometry dict."""
    from osgeo import ogr

    built = ogr.CreateGeometryFromJson(json.dumps(geometry))
    if built is None:
        raise ValueError(f"not a GeoJSON geometry: {json.dumps(geometry)[:200]}")
    return built


def points_layer(name: str, crs_wkt: str, fields: Sequence[tuple[str, str]],
                 rows: Iterable[tuple[tuple[float, float], dict[str, Any]]]) -> VectorLayer:
    """A point layer of ``((x, y), values)`` rows in ``crs_wkt``."""
    return VectorLayer(name, crs_wkt, "Point", list(fields), [(point_wkb(x, y), values) for (x, y), values in rows])


def boxes_layer(name: str, crs_wkt: str, fields: Sequence[tuple[str, str]],
                rows: Iterable[tuple[tuple[float, float, float, float], dict[str, Any]]]) -> VectorLayer:
    """A polygon layer of ``((xmin, ymin, xmax, ymax), values)`` rectangles in ``crs_wkt``."""
    return VectorLayer(name, crs_wkt, "Polygon", list(fields), [(box_wkb(*bounds), values) for bounds, values in rows])


def write_gpkg(layer: VectorLayer, path: str | Path) -> None:
    """Write ``layer`` as a GeoPackage at ``path`` (normally a staged temporary path), the
    layer named ``layer.name``. No features give an empty layer."""
    from osgeo import ogr, osr

    kinds = {"int": ogr.OFTInteger, "real": ogr.OFTReal, "str": ogr.OFTString}
    layer_types = {"Point": ogr.wkbPoint, "Polygon": ogr.wkbPolygon}
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    if ds is None:
        raise OutputError(f"cannot create GeoPackage {path}")
    srs = osr.SpatialReference()
    srs.ImportFromWkt(layer.crs_wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    out = ds.CreateLayer(layer.name, srs, layer_types[layer.geometry_type])
    if out is None:
        raise OutputError(f"cannot create layer '{layer.name}' in {path}")
    for name, kind in layer.fields:
        out.CreateField(ogr.FieldDefn(name, kinds[kind]))
    out.StartTransaction()
    for wkb, values in layer.features:
        feature = ogr.Feature(out.GetLayerDefn())
        for name, _kind in layer.fields:
            if values.get(name) is not None:
                feature.SetField(name, values[name])
        geometry = ogr.CreateGeometryFromWkb(wkb)
        if geometry is None:
            raise OutputError(f"a feature of '{layer.name}' has an unreadable geometry")
        feature.SetGeometry(geometry)
        if out.CreateFeature(feature) != 0:
            raise OutputError(f"cannot write a feature to '{layer.name}' in {path}")
    out.CommitTransaction()
    ds = None


def is_file_target(path: Any) -> bool:
    """True for a file path, False for :data:`IN_MEMORY` and None."""
    return path is not None and not isinstance(path, InMemory)
