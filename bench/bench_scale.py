#!/usr/bin/env python
"""How close glassbox:classify and glassbox:explain come to their model's own speed, and how their
memory grows with the raster, printed as JSON (issue 23).

Usage (from the repository root)::

    .venv/bin/python bench/bench_scale.py --raster demo_output/s2l1c_T33UUU_20170216.tif \\
        [--model M.onnx] [--strides 64,32] [--threads 2] [--repeats 5] [--explain-repeats 2] \\
        [--memory-model M.onnx] [--small 1024] [--big 8192] [--workdir DIR] [--output bench/results/bench_scale.json]

* **Classify vs bare ONNX Runtime.** For each stride of ``--strides`` (model pixels; the tile size
  is stride = tile, no overlap; half of it is the product's default): (1)
  ``core.classify.classify_raster`` on ``--raster`` end to end (open, plan, read, scale, model,
  blend, write the class raster - the algorithm's default output - and finish), tiles per
  second, and the same writing the per-class probabilities raster too (asked for on request);
  (2) bare ONNX Runtime on the same tiles, already read and scaled, in batches of the same size,
  with the same session. They alternate ``--repeats`` times; the medians of tiles/s give
  ``ratio`` (the issue asks >= 0.9) and ``with_probabilities.ratio``. ``cpu_ratio`` is the same from the process's
  CPU time (all threads), which other load on a shared machine disturbs much less than
  wall-clock time.
* **Explain vs captum.** ``core.explain.heatmap.explain_raster`` (Guided Grad-CAM of the predicted
  class, heatmap with global normalisation and the band relevance CSV, batches of 16) on the
  same raster at stride = tile, against ``captum.attr.GuidedGradCam(...).attribute(x, target,
  interpolate_mode="bilinear")`` on the same batches already read and scaled, the target being
  each tile's predicted class from a ``no_grad`` forward pass; same network (the explainer's),
  ``--threads`` torch threads, alternating, medians.
* **Memory.** Peak resident memory of classify and of explain, each in a fresh Python process,
  on a ``--small`` x ``--small`` and a ``--big`` x ``--big`` raster made by repeating ``--raster``
  (all its bands, data type, pixel size, band names, nodata; tiled, DEFLATE), at stride = tile
  with ``--memory-model`` (default the small paper-1 CNN, so that 8192 x 8192 px stays a few
  minutes on 2 cores; the memory that grows with the raster is the pipeline's, not the model's).
  The child reports its peak resident memory (``VmHWM``; ``ru_maxrss`` of a child started from a
  big parent would include the parent's) and the resident memory after its imports; the issue bounds
  ``difference_mb`` = big peak - small peak at 200 MB. Big outputs are Cloud-Optimized GeoTIFFs,
  so their conversion is inside the measurement (its seconds are reported). ``--big 0`` skips it.
* **1 vs 2 workers.** ``classify_raster`` at the default stride (half a tile) with its row bands
  computed (a) in this process with 1 thread and with ``--threads`` threads, (b) by ``WORKERS`` =
  1 and 2 worker processes (``core.parallel.ProcessPool``, 1 model thread each) and (c) by a
  ``distributed.LocalCluster`` of 1 and 2 single-threaded worker processes (``DASK_SCHEDULER``),
  ``--workers-repeats`` times each, medians of wall seconds (model loading and worker-process
  start-up included, as a user pays them; the Dask cluster is started outside the timed part, as
  a user's cluster already runs); ``speedup`` = 1 worker's seconds / 2 workers'. ``--workers-repeats 0``
  skips it.

The machine's load (``os.getloadavg``, at start and end) is in the JSON: on a shared machine,
compare figures within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "resources" / "models"
DEFAULT_MODEL = MODELS / "eurosat_rgb_resnet18_64_w32_96px.onnx"
MEMORY_MODEL = MODELS / "eurosat_rgb_paper1_cnn.onnx"
GRANULE_PX = 10980  # a Sentinel-2 granule at 10 m


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raster", required=True, help="a real raster the models can read (e.g. the demo scene)")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="ONNX model of the speed part (classify and explain)")
    p.add_argument("--strides", default=None, help="classify strides in model pixels, comma-separated "
                   "(default: the tile size and half of it)")
    p.add_argument("--batch-size", type=int, default=32, help="classify batch size (explain: 16)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch threads")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--explain-repeats", type=int, default=2, help="0 skips explain vs captum")
    p.add_argument("--memory-model", default=str(MEMORY_MODEL))
    p.add_argument("--small", type=int, default=1024, help="side of the small raster for the memory test (px)")
    p.add_argument("--big", type=int, default=8192, help="side of the big raster for the memory test (px; 0 = skip)")
    p.add_argument("--workers-repeats", type=int, default=2, help="0 skips the 1 vs 2 workers part")
    p.add_argument("--workdir", default=None)
    p.add_argument("--output", default=None, help="also write the JSON here")
    return p.parse_args(argv)


# -- classify vs onnxruntime -------------------------------------------------------------------------
def classify_once(raster: str, model, stride: int, batch_size: int, out: Path,
                  probabilities: bool = False) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and tiles of one end-to-end classify run (class raster, and the
    probabilities raster if asked)."""
    from glassbox.core.classify import ClassifyOptions, classify_raster

    wall, cpu = time.perf_counter(), time.process_time()
    result = classify_raster(raster, model, str(out / "classes.tif"),
                             str(out / "probabilities.tif") if probabilities else None,
                             options=ClassifyOptions(stride=stride, batch_size=batch_size))
    return time.perf_counter() - wall, time.process_time() - cpu, result.tiles_classified


