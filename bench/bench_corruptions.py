#!/usr/bin/env python
"""Robustness of the shipped RGB models to radiometry: EuroSAT RGB test-split accuracy, clean and
under each corruption of :data:`glassbox.core.radiometry.CORRUPTIONS` (brightness x0.6 and x1.4,
haze, gamma 0.7 and 1.4, Gaussian noise, blur), printed as JSON.

Usage (from the repository root)::

    .venv/bin/python bench/bench_corruptions.py --eurosat-rgb ../shared/data/eurosat_rgb \\
        [--models resources/models/eurosat_rgb_resnet18_64_w32_96px.onnx ...] [--limit 0] [--threads 2] \\
        [--adapt] [--split test|val]

Test tiles: the held-out split of :func:`glassbox.core.training.datasets.split_of` (the one the training
scripts hold out), 8-bit jpgs (``full_scale`` 255); corruptions are applied to those digital
numbers before the model's own scaling, seeded (noise: seed 0). ``--adapt`` scores each setting
after scene adaptation on that setting's own tiles (no labels; :mod:`glassbox.core.adaptation`),
i.e. as if the test split under one corruption were one scene classified with ``ADAPT_TO_SCENE``.
``--limit N`` takes N test tiles (every k-th, all classes) for a quick look. Output::

    {"<model>": {"clean": 0.985, "corrupted": {"haze_0.3": 0.97, ...}, "corrupted_mean": 0.96,
                 "n_test": 5354}}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from glassbox.core.models.backends import OnnxModel
from glassbox.core.radiometry import CORRUPTIONS, corrupt
from glassbox.core.training.data import TrainingData
from glassbox.core.training.evaluation import evaluate
from glassbox.core.training.scaling import prescaled_scaling, scale_batch, scales_raw_values

REPO_ROOT = Path(__file__).resolve().parents[1]
RGB_MODELS = ["eurosat_rgb_resnet18_64_w32_96px.onnx", "eurosat_rgb_resnet18_64_w32.onnx",
              "eurosat_rgb_resnet18_64_w32_96px_ensemble2.onnx", "eurosat_rgb_paper1_cnn.onnx"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eurosat-rgb", required=True, help="EuroSAT RGB folder (<Class>/<Class>_N.jpg)")
    p.add_argument("--models", nargs="+", default=[str(REPO_ROOT / "resources" / "models" / m) for m in RGB_MODELS],
                   help="ONNX models reading B04, B03, B02 (default: the shipped RGB models)")
    p.add_argument("--limit", type=int, default=0, help="use only this many test tiles (0 = all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for ONNX Runtime (and Torch with --adapt)")
    p.add_argument("--adapt", action="store_true",
                   help="scene adaptation (glassbox.core.adaptation): before scoring each setting (clean and every "
                        "corruption), re-estimate the model's batch-norm statistics from that setting's tiles, as "
                        "classify's ADAPT_TO_SCENE does from a raster: an ONNX model with batch-norm nodes with ONNX "
                        "Runtime (core.adaptation_onnx), others through the Torch weights (.pt beside the .onnx)")
    p.add_argument("--adapt-auto", action="store_true",
                   help="with --adapt: classify's mode 'auto' (ADAPT_TO_SCENE=true): per setting, the adapted model "
                        "is not used when its mean prediction entropy on the setting's tiles is more than 1.5 times "
                        "the model's (core.adaptation.keep_adaptation); the JSON records each decision")
    p.add_argument("--adapt-torch", action="store_true",
                   help="with --adapt: always adapt the Torch weights beside the model (the route before 2026-12-07)")
    p.add_argument("--source-weight", type=float, default=0.0,
                   help="with --adapt: weight of the training statistics mixed into the scene's (0 = the scene's "
                        "alone, as classify does)")
    p.add_argument("--scene-switch", action="store_true",
                   help="--models are scene switches (<model>.scene_switch.json, core.scene_radiometry): per setting, "
                        "up to 1024 of its tiles (seed 0) decide, as classify does from a raster, which of the two "
                        "models scores that setting; the JSON records each decision and distance")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="EuroSAT split to score (val: for choosing settings without looking at the test split)")
    return p.parse_args(argv)


def test_split(root: str, limit: int, split: str = "test") -> TrainingData:
    from glassbox.core.training.datasets import scan_tile_folder, split_of
    from glassbox.core.training.data import read_tile_file

    paths, labels, class_names = scan_tile_folder(root)
    keep = [i for i, p in enumerate(paths) if split_of(p.name) == split]
    if limit and limit < len(keep):
        keep = keep[:: max(1, len(keep) // limit)][:limit]
    tiles = np.stack([read_tile_file(paths[i])[0] for i in keep])
    return TrainingData(tiles, labels[keep], class_names, ["B04", "B03", "B02"], [str(paths[i]) for i in keep],
                        description=f"EuroSAT RGB {split} split")


def prescaled(card) -> bool:
    """True when the jpgs' 0..255 values already are the model's scaled input (B04, B03, B02 of a
    model reading Sentinel-2 digital numbers): then only the card's mean/std apply."""
    return scales_raw_values(card.scaling)


