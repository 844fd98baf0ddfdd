"""Benchmark: Guided Grad-CAM heatmaps end to end (glassbox) against captum alone, in one run.

    .venv/bin/python bench/bench_explain.py [--tiles 64] [--batch-size 16] [--model m.onnx|m.pt]
                                            [--repeats 3] [--threads N] [--output result.json]

(a) **captum**: ``captum.attr.GuidedGradCam(model, layer).attribute(x, target,
    interpolate_mode="bilinear")`` on N tiles already in memory as one scaled float32 tensor,
    batch by batch, the target being each tile's predicted class (one ``no_grad`` forward pass per
    batch, as glassbox explains the predicted class too). ``captum_given_targets`` is the same
    with the targets computed beforehand (not timed): the strictest baseline.
(b) **glassbox**: :func:`core.explain.heatmap.explain_raster` on a GeoTIFF holding exactly the same N
    tiles side by side (stride = tile size): reading windows, scaling, attribution, blending,
    writing the heatmap with whole-raster normalisation (two passes) and the band relevance
    CSV. The model is prepared once beforehand for both (as captum's module is).

Both run in the same process, alternately, ``--repeats`` times; the best time of each is used
(least disturbed by other load) and the median is reported too. ``ratio`` = tiles/s of (b) /
tiles/s of (a); the goal is >= 0.90. Memory: each side runs once more in a fresh subprocess
(so neither inherits the other's allocator pools) that reports its resident set size (RSS)
after set-up (model, tiles in memory, raster on disk) and its peak during the run, sampled
every 2 ms by a thread; the difference is what the explanation itself needs at its peak. The timing process's peak RSS
(sampled every 2 ms) above the start of each timed phase is reported as well.

Default model: paper 1's CNN (``paper1_cnn``), 3 bands, 64 px tiles, randomly initialised with
a fixed seed (attribution cost does not depend on the weights). Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np



class PeakRSS:
    """Peak resident set size (bytes) above the level at ``start``, sampled by a thread."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def default_model(bands: int, tile: int, classes: int):
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.card import ClassInfo, ModelCard, Scaling

    torch.manual_seed(0)
    module = build_model("paper1_cnn", bands, classes, tile).eval()
    with torch.no_grad():  # plausible batch-norm statistics instead of the identity
        for sub in module.modules():
            if isinstance(sub, torch.nn.BatchNorm2d):
                sub.running_mean.uniform_(-0.5, 0.5)
                sub.running_var.uniform_(0.5, 2.0)
    card = ModelCard(
        name="benchmark paper1_cnn (random weights)",
        classes=[ClassInfo(f"class{i}", "#808080") for i in range(classes)],
        bands=["B04", "B03", "B02"][:bands] if bands <= 3 else [f"B{i + 1}" for i in range(bands)],
        scaling=Scaling(scale=255 / 2750, clip=[0, 255], mean=[100.0] * bands, std=[50.0] * bands),
        tile_size=tile, gsd=10.0, architecture={"name": "paper1_cnn", "kwargs": {}},
    )
    return module, card


def tile_layout(n: int) -> tuple[int, int]:
    """rows x cols of tiles holding exactly ``n`` tiles, as square as possible."""
    cols = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return n // cols, cols


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=64, help="number of tiles (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="tiles per model call (default 16)")
    parser.add_argument("--model", help="an .onnx or Torch .pt model with card (default: random paper1_cnn, 3 bands, 64 px)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--phase", choices=["captum", "glassbox"], help=argparse.SUPPRESS)  # memory subprocess
    return parser.parse_args(argv)


