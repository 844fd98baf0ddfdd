"""Bad input, everywhere (issue 20): every Glassbox algorithm, fed each kind of wrong input that
applies to it, stops with a QgsProcessingException that names the problem and what to do, and
leaves no file behind (no output, no .qml, .aux.xml, -journal or .partial file).

The table: ``CHANGES`` says per case how it changes the parameters and which words (regular
expressions) the message must hold, ``APPLIES`` which algorithms take that input; ``CASES`` is
every (algorithm, case) pair, with ids such as ``classify-no_crs``. Every case starts from the
algorithm's working parameters (``base_parameters``, checked to work by
``test_good_input_works``) and changes one thing. A few cases also run through qgis_process.
docs/errors.md (linked from README's "When the input is wrong") shows the same table with the messages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback

import processing
from helpers import QGIS_PROCESS, TINY_TILE, qgis_env, two_halves, write_raster

pytestmark = pytest.mark.usefixtures("glassbox_processing", "one_torch_thread")

CRS = "EPSG:32633"
ORIGIN = (500000.0, 6000000.0)
SIZE = 64  # pixels of the good raster: 4 x 4 tiles of the tiny model (16 px at 10 m)


# -- inputs -------------------------------------------------------------------------------------
def write_polygons(path, epsg, features, geometry="polygon"):
    """A GeoPackage layer of ``features``: (xmin, ymin, xmax, ymax, class) rectangles (or, with
    ``geometry="point"``, (x, y, score) points) in EPSG ``epsg``; no features = an empty layer
    that still declares its geometry type."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    kind = ogr.wkbPoint if geometry == "point" else ogr.wkbPolygon
    layer = ds.CreateLayer(Path(path).stem, srs, kind)
    if geometry == "point":
        layer.CreateField(ogr.FieldDefn("score", ogr.OFTReal))
    else:
        layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    for values in features:
        feature = ogr.Feature(layer.GetLayerDefn())
        if geometry == "point":
            x, y, score = values
            feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({x} {y})"))
            feature.SetField("score", score)
        else:
            x0, y0, x1, y1, name = values
            feature.SetGeometry(ogr.CreateGeometryFromWkt(
                f"POLYGON (({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"))
            feature.SetField("class", name)
        layer.CreateFeature(feature)
    ds = None
    return str(path)


def halves_polygons(dx=0.0, dy=0.0):
    """The good raster's left half labelled Vegetation, its right half Water (shifted by dx, dy)."""
    x0, y1 = ORIGIN[0] + dx, ORIGIN[1] + dy
    x1, y0, xm = x0 + SIZE * 10, y1 - SIZE * 10, x0 + SIZE * 5
    return [(x0, y0, xm, y1, "Vegetation"), (xm, y0, x1, y1, "Water")]


@dataclass
class Inputs:
    folder: Path
    raster: str
    one_band: str
    other_names: str
    small: str
    nodata: str
    nan: str
    no_crs: str
    rotated: str
    polygons: str
    polygons_other_crs: str
    polygons_outside: str
    polygons_empty: str
    polygons_unknown_class: str
    seeds: str
    seeds_other_crs: str
    seeds_outside: str
    seeds_empty: str
    onnx: str
    torch: str
    corrupt_onnx: str
    pickled_pt: str
    card_missing: str
    class_map: str
    code_ran: Path


def rotate_grid(path: str, degrees: float) -> str:
    """``path`` with its geotransform turned by ``degrees`` about its origin (pixels unchanged)."""
    import rasterio
    from affine import Affine

    with rasterio.open(path, "r+") as ds:
        ds.transform = ds.transform * Affine.rotation(degrees)
    return path


