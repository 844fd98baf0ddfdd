"""glassbox:classify at scale (issue 23, items 3 and 4): row bands computed by worker processes
or a Dask cluster write byte-identical outputs to one process; a VRT and a list of rasters
(a mosaic) classify as one raster; a killed run resumes from its saved row bands with an
identical result; cancel stops the workers; bad WORKERS / DASK_SCHEDULER values fail clearly and
leave nothing. Real rasters in tmp dirs, the tiny real models of conftest.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers import PLUGIN_DIR, QGIS_PROCESS, TINY_TILE, qgis_env, two_halves, write_raster

NAMES = ["B08", "B03"]
RASTERS = ("classes", "probabilities", "confidence")


def scene_data(rows, cols, seed=1):
    """The two-halves scene with a nodata corner (value 0) and a nodata strip across it."""
    data = two_halves(rows, cols, seed)
    data[:, :20, :30] = 0
    data[:, rows // 2: rows // 2 + 3, :] = 0
    return data


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale_scene")
    return write_raster(folder / "scene.tif", scene_data(200, 240), descriptions=NAMES, nodata=0)


def outputs(folder: Path, tiles=True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: str(folder / f"{name}.tif") for name in RASTERS}
    if tiles:
        paths["tiles"] = str(folder / "tiles.gpkg")
    return paths


def classify(input_path, model, folder, tiles=True, **options):
    from glassbox.core.classify import ClassifyOptions, classify_raster

    paths = outputs(folder, tiles)
    lines = []
    result = classify_raster(input_path, model, paths["classes"], paths["probabilities"], paths["confidence"],
                             paths.get("tiles"), options=ClassifyOptions(**options), log=lines.append)
    result.lines = lines
    return result, paths


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def tile_features(path):
    """The features of a tile layer (attributes and geometry as WKT), in file order."""
    from osgeo import ogr

    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    return [(f.items(), f.GetGeometryRef().ExportToWkt()) for f in layer]


def assert_identical(first: dict, second: dict):
    for name in RASTERS:
        assert same_bytes(first[name], second[name]), f"{name} differs"
    if "tiles" in first:
        a, b = tile_features(first["tiles"]), tile_features(second["tiles"])
        assert a and a == b


def read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read(), ds.transform, ds.crs


# -- workers and Dask ---------------------------------------------------------------------------
def test_two_worker_processes_write_the_same_bytes_as_one(scene, tiny_model_files, tmp_path):
    options = dict(stride=TINY_TILE * 3 // 4, band_rows=2, batch_size=16, min_confidence=0.9,
                   test_time_augmentation=True, extent=(500035.0, 5998075.0, 502385.0, 5999995.0))
    one, a = classify(scene, tiny_model_files["onnx"], tmp_path / "one", workers=1, **options)
    two, b = classify(scene, tiny_model_files["onnx"], tmp_path / "two", workers=2, **options)
    assert one.ran == "in this process" and two.ran.startswith("in 2 worker processes")
    assert one.row_bands == two.row_bands == 8
    assert one.tiles_classified == two.tiles_classified > 0 and one.tiles_skipped == two.tiles_skipped > 0
    assert 0 < one.unclassified_pixels == two.unclassified_pixels
    assert one.class_pixel_counts == two.class_pixel_counts
    assert_identical(a, b)
    classes = read(a["classes"], 1)[0]
    assert {0, 1, 254, 255} <= set(np.unique(classes))  # both classes, Unclassified and nodata


def test_torch_model_in_worker_processes(scene, tiny_model_files, tmp_path):
    """With a Torch model, and mask polygons (the workers plan the same tiles)."""
    triangle = {"type": "Polygon", "coordinates": [[(500000.0, 6000000.0), (502400.0, 6000000.0),
                                                     (500000.0, 5998000.0), (500000.0, 6000000.0)]]}
    options = dict(stride=TINY_TILE // 2, band_rows=5, mask=[triangle])
    _, a = classify(scene, tiny_model_files["torch"], tmp_path / "one", tiles=False, workers=1, **options)
    two, b = classify(scene, tiny_model_files["torch"], tmp_path / "two", tiles=False, workers=2, **options)
    assert two.ran.startswith("in 2 worker processes")
    assert_identical(a, b)
    classes = read(a["classes"], 1)[0]
    assert classes[-1, -1] == 255 and classes[0, 0] == 255 and classes[5, 100] != 255  # outside / inside


def test_dask_local_cluster_writes_the_same_bytes(scene, tiny_model_files, tmp_path):
    from distributed import LocalCluster

    options = dict(stride=TINY_TILE // 2, band_rows=3)
    _, a = classify(scene, tiny_model_files["onnx"], tmp_path / "one", workers=1, **options)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask, b = classify(scene, tiny_model_files["onnx"], tmp_path / "dask",
                           dask_scheduler=cluster.scheduler_address, **options)
    assert dask.ran.startswith(f"on the Dask cluster at {cluster.scheduler_address}")
    assert_identical(a, b)


def test_a_dask_band_is_waited_for_without_dasks_racing_timeout():
    """Bands of a Dask cluster are polled in this thread (Dask's result(timeout=) can fail with an
    UnboundLocalError when the result arrives as the timeout ends, dask/distributed#8514): a
    pending band times out with TimeoutError, a finished one gives its result or its error."""
    import threading
    from concurrent.futures import Future

    from glassbox.core.parallel import _DaskFuture

    pending = Future()
    with pytest.raises(TimeoutError):
        _DaskFuture(pending).result(timeout=0.05)
    threading.Timer(0.05, lambda: pending.set_result("band")).start()
    assert _DaskFuture(pending).result(timeout=5) == "band"
    failed = Future()
    failed.set_exception(ValueError("worker error"))
    with pytest.raises(ValueError, match="worker error"):
        _DaskFuture(failed).result(timeout=1)


def test_cancel_stops_the_workers_and_keeps_the_saved_bands(scene, tiny_model_files, tmp_path):
    import psutil

    from glassbox.core.classify import ClassifyOptions, classify_raster
    from glassbox.core.errors import Cancelled

    calls, started = [], []

    def progress(value):
        calls.append(value)

    def workers():
        return [p for p in psutil.Process().children(recursive=True) if "worker_main" in " ".join(p.cmdline())]

    out = outputs(tmp_path / "out")
    with pytest.raises(Cancelled):
        classify_raster(scene, tiny_model_files["onnx"], out["classes"], out["probabilities"],
                        options=ClassifyOptions(stride=TINY_TILE // 2, band_rows=1, workers=2, checkpoint_after=0),
                        progress=progress, is_cancelled=lambda: len(calls) >= 2 or bool(started.extend(workers())))
    assert len({p.pid for p in started}) == 2  # the workers ran ...
    assert not workers(), "worker processes left running"  # ... and are gone
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == [".classes.tif.glassbox-resume"], left  # no output, no partial file; the saved bands
    saved = sorted(p.name for p in (tmp_path / "out" / left[0]).iterdir())
    assert saved[:2] == ["band_000000.npz", "band_000001.npz"] and saved[-1] == "manifest.json"


# -- mosaics ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def halves(tmp_path_factory, scene):
    """The scene cut into a top and a bottom raster (same grid, CRS and band names)."""
    folder = tmp_path_factory.mktemp("halves")
    with rasterio.open(scene) as ds:
        data, transform = ds.read(), ds.transform
    top = write_raster(folder / "top.tif", data[:, :90], descriptions=NAMES, nodata=0)
    bottom = write_raster(folder / "bottom.tif", data[:, 90:], descriptions=NAMES, nodata=0,
                          origin=(transform.c, transform.f + 90 * transform.e))
    return top, bottom


def assert_same_maps(a: dict, b: dict):
    for name in RASTERS:
        (x, tx, cx), (y, ty, cy) = read(a[name]), read(b[name])
        assert tx == ty and cx == cy
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_a_list_of_rasters_classifies_as_the_whole(scene, halves, tiny_model_files, tmp_path):
    options = dict(stride=TINY_TILE // 2, band_rows=4)
    whole, a = classify(scene, tiny_model_files["onnx"], tmp_path / "whole", tiles=False, **options)
    mosaic, b = classify(list(halves), tiny_model_files["onnx"], tmp_path / "mosaic", tiles=False, workers=2,
                         **options)
    assert any(line.startswith("mosaic of 2 rasters") for line in mosaic.lines)
    assert mosaic.tiles_classified == whole.tiles_classified
    assert_same_maps(a, b)


def test_a_vrt_classifies_as_the_whole(scene, halves, tiny_model_files, tmp_path):
    from osgeo import gdal

    vrt = str(tmp_path / "halves.vrt")
    gdal.BuildVRT(vrt, list(halves)).FlushCache()  # no band names in the VRT: the 2 bands are taken in order
    options = dict(stride=TINY_TILE // 2, band_rows=4)
    _, a = classify(scene, tiny_model_files["onnx"], tmp_path / "whole", tiles=False, **options)
    _, b = classify(vrt, tiny_model_files["onnx"], tmp_path / "vrt", tiles=False, workers=2, **options)
    assert_same_maps(a, b)


def test_a_mosaic_needs_one_crs_and_the_same_bands(halves, tiny_model_files, tmp_path):
    from glassbox.core.errors import RasterInputError

    data = read(halves[1])[0]
    other_crs = write_raster(tmp_path / "nztm.tif", data, crs="EPSG:2193", descriptions=NAMES)
    three = write_raster(tmp_path / "three.tif", np.concatenate([data, data[:1]]), descriptions=NAMES + ["B04"])
    with pytest.raises(RasterInputError, match="share one CRS: nztm.tif is in EPSG:2193.*reproject"):
        classify([halves[0], other_crs], tiny_model_files["onnx"], tmp_path / "a")
    with pytest.raises(RasterInputError, match="same bands: three.tif has 3 band"):
        classify([halves[0], three], tiny_model_files["onnx"], tmp_path / "b")
    assert not any((tmp_path / "a").iterdir()) and not any((tmp_path / "b").iterdir())
    # what GDAL's BuildVRT would skip with a mere warning, or mix up silently, is an error
    bottom = read(halves[1])
    origin = (bottom[1].c, bottom[1].f)
    floats = write_raster(tmp_path / "floats.tif", data.astype(np.float32), descriptions=NAMES, nodata=0, origin=origin)
    swapped = write_raster(tmp_path / "swapped.tif", data[::-1], descriptions=NAMES[::-1], nodata=0, origin=origin)
    recoloured = tmp_path / "recoloured.tif"
    import shutil

    from rasterio.enums import ColorInterp

    shutil.copy(halves[1], recoloured)
    with rasterio.open(recoloured, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green][:ds.count]
    for other, message, folder in ((floats, "one data type: floats.tif holds float32", "c"),
                                   (swapped, "bands in one order: swapped.tif has " + ", ".join(NAMES[::-1]), "d"),
                                   (recoloured, "GDAL left recoloured.tif out of the mosaic", "e")):
        with pytest.raises(RasterInputError, match=message):
            classify([halves[0], str(other)], tiny_model_files["onnx"], tmp_path / folder)
        assert not (tmp_path / folder).exists() or not any((tmp_path / folder).iterdir()), folder
    # half a pixel off the first raster's grid: mapped, with a warning
    from glassbox.core.io.mosaic import build_mosaic

    shifted = write_raster(tmp_path / "shifted.tif", data, descriptions=NAMES, nodata=0,
                           origin=(origin[0] + 0.5 * bottom[1].a, origin[1]))
    log: list[str] = []
    (tmp_path / "vrt").mkdir()
    build_mosaic([halves[0], str(shifted)], tmp_path / "vrt", log.append)
    assert any(m.startswith("WARNING: shifted.tif not on the first raster's pixel grid") for m in log), log


# -- resume -----------------------------------------------------------------------------------------
KILLED_RUN = textwrap.dedent("""
    import sys
    from glassbox.core.classify import ClassifyOptions, classify_raster
    raster, model, folder = sys.argv[1:4]
    classify_raster(raster, model, folder + "/classes.tif", folder + "/probabilities.tif", folder + "/confidence.tif",
                    options=ClassifyOptions(stride=6, band_rows=3, workers=int(sys.argv[4]), checkpoint_after=0))
""")


def test_a_killed_run_resumes_from_its_saved_bands_with_an_identical_result(tiny_model_files, tmp_path):
    raster = write_raster(tmp_path / "big.tif", scene_data(300, 300, seed=5), descriptions=NAMES, nodata=0)
    killed = tmp_path / "killed"
    killed.mkdir()
    saved = killed / ".classes.tif.glassbox-resume"
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN, raster, str(tiny_model_files["onnx"]), str(killed), "2"],
                           start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(saved.glob("band_*.npz"))) < 4 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before it could be killed: " + run.stderr.read().decode()[-2000:]
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run and its worker processes
        run.wait()
    bands_saved = len(list(saved.glob("band_*.npz")))
    assert bands_saved >= 4 and not (killed / "classes.tif").exists()

    options = dict(stride=6, band_rows=3, checkpoint_after=0)
    resumed, a = classify(raster, tiny_model_files["onnx"], killed, tiles=False, workers=1, **options)
    whole, b = classify(raster, tiny_model_files["onnx"], tmp_path / "whole", tiles=False, workers=1, resume=False,
                        **options)
    assert resumed.row_bands == whole.row_bands == 17
    assert resumed.row_bands_resumed == bands_saved  # band files are written whole or not at all
    assert 0 < resumed.tiles_resumed < resumed.tiles_classified == whole.tiles_classified
    assert any(line.startswith(f"resuming: {bands_saved} of 17 row bands") for line in resumed.lines)
    assert_identical(a, b)
    assert not saved.exists(), "the saved bands stay after a successful run"


def test_saved_bands_of_other_options_are_not_used(scene, tiny_model_files, tmp_path):
    from glassbox.core.classify import ClassifyOptions, classify_raster
    from glassbox.core.errors import Cancelled

    out = outputs(tmp_path / "out", tiles=False)
    calls = []
    with pytest.raises(Cancelled):
        classify_raster(scene, tiny_model_files["onnx"], out["classes"],
                        options=ClassifyOptions(stride=TINY_TILE // 2, band_rows=1, checkpoint_after=0),
                        progress=calls.append, is_cancelled=lambda: len(calls) >= 3)
    saved = tmp_path / "out" / ".classes.tif.glassbox-resume"
    assert len(list(saved.glob("band_*.npz"))) >= 3
    same, _ = classify(scene, tiny_model_files["onnx"], tmp_path / "out", tiles=False, stride=TINY_TILE // 2,
                       band_rows=1, min_valid_fraction=0.6, checkpoint_after=0)
    assert same.row_bands_resumed == 0 and same.tiles_resumed == 0
    assert any("saved bands of a run with other input, model or options were removed; starting afresh" in line
               for line in same.lines)
    assert not saved.exists()


# -- through QGIS ----------------------------------------------------------------------------------
@pytest.fixture()
def processing_run(glassbox_processing):
    import processing

    return processing.run


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


@pytest.mark.parametrize("change,words", [
    ({"WORKERS": -1}, r"WORKERS\) must be 0 \(all CPU cores\) or a whole number of processes, 1 or more; got -1"),
    ({"DASK_SCHEDULER": "tcp://127.0.0.1:9"}, "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
    ({"DASK_SCHEDULER": "no scheduler here"}, "cannot reach the Dask scheduler at no scheduler here"),
    ({"INPUT": None}, "no input: choose an input raster, or the rasters of a mosaic"),
], ids=["negative_workers", "unreachable_scheduler", "malformed_scheduler", "no_input"])
def test_bad_scale_values_are_refused_clearly(processing_run, scene, tiny_model_files, tmp_path, change, words):
    from qgis.core import QgsProcessingException

    out = tmp_path / "out"
    out.mkdir()
    params = {"INPUT": scene, "MODEL": str(tiny_model_files["onnx"]), "OUTPUT_CLASSES": str(out / "classes.tif"),
              "OUTPUT_PROBABILITIES": str(out / "probabilities.tif"), **change}
    started = time.perf_counter()
    with pytest.raises(QgsProcessingException, match=words):
        processing_run("glassbox:classify", params)
    assert time.perf_counter() - started < 15
    assert files_under(out) == []


def test_mosaic_parameter_through_processing(processing_run, scene, halves, tiny_model_files, tmp_path):
    common = {"MODEL": str(tiny_model_files["onnx"]), "TILE_STRIDE": TINY_TILE // 2}
    whole = processing_run("glassbox:classify", {"INPUT": scene, **common, "OUTPUT_CLASSES": str(tmp_path / "w.tif"),
                                                 "OUTPUT_PROBABILITIES": str(tmp_path / "wp.tif")})
    mosaic = processing_run("glassbox:classify", {"MOSAIC": list(halves), **common,
                                                  "OUTPUT_CLASSES": str(tmp_path / "m.tif"),
                                                  "OUTPUT_PROBABILITIES": str(tmp_path / "mp.tif")})
    for key in ("OUTPUT_CLASSES", "OUTPUT_PROBABILITIES"):
        np.testing.assert_array_equal(read(whole[key])[0], read(mosaic[key])[0])


def qgis_process(profile, **parameters):
    args = [QGIS_PROCESS, "run", "glassbox:classify", "--"]
    for key, value in parameters.items():
        args += [f"{key}={v}" for v in value] if isinstance(value, list) else [f"{key}={value}"]
    done = subprocess.run(args, env=qgis_env(profile), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="qgis_process is not installed")
def test_qgis_process_with_two_workers_writes_the_same_files(tiny_model_files, qgis_profile, tmp_path):
    """Inside qgis_process sys.executable is QGIS, not Python: worker processes still start, and
    every output (class, probability and confidence rasters, tile layer) is the same."""
    raster = write_raster(tmp_path / "scene.tif", scene_data(320, 128, seed=7), descriptions=NAMES, nodata=0)
    runs = {}
    for workers in (1, 2):
        folder = tmp_path / f"w{workers}"
        paths = outputs(folder)
        log = qgis_process(qgis_profile, INPUT=raster, MODEL=tiny_model_files["onnx"], TILE_STRIDE=TINY_TILE // 2,
                           WORKERS=workers, OUTPUT_CLASSES=paths["classes"],
                           OUTPUT_PROBABILITIES=paths["probabilities"], OUTPUT_CONFIDENCE=paths["confidence"],
                           OUTPUT_TILES=paths["tiles"])
        assert ("in 2 worker processes" in log) == (workers == 2), log[-3000:]
        if workers == 2:  # sys.executable is QGIS here: a real Python was found
            assert re.search(r"worker processes started with \S*python3", log), log[-3000:]
        runs[workers] = paths
    assert_identical(runs[1], runs[2])
    for name in RASTERS:
        data = read(runs[2][name])[0]
        assert data.size and np.unique(data).size > 2, name
    assert len(tile_features(runs[2]["tiles"])) > 100


@pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="qgis_process is not installed")
def test_qgis_process_mosaic_of_two_rasters(halves, scene, tiny_model_files, qgis_profile, tmp_path):
    log = qgis_process(qgis_profile, MOSAIC=list(halves), MODEL=tiny_model_files["onnx"], TILE_STRIDE=TINY_TILE // 2,
                       ADAPT_TO_SCENE="false", OUTPUT_CLASSES=tmp_path / "m.tif", OUTPUT_PROBABILITIES=tmp_path / "mp.tif")
    assert "mosaic of 2 rasters" in log
    _, a = classify(scene, tiny_model_files["onnx"], tmp_path / "whole", tiles=False, stride=TINY_TILE // 2)
    np.testing.assert_array_equal(read(a["classes"])[0], read(tmp_path / "m.tif")[0])
    np.testing.assert_array_equal(read(a["probabilities"])[0], read(tmp_path / "mp.tif")[0])


def test_plugin_load_does_not_import_distributed():
    code = ("import sys, glassbox.core.classify, glassbox.core.parallel; "
            "print('distributed' in sys.modules or 'dask' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(PLUGIN_DIR))
    assert done.stdout.strip() == "False", done.stderr