def accuracy(model, data: TrainingData, batch_size: int) -> float:
    return float(evaluate(model, data, batch_size, prescaled=prescaled(model.card)).metrics.overall_accuracy)


def onnx_scorer(path: Path, threads: int, batch_size: int):
    """The score function (data -> accuracy) of the ONNX model at ``path``."""
    model = OnnxModel(path, "cpu", threads=threads)
    return lambda data: accuracy(model, data, batch_size)


def adapted_scorer(path: Path, threads: int, batch_size: int, source_weight: float = 0.0, use_torch: bool = False,
                   guard: bool = False):
    """The score function for ``--adapt``: each call starts from the model's own statistics,
    adapts them to the data's tiles (in random order, seed 0) and scores the data. An ONNX model
    with batch-norm nodes is adapted as ONNX (as classify does; core.adaptation_onnx), other
    models (or any with ``use_torch``) through their Torch weights."""
    from glassbox.core.adaptation_onnx import onnx_batchnorm_count

    if not use_torch and path.suffix.lower() == ".onnx" and onnx_batchnorm_count(path):
        return _onnx_adapted_scorer(path, threads, batch_size, source_weight, guard)
    if guard:
        raise SystemExit("--adapt-auto needs an ONNX model with batch-norm nodes (and not --adapt-torch)")
    import copy

    import torch

    from glassbox.core.adaptation import adapt_batchnorm, torch_weights_for
    from glassbox.core.models.backends import TorchModel

    torch.set_num_threads(threads)
    model = TorchModel(torch_weights_for(path), "cpu")
    own = copy.deepcopy(model.module.state_dict())
    scaling = model_scaling(model.card)

    def score(data: TrainingData) -> float:
        model.module.load_state_dict(own)
        adapt_batchnorm(model.module, scale_batch(data.tiles, scaling), source_weight=source_weight)
        return accuracy(model, data, batch_size)

    score.route = "torch"
    return score


def _onnx_adapted_scorer(path: Path, threads: int, batch_size: int, source_weight: float, guard: bool = False):
    import tempfile

    import onnx

    from glassbox.core.adaptation_onnx import adapt_onnx_batchnorm

    original = onnx.load(str(path))
    plain = OnnxModel(path, "cpu", threads=threads)
    card = plain.card
    scaling = model_scaling(card)

    def score(data: TrainingData) -> float:
        inputs = scale_batch(data.tiles, scaling)
        adapted, _ = adapt_onnx_batchnorm(original, inputs, seed=0, source_weight=source_weight, threads=threads)
        with tempfile.TemporaryDirectory() as folder:
            adapted_path = Path(folder) / path.name
            adapted_path.write_bytes(adapted.SerializeToString())
            model = OnnxModel(adapted_path, "cpu", card=card, threads=threads)
            if guard:
                from glassbox.core.adaptation import keep_adaptation, predicted_entropy

                before, after = predicted_entropy(plain, inputs), predicted_entropy(model, inputs)
                kept = keep_adaptation(before, after, card.num_classes)
                score.decisions[data.description] = {"entropy_before": round(before, 4),
                                                     "entropy_after": round(after, 4), "kept": kept}
                if not kept:
                    model = plain
            return accuracy(model, data, batch_size)

    score.decisions = {}

    score.route = "onnx"
    return score


