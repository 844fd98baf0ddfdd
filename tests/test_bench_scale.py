"""Smoke test of bench/bench_scale.py (issue 23) on a small generated raster: every part it is
asked for runs, counts the same tiles as the model's grid and reports its ratios and speed-ups."""

import json

import numpy as np

from helpers import PLUGIN_DIR, load_script, write_raster

FAST_MODEL = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32.onnx"


def test_bench_scale_reports_ratios_and_worker_speedups(tmp_path, capsys):
    bench = load_script("bench/bench_scale.py")
    rgb = np.random.default_rng(0).integers(200, 2500, (3, 256, 320), dtype=np.uint16)  # L1C digital numbers
    raster = write_raster(tmp_path / "rgb.tif", rgb, descriptions=["red", "green", "blue"])
    out = tmp_path / "scale.json"
    assert bench.main(["--raster", raster, "--model", str(FAST_MODEL), "--strides", "64", "--repeats", "1",
                       "--explain-repeats", "0", "--big", "0", "--workers-repeats", "1", "--threads", "1",
                       "--workdir", str(tmp_path / "work"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    (speed,) = report["classify_vs_onnxruntime"]
    assert speed["stride"] == 64 and speed["tiles"] == 4 * 5
    assert speed["ratio"] > 0 and speed["classify_tiles_per_second"] > 0 and speed["outputs"] == ["classes"]
    assert speed["with_probabilities"]["ratio"] > 0
    assert speed["with_probabilities"]["outputs"] == ["classes", "probabilities"]
    workers = report["workers"]
    assert workers["stride"] == 32 and workers["tiles"] == 7 * 9
    assert set(workers["median_seconds"]) == {"in_process_1_thread", "in_process_1_threads", "processes_1",
                                              "processes_2", "dask_local_cluster_1", "dask_local_cluster_2"}
    assert workers["speedup_processes_1_to_2"] > 0 and workers["speedup_dask_1_to_2"] > 0
    assert report["projection"]["stride_64"]["tiles_per_granule"] > 0
    assert "memory" not in report
