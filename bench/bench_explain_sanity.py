"""Do the heatmaps depend on what the model learnt? Sanity checks (Adebayo et al. 2018) of the
shipped models' explanations, for every explanation method.

    .venv/bin/python bench/bench_explain_sanity.py --eurosat-rgb ../shared/data/eurosat_rgb \\
        [--eurosat-ms ../shared/data/eurosat_ms_subset] [--tiles 200] [--models m.pt ...] [--threads 2]

For each model and method (:data:`glassbox.core.explain.attribution.METHODS`) on ``--tiles`` tiles
(EuroSAT RGB: every k-th tile of the *validation* split, :func:`core.training.datasets.split_of`;
13-band EuroSAT: every k-th patch of the folder), :func:`glassbox.core.explain.sanity.model_randomization_check`
gives

* the cascade: the mean and median Spearman rank correlation between the trained network's heatmap
  and the heatmap after randomizing the top 1, 2, ... weighted layers (down to all of them), same
  target class (the trained network's prediction). Low = the heatmap depends on the learnt weights;
* ``class_spearman``: heatmap of the predicted class against that of the runner-up class;
* ``edge_spearman_trained``: heatmap against the tile's Sobel gradient magnitude.

Torch models are explained as ``glassbox:explain`` explains them (a ``.pt`` with its card, or an
``.onnx`` converted with onnx2torch). Randomized weights are Gaussian with each tensor's trained
spread, seed 0. Prints JSON (one entry per model, one per method inside).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from glassbox.core.explain.attribution import METHODS, load_explainer
from glassbox.core.explain.sanity import model_randomization_check
from glassbox.core.training.scaling import prescaled_scaling, scale_batch, scales_raw_values

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "resources" / "models"
RGB_MODELS = ["eurosat_rgb_resnet18_64_w32_96px.pt", "eurosat_rgb_paper1_cnn.pt"]
MS_MODELS = ["eurosat_ms_fusion_resnet18.pt", "eurosat_ms_spatial_spectral.pt"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eurosat-rgb", help="EuroSAT RGB folder (<Class>/<Class>_N.jpg): its validation split")
    p.add_argument("--eurosat-ms", help="13-band EuroSAT folder (<Class>/<Class>_N.tif)")
    p.add_argument("--models", nargs="+",
                   help="models to check (default: the shipped default and paper 1 models for each data set given)")
    p.add_argument("--tiles", type=int, default=200, help="tiles per data set (spread over the classes)")
    p.add_argument("--stages", default="",
                   help="comma-separated counts of top layers to randomize (default: the full cascade)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="Torch CPU threads")
    p.add_argument("--output", help="also write the JSON here")
    return p.parse_args(argv)


def every_kth(count: int, wanted: int) -> np.ndarray:
    if wanted <= 0 or wanted >= count:
        return np.arange(count)
    return np.linspace(0, count - 1, wanted).round().astype(int)


def rgb_tiles(root: str, wanted: int):
    from glassbox.core.training.data import read_tile_file
    from glassbox.core.training.datasets import scan_tile_folder, split_of

    paths, labels, _names = scan_tile_folder(root)
    keep = [i for i, p in enumerate(paths) if split_of(p.name) == "val"]
    keep = [keep[i] for i in every_kth(len(keep), wanted)]
    return np.stack([read_tile_file(paths[i])[0] for i in keep]), "EuroSAT RGB validation split"


def ms_tiles(root: str, wanted: int):
    from glassbox.core.training.datasets import load_eurosat_ms

    data = load_eurosat_ms(root)
    return data.tiles[every_kth(data.num_tiles, wanted)], "EuroSAT 13-band patches"


def scaled(tiles: np.ndarray, card, eight_bit: bool) -> np.ndarray:
    scaling = card.scaling
    if eight_bit and scales_raw_values(scaling):
        scaling = prescaled_scaling(scaling)
    return scale_batch(tiles, scaling)


def finite(value):
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    stages = [int(s) for s in args.stages.split(",") if s.strip()] or None
    data = {}
    if args.eurosat_rgb:
        data[3] = (*rgb_tiles(args.eurosat_rgb, args.tiles), True)
    if args.eurosat_ms:
        data[13] = (*ms_tiles(args.eurosat_ms, args.tiles), False)
    if not data:
        raise SystemExit("give --eurosat-rgb and/or --eurosat-ms")
    models = args.models or [str(MODELS / m) for bands, names in ((3, RGB_MODELS), (13, MS_MODELS))
                             if bands in data for m in names]
    out = {}
    for path in models:
        explainer = load_explainer(path)
        bands = explainer.card.num_bands
        if bands not in data:
            print(f"{Path(path).name}: no {bands}-band data given, skipped", file=sys.stderr)
            continue
        tiles, description, eight_bit = data[bands]
        batch = scaled(tiles, explainer.card, eight_bit)
        entry = {"data": description, "tiles": int(batch.shape[0]), "gradcam_layer": explainer.layer_name,
                 "methods": {}}
        for method in METHODS:
            started = time.perf_counter()
            result = model_randomization_check(explainer, batch, method, stages=stages, seed=0,
                                               batch_size=args.batch_size)
            figures = result.to_dict()
            figures["seconds"] = round(time.perf_counter() - started, 1)
            entry["methods"][method] = figures
            top = result.stages[0]
            print(f"{Path(path).name} {method}: output layer randomized -> Spearman {top.spearman_mean:.2f}, "
                  f"all layers -> {result.stages[-1].spearman_mean:.2f}; class {result.class_spearman:.2f}, "
                  f"edges {result.edge_spearman_trained:.2f} ({figures['seconds']} s)", file=sys.stderr)
        out[Path(path).name] = entry
    text = json.dumps(finite(out), indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