class RunsCode:
    """Pickled, this object would create ``path`` when unpickled: the proof that a refused
    file ran no code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_model_files):
    import torch

    folder = tmp_path_factory.mktemp("bad_inputs")
    names = ["B08", "B03"]
    scene = two_halves(SIZE, SIZE)
    r = dict(crs=CRS, origin=ORIGIN)
    inputs = dict(
        raster=write_raster(folder / "scene.tif", scene, descriptions=names, **r),
        one_band=write_raster(folder / "one_band.tif", scene[:1], **r),
        other_names=write_raster(folder / "other_names.tif", np.concatenate([scene, scene[:1]]),
                                 descriptions=["B02", "B03", "B04"], **r),
        small=write_raster(folder / "small.tif", scene[:, :TINY_TILE // 2, :TINY_TILE // 2], descriptions=names, **r),
        nodata=write_raster(folder / "nodata.tif", np.zeros_like(scene), nodata=0, descriptions=names, **r),
        nan=write_raster(folder / "nan.tif", np.full(scene.shape, np.nan, np.float32), descriptions=names, **r),
        no_crs=write_raster(folder / "no_crs.tif", scene, descriptions=names, crs=None, origin=ORIGIN),
        rotated=rotate_grid(write_raster(folder / "rotated.tif", scene, descriptions=names, **r), degrees=10),
        polygons=write_polygons(folder / "polygons.gpkg", 32633, halves_polygons()),
        # the same numbers, declared in New Zealand's NZTM: they land on the other side of the world
        polygons_other_crs=write_polygons(folder / "polygons_nztm.gpkg", 2193, halves_polygons()),
        polygons_outside=write_polygons(folder / "polygons_outside.gpkg", 32633, halves_polygons(dx=50_000)),
        polygons_empty=write_polygons(folder / "polygons_empty.gpkg", 32633, []),
        polygons_unknown_class=write_polygons(
            folder / "polygons_forest.gpkg", 32633, [(*halves_polygons()[0][:4], "Forest"), halves_polygons()[1]]),
        seeds=write_polygons(folder / "seeds.gpkg", 32633, [(ORIGIN[0] + 155, ORIGIN[1] - 315, 1.0)], "point"),
        seeds_other_crs=write_polygons(folder / "seeds_nztm.gpkg", 2193, [(ORIGIN[0] + 155, ORIGIN[1] - 315, 1.0)],
                                       "point"),
        seeds_outside=write_polygons(folder / "seeds_outside.gpkg", 32633,
                                     [(ORIGIN[0] + 50_155, ORIGIN[1] - 315, 1.0)], "point"),
        seeds_empty=write_polygons(folder / "seeds_empty.gpkg", 32633, [], "point"),
        class_map=write_raster(folder / "class_map.tif", (np.arange(SIZE)[None, None, :] >= SIZE // 2).repeat(
            SIZE, axis=1).astype(np.uint8), nodata=255, **r),
        onnx=str(tiny_model_files["onnx"]),
        torch=str(tiny_model_files["torch"]),
    )
    card = tiny_model_files["card"]
    # an ONNX file cut short, as by a broken download
    corrupt = folder / "corrupt.onnx"
    corrupt.write_bytes(Path(tiny_model_files["onnx"]).read_bytes()[:3000])
    # a whole pickled nn.Module (torch.save(model)) with a valid card beside it, and a pickle that
    # would create a folder if it were ever unpickled
    pickled = folder / "pickled.pt"
    torch.save({"model": tiny_model_files["module"], "trap": RunsCode(folder / "code_ran")}, pickled)
    (folder / "pickled.json").write_text(card.to_json())
    # weights with a card that lacks its bands and ground sample distance
    missing = folder / "card_missing.pt"
    shutil.copy(tiny_model_files["torch"], missing)
    partial = card.to_dict()
    del partial["bands"], partial["gsd"]
    (folder / "card_missing.json").write_text(json.dumps(partial))
    return Inputs(folder=folder, corrupt_onnx=str(corrupt), pickled_pt=str(pickled), card_missing=str(missing),
                  code_ran=folder / "code_ran", **inputs)


# -- the algorithms' working parameters -----------------------------------------------------------
def base_parameters(algorithm, b: Inputs, out: Path) -> dict:
    """Parameters with which ``algorithm`` works (see test_good_input_works), outputs in ``out``."""
    if algorithm == "classify":
        return {"INPUT": b.raster, "MODEL": b.onnx, "OUTPUT_CLASSES": str(out / "classes.tif"),
                "OUTPUT_PROBABILITIES": str(out / "probabilities.tif"), "BATCH_SIZE": 4}
    if algorithm == "explain":
        return {"INPUT": b.raster, "MODEL": b.torch, "TILE_STRIDE": TINY_TILE, "BATCH_SIZE": 4,
                "OUTPUT_HEATMAP": str(out / "heatmap.tif"), "OUTPUT_BAND_RELEVANCE": str(out / "relevance.csv")}
    if algorithm == "explanation_quality":
        return {"INPUT": b.raster, "MODEL": b.torch, "GROUND_TRUTH": b.polygons, "BATCH_SIZE": 4,
                "DELETION_STEPS": 2, "OUTPUT_REPORT": str(out / "quality.html"), "OUTPUT_CSV": str(out / "quality.csv")}
    if algorithm == "train_classifier":
        return {"INPUT": b.raster, "POLYGONS": b.polygons, "CLASS_FIELD": "class", "ARCHITECTURE": 1,
                "TILE_SIZE": TINY_TILE, "EPOCHS": 2, "BATCH_SIZE": 4, "VALIDATION_PERCENT": 25,
                "OUTPUT_MODEL": str(out / "model.pt"), "OUTPUT_ONNX": str(out / "model.onnx")}
    if algorithm == "evaluate":
        return {"MODEL": b.onnx, "INPUT": b.raster, "POLYGONS": b.polygons, "CLASS_FIELD": "class",
                "BATCH_SIZE": 4, "OUTPUT_REPORT": str(out / "accuracy.html"), "OUTPUT_CSV": str(out / "accuracy.csv")}
    if algorithm == "export_onnx":
        return {"MODEL": b.torch, "OUTPUT": str(out / "model.onnx")}
    if algorithm == "segment":
        return {"INPUT": b.raster, "SEEDS": b.seeds, "WINDOW_SIZE": 64, "OUTPUT_POLYGONS": str(out / "segments.gpkg")}
    if algorithm == "finetune_masked":
        return {"INPUT": b.raster, "POLYGONS": b.polygons, "CLASS_FIELD": "class", "CLASS_MAPPING": 1,
                "BASE_MODEL": b.torch, "EPOCHS": 1, "BATCH_SIZE": 4, "TILES_PER_POLYGON": 4,
                "OUTPUT_MODEL": str(out / "masked.pt")}
    if algorithm == "ensemble":
        return {"RAW_MODEL": b.onnx, "MASKED_MODEL": b.torch, "OUTPUT": str(out / "ensemble.onnx")}
    if algorithm == "assess_map":  # a map of classes 0 | 1, the seed points as reference (score 1 = class 1)
        return {"INPUT": b.class_map, "REFERENCE": b.seeds, "CLASS_FIELD": "score",
                "OUTPUT_REPORT": str(out / "map.html"), "OUTPUT_CSV": str(out / "map.csv")}
    raise KeyError(algorithm)


ALGORITHMS = ["classify", "explain", "explanation_quality", "train_classifier", "evaluate", "export_onnx",
              "segment", "finetune_masked", "ensemble", "assess_map"]
#: the parameter that takes the raster / the polygons (segment: seed points) / the model, per algorithm
RASTER = {"classify": "INPUT", "explain": "INPUT", "explanation_quality": "INPUT", "train_classifier": "INPUT",
          "evaluate": "INPUT", "segment": "INPUT", "finetune_masked": "INPUT", "assess_map": "INPUT"}
POLYGONS = {"classify": "MASK", "explanation_quality": "GROUND_TRUTH", "train_classifier": "POLYGONS",
            "evaluate": "POLYGONS", "finetune_masked": "POLYGONS", "segment": "SEEDS", "assess_map": "REFERENCE"}
MODEL = {"classify": "MODEL", "explain": "MODEL", "explanation_quality": "MODEL", "evaluate": "MODEL",
         "export_onnx": "MODEL", "segment": "MODEL", "finetune_masked": "BASE_MODEL", "ensemble": "MASKED_MODEL"}
def with_model(algorithm, params, model):
    """``params`` with ``model`` as the algorithm's model; segment, which takes its seeds from a
    point layer, then explains the model for seeds instead."""
    params = dict(params, **{MODEL[algorithm]: model})
    if algorithm == "segment":
        params.pop("SEEDS")
    return params


def read_only_output(params, out: Path):
    """Point the first file output into a 'folder' that is a regular file. Tests run as root,
    for whom a chmod 0o555 folder is still writable; a file as parent fails for everybody."""
    blocker = out / "not_a_folder"
    blocker.write_text("a file, where the output's folder should be")
    key = next(k for k in params if k.startswith("OUTPUT"))
    return dict(params, **{key: str(blocker / Path(params[key]).name)})


def same_output_twice(params):
    """The second file output pointed at the first one's file."""
    first, second = [k for k in params if k.startswith("OUTPUT")][:2]
    return dict(params, **{second: params[first]})


