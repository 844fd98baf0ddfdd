#!/usr/bin/env python
"""How close glassbox:classify comes to its model's own speed, and how its memory grows with the
raster, printed as JSON.

Usage (from the repository root)::

    .venv/bin/python bench/bench_scale.py --raster scene.tif [--model MODEL.onnx] [--stride 64]
        [--batch-size 32] [--big 8192] [--workdir /tmp/gb_scale]

* **Speed ratio.** In one run: (1) ``core.classify.classify_raster`` on ``--raster`` end to end
  (reading, resampling, scaling, model, blending, writing), tiles per second; (2) bare ONNX
  Runtime on the same tiles, already read and scaled, in batches of the same size. The ratio
  (1) / (2) is what issue 23 asks to bring to >= 0.9. Both use the same session options
  (``--threads``). The two measurements alternate ``--repeats`` times and the medians are
  reported, so the machine's noise touches both alike.
* **Memory.** Peak resident memory (``ru_maxrss`` of a child process) of classify on a
  ``--small`` x ``--small`` raster and on a ``--big`` x ``--big`` one, both made by tiling
  ``--raster`` (same bands, data type and pixel size), minus that of the child's start-up; their
  difference is what issue 23 bounds (<= 200 MB for 1024 vs 8192 px, 13 bands). ``--big 0``
  skips it.

Output::

    {"tiles": 961, "classify_tiles_per_second": 166.0, "onnxruntime_tiles_per_second": 315.0,
     "ratio": 0.53, "memory": {"small_px": 1024, "big_px": 8192, "small_peak_mb": 560.0,
     "big_peak_mb": 700.0, "difference_mb": 140.0}}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "resources" / "models" / "eurosat_rgb_resnet18_64_w32_96px.onnx"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raster", required=True, help="a real raster the model can read (e.g. the demo scene)")
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--stride", type=int, default=None, help="tile stride in model pixels (default: the tile size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small", type=int, default=1024, help="side of the small raster for the memory test (px)")
    p.add_argument("--big", type=int, default=8192, help="side of the big raster for the memory test (px; 0 = skip)")
    p.add_argument("--workdir", default=None)
    return p.parse_args(argv)


def classify_seconds(raster: str, model, stride: int | None, batch_size: int, out: Path) -> tuple[float, int]:
    from glassbox.core.classify import ClassifyOptions, classify_raster

    started = time.perf_counter()
    result = classify_raster(raster, model, str(out / "classes.tif"), str(out / "probabilities.tif"),
                             options=ClassifyOptions(stride=stride or model.card.tile_size, batch_size=batch_size))
    return time.perf_counter() - started, result.tiles_classified


def prepared_batches(raster: str, model, stride: int | None, batch_size: int) -> list[np.ndarray]:
    """The scaled model input of every tile classify reads, in its batches."""
    from glassbox.core.io.raster import RasterSource
    from glassbox.core.tiles.loop import iter_batches, plan_tiles

    card = model.card
    with RasterSource(raster, None, card.bands, None) as source:
        plan = plan_tiles(source, card, stride or card.tile_size, None, None)
        return [batch.inputs.copy() for batch in iter_batches(plan, card, batch_size, 0.5, lambda: False)
                if batch.tiles]


def onnxruntime_seconds(model, batches: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for batch in batches:
        model.predict_logits(batch)
    return time.perf_counter() - started


def tiled_copy(raster: str, side: int, target: Path) -> Path:
    """A ``side`` x ``side`` GeoTIFF made by repeating ``raster`` (its bands, type, pixel size)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(raster) as src:
        data = src.read()
        profile = src.profile.copy()
    h, w = data.shape[1:]
    profile.update(width=side, height=side, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                   driver="GTiff", BIGTIFF="IF_SAFER")
    with rasterio.open(target, "w", **profile) as dst:
        for row in range(0, side, 256):
            rows = min(256, side - row)
            band = np.empty((data.shape[0], rows, side), dtype=data.dtype)
            for r in range(rows):
                band[:, r, :] = np.resize(data[:, (row + r) % h, :], (data.shape[0], side)) if w >= side else \
                    np.tile(data[:, (row + r) % h, :], (1, side // w + 1))[:, :side]
            dst.write(band, window=Window(0, row, side, rows))
    return target


CHILD = """
import resource, sys, time
from glassbox.core.classify import ClassifyOptions, classify_raster
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import onnxruntime, rasterio, numpy  # start-up cost measured apart from the run
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
classify_raster(sys.argv[1], sys.argv[2], sys.argv[3] + '/c.tif', sys.argv[3] + '/p.tif',
                options=ClassifyOptions(stride=int(sys.argv[4]) if sys.argv[4] != 'None' else None,
                                        batch_size=int(sys.argv[5])))
print(start / 1024.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def peak_mb(raster: Path, model: str, stride: int | None, batch_size: int, out: Path) -> tuple[float, float]:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, str(raster), model, str(out), str(stride), str(batch_size)],
                          capture_output=True, text=True, check=True)
    start, peak = (float(v) for v in done.stdout.split()[-2:])
    return start, peak


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gb_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    from glassbox.core.models.backends import OnnxModel

    model = OnnxModel(Path(args.model), "cpu", threads=args.threads)
    batches = prepared_batches(args.raster, model, args.stride, args.batch_size)
    tiles = sum(len(b) for b in batches)
    ours, bare = [], []
    for i in range(args.repeats):
        seconds, classified = classify_seconds(args.raster, model, args.stride, args.batch_size, workdir)
        ours.append(classified / seconds)
        bare.append(tiles / onnxruntime_seconds(model, batches))
        print(f"repeat {i + 1}: classify {ours[-1]:.1f} tiles/s, onnxruntime {bare[-1]:.1f} tiles/s", file=sys.stderr)
    out = {"raster": Path(args.raster).name, "model": Path(args.model).name, "tiles": tiles,
           "batch_size": args.batch_size, "threads": args.threads,
           "classify_tiles_per_second": round(statistics.median(ours), 1),
           "onnxruntime_tiles_per_second": round(statistics.median(bare), 1)}
    out["ratio"] = round(out["classify_tiles_per_second"] / out["onnxruntime_tiles_per_second"], 3)
    if args.big:
        small = tiled_copy(args.raster, args.small, workdir / "small.tif")
        big = tiled_copy(args.raster, args.big, workdir / "big.tif")
        s_start, s_peak = peak_mb(small, args.model, args.stride, args.batch_size, workdir / "small_out")
        b_start, b_peak = peak_mb(big, args.model, args.stride, args.batch_size, workdir / "big_out")
        out["memory"] = {"small_px": args.small, "big_px": args.big, "small_peak_mb": round(s_peak, 1),
                         "big_peak_mb": round(b_peak, 1), "start_up_mb": round(max(s_start, b_start), 1),
                         "difference_mb": round(b_peak - s_peak, 1)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
