"""When does scene adaptation help, and can the network's own statistics tell beforehand?

Each "scene" is a set of EuroSAT tiles of one split: all classes mixed, or one class alone (a
raster of one land cover), clean or under one corruption of ``core.radiometry.CORRUPTIONS``.
For every scene it prints the accuracy of the model as it is and after scene adaptation
(``core.adaptation_onnx``, the scene's own tiles, as classify's ``ADAPT_TO_SCENE``), and the
*shift*: per batch-norm layer, the symmetric Kullback-Leibler divergence between the Gaussian of
the scene's statistics and that of the training statistics, averaged over the channels
(``core.adaptation_onnx.batchnorm_shift``). Run on the validation split for choosing anything.

    .venv/bin/python bench/bench_adaptation_shift.py --eurosat-rgb ../shared/data/eurosat_rgb --split val
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_corruptions import model_scaling, test_split  # noqa: E402

from glassbox.core.adaptation_onnx import (batchnorm_shift, scene_batchnorm_statistics,  # noqa: E402
                                           source_batchnorm_statistics, with_batchnorm_statistics)
from glassbox.core.models.backends import OnnxModel, softmax  # noqa: E402
from glassbox.core.radiometry import CORRUPTIONS, corrupt  # noqa: E402
from glassbox.core.training.scaling import scale_batch  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "resources" / "models" / "eurosat_rgb_resnet18_64_w32_96px.onnx"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eurosat-rgb", required=True)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--mixed-tiles", type=int, default=512, help="tiles of the all-classes scene")
    p.add_argument("--class-tiles", type=int, default=256, help="tiles of each one-class scene, at most")
    p.add_argument("--limit", type=int, default=0, help="read only this many tiles of the split (smoke tests)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--first-layers", default="1,3,5,10,15",
                   help="also score adaptation of only the first k batch-norm layers (graph order), the "
                        "deeper ones keeping their training statistics, for each k of this list")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import onnx

    args = parse_args(argv)
    started = time.perf_counter()
    data = test_split(args.eurosat_rgb, args.limit, args.split)
    path = Path(args.model)
    model = OnnxModel(path, threads=args.threads)
    proto = onnx.load(str(path))
    source = source_batchnorm_statistics(proto)
    scaling = model_scaling(model.card)
    rng = np.random.default_rng(0)
    scenes = {"mixed": rng.permutation(len(data.labels))[: args.mixed_tiles]}
    for c, name in enumerate(data.class_names):
        members = np.flatnonzero(data.labels == c)
        if len(members) >= 2:  # a batch needs two tiles for a variance
            scenes[name] = rng.permutation(members)[: args.class_tiles]
    first_layers = [int(k) for k in args.first_layers.split(",") if k.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for corruption in ["clean", *CORRUPTIONS]:
            tiles = data.tiles if corruption == "clean" else corrupt(data.tiles, corruption, 255.0, seed=0)
            for scene, picked in scenes.items():
                x = scale_batch(tiles[picked], scaling).astype(np.float32)
                labels = data.labels[picked]
                statistics = scene_batchnorm_statistics(proto, x, threads=args.threads)

                def scored(logits: np.ndarray) -> dict:
                    p = softmax(logits.astype(np.float64), axis=1)
                    return {"accuracy": round(float((p.argmax(1) == labels).mean()), 4),
                            "entropy": round(float(-(p * np.log(np.clip(p, 1e-12, 1))).sum(1).mean()), 4),
                            "confidence": round(float(p.max(1).mean()), 4)}

                def adapted(first: int) -> dict:
                    kept = statistics[:first] + source[first:]
                    adapted_path = Path(folder) / "adapted.onnx"
                    adapted_path.write_bytes(with_batchnorm_statistics(proto, kept).SerializeToString())
                    return scored(OnnxModel(adapted_path, card=model.card, threads=args.threads).predict_logits(x))

                variants = {0: scored(model.predict_logits(x)), **{k: adapted(k) for k in first_layers},
                            len(statistics): adapted(len(statistics))}
                row = {"scene": scene, "corruption": corruption, "tiles": int(len(picked)),
                       "accuracy": variants[0]["accuracy"], "accuracy_adapted": variants[len(statistics)]["accuracy"],
                       "first_layers_adapted": variants,
                       "shift": [round(float(v), 4) for v in batchnorm_shift(statistics, source)]}
                print(f"{corruption:15s} {scene:22s} " + " ".join(
                    f"{k}:{v['accuracy']:.3f}/{v['entropy']:.2f}" for k, v in variants.items()), file=sys.stderr)
                rows.append(row)
    out = {"model": path.name, "split": args.split, "tiles_read": int(data.num_tiles),
           "command": "bench/bench_adaptation_shift.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "seconds": round(time.perf_counter() - started, 1), "scenes": rows}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