#: per algorithm, (an output, the input file it is pointed at)
OUTPUT_ON_INPUT = {"classify": ("OUTPUT_CLASSES", "INPUT"), "explain": ("OUTPUT_HEATMAP", "INPUT"),
                   "segment": ("OUTPUT_POLYGONS", "SEEDS"), "finetune_masked": ("OUTPUT_MODEL", "BASE_MODEL"),
                   "ensemble": ("OUTPUT", "RAW_MODEL"), "train_classifier": ("OUTPUT_SAMPLES", "POLYGONS")}


def card_over_input(algorithm, params, b, out):
    """Polygons as GeoJSON (``fields.json``) and the model written beside them as ``fields.pt``:
    its card, ``fields.json``, would replace the polygons."""
    from osgeo import gdal

    geojson = out / "fields.json"
    gdal.VectorTranslate(str(geojson), b.polygons, format="GeoJSON")
    return dict(params, POLYGONS=str(geojson), OUTPUT_MODEL=str(out / "fields.pt"))


def output_is_input(algorithm, params):
    output, source = OUTPUT_ON_INPUT[algorithm]
    return dict(params, **{output: params[source]})


# -- the table ------------------------------------------------------------------------------------
# case -> (how it changes the working parameters, words the message must hold)
def _raster(name):
    return lambda algorithm, p, b, out: dict(p, **{RASTER[algorithm]: getattr(b, name)})


