"""Write point layers (GeoPackage) through OGR, staged like every Glassbox output."""

from __future__ import annotations

from typing import Any, Sequence

from .errors import OutputError
from .writers import StagedOutputs

#: field kinds understood by :func:`write_points`
FIELD_KINDS = ("int", "real", "str")


def write_points(staged: StagedOutputs, target: str, crs_wkt: str, fields: Sequence[tuple[str, str]],
                 records: Sequence[tuple[float, float, dict[str, Any]]], layer_name: str = "points") -> None:
    """A GeoPackage point layer at ``target`` (moved into place by ``staged.commit()``).

    ``fields``: ``(name, kind)`` with kind ``"int"``, ``"real"`` or ``"str"``; ``records``:
    ``(x, y, {field: value})`` with coordinates in the CRS given by ``crs_wkt``. An empty
    ``records`` gives a valid, empty layer."""
    from osgeo import ogr, osr

    kinds = {"int": ogr.OFTInteger, "real": ogr.OFTReal, "str": ogr.OFTString}
    tmp = staged.stage(target)
    driver = ogr.GetDriverByName("GPKG")
    ds = driver.CreateDataSource(str(tmp))
    if ds is None:
        raise OutputError(f"cannot create GeoPackage {target}")
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    layer = ds.CreateLayer(layer_name, srs, ogr.wkbPoint)
    if layer is None:
        raise OutputError(f"cannot create layer '{layer_name}' in {target}")
    for name, kind in fields:
        if kind not in kinds:
            raise ValueError(f"field kind '{kind}' is not one of {FIELD_KINDS}")
        layer.CreateField(ogr.FieldDefn(name, kinds[kind]))
    layer.StartTransaction()
    for x, y, values in records:
        feature = ogr.Feature(layer.GetLayerDefn())
        for name, _kind in fields:
            if name in values and values[name] is not None:
                feature.SetField(name, values[name])
        point = ogr.Geometry(ogr.wkbPoint)
        point.AddPoint_2D(float(x), float(y))
        feature.SetGeometry(point)
        layer.CreateFeature(feature)
    layer.CommitTransaction()
    ds = None
