"""Write networks on the straight line between two networks of one architecture (WiSE-FT).

    .venv/bin/python scripts/interpolate_weights.py --first A.pt --second B.pt --weights 0.3 0.5 --out-dir DIR

For each weight w, ``DIR/<stem>_w<w>.pt`` (+ card) and ``.onnx`` hold
``(1 - w) * A + w * B`` (every floating-point tensor; :mod:`glassbox.core.models.interpolation`).
The second network should have been fine-tuned from the first's weights, else the line between
them crosses networks that classify nothing.

With ``--batchnorm-data`` (a EuroSAT RGB folder) the batch-norm statistics of each interpolated
network are re-estimated from ``--batchnorm-tiles`` tiles of its training split (random, seed 0),
random radiometry (``core.radiometry.random_radiometry``, strength 1) on
``--batchnorm-radiometric-fraction`` of them, as in the robustness training runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def batchnorm_tiles(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """Scaled training-split tiles for re-estimating batch-norm statistics, and what they are."""
    from glassbox.core.models.choice import read_card
    from glassbox.core.radiometry import random_radiometry
    from glassbox.core.training.datasets import load_tiles, scan_tile_folder, split_of
    from glassbox.core.training.scaling import prescaled_scaling, scale_batch, scales_raw_values

    paths, _labels, _classes = scan_tile_folder(args.batchnorm_data)
    train = [p for p in paths if split_of(p.name) == "train"]
    rng = np.random.default_rng(0)
    chosen = [train[i] for i in np.sort(rng.permutation(len(train))[: args.batchnorm_tiles])]
    tiles = load_tiles(chosen)
    changed = np.nonzero(rng.random(len(tiles)) < args.batchnorm_radiometric_fraction)[0]
    if changed.size:
        tiles[changed] = random_radiometry(tiles[changed], 255.0, rng, 1.0)
    card = read_card(args.first)
    # EuroSAT's jpgs hold B04, B03, B02 after a card's 0..255 scaling (as bench/bench_corruptions.py)
    scaling = prescaled_scaling(card.scaling) if scales_raw_values(card.scaling) else card.scaling
    note = (f"{len(tiles)} EuroSAT RGB training-split tiles (random, seed 0), random radiometry at strength 1 on "
            f"{changed.size} of them")
    return scale_batch(tiles, scaling), note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--first", required=True, help="Torch state dict with its card (weight 0)")
    p.add_argument("--second", required=True, help="Torch state dict with its card (weight 1)")
    p.add_argument("--weights", type=float, nargs="+", required=True, help="weights w of the second network, 0..1")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--stem", default="interpolated", help="file name stem (default: interpolated)")
    p.add_argument("--no-onnx", action="store_true", help="write the Torch state dict only")
    p.add_argument("--batchnorm-data", default=None,
                   help="EuroSAT RGB folder: re-estimate batch-norm statistics from its training split")
    p.add_argument("--batchnorm-tiles", type=int, default=4096)
    p.add_argument("--batchnorm-radiometric-fraction", type=float, default=0.0,
                   help="share of those tiles given random radiometry (strength 1); 0 = all clean")
    args = p.parse_args(argv)
    from glassbox.core.models.interpolation import interpolate_models

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs, note = (batchnorm_tiles(args) if args.batchnorm_data else (None, ""))
    for w in args.weights:
        stem = f"{args.stem}_w{w:g}"
        interpolate_models(args.first, args.second, w, out_dir / f"{stem}.pt",
                           None if args.no_onnx else out_dir / f"{stem}.onnx", batchnorm_inputs=inputs,
                           batchnorm_note=note)
        print(f"w={w:g}: {out_dir / stem}.pt" + ("" if args.no_onnx else " and .onnx"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