def _polygons(name):
    def change(algorithm, p, b, out):
        if algorithm in ("segment", "assess_map"):  # point layers
            return dict(p, **{POLYGONS[algorithm]: getattr(b, name.replace("polygons", "seeds"))})
        return dict(p, **{POLYGONS[algorithm]: getattr(b, name)})
    return change


def _model(name):
    return lambda algorithm, p, b, out: with_model(algorithm, p, getattr(b, name))


def _segment_model(change):
    """Segment: cases about the model's tiles need model seeds."""
    def wrapped(algorithm, p, b, out):
        if algorithm == "segment":
            p = with_model(algorithm, p, b.torch)
        return change(algorithm, p, b, out)
    return wrapped


def _target(algorithm, p, b, out):
    if algorithm == "evaluate":
        return dict(p, POLYGONS=b.polygons_unknown_class)
    if algorithm == "segment":
        p = with_model(algorithm, p, b.torch)
    return dict(p, TARGET="Forest")


def _band_count(algorithm, p, b, out):
    if algorithm == "train_classifier":  # any band count trains; the band names given must fit it
        return dict(p, BANDS="B04,B03,B02")
    return _segment_model(_raster("one_band"))(algorithm, p, b, out)


CHANGES = {
    "wrong_band_count": (_band_count, ["reads 2 bands .* only 1|3 band names given for tiles with 2 bands",
                                       "use a raster that holds these bands|one name per band"]),
    "missing_named_bands": (_segment_model(_raster("other_names")), ["none named B08", "choose the bands"]),
    "smaller_than_tile": (_segment_model(_raster("small")), ["smaller than one tile", "use a larger raster"]),
    "all_nodata": (_segment_model(_raster("nodata")), ["nodata", "check (the raster's|its) nodata value"]),
    "nan_values": (_segment_model(_raster("nan")), ["NaN", "check (the raster's|its) nodata value"]),
    "no_crs": (_raster("no_crs"), ["has no CRS", "assign its CRS"]),
    "rotated_grid": (_raster("rotated"), ["geotransform is rotated", "warp it to a north-up grid"]),
    "crs_mismatch": (_polygons("polygons_other_crs"), ["not overlap|overlaps the raster|1 outside the raster",
                                                       r"CRS is set right|overlap the raster \(and its CRS\)"]),
    "polygons_outside": (_polygons("polygons_outside"), ["not overlap|overlaps the raster|1 outside the raster",
                                                         "check that (both|the polygons and the raster|the seeds)"]),
    "empty_polygons": (_polygons("polygons_empty"), ["has no (polygons|points)", "choose a (point )?layer"]),
    "corrupt_onnx": (_model("corrupt_onnx"), ["corrupt.onnx: onnxruntime cannot load", "download or export it again"]),
    "pickled_pt": (_model("pickled_pt"), ["pickled.pt: refused", r"state dict \(torch.save"]),
    "card_missing_fields": (_model("card_missing"), ["missing 'bands', missing 'gsd'", "add the missing field"]),
    "unknown_target": (_target, ["Forest", "Vegetation, Water"]),
    "read_only_output": (lambda a, p, b, out: read_only_output(p, out),
                         ["cannot write", "not_a_folder is a file", "choose an output in a folder"]),
    "cancelled": (lambda a, p, b, out: p, ["cancel", "nothing was written|no (output|model) was written"]),
    "same_output_twice": (lambda a, p, b, out: same_output_twice(p),
                          ["are both to be written to", "give each output its own file"]),
    "output_is_input": (lambda a, p, b, out: output_is_input(a, p),
                        ["would overwrite the input", "write the output to another file"]),
    "card_over_input": (card_over_input, ["the model card of .* would overwrite the input", "fields.json"]),
    "points_off_the_map": (_polygons("polygons_outside"), ["no reference point could be counted",
                                                           "1 outside the raster", "check that the points overlap"]),
    "cuda_without_gpu": (_segment_model(lambda a, p, b, out: dict(p, DEVICE=1)), ["CUDA was asked for but (torch sees no CUDA device|onnxruntime has no CUDA provider)"]),
    "tile_size_for_network": (lambda a, p, b, out: dict(p, TILE_SIZE=24), ["divisible by 16",
                                                                          "choose another tile size or network"]),
}