def switch_scorer(path: Path, threads: int, batch_size: int):
    """The score function for ``--scene-switch``: each setting is one scene; a sample of its
    tiles (as many as classify samples from a raster, seed 0) picks the model that scores it."""
    from glassbox.core.adaptation import ADAPTATION_TILES
    from glassbox.core.models.choice import read_card
    from glassbox.core.scene_radiometry import SceneSwitch

    switch = SceneSwitch.load(path)
    scorers = {m: onnx_scorer(m, threads, batch_size) for m in (switch.like_training, switch.otherwise)}
    scaling = model_scaling(read_card(switch.like_training))

    def score(data: TrainingData) -> float:
        n = data.num_tiles
        sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, ADAPTATION_TILES), replace=False))
        chosen, distance, _reason = switch.choose(scale_batch(data.tiles[sample], scaling))
        score.decisions[data.description] = {"distance": round(distance, 2), "model": chosen.name}
        return scorers[chosen](data)

    score.decisions = {}
    score.threshold = switch.reference.threshold
    return score


def model_scaling(card):
    """The scaling the network expects of 8-bit tiles (see ``prescaled``)."""
    return prescaled_scaling(card.scaling) if prescaled(card) else card.scaling


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    clean = test_split(args.eurosat_rgb, args.limit, args.split)
    print(f"{clean.num_tiles} {args.split} tiles read in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    variants = {name: corrupt(clean.tiles, name, 255.0, seed=0) for name in CORRUPTIONS}
    out = {}
    for path in args.models:
        if args.scene_switch:
            score = switch_scorer(Path(path), args.threads, args.batch_size)
        elif args.adapt:
            score = adapted_scorer(Path(path), args.threads, args.batch_size, args.source_weight, args.adapt_torch,
                                   args.adapt_auto)
        else:
            score = onnx_scorer(Path(path), args.threads, args.batch_size)
        t0 = time.perf_counter()
        entry = {"clean": round(score(clean), 4), "corrupted": {}}
        for name, tiles in variants.items():
            data = TrainingData(tiles, clean.labels, clean.class_names, clean.band_names, clean.sources,
                                description=f"{clean.description}, {name}")
            entry["corrupted"][name] = round(score(data), 4)
        entry["corrupted_mean"] = round(float(np.mean(list(entry["corrupted"].values()))), 4)
        entry["n_test"] = clean.num_tiles
        entry["split"] = args.split
        if args.adapt:
            entry["adapted"] = "batch-norm statistics re-estimated from each setting's tiles (core.adaptation)"
            entry["adapted_with"] = score.route
            if args.adapt_auto:
                entry["mode"] = ("auto: adapted model not used when its mean entropy on the setting's tiles exceeds "
                                 "1.5 times the model's (core.adaptation.keep_adaptation)")
                entry["decisions"] = score.decisions
            entry["source_weight"] = args.source_weight
        if args.scene_switch:
            entry["scene_switch"] = {"threshold": round(score.threshold, 2), "decisions": score.decisions}
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{Path(path).name}: clean {entry['clean']:.4f}, corrupted mean {entry['corrupted_mean']:.4f}",
              file=sys.stderr)
        out[Path(path).name] = entry
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