class Setup:
    """The model, the N tiles in memory (scaled tensor) and the same tiles as a GeoTIFF."""

    def __init__(self, args):
        import rasterio
        import torch
        from rasterio.transform import from_origin

        from glassbox.core.explain.attribution import Explainer, load_explainer

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.model:
            self.explainer = load_explainer(args.model)
        else:
            module, card = default_model(3, 64, 10)
            self.explainer = Explainer(module, card, "paper1_cnn (random)")
        card = self.card = self.explainer.card
        self.n, self.size, self.bs = args.tiles, card.tile_size, args.batch_size
        rng = np.random.default_rng(0)
        raw = rng.integers(200, 3000, (self.n, card.num_bands, self.size, self.size)).astype(np.uint16)
        self.scaled = torch.from_numpy(card.scaling.apply(raw))
        rows, cols = tile_layout(self.n)
        mosaic = raw.reshape(rows, cols, card.num_bands, self.size, self.size).transpose(2, 0, 3, 1, 4)
        self.mosaic_shape = (rows * self.size, cols * self.size)
        mosaic = mosaic.reshape(card.num_bands, *self.mosaic_shape)
        self.workdir = Path(tempfile.mkdtemp(prefix="glassbox_bench_"))
        self.raster = self.workdir / "tiles.tif"
        with rasterio.open(self.raster, "w", driver="GTiff", width=mosaic.shape[2], height=mosaic.shape[1],
                           count=card.num_bands, dtype="uint16", crs="EPSG:32633",
                           transform=from_origin(500000, 6000000, card.gsd, card.gsd)) as ds:
            ds.write(mosaic)
        # captum works on the explainer's copy of the network (eval mode, ReLUs not in place)
        from captum.attr import GuidedGradCam

        self.network = self.explainer.module
        self.ggc = GuidedGradCam(self.network, self.explainer.layer)

    def targets(self):
        import torch

        with torch.no_grad():
            return torch.cat([self.network(self.scaled[i : i + self.bs]).argmax(dim=1)
                              for i in range(0, self.n, self.bs)])

    def run_captum(self, given_targets=None):
        import torch

        for start in range(0, self.n, self.bs):
            x = self.scaled[start : start + self.bs]
            if given_targets is None:
                with torch.no_grad():
                    target = self.network(x).argmax(dim=1)
            else:
                target = given_targets[start : start + self.bs]
            self.ggc.attribute(x, target=target, interpolate_mode="bilinear").detach()

    def run_glassbox(self, tag):
        from glassbox.core.explain.heatmap import ExplainOptions, explain_raster

        return explain_raster(str(self.raster), self.explainer, str(self.workdir / f"heat{tag}.tif"),
                              str(self.workdir / f"bands{tag}.csv"),
                              options=ExplainOptions(stride=self.size, batch_size=self.bs, normalization="global"))

    def cleanup(self):
        for path in self.workdir.iterdir():
            path.unlink()
        self.workdir.rmdir()


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_phase(args) -> dict:
    """Run one side once in this (fresh) process; report peak RSS after set-up and after the run."""
    import warnings

    warnings.filterwarnings("ignore")
    setup = Setup(args)
    # import what either side imports lazily, so imports stay out of the measurement
    for module in ("captum.attr", "rasterio.windows", "scipy.ndimage", "osgeo.ogr"):
        importlib.import_module(module)

    with PeakRSS() as mem:
        if args.phase == "captum":
            setup.run_captum()
        else:
            setup.run_glassbox("mem")
    setup.cleanup()
    return {"rss_after_setup_mb": round(mem.base / 2**20, 1), "peak_rss_mb": round(mem.peak / 2**20, 1),
            "peak_increase_mb": round(mem.above_start_mb, 1)}


def main(argv=None) -> dict:
    import subprocess
    import warnings

    import torch

    args = parse_args(argv)
    if args.phase:
        result = memory_phase(args)
        print(json.dumps(result))
        return result
    warnings.filterwarnings("ignore")
    setup = Setup(args)
    n = setup.n
    all_targets = setup.targets()
    setup.run_captum()  # warm-up both (allocator, lazy imports)
    setup.run_glassbox("warm")
    times = {"captum": [], "captum_given_targets": [], "glassbox": []}
    sampled = {"captum": 0.0, "captum_given_targets": 0.0, "glassbox": 0.0}
    result = None
    for i in range(args.repeats):
        for name in ("captum", "glassbox", "captum_given_targets"):
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                if name == "captum":
                    setup.run_captum()
                elif name == "captum_given_targets":
                    setup.run_captum(all_targets)
                else:
                    result = setup.run_glassbox(i)
                times[name].append(time.perf_counter() - t0)
            sampled[name] = max(sampled[name], mem.above_start_mb)
    assert result is not None and result.tiles_explained == n, "the raster must hold exactly the benchmark tiles"
    setup.cleanup()

    forwarded = ["--tiles", str(args.tiles), "--batch-size", str(args.batch_size)]
    if args.model:
        forwarded += ["--model", args.model]
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    fresh = {}
    for phase in ("captum", "glassbox"):
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *forwarded, "--phase", phase],
                             capture_output=True, text=True, check=True)
        fresh[phase] = json.loads(out.stdout.strip().splitlines()[-1])

    best = {k: min(v) for k, v in times.items()}
    rate = {k: n / v for k, v in best.items()}
    report = {
        "benchmark": "Guided Grad-CAM tiles/s: glassbox explain_raster end to end vs captum GuidedGradCam in memory",
        "model": args.model or "paper1_cnn random, 3 bands, 64 px",
        "tiles": n,
        "tile_size": setup.size,
        "bands": setup.card.num_bands,
        "batch_size": setup.bs,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "grad_cam_layer": setup.explainer.layer_name,
        "raster_px": list(setup.mosaic_shape),
        "tiles_per_s": {k: round(v, 2) for k, v in rate.items()},
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "ratio_glassbox_vs_captum": round(rate["glassbox"] / rate["captum"], 3),
        "ratio_glassbox_vs_captum_given_targets": round(rate["glassbox"] / rate["captum_given_targets"], 3),
        "goal_ratio": 0.9,
        "memory_fresh_process": fresh,
        "peak_rss_above_phase_start_mb": {k: round(v, 1) for k, v in sampled.items()},
        "ru_maxrss_mb": round(maxrss_mb(), 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