def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


TILES = {"classify", "explain", "explanation_quality", "train_classifier", "evaluate", "finetune_masked", "segment"}
APPLIES = {
    "wrong_band_count": TILES,
    "missing_named_bands": TILES - {"train_classifier"},
    "smaller_than_tile": TILES,
    "all_nodata": TILES,
    "nan_values": TILES,
    "no_crs": TILES | {"assess_map"},
    "rotated_grid": TILES | {"assess_map"},
    "crs_mismatch": set(POLYGONS) - {"assess_map"},
    "polygons_outside": set(POLYGONS) - {"assess_map"},
    "empty_polygons": set(POLYGONS),
    "points_off_the_map": {"assess_map"},
    "corrupt_onnx": set(MODEL) - {"export_onnx", "finetune_masked"},
    "pickled_pt": set(MODEL),
    "card_missing_fields": set(MODEL),
    "unknown_target": {"explain", "explanation_quality", "evaluate", "segment"},
    "read_only_output": set(ALGORITHMS),
    "cancelled": set(ALGORITHMS),
    "same_output_twice": {"classify", "explain", "explanation_quality", "train_classifier", "evaluate", "assess_map"},
    "output_is_input": set(OUTPUT_ON_INPUT),
    "card_over_input": {"train_classifier", "finetune_masked"},
    "cuda_without_gpu": set() if _has_cuda() else {"classify", "explain", "segment", "train_classifier",
                                                    "finetune_masked", "evaluate"},
    "tile_size_for_network": {"train_classifier"},
}
#: known gaps, left to whoever owns the code (empty: none known)
KNOWN_GAPS: dict[tuple[str, str], str] = {}
CASES = [pytest.param(a, c, id=f"{a}-{c}", marks=[pytest.mark.xfail(reason=KNOWN_GAPS[a, c], strict=True)]
                      if (a, c) in KNOWN_GAPS else [])
         for a in ALGORITHMS for c in CHANGES if a in APPLIES[c]]