def prepared_batches(raster: str, card, stride: int, batch_size: int) -> list[np.ndarray]:
    """The scaled model input of every tile classify (or explain) reads, in its batches."""
    from glassbox.core.io.raster import RasterSource
    from glassbox.core.tiles.loop import iter_batches, plan_tiles

    with RasterSource(raster, None, card.bands, None) as source:
        plan = plan_tiles(source, card, stride, None, None)
        return [batch.inputs.copy() for batch in iter_batches(plan, card, batch_size, 0.5, lambda: False)
                if batch.tiles]


def onnxruntime_once(model, batches: list[np.ndarray]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        model.predict_logits(batch)
    return time.perf_counter() - wall, time.process_time() - cpu


def _summary(tiles: int, ours: list[tuple[float, float]], bare: list[tuple[float, float]], names: tuple[str, str]) -> dict:
    a, b = names
    out = {f"{a}_tiles_per_second": round(statistics.median(tiles / w for w, _ in ours), 1),
           f"{b}_tiles_per_second": round(statistics.median(tiles / w for w, _ in bare), 1),
           f"{a}_cpu_seconds_per_tile": round(statistics.median(c for _, c in ours) / tiles, 5),
           f"{b}_cpu_seconds_per_tile": round(statistics.median(c for _, c in bare) / tiles, 5)}
    out["ratio"] = round(out[f"{a}_tiles_per_second"] / out[f"{b}_tiles_per_second"], 3)
    out["cpu_ratio"] = round(out[f"{b}_cpu_seconds_per_tile"] / out[f"{a}_cpu_seconds_per_tile"], 3)
    out["repeats"] = [{a: round(tiles / w1, 1), b: round(tiles / w2, 1)} for (w1, _), (w2, _) in zip(ours, bare)]
    return out


def classify_speed(args, workdir: Path) -> list[dict]:
    from glassbox.core.models.backends import OnnxModel

    model = OnnxModel(Path(args.model), "cpu", threads=args.threads)
    size = model.card.tile_size
    strides = [int(s) for s in args.strides.split(",")] if args.strides else [size, size // 2]
    results = []
    for stride in strides:
        batches = prepared_batches(args.raster, model.card, stride, args.batch_size)
        tiles = sum(len(b) for b in batches)
        classify_once(args.raster, model, stride, args.batch_size, workdir, True)  # warm-up (caches, arenas)
        onnxruntime_once(model, batches)
        ours, ours_probabilities, bare = [], [], []
        for i in range(args.repeats):
            for runs, probabilities in ((ours, False), (ours_probabilities, True)):
                wall, cpu, classified = classify_once(args.raster, model, stride, args.batch_size, workdir,
                                                      probabilities)
                assert classified == tiles, (classified, tiles)
                runs.append((wall, cpu))
            bare.append(onnxruntime_once(model, batches))
            print(f"classify stride {stride}, repeat {i + 1}: {tiles / ours[-1][0]:.1f} tiles/s, with probabilities "
                  f"{tiles / ours_probabilities[-1][0]:.1f}, onnxruntime {tiles / bare[-1][0]:.1f} tiles/s",
                  file=sys.stderr)
        results.append(dict(stride=stride, tiles=tiles, batch_size=args.batch_size, outputs=["classes"],
                            **_summary(tiles, ours, bare, ("classify", "onnxruntime")),
                            with_probabilities=dict(outputs=["classes", "probabilities"], **_summary(
                                tiles, ours_probabilities, bare, ("classify", "onnxruntime")))))
    return results


# -- 1 vs 2 workers ----------------------------------------------------------------------------------
def workers_once(raster: str, model_path: str, stride: int, batch_size: int, out: Path, threads: int,
                 workers: int = 1, scheduler: str | None = None) -> tuple[float, int]:
    """Wall seconds and tiles of one classify run with its bands in this process (``workers`` 1,
    ``threads`` model threads), in ``workers`` processes, or on the Dask ``scheduler``."""
    from glassbox.core.classify import ClassifyOptions, classify_raster
    from glassbox.core.models.backends import OnnxModel

    wall = time.perf_counter()
    model = OnnxModel(Path(model_path), "cpu", threads=threads)
    result = classify_raster(raster, model, str(out / "classes.tif"),
                             options=ClassifyOptions(stride=stride, batch_size=batch_size, workers=workers,
                                                     dask_scheduler=scheduler, resume=False))
    return time.perf_counter() - wall, result.tiles_classified


def workers_speed(args, workdir: Path) -> dict:
    """Seconds of classify with 1 and 2 workers: in process, worker processes, Dask LocalCluster."""
    from distributed import LocalCluster

    from glassbox.core.models.backends import OnnxModel

    card = OnnxModel(Path(args.model), "cpu", threads=1).card
    stride = card.tile_size // 2
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[float]] = {}
    tiles = None

    def timed(name: str, **kwargs) -> None:
        nonlocal tiles
        seconds, classified = workers_once(args.raster, args.model, stride, args.batch_size, workdir, **kwargs)
        tiles = classified if tiles is None else tiles
        assert classified == tiles, (name, classified, tiles)
        runs.setdefault(name, []).append(seconds)
        print(f"workers: {name}: {seconds:.1f} s", file=sys.stderr)

    workers_once(args.raster, args.model, stride, args.batch_size, workdir, threads=args.threads)  # warm-up
    for _ in range(args.workers_repeats):
        timed("in_process_1_thread", threads=1)
        timed(f"in_process_{args.threads}_threads", threads=args.threads)
        timed("processes_1", threads=1, workers=1)
        timed("processes_2", threads=1, workers=2)
        for n in (1, 2):
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
                timed(f"dask_local_cluster_{n}", threads=1, scheduler=cluster.scheduler_address)
    medians = {name: round(statistics.median(v), 2) for name, v in runs.items()}
    return {"stride": stride, "tiles": tiles, "batch_size": args.batch_size, "median_seconds": medians,
            "seconds": {name: [round(x, 2) for x in v] for name, v in runs.items()},
            "speedup_processes_1_to_2": round(medians["processes_1"] / medians["processes_2"], 2),
            "speedup_dask_1_to_2": round(medians["dask_local_cluster_1"] / medians["dask_local_cluster_2"], 2),
            "speedup_in_process_threads": round(medians["in_process_1_thread"]
                                                / medians[f"in_process_{args.threads}_threads"], 2),
            "note": "Dask cluster start-up is outside the timed part (a user's cluster is already running); "
                    "worker-process start-up is inside it. Processes and Dask workers use 1 model thread each."}


# -- explain vs captum ---------------------------------------------------------------------------------
def explain_speed(args, workdir: Path) -> dict:
    import warnings

    import torch
    from captum.attr import GuidedGradCam

    from glassbox.core.explain.attribution import load_explainer
    from glassbox.core.explain.heatmap import ExplainOptions, explain_raster

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    explainer = load_explainer(args.model)
    card, batch_size = explainer.card, 16
    batches = [torch.from_numpy(b) for b in prepared_batches(args.raster, card, card.tile_size, batch_size)]
    tiles = sum(len(b) for b in batches)
    ggc = GuidedGradCam(explainer.module, explainer.layer)

    def captum() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for x in batches:
            with torch.no_grad():
                target = explainer.module(x).argmax(dim=1)
            ggc.attribute(x, target=target, interpolate_mode="bilinear").detach()
        return time.perf_counter() - wall, time.process_time() - cpu

    def ours() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        result = explain_raster(args.raster, explainer, str(workdir / "heatmap.tif"), str(workdir / "bands.csv"),
                                options=ExplainOptions(stride=card.tile_size, batch_size=batch_size))
        assert result.tiles_explained == tiles, (result.tiles_explained, tiles)
        return time.perf_counter() - wall, time.process_time() - cpu

    ours(), captum()  # warm-up
    mine, theirs = [], []
    for i in range(args.explain_repeats):
        mine.append(ours())
        theirs.append(captum())
        print(f"explain repeat {i + 1}: {tiles / mine[-1][0]:.2f} tiles/s, captum {tiles / theirs[-1][0]:.2f} tiles/s",
              file=sys.stderr)
    return dict(stride=card.tile_size, tiles=tiles, batch_size=batch_size, method="guided_gradcam",
                outputs=["heatmap (global normalisation)", "band relevance CSV"], torch_threads=args.threads,
                **_summary(tiles, mine, theirs, ("explain", "captum")))


# -- memory ------------------------------------------------------------------------------------------
def tiled_copy(raster: str, side: int, target: Path) -> Path:
    """A ``side`` x ``side`` tiled, DEFLATE-compressed GeoTIFF made by repeating ``raster`` (its
    bands, data type, pixel size, band names and nodata), written row band by row band."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(raster) as src:
        data = src.read()
        profile = src.profile.copy()
        descriptions = src.descriptions
    bands, h, w = data.shape
    wide = np.tile(data, (1, 1, side // w + 1))[:, :, :side]
    profile.update(width=side, height=side, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                   driver="GTiff", BIGTIFF="IF_SAFER")
    with rasterio.open(target, "w", **profile) as dst:
        for row in range(0, side, 256):
            rows = min(256, side - row)
            index = (np.arange(row, row + rows) % h)
            dst.write(wide[:, index, :], window=Window(0, row, side, rows))
        dst.descriptions = descriptions
    return target


CHILD = r"""
import json, os, sys, time
what, raster, model, out = sys.argv[1:5]
import numpy, rasterio, onnxruntime
if what == "explain":
    import torch, captum.attr, scipy.ndimage
    torch.set_num_threads(int(sys.argv[5]))
from glassbox.core.classify import ClassifyOptions, classify_raster
from glassbox.core.explain.heatmap import ExplainOptions, explain_raster
from glassbox.core.io import writers

def rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def peak_mb():  # VmHWM: this program's peak; ru_maxrss would include the parent's at fork
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024

finishing = [0.0]
commit = writers.StagedOutputs.commit
def timed_commit(self):
    started = time.perf_counter()
    try:
        return commit(self)
    finally:
        finishing[0] += time.perf_counter() - started
writers.StagedOutputs.commit = timed_commit
start = rss_mb()
started = time.perf_counter()
if what == "classify":
    from glassbox.core.models.backends import OnnxModel
    from pathlib import Path
    m = OnnxModel(Path(model), "cpu", threads=int(sys.argv[5]))
    r = classify_raster(raster, m, out + "/classes.tif", out + "/probabilities.tif",
                        options=ClassifyOptions(stride=m.card.tile_size, batch_size=32))
    tiles = r.tiles_classified
else:
    from glassbox.core.explain.attribution import load_explainer
    e = load_explainer(model)
    r = explain_raster(raster, e, out + "/heatmap.tif", out + "/bands.csv",
                       options=ExplainOptions(stride=e.card.tile_size, batch_size=16))
    tiles = r.tiles_explained
cogs = [name for name in os.listdir(out) if name.endswith(".tif")]
layouts = {}
for name in cogs:
    with rasterio.open(os.path.join(out, name)) as ds:
        layouts[name] = dict(layout=ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "GTiff"),
                             compression=str(ds.compression.name if ds.compression else None),
                             overviews=ds.overviews(1), block=list(ds.block_shapes[0]))
