#!/usr/bin/env python
"""How the shipped models map a real scene that is not in EuroSAT: agreement with reference points.

The scene is the demo's Sentinel-2 L1C subset (T33UUU, 2017-02-16: winter farmland, pine forest,
lakes, villages, cloud; ``make demo`` builds it), the points are
``bench/reference/T33UUU_20170216_points.gpkg`` (209 points on features unambiguous in the image;
``scripts/reference_points.py`` says how they were chosen). Every model classifies the whole
scene with ``glassbox.core.classify.classify_raster`` (default stride), once as it is and once
with the s2cloudless cloud mask (``cloud_mask``), and with ``--adapt`` both again with scene
adaptation (``adapt_to_scene``: batch-norm statistics re-estimated from the scene, models with
Torch weights only); the class raster is read at each point.

A model class agrees with a reference class when it is one of:

* water: SeaLake, River
* forest: Forest
* town: Residential, Industrial
* fields: AnnualCrop, PermanentCrop, Pasture, HerbaceousVegetation
* cloud: Cloud (only the cloud mask writes it; without it every cloud point disagrees)

Usage (from the repository root)::

    .venv/bin/python bench/bench_real_scene.py --scene demo_output/s2l1c_T33UUU_20170216.tif \\
        [--models M.onnx ...] [--threads 2] > bench/results/bench_real_scene.json

Output: per model and setting, agreement overall, on the ground points (all but cloud), per
reference class, and the confusion (reference class -> model class -> points).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from glassbox.core.classify import ClassifyOptions, classify_raster
from glassbox.core.io.writers import CLOUD, UNCLASSIFIED
from glassbox.core.models.backends import OnnxModel

REPO_ROOT = Path(__file__).resolve().parents[1]
POINTS = REPO_ROOT / "bench" / "reference" / "T33UUU_20170216_points.gpkg"
MODELS = ["eurosat_rgb_resnet18_64_w32_96px.onnx", "eurosat_rgb_resnet18_64_w32.onnx",
          "eurosat_rgb_resnet18_64_w32_96px_ensemble2.onnx", "eurosat_rgb_paper1_cnn.onnx",
          "eurosat_ms_spatial_spectral.onnx", "eurosat_ms_fusion_resnet18.onnx"]
AGREES = {
    "water": {"SeaLake", "River"},
    "forest": {"Forest"},
    "town": {"Residential", "Industrial"},
    "fields": {"AnnualCrop", "PermanentCrop", "Pasture", "HerbaceousVegetation"},
    "cloud": {"Cloud"},
}


def read_points(path: Path) -> list[tuple[str, float, float]]:
    """(reference class, x, y) of every point, in the layer's CRS (the scene's, EPSG:32633)."""
    from osgeo import ogr

    ds = ogr.Open(str(path))
    if ds is None:
        raise SystemExit(f"cannot open {path}")
    layer = ds.GetLayer(0)
    points = []
    for feature in layer:
        geom = feature.GetGeometryRef()
        points.append((feature.GetField("ref_class"), geom.GetX(), geom.GetY()))
    return points


def class_at(classes_tif: Path, points: list[tuple[str, float, float]], names: list[str] | None = None
             ) -> list[str]:
    """The class name written at each point (``Unclassified``, ``Cloud`` or ``nodata`` too).
    ``names``: the model's class names (default: the raster's own category names, which
    ``glassbox:classify`` writes)."""
    import rasterio

    if names is None:  # GDAL keeps category names in the PAM sidecar; rasterio has no API for them
        import xml.etree.ElementTree as ET

        sidecar = Path(f"{classes_tif}.aux.xml")
        names = [c.text or "" for c in ET.parse(sidecar).iter("Category")] if sidecar.exists() else []
    with rasterio.open(classes_tif) as ds:
        values = [int(v[0]) for v in ds.sample([(x, y) for _, x, y in points])]
        nodata = ds.nodata
    special = {UNCLASSIFIED: "Unclassified", CLOUD: "Cloud"}
    return ["nodata" if nodata is not None and v == nodata else special.get(v) or names[v] for v in values]


def agreement(refs: list[str], got: list[str]) -> dict:
    """Agreement overall, on ground points, per reference class, and the confusion."""
    hits = [g in AGREES[r] for r, g in zip(refs, got)]
    ground = [h for r, h in zip(refs, hits) if r != "cloud"]
    per_class, confusion = {}, {}
    for ref in AGREES:
        picked = [h for r, h in zip(refs, hits) if r == ref]
        if picked:
            per_class[ref] = round(float(np.mean(picked)), 4)
            confusion[ref] = dict(Counter(g for r, g in zip(refs, got) if r == ref).most_common())
    return {"agreement": round(float(np.mean(hits)), 4), "agreement_ground": round(float(np.mean(ground)), 4),
            "per_class": per_class, "confusion": confusion}


def can_adapt(model_path: str) -> bool:
    """Whether scene adaptation can adapt this model (its batch-norm nodes, or Torch weights beside it)."""
    from glassbox.core.adaptation import AdaptationError, adaptable_weights_for

    try:
        adaptable_weights_for(model_path)
    except AdaptationError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", required=True, type=Path, help="the demo scene (13 bands named B01..B12)")
    p.add_argument("--points", type=Path, default=POINTS)
    p.add_argument("--models", nargs="+", default=[str(REPO_ROOT / "resources" / "models" / m) for m in MODELS])
    p.add_argument("--threads", type=int, default=2, help="CPU threads for ONNX Runtime")
    p.add_argument("--no-cloud-mask", action="store_true", help="skip the runs with the cloud mask")
    p.add_argument("--adapt", action="store_true",
                   help="also classify with scene adaptation (batch-norm statistics from the scene; models "
                        "with batch-norm nodes or Torch weights beside them only)")
    p.add_argument("--adapt-mode", choices=["always", "auto"], default="always",
                   help="with --adapt: classify's ADAPT_TO_SCENE mode (auto: kept only if the adapted model is not "
                        "much less sure of the scene; the decision is recorded)")
    args = p.parse_args(argv)

    points = read_points(args.points)
    refs = [r for r, _, _ in points]
    report: dict = {"scene": args.scene.name, "points": len(points), "per_class_points": dict(Counter(refs)),
                    "command": " ".join(["bench/bench_real_scene.py", *(argv if argv is not None else sys.argv[1:])]),
                    "models": {}}
    settings = [("as_is", False, False)] + ([] if args.no_cloud_mask else [("cloud_mask", True, False)])
    if args.adapt:
        mode, suffix = args.adapt_mode, "" if args.adapt_mode == "always" else "_auto"
        settings += [(f"adapted{suffix}", False, mode)] + (
            [] if args.no_cloud_mask else [(f"adapted{suffix}_cloud_mask", True, mode)])
    with tempfile.TemporaryDirectory() as tmp:
        for model_path in args.models:
            model = OnnxModel(Path(model_path), threads=args.threads)
            entry = {}
            for name, cloud_mask, adapt in settings:
                if adapt and not can_adapt(model_path):
                    continue
                out = Path(tmp) / f"{Path(model_path).stem}_{name}.tif"
                started = time.perf_counter()
                result = classify_raster(str(args.scene), model, str(out),
                                         options=ClassifyOptions(cloud_mask=cloud_mask, adapt_to_scene=adapt))
                got = class_at(out, points, list(model.card.class_names))
                entry[name] = {**agreement(refs, got), "seconds": round(time.perf_counter() - started, 1)}
                if result.adaptation is not None and result.adaptation.entropy_before is not None:
                    entry[name]["adaptation"] = {"kept": result.adaptation.kept,
                                                 "entropy_before": round(result.adaptation.entropy_before, 4),
                                                 "entropy_after": round(result.adaptation.entropy_after, 4)}
                print(f"{Path(model_path).name} {name}: {entry[name]['agreement']:.3f} "
                      f"(ground {entry[name]['agreement_ground']:.3f}) {entry[name]['per_class']}", file=sys.stderr)
            report["models"][Path(model_path).name] = entry
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