class CancelAtFirstProgress(QgsProcessingFeedback):
    """The user presses Cancel as soon as the run reports progress."""

    def __init__(self):
        super().__init__()
        self.progress_calls = 0
        self.progressChanged.connect(self._cancel)

    def _cancel(self, _value):
        self.progress_calls += 1
        self.cancel()


def files_under(out, inputs):
    """Files in the output folder, and in the inputs' folder all but the ``.aux.xml`` that QGIS's
    raster layers write beside an input they read (when the layer is freed, which a reference
    cycle of an earlier test's exception can delay into this one)."""
    import gc

    gc.collect()
    return ({str(p) for p in Path(out).rglob("*")}
            | {str(p) for p in Path(inputs).rglob("*") if not p.name.endswith(".aux.xml")})


def run(algorithm, params, feedback=None):
    return processing.run(f"glassbox:{algorithm}", params, feedback=feedback or QgsProcessingFeedback())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_good_input_works(algorithm, bad, tmp_path):
    """The working parameters every case starts from do work (so each case fails for its one change)."""
    out = tmp_path / "out"
    out.mkdir()
    result = run(algorithm, base_parameters(algorithm, bad, out))
    written = [v for k, v in result.items() if k.startswith("OUTPUT") and v]
    assert written and all(Path(p).exists() for p in written)


