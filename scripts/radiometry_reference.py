"""The radiometry reference of a EuroSAT RGB model (core.scene_radiometry): per band the median
tile brightness, contrast and fine detail of the EuroSAT *training split* (the split of
core.training.datasets.split_of, the one the training scripts train on), scaled as the model
reads 8-bit tiles, and how much they vary between random draws of training tiles.

Usage (from the repository root)::

    .venv/bin/python scripts/radiometry_reference.py --data ../shared/data/eurosat_rgb \\
        --like-training resources/models/eurosat_rgb_resnet18_64_w32_96px.onnx

writes ``<model stem>.radiometry.json`` beside the model: classify then logs how far each
scene's radiometry is from the training tiles and warns when it looks unlike them. With
``--otherwise OTHER.onnx`` (same folder, same bands and scaling) it writes a scene switch
instead (``<stem>.scene_switch.json``, core.scene_radiometry.SceneSwitch: the first model for
scenes like its training tiles, the other for every other scene), a research tool scored by
``bench/bench_corruptions.py --scene-switch`` and ``bench/scene_switch_decision.py``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="EuroSAT RGB folder (<Class>/<Class>_N.jpg), or with --multispectral "
                                                 "the EuroSAT 13-band folder (<Class>/<Class>_N.tif)")
    p.add_argument("--multispectral", action="store_true",
                   help="a 13-band model trained on all the 13-band tiles of --data (digital numbers, the card's "
                        "full scaling); the reference then comes from all of them, in the card's band order")
    p.add_argument("--like-training", required=True,
                   help="the model whose training tiles the reference describes (ONNX or .pt with its card)")
    p.add_argument("--otherwise", default=None,
                   help="write a scene switch to this model (same folder) instead of a plain reference")
    p.add_argument("--out", default=None, help="output file (default <like-training stem>.radiometry.json, or "
                                               ".scene_switch.json with --otherwise, beside the model)")
    p.add_argument("--limit", type=int, default=0, help="use only this many training tiles (smoke runs); 0 = all")
    p.add_argument("--draw-size", type=int, default=None,
                   help="training tiles per random draw for the reference's spread (default "
                        "core.scene_radiometry.DRAW_SIZE, 256; with --multispectral 64)")
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


def multispectral_tiles(root: str, bands: list[str]) -> np.ndarray:
    """All 13-band EuroSAT tiles of ``root`` (N, bands, 64, 64), digital numbers, in ``bands`` order."""
    from glassbox.core.io.raster import normalise_band_name
    from glassbox.core.training.datasets import load_eurosat_ms

    data = load_eurosat_ms(root)
    index = {normalise_band_name(b): i for i, b in enumerate(data.band_names)}
    try:
        order = [index[normalise_band_name(b)] for b in bands]
    except KeyError as exc:
        raise SystemExit(f"the model reads band {exc}, which the 13-band tiles do not have") from None
    return data.tiles[:, order].astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    from glassbox.core.models.choice import read_card
    from glassbox.core.scene_radiometry import (REFERENCE_SUFFIX, SWITCH_SUFFIX, SceneSwitch, beside_model,
                                                reference_for, reference_from_tiles)
    from glassbox.core.training.scaling import prescaled_scaling, scale_batch

    args = parse_args(argv)
    like = Path(args.like_training)
    other = Path(args.otherwise) if args.otherwise else like
    if like.parent.resolve() != other.parent.resolve():
        raise SystemExit("--like-training and --otherwise must be in the same folder")
    cards = [read_card(like), read_card(other)]
    same = (cards[0].bands == cards[1].bands and cards[0].tile_size == cards[1].tile_size
            and cards[0].class_names == cards[1].class_names
            and asdict(cards[0].scaling) == asdict(cards[1].scaling))
    if not same:
        raise SystemExit("the two models must read the same bands, tile size, classes and scaling")
    started = time.perf_counter()
    if args.multispectral:
        tiles, what = multispectral_tiles(args.data, cards[0].bands), "EuroSAT 13-band tiles (all)"
        inputs = scale_batch(tiles, cards[0].scaling)
    else:
        tiles, what = training_tiles(args.data, args.limit), "EuroSAT RGB training split"
        # 8-bit EuroSAT jpgs are already on the models' 0..255 scale: only mean/std apply (as in bench_corruptions)
        inputs = scale_batch(tiles, prescaled_scaling(cards[0].scaling))
    draw_size = args.draw_size or (64 if args.multispectral else 256)
    reference = reference_from_tiles(inputs, cards[0].bands, draw_size=draw_size, source=f"{what}, {len(tiles)} tiles")
    if args.otherwise:
        out = Path(args.out) if args.out else beside_model(like, SWITCH_SUFFIX)
        content = {"like_training": like.name, "otherwise": other.name,
                   "description": args.description or (f"{like.name} for scenes whose radiometry is like EuroSAT's "
                                                       f"training tiles, {other.name} for every other scene")}
    else:
        out = Path(args.out) if args.out else beside_model(like, REFERENCE_SUFFIX)
        content = {"model": like.name}
    content.update({"radiometry_reference": reference.to_dict(), "script": "scripts/radiometry_reference.py"})
    out.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    if args.otherwise:
        SceneSwitch.load(out)  # readable as written
    elif args.out is None:
        reference_for(like)  # readable as written
    print(f"wrote {out} from {len(tiles)} training tiles in {time.perf_counter() - started:.0f} s; "
          f"threshold {reference.threshold:.2f} spreads", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
