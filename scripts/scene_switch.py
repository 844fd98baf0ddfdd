"""Write a scene switch (core.scene_radiometry.SceneSwitch) between two EuroSAT RGB models:
``--like-training`` classifies scenes whose radiometry is like the EuroSAT *training split*'s,
``--otherwise`` every other scene. The radiometry reference is computed from the training
split only (the split of core.training.datasets.split_of, the one the training scripts train
on), scaled as the first model reads 8-bit tiles.

Usage (from the repository root)::

    .venv/bin/python scripts/scene_switch.py --data ../shared/data/eurosat_rgb \\
        --like-training resources/models/eurosat_rgb_resnet18_64_w32_96px.onnx \\
        --otherwise resources/models/eurosat_rgb_resnet18_64_w32_96px_robust.onnx \\
        [--out resources/models/eurosat_rgb_resnet18_64_w32_96px.scene_switch.json]

The output goes beside ``--like-training`` (both models must be in that folder) and is used by
classify / explain when that model is the default they chose.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="EuroSAT RGB folder (<Class>/<Class>_N.jpg)")
    p.add_argument("--like-training", required=True, help="model for scenes like the training tiles (ONNX or .pt)")
    p.add_argument("--otherwise", required=True, help="model for every other scene, in the same folder")
    p.add_argument("--out", default=None, help="switch file (default <like-training stem>.scene_switch.json beside it)")
    p.add_argument("--limit", type=int, default=0, help="use only this many training tiles (smoke runs); 0 = all")
    p.add_argument("--draw-size", type=int, default=256,
                   help="training tiles per random draw for the reference's spread (core.scene_radiometry.DRAW_SIZE)")
    p.add_argument("--description", default="", help="one sentence for the file")
    return p.parse_args(argv)


def training_tiles(root: str, limit: int) -> np.ndarray:
    """The EuroSAT RGB training-split tiles (N, 3, 64, 64) as 0..255 float32."""
    from glassbox.core.training.data import read_tile_file
    from glassbox.core.training.datasets import scan_tile_folder, split_of

    paths, _labels, _names = scan_tile_folder(root)
    keep = [p for p in paths if split_of(p.name) == "train"]
    if limit and limit < len(keep):
        keep = keep[:: max(1, len(keep) // limit)][:limit]
    return np.stack([read_tile_file(p)[0] for p in keep]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    from glassbox.core.models.card import Scaling
    from glassbox.core.models.choice import read_card
    from glassbox.core.scene_radiometry import SWITCH_SUFFIX, SceneSwitch, reference_from_tiles
    from glassbox.core.training.scaling import scale_batch

    args = parse_args(argv)
    like, other = Path(args.like_training), Path(args.otherwise)
    if like.parent.resolve() != other.parent.resolve():
        raise SystemExit("--like-training and --otherwise must be in the same folder")
    cards = [read_card(like), read_card(other)]
    same = (cards[0].bands == cards[1].bands and cards[0].tile_size == cards[1].tile_size
            and cards[0].class_names == cards[1].class_names
            and np.allclose(cards[0].scaling.mean, cards[1].scaling.mean)
            and np.allclose(cards[0].scaling.std, cards[1].scaling.std))
    if not same:
        raise SystemExit("the two models must read the same bands, tile size, classes and scaling")
    started = time.perf_counter()
    tiles = training_tiles(args.data, args.limit)
    # 8-bit EuroSAT jpgs are already on the models' 0..255 scale: only mean/std apply (as in bench_corruptions)
    inputs = scale_batch(tiles, Scaling(mean=cards[0].scaling.mean, std=cards[0].scaling.std))
    reference = reference_from_tiles(inputs, cards[0].bands, draw_size=args.draw_size, source=f"EuroSAT RGB training split, {len(tiles)} tiles")
    out = Path(args.out) if args.out else like.with_name(like.stem + SWITCH_SUFFIX)
    out.write_text(json.dumps({
        "like_training": like.name, "otherwise": other.name,
        "description": args.description or (f"{like.name} for scenes whose radiometry is like EuroSAT's training "
                                            f"tiles, {other.name} for every other scene"),
        "radiometry_reference": reference.to_dict(),
        "script": "scripts/scene_switch.py",
    }, indent=2) + "\n", encoding="utf-8")
    SceneSwitch.load(out)  # readable as written
    print(f"wrote {out} from {len(tiles)} training tiles in {time.perf_counter() - started:.0f} s; "
          f"threshold {reference.threshold:.2f} spreads", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
