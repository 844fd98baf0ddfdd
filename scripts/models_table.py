"""The shipped models as one Markdown table, read from their cards and ``*.metrics.json`` files,
so README's figures are never typed twice.

    .venv/bin/python scripts/models_table.py            # print the table
    .venv/bin/python scripts/models_table.py --update README.md
                                                        # rewrite the table between the markers

README holds the table between ``<!-- models-table -->`` and ``<!-- /models-table -->``;
``tests/test_docs.py`` fails when it differs from what this script makes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent.parent
MODELS_DIR = PLUGIN_DIR / "resources" / "models"
START, END = "<!-- models-table -->", "<!-- /models-table -->"
#: what each shipped model is for (no figures here: those come from the metrics files)
ROLES = {
    "eurosat_rgb_resnet18_64_w32_96px": "default for RGB rasters",
    "eurosat_ms_fusion_resnet18": "default for Sentinel-2 13-band rasters",
    "eurosat_rgb_resnet18_64_w32": "fast RGB model",
    "eurosat_rgb_resnet18_64_w32_96px_ensemble2": "most accurate RGB model (two networks)",
    "eurosat_ms_spatial_spectral": "paper 1's 13-band spatial-spectral CNN (give it as MODEL)",
    "eurosat_rgb_paper1_cnn": "paper 1's CNN, for comparison",
}


def _card(onnx_path: Path) -> dict:
    """The Glassbox card stored in the ONNX file's metadata."""
    import onnx

    from glassbox.core.models.card import ONNX_METADATA_KEY

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return json.loads(meta[ONNX_METADATA_KEY])


BENCH_RESULTS = PLUGIN_DIR / "bench" / "results"


def _bench(name: str) -> dict:
    path = BENCH_RESULTS / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def robustness(onnx_name: str) -> str:
    """Mean accuracy under the 7 corruptions of core.radiometry: RGB models on the EuroSAT RGB test
    split (bench/bench_corruptions.py), 13-band models on their CV folds (the training scripts'
    --corruptions)."""
    entry = _bench("bench_corruptions.json").get(onnx_name, {})
    if "corrupted_mean" in entry:
        return f"{100 * entry['corrupted_mean']:.1f} %"
    # 13-band models: pooled over their CV folds' held-out patches (bench_corruptions_ms.json)
    entry = _bench("bench_corruptions_ms.json").get("models", {}).get(Path(onnx_name).stem, {})
    mean = entry.get("all_patches", {}).get("corrupted_mean")
    return f"{100 * mean:.1f} % (CV)" if isinstance(mean, (int, float)) else ""


def real_scene(onnx_name: str) -> str:
    """Agreement with the demo scene's reference points (bench/bench_real_scene.py): ground points,
    then all points with the cloud mask on."""
    entry = _bench("bench_real_scene.json").get("models", {}).get(onnx_name, {})
    if "as_is" not in entry:
        return ""
    text = f"{100 * entry['as_is']['agreement_ground']:.0f} %"
    if "cloud_mask" in entry:
        text += f" ({100 * entry['cloud_mask']['agreement']:.0f} % with cloud)"
    return text


def _percent(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else ""


def model_row(onnx_path: Path) -> list[str]:
    stem = onnx_path.stem
    card = _card(onnx_path)
    metrics_path = onnx_path.with_name(f"{stem}.metrics.json")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
    if "test_overall" in metrics:
        evaluation = f"EuroSAT RGB test split ({metrics.get('n_test', '?')} tiles)"
        accuracy = _percent(metrics["test_overall"])
        if "test_overall_tta8" in metrics:
            accuracy += f" ({_percent(metrics['test_overall_tta8'])} with TTA)"
    elif "cv_mean" in metrics:
        evaluation = f"{metrics.get('cv_folds', '?')}-fold CV on {metrics.get('n_patches', '?')} EuroSAT 13-band patches"
        accuracy = f"{_percent(metrics['cv_mean'])} ± {100 * metrics.get('cv_std', 0):.1f}"
    elif "variants" in metrics and "final" in metrics:  # the fusion model: its shipped variant's CV
        chosen = metrics["variants"][metrics["final"]["variant"]]
        evaluation = (f"{metrics.get('cv_folds', '?')}-fold CV on {metrics.get('n_patches', '?')} EuroSAT 13-band "
                      f"patches; leak-free: the {chosen['clean']['n']} whose RGB twin the trunk never saw")
        accuracy = f"{_percent(chosen['accuracy'])}; leak-free {_percent(chosen['clean']['accuracy'])}"
    else:
        evaluation, accuracy = "not measured", ""
    speed = metrics.get("onnx_tiles_per_second_batch64")
    bands = card.get("bands", [])
    return [
        f"`{onnx_path.name}`",
        ROLES.get(stem, ""),
        f"{len(bands)} ({', '.join(bands)})" if len(bands) <= 4 else f"{len(bands)} (Sentinel-2 L1C)",
        f"{card.get('tile_size')} px at {card.get('gsd', 10):g} m",
        evaluation,
        accuracy,
        robustness(onnx_path.name),
        real_scene(onnx_path.name),
        f"{speed:.0f}" if isinstance(speed, (int, float)) else "",
        f"{onnx_path.stat().st_size / 1e6:.1f} MB",
    ]


def table() -> str:
    header = ["model", "use", "bands", "tile", "evaluated on", "accuracy", "corrupted (mean of 7)",
              "real scene (demo points)", "tiles/s (2 cores)", "file"]
    order = list(ROLES)
    paths = sorted(MODELS_DIR.glob("*.onnx"), key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.name))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(model_row(p)) + " |" for p in paths]
    return "\n".join(lines)


def update(markdown_path: Path) -> bool:
    """Rewrite the table between the markers; True when the file changed."""
    text = markdown_path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{markdown_path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _old, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if new != text:
        markdown_path.write_text(new, encoding="utf-8")
    return new != text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", type=Path, help="Markdown file whose table to rewrite")
    args = parser.parse_args()
    if args.update:
        print("updated" if update(args.update) else "already current", args.update)
    else:
        print(table())


if __name__ == "__main__":
    main()