@pytest.mark.parametrize("algorithm,case", CASES)
def test_bad_input_is_refused_clearly_and_leaves_nothing(algorithm, case, bad, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    change, words = CHANGES[case]
    params = change(algorithm, base_parameters(algorithm, bad, out), bad, out)
    feedback = CancelAtFirstProgress() if case == "cancelled" else QgsProcessingFeedback()
    before = files_under(out, bad.folder)
    with pytest.raises(QgsProcessingException) as raised:
        run(algorithm, params, feedback)
    message = str(raised.value)
    for word in words:
        assert re.search(word, message, re.IGNORECASE), f"{word!r} not in: {message}"
    assert files_under(out, bad.folder) == before, "left behind: " + ", ".join(
        sorted(files_under(out, bad.folder) - before))
    assert not bad.code_ran.exists()
    if case == "cancelled":
        assert feedback.progress_calls >= 1


#: a raster problem, an unsafe model and an unwritable output, as qgis_process users meet them
QGIS_PROCESS_CASES = [("classify", "wrong_band_count"), ("evaluate", "pickled_pt"),
                      ("train_classifier", "read_only_output"), ("classify", "same_output_twice")]


@pytest.mark.parametrize("algorithm,case", [pytest.param(a, c, id=f"{a}-{c}") for a, c in QGIS_PROCESS_CASES])
def test_qgis_process_refuses_bad_input(algorithm, case, bad, tmp_path, qgis_profile):
    out = tmp_path / "out"
    out.mkdir()
    change, words = CHANGES[case]
    params = change(algorithm, base_parameters(algorithm, bad, out), bad, out)
    before = files_under(out, bad.folder)
    done = subprocess.run([QGIS_PROCESS, "run", f"glassbox:{algorithm}", "--", *(f"{k}={v}" for k, v in params.items())],
                          env=qgis_env(qgis_profile), capture_output=True, text=True, timeout=300)
    report = done.stdout + done.stderr
    assert done.returncode != 0, report
    for word in words:
        assert re.search(word, report, re.IGNORECASE), f"{word!r} not in: {report}"
    # qgis_process loads the input raster with a default style, whose min/max statistics GDAL keeps in
    # an .aux.xml beside the INPUT (QGIS's doing, on any run, good or bad; files_under leaves those
    # out); nothing else may appear
    assert files_under(out, bad.folder) == before, "left behind: " + ", ".join(
        sorted(files_under(out, bad.folder) - before))
    assert not bad.code_ran.exists()


def test_an_output_that_fails_to_be_created_is_an_output_error(tmp_path):
    """Past the up-front check (/proc is a folder root may write to, yet no file can be made in
    it), creating the output fails; that is reported as an OutputError saying what to do."""
    from glassbox.core.errors import OutputError
    from glassbox.core.io.writers import StagedOutputs

    target = Path("/proc/glassbox_no_such_folder/classes.tif")
    with StagedOutputs() as staged, pytest.raises(OutputError, match="cannot write .*choose an output in a folder"):
        staged.stage(target)
    assert not target.parent.exists()


def test_a_killed_runs_temporaries_go_when_the_output_is_written_again(tmp_path):
    """A run killed while writing leaves hidden `.<stem>.<pid>-<random>.partial<suffix>` files
    (and their sidecars); the next run writing that output removes them once their process is
    gone, and nothing of other outputs or of a run still going (here: this process)."""
    import os
    import subprocess
    import sys

    from glassbox.core.io.writers import StagedOutputs

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = int(gone.stdout)
    abandoned = [tmp_path / f".table.{dead}-ab12_xyz.partial.csv", tmp_path / f".table.{dead}-ab12_xyz.partial.csv.aux.xml"]
    others = [tmp_path / f".table.b.{dead}-cd34efgh.partial.csv", tmp_path / f".report.{dead}-ab12_xyz.partial.csv",
              tmp_path / f".table.{os.getpid()}-running1.partial.csv", tmp_path / "table.kept.csv"]
    for path in abandoned + others:
        path.write_bytes(b"left by another run")
    with StagedOutputs() as staged:
        first = staged.stage(tmp_path / "table.csv")
        first.write_text("new")
        second = staged.stage(tmp_path / "table.csv")  # staged again: the first temporary goes
        second.write_text("newer")
        assert not first.exists() and second.name.startswith(f".table.{os.getpid()}-")
        staged.commit()
    assert not any(p.exists() for p in abandoned)
    assert all(p.exists() for p in others)
    assert (tmp_path / "table.csv").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".table.")) == sorted(
        p.name for p in others if p.name.startswith(".table."))


def test_a_refused_run_keeps_no_layer_alive(tmp_path):
    """QGIS 3.22 never releases the Python exception a processAlgorithm raises, nor so the frames
    of its traceback: a refused run's layers stayed in memory until QGIS exited, and were then
    destroyed after GDAL (a crash at exit). GlassboxAlgorithm clears those frames' locals."""
    import gc
    import types

    from qgis.core import QgsMapLayer

    values = np.zeros((1, 20, 20), dtype=np.uint8)
    values[0, :, 10:] = 1
    raster = write_raster(tmp_path / "map.tif", values, nodata=255)
    with pytest.raises(QgsProcessingException, match="fewer than"):
        run("sample_points", {"INPUT": raster, "POINTS_PER_CLASS": 50, "TOTAL_POINTS": 60,
                              "OUTPUT": str(tmp_path / "points.gpkg")})
    gc.collect()
    from glassbox.algorithms.base import PLUGIN_DIR

    ours = str(PLUGIN_DIR / "algorithms")
    frames = [o for o in gc.get_objects() if isinstance(o, types.FrameType) and o.f_code.co_filename.startswith(ours)]
    assert frames, "the refused run left no frame: nothing to check (QGIS released the exception)"
    holding = [f for f in frames if any(isinstance(v, QgsMapLayer) for v in f.f_locals.values())]
    assert holding == []
