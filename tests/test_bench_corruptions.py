"""bench/bench_corruptions.py end to end on a tiny EuroSAT-like folder and a real (random) model,
with and without scene adaptation."""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import load_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rgb_folder_and_model(tmp_path_factory):
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.card import ClassInfo, ModelCard, Scaling
    from glassbox.core.models.export import export_onnx, save_torch
    from glassbox.core.training.datasets import split_of

    root = tmp_path_factory.mktemp("eurosat_rgb")
    rng = np.random.default_rng(0)
    written = 0
    for level, name in ((60, "Forest"), (160, "SeaLake")):
        (root / name).mkdir()
        test_names = [f"{name}_{k}.jpg" for k in range(1, 400) if split_of(f"{name}_{k}.jpg") == "test"][:6]
        for file_name in test_names + [f"{name}_{k}.jpg" for k in range(1, 400)
                                       if split_of(f"{name}_{k}.jpg") == "train"][:2]:
            pixels = np.clip(rng.normal(level, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / file_name, quality=95)
            written += file_name in test_names
    torch.manual_seed(0)
    card = ModelCard(classes=[ClassInfo("Forest", "#006400"), ClassInfo("SeaLake", "#1f77b4")],
                     bands=["B04", "B03", "B02"], scaling=Scaling(scale=1.0, mean=[110.0] * 3, std=[50.0] * 3),
                     tile_size=64, gsd=10.0, name="random rgb test model",
                     architecture={"name": "paper1_cnn", "kwargs": {}})
    module = build_model("paper1_cnn", 3, 2, 64).eval()
    folder = tmp_path_factory.mktemp("rgb_model")
    onnx_path = export_onnx(module, card, folder / "rgb.onnx")
    save_torch(module, card, folder / "rgb.pt")
    return root, onnx_path, written


@pytest.mark.parametrize("adapt", [False, True])
def test_bench_scores_clean_and_every_corruption(rgb_folder_and_model, adapt, capsys):
    from glassbox.core.radiometry import CORRUPTIONS

    root, onnx_path, written = rgb_folder_and_model
    bench = load_script("bench/bench_corruptions.py")
    args = ["--eurosat-rgb", str(root), "--models", str(onnx_path), "--threads", "1"] + (["--adapt"] if adapt else [])
    assert bench.main(args) == 0
    entry = json.loads(capsys.readouterr().out)["rgb.onnx"]
    assert entry["n_test"] == written == 12 and entry["split"] == "test"
    assert set(entry["corrupted"]) == set(CORRUPTIONS)
    scores = [entry["clean"], *entry["corrupted"].values()]
    assert all(0.0 <= s <= 1.0 and abs(s * written - round(s * written)) < 0.01 for s in scores)
    assert entry["corrupted_mean"] == pytest.approx(np.mean(list(entry["corrupted"].values())), abs=1e-4)
    assert ("adapted" in entry) == adapt


def test_bench_auto_mode_records_each_decision(rgb_folder_and_model, capsys):
    root, onnx_path, _ = rgb_folder_and_model
    bench = load_script("bench/bench_corruptions.py")
    args = ["--eurosat-rgb", str(root), "--models", str(onnx_path), "--threads", "1", "--adapt", "--adapt-auto"]
    assert bench.main(args) == 0
    entry = json.loads(capsys.readouterr().out)["rgb.onnx"]
    assert entry["adapted_with"] == "onnx" and len(entry["decisions"]) == 8  # clean + 7 corruptions
    for decision in entry["decisions"].values():
        assert decision["entropy_before"] > 0 and decision["entropy_after"] > 0 and isinstance(decision["kept"], bool)


def test_adaptation_shift_bench_scores_mixed_and_one_class_scenes(rgb_folder_and_model, capsys):
    root, onnx_path, written = rgb_folder_and_model
    bench = load_script("bench/bench_adaptation_shift.py")
    assert bench.main(["--eurosat-rgb", str(root), "--model", str(onnx_path), "--split", "test",
                       "--first-layers", "1", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    scenes = out["scenes"]
    assert len(scenes) == 8 * 3  # (clean + 7 corruptions) x (mixed, Forest alone, SeaLake alone)
    assert {s["scene"] for s in scenes} == {"mixed", "Forest", "SeaLake"}
    for scene in scenes:
        assert scene["tiles"] == (written if scene["scene"] == "mixed" else written // 2)
        variants = scene["first_layers_adapted"]
        assert set(variants) == {"0", "1", str(len(scene["shift"]))}
        assert scene["accuracy"] == variants["0"]["accuracy"] and all(v >= 0 for v in scene["shift"])


def test_scene_switch_picks_a_model_per_setting_and_scores_with_it(rgb_folder_and_model, tmp_path, capsys):
    """scripts/radiometry_reference.py writes a switch between two models from the training tiles;
    bench_corruptions --scene-switch scores each setting with the model the switch picks for it,
    exactly as that model scores it alone."""
    import shutil

    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.backends import load_model
    from glassbox.core.models.export import export_onnx

    root, onnx_path, _ = rgb_folder_and_model
    folder = tmp_path / "models"
    folder.mkdir()
    clean = folder / "rgb.onnx"
    shutil.copy(onnx_path, clean)
    torch.manual_seed(1)
    robust = export_onnx(build_model("paper1_cnn", 3, 2, 64).eval(), load_model(clean).card, folder / "rgb_robust.onnx")
    assert load_script("scripts/radiometry_reference.py").main(
        ["--data", str(root), "--like-training", str(clean), "--otherwise", str(robust), "--draw-size", "2"]) == 0
    switch = folder / "rgb.scene_switch.json"
    bench = load_script("bench/bench_corruptions.py")
    assert bench.main(["--eurosat-rgb", str(root), "--models", str(switch), "--scene-switch", "--threads", "1"]) == 0
    entry = json.loads(capsys.readouterr().out)[switch.name]
    decisions = entry["scene_switch"]["decisions"]
    assert len(decisions) == 8 and entry["scene_switch"]["threshold"] > 0
    picked = {name.split(", ")[-1] if ", " in name else "clean": d["model"] for name, d in decisions.items()}
    assert picked["brightness_x0.6"] == picked["noise_0.03"] == "rgb_robust.onnx"  # far from the training tiles
    alone = {}
    for model in (clean, robust):
        assert bench.main(["--eurosat-rgb", str(root), "--models", str(model), "--threads", "1"]) == 0
        alone[model.name] = json.loads(capsys.readouterr().out)[model.name]
    assert entry["clean"] == alone[picked["clean"]]["clean"]
    for name, score in entry["corrupted"].items():
        assert score == alone[picked[name]]["corrupted"][name]
