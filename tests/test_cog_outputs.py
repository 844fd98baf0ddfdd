"""Large raster outputs are Cloud-Optimized GeoTIFFs with internal overviews (core.writers
COG_MIN_SIZE); small ones stay plain tiled GeoTIFFs; values and metadata are the same."""

import numpy as np
import pytest
import rasterio

import processing
from helpers import TINY_TILE, two_halves, write_raster

pytestmark = pytest.mark.usefixtures("glassbox_processing", "one_torch_thread")

OUTPUTS = ("classes", "probabilities", "confidence")


def classify(raster, model, out_dir, **extra):
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"INPUT": raster, "MODEL": str(model), "TILE_STRIDE": TINY_TILE}
    params.update({f"OUTPUT_{name.upper()}": str(out_dir / f"{name}.tif") for name in OUTPUTS})
    params.update(extra)
    return processing.run("glassbox:classify", params)


def is_cog(path) -> bool:
    with rasterio.open(path) as ds:
        return ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def read_all(path):
    with rasterio.open(path) as ds:
        return dict(values=ds.read(), nodata=ds.nodata, crs=ds.crs, transform=ds.transform, dtypes=ds.dtypes,
                    descriptions=ds.descriptions, colormap=ds.colormap(1) if ds.dtypes[0] == "uint8" else None)


def category_names(path):
    from osgeo import gdal

    info = gdal.Info(str(path))  # GDAL 3.6's Python GetCategoryNames() returns None
    return [line.strip() for line in info.split("Categories:")[1].splitlines()[1:3]]


def test_either_side_at_the_threshold_makes_a_cog(tmp_path):
    """At the default threshold, on GeoTIFFs as the writers stage them (no model needed)."""
    from glassbox.core.io import writers

    size = writers.COG_MIN_SIZE
    assert size == 2048
    for shape, converted in [((size - 1, size - 1), False), ((16, size), True), ((size, 16), True)]:
        data = (np.arange(shape[0] * shape[1]) % 7).reshape(1, *shape).astype(np.float32)
        data[0, :3, :5] = -1
        path = write_raster(tmp_path / f"{shape[0]}x{shape[1]}.tif", data, nodata=-1, descriptions=["confidence"])
        assert writers.finish_raster(path) is converted
        assert is_cog(path) is converted
        with rasterio.open(path) as ds:
            assert ds.shape == shape and ds.nodata == -1 and ds.descriptions == ("confidence",)
            assert (len(ds.overviews(1)) > 0) is converted
            np.testing.assert_array_equal(ds.read(), data)
        assert sorted(p.name for p in tmp_path.iterdir() if "cog" in p.name) == []


def test_lowered_threshold_gives_the_same_values_and_metadata(tmp_path, tiny_model_files, monkeypatch):
    from glassbox.core.io import writers

    raster = write_raster(tmp_path / "scene.tif", two_halves(520, 600), descriptions=["B08", "B03"])
    plain = classify(raster, tiny_model_files["onnx"], tmp_path / "plain")
    monkeypatch.setattr(writers, "COG_MIN_SIZE", 256)
    cog = classify(raster, tiny_model_files["onnx"], tmp_path / "cog")
    again = classify(raster, tiny_model_files["onnx"], tmp_path / "again")
    for name in OUTPUTS:
        key = f"OUTPUT_{name.upper()}"
        assert not is_cog(plain[key]) and is_cog(cog[key])
        with rasterio.open(plain[key]) as ds:
            assert ds.overviews(1) == [] and ds.block_shapes[0] == (256, 256)
        with rasterio.open(cog[key]) as ds:
            assert ds.overviews(1) == [2]
        a, b = read_all(plain[key]), read_all(cog[key])
        np.testing.assert_array_equal(a.pop("values"), b.pop("values"))
        assert a == b
        with open(cog[key], "rb") as fa, open(again[key], "rb") as fb:
            assert fa.read() == fb.read(), f"{name}: the COG is not reproducible"
    assert category_names(cog["OUTPUT_CLASSES"]) == category_names(plain["OUTPUT_CLASSES"]) == [
        "0: Vegetation", "1: Water"]
    # the float overviews average valid pixels: probabilities still sum to 1 there
    with rasterio.open(cog["OUTPUT_PROBABILITIES"]) as ds:
        overview = ds.read(out_shape=(ds.count, ds.height // 2, ds.width // 2))
    np.testing.assert_allclose(overview.sum(axis=0), 1.0, atol=1e-5)
    assert not [p for p in (tmp_path / "cog").iterdir() if "partial" in p.name]


def test_large_heatmap_is_a_cog_with_the_same_values(tmp_path, tiny_model_files, monkeypatch):
    from glassbox.core.io import writers

    raster = write_raster(tmp_path / "scene.tif", two_halves(530, 300), descriptions=["B08", "B03"])
    heatmaps = {}
    for name, threshold in [("plain", 4096), ("cog", 512)]:
        monkeypatch.setattr(writers, "COG_MIN_SIZE", threshold)
        (tmp_path / name).mkdir()
        result = processing.run("glassbox:explain", {
            "INPUT": raster, "MODEL": str(tiny_model_files["torch"]), "TILE_STRIDE": TINY_TILE,
            "OUTPUT_HEATMAP": str(tmp_path / name / "heatmap.tif")})
        heatmaps[name] = result["OUTPUT_HEATMAP"]
    assert not is_cog(heatmaps["plain"]) and is_cog(heatmaps["cog"])
    with rasterio.open(heatmaps["cog"]) as ds:
        assert ds.overviews(1) == [2]
    a, b = read_all(heatmaps["plain"]), read_all(heatmaps["cog"])
    np.testing.assert_array_equal(a.pop("values"), b.pop("values"))
    assert a == b and a["nodata"] == -1