print(json.dumps(dict(start_mb=round(start, 1), peak_mb=round(peak_mb(), 1),
                      seconds=round(time.perf_counter() - started, 1), finishing_seconds=round(finishing[0], 1),
                      tiles=tiles, outputs=layouts)))
"""


def child_run(what: str, raster: Path, model: str, out: Path, threads: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, what, str(raster), model, str(out), str(threads)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} on {raster.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(args, workdir: Path) -> dict:
    started = time.perf_counter()
    small = tiled_copy(args.raster, args.small, workdir / f"small_{args.small}.tif")
    big = tiled_copy(args.raster, args.big, workdir / f"big_{args.big}.tif")
    print(f"rasters for the memory test written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    out = {"small_px": args.small, "big_px": args.big, "model": Path(args.memory_model).name,
           "stride": "tile size", "bands": _band_count(args.raster)}
    for what in ("classify", "explain"):
        runs = {}
        for name, raster in (("small", small), ("big", big)):
            runs[name] = child_run(what, raster, args.memory_model, workdir / f"{what}_{name}", args.threads)
            print(f"{what} {name}: peak {runs[name]['peak_mb']} MB, {runs[name]['seconds']} s", file=sys.stderr)
        out[what] = dict(small=runs["small"], big=runs["big"],
                         difference_mb=round(runs["big"]["peak_mb"] - runs["small"]["peak_mb"], 1),
                         big_tiles_per_second=round(runs["big"]["tiles"] / runs["big"]["seconds"], 1))
    out["goal_difference_mb"] = 200
    return out


def _band_count(raster: str) -> int:
    import rasterio

    with rasterio.open(raster) as ds:
        return ds.count


# -- projection --------------------------------------------------------------------------------------
def projection(classify: list[dict], mem: dict | None, tile_size: int) -> dict:
    """Time for one Sentinel-2 granule and 100 granules from this run's end-to-end tiles/s."""
    from glassbox.core.tiles.grid import TileGrid

    out = {"granule_px": GRANULE_PX, "assumes": "the model and the 2-core speed of this run; one worker = one "
           "such machine (or process with its cores); no overhead between granules"}
    finishing = None
    if mem:
        big = mem["classify"]["big"]
        # converting the big outputs to COGs, scaled by pixels (per-tile time is in tiles/s already)
        finishing = big["finishing_seconds"] * (GRANULE_PX / mem["big_px"]) ** 2
        out["cog_finishing_seconds_per_granule"] = round(finishing, 1)
    for row in classify:
        grid = TileGrid(GRANULE_PX, GRANULE_PX, (tile_size, tile_size), (row["stride"], row["stride"]))
        seconds = len(grid) / row["classify_tiles_per_second"] + (finishing or 0.0)
        out[f"stride_{row['stride']}"] = {
            "tiles_per_granule": len(grid), "granule_minutes": round(seconds / 60, 1),
            "100_granules_hours": {str(n): round(100 * seconds / n / 3600, 2) for n in (1, 2, 4, 8, 16)}}
    return out


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gb_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import onnxruntime

    report: dict = {"raster": Path(args.raster).name, "model": Path(args.model).name, "threads": args.threads,
                    "cpu_count": os.cpu_count(), "load_average_start": load(),
                    "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                    "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    report["classify_vs_onnxruntime"] = classify_speed(args, workdir / "speed")
    if args.explain_repeats:
        report["explain_vs_captum"] = explain_speed(args, workdir / "speed")
    if args.workers_repeats:
        report["workers"] = workers_speed(args, workdir / "workers")
    mem = memory(args, workdir) if args.big else None
    if mem:
        report["memory"] = mem
    from glassbox.core.models.backends import OnnxModel

    report["projection"] = projection(report["classify_vs_onnxruntime"], mem,
                                      OnnxModel(Path(args.model), "cpu", threads=1).card.tile_size)
    report["load_average_end"] = load()
    report["bench_seconds"] = round(time.perf_counter() - started)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
