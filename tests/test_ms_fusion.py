"""The 13-band model on an RGB trunk (core.models.architectures.RGBTrunkFusionNet, card name
``rgb_fusion``): built, trained a step, exported to ONNX with its card, explained; the shipped
file; the training script on tiny generated data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glassbox.core.training.datasets import EUROSAT_MS_BANDS
from helpers import PLUGIN_DIR, load_script, write_eurosat_ms_folder

MODELS = PLUGIN_DIR / "resources" / "models"
SHIPPED = MODELS / "eurosat_ms_fusion_resnet18"
EUROSAT_MS = PLUGIN_DIR.parent / "shared" / "data" / "eurosat_ms_subset"
TINY = {"trunk_width": 8, "branch_width": 8}


def generated_tiles(n_per_class: int = 6, size: int = 32, seed: int = 0):
    """13-band uint16 tiles of two classes: 'Vegetation' bright in B08 (NIR), 'Water' dark."""
    from glassbox.core.training.data import TrainingData

    rng = np.random.default_rng(seed)
    tiles, labels = [], []
    for label, nir in ((0, 3500), (1, 300)):
        for _ in range(n_per_class):
            tile = rng.normal(1200, 150, (13, size, size))
            tile[7] = rng.normal(nir, 150, (size, size))
            tiles.append(np.clip(tile, 1, None).astype(np.uint16))
            labels.append(label)
    return TrainingData(tiles=np.stack(tiles), labels=np.array(labels), class_names=["Vegetation", "Water"],
                        band_names=list(EUROSAT_MS_BANDS), sources=[f"tile {i}" for i in range(len(tiles))], gsd=10.0)


def test_untrained_fusion_is_exactly_its_rgb_trunk():
    """The zero-initialised fusion passes the trunk's feature map through: with the trunk's
    weights loaded, the network's logits are the RGB network's on B04, B03, B02."""
    import torch

    from glassbox.core.models.architectures import build_model

    torch.manual_seed(0)
    trunk = build_model("resnet18_64", 3, 10, 32, width=8).eval()
    fusion = build_model("rgb_fusion", 13, 10, 32, **TINY)
    fusion.load_state_dict({f"rgb.{k}": v for k, v in trunk.state_dict().items()}, strict=False)
    fusion.eval()
    x = torch.rand(4, 13, 32, 32) * 0.4
    rgb = (torch.clamp(x[:, [3, 2, 1]] * fusion.rgb_scale, 0, 255) - fusion.rgb_mean) / fusion.rgb_std
    with torch.no_grad():
        torch.testing.assert_close(fusion(x), trunk(rgb), atol=1e-5, rtol=1e-5)


def test_builder_refuses_what_cannot_work():
    from glassbox.core.models.architectures import build_model
    from glassbox.core.errors import ModelCardError

    with pytest.raises(ModelCardError, match="multiple of 16"):
        build_model("rgb_fusion", 13, 10, 40, **TINY)
    with pytest.raises(ModelCardError, match="rgb_bands"):
        build_model("rgb_fusion", 3, 10, 32, **TINY)  # default indices reach band 10


def test_trains_a_step_exports_to_onnx_round_trips_the_card_and_explains(tmp_path):
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.backends import load_model
    from glassbox.core.models.card import Scaling
    from glassbox.core.training.loop import TrainOptions, train_classifier
    from glassbox.core.training.saving import save_model_files
    from glassbox.core.training.scaling import scale_batch
    from glassbox.core.explain.attribution import load_explainer

    data = generated_tiles()
    torch.manual_seed(1)
    trunk_state = {f"rgb.{k}": v for k, v in build_model("resnet18_64", 3, 2, 32, width=8).state_dict().items()}
    options = TrainOptions(epochs=1, batch_size=6, lr=1e-2, val_fraction=0.0, patience=0, seed=0, threads=1,
                           scaling=Scaling(scale=1e-4, offset=0.0, clip=[0.0, 1.0]),
                           architecture_kwargs=dict(TINY, freeze_trunk=True), initial_state=trunk_state,
                           initial_state_name="generated trunk")
    result = train_classifier(data, "rgb_fusion", options)
    state = result.module.state_dict()
    # the frozen trunk kept its weights (and its batch-norm statistics); the branch and fusion learnt
    for key in ("rgb.conv1.weight", "rgb.layer4.1.conv2.weight", "rgb.bn1.running_mean"):
        torch.testing.assert_close(state[key], trunk_state[key])
    assert float(state["fusion.conv.weight"].abs().sum()) > 0
    assert not torch.equal(state["rgb.fc.weight"], trunk_state["rgb.fc.weight"])

    written = save_model_files(result.module, result.card, tmp_path / "m.pt", onnx_path=tmp_path / "m.onnx")
    onnx_model, torch_model = load_model(written["onnx"]), load_model(written["weights"])
    assert onnx_model.card == torch_model.card == result.card
    assert onnx_model.card.architecture["name"] == "rgb_fusion"
    assert onnx_model.card.architecture["kwargs"]["freeze_trunk"] is True
    x = scale_batch(data.tiles, onnx_model.card.scaling)
    np.testing.assert_allclose(onnx_model.predict_logits(x), torch_model.predict_logits(x), atol=1e-4)

    explainer = load_explainer(written["weights"])
    assert explainer.layer_name == "fusion"  # Grad-CAM on the fused map, found automatically
    explanation = explainer.explain(x[:3], "guided_gradcam")
    assert explanation.attributions.shape == (3, 13, 32, 32) and np.abs(explanation.attributions).sum() > 0


@pytest.mark.skipif(not SHIPPED.with_suffix(".onnx").is_file(), reason="the fusion model is not shipped")
def test_shipped_model_loads_with_its_card_and_figures():
    from glassbox.core.models.backends import load_model

    model = load_model(SHIPPED.with_suffix(".onnx"))
    card = model.card
    assert card.bands == EUROSAT_MS_BANDS and card.tile_size == 64 and card.gsd == 10.0
    assert card.architecture["name"] == "rgb_fusion" and card.num_classes == 10
    assert card.scaling.scale == 1e-4 and card.scaling.clip == [0.0, 1.0]
    acc = card.accuracy
    for key in ("cv_accuracy", "clean_accuracy", "clean_n", "per_class_f1", "per_fold", "variant"):
        assert key in acc, key
    assert set(acc["per_class_f1"]) == set(card.class_names)
    assert card == load_model(SHIPPED.with_suffix(".pt")).card
    metrics = json.loads(SHIPPED.with_suffix(".metrics.json").read_text(encoding="utf-8"))
    assert metrics["variants"][acc["variant"]]["accuracy"] == acc["cv_accuracy"]
    assert metrics["rgb_twins"]["test"] == acc["clean_n"]
    x = np.random.default_rng(0).uniform(0, 0.4, (4, 13, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(model.predict_proba(x), load_model(SHIPPED.with_suffix(".pt")).predict_proba(x),
                               atol=1e-4)


@pytest.mark.skipif(not (SHIPPED.with_suffix(".onnx").is_file() and EUROSAT_MS.is_dir()),
                    reason="needs the shipped fusion model and ../shared/data/eurosat_ms_subset")
@pytest.mark.usefixtures("glassbox_processing")
def test_classify_reads_a_real_eurosat_patch_with_the_fusion_model(tmp_path):
    """A real 13-band EuroSAT patch (unnamed bands in EuroSAT's order, its UTM grid), classified
    with the fusion model given as MODEL: it reads all 13 bands by order and labels it correctly."""
    import processing
    import rasterio
    from qgis.core import QgsProcessingFeedback

    patch = EUROSAT_MS / "SeaLake" / sorted(p.name for p in (EUROSAT_MS / "SeaLake").glob("*.tif"))[0]
    feedback = QgsProcessingFeedback()
    log: list[str] = []
    feedback.pushInfo = log.append
    result = processing.run("glassbox:classify", {"INPUT": str(patch), "MODEL": str(SHIPPED.with_suffix(".onnx")),
                                                  "OUTPUT_CLASSES": str(tmp_path / "c.tif"),
                                                  "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")}, feedback=feedback)
    assert not any(m.startswith("No model given") for m in log)
    with rasterio.open(result["OUTPUT_CLASSES"]) as classes:
        values = classes.read(1)
    assert np.all(values == 9)  # SeaLake


def tiny_ms_folder_and_trunk(tmp_path):
    """A EuroSAT-like 13-band folder (10 classes x 3 generated patches) and a folder holding a tiny
    generated RGB trunk under the name of frozen_w32's trunk."""
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.card import EUROSAT_CLASSES, ClassInfo, ModelCard, Scaling
    from glassbox.core.models.export import save_torch

    data = write_eurosat_ms_folder(tmp_path / "ms")
    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(0)
    trunk_card = ModelCard(classes=[ClassInfo(c.name, c.color) for c in EUROSAT_CLASSES], bands=["B04", "B03", "B02"],
                           scaling=Scaling(scale=255 / 2750, offset=0.0, clip=[0.0, 255.0], mean=[90.0] * 3,
                                           std=[40.0] * 3),
                           tile_size=64, gsd=10.0, architecture={"name": "resnet18_64", "kwargs": {"width": 8}})
    save_torch(build_model("resnet18_64", 3, 10, 64, width=8), trunk_card, models / "eurosat_rgb_resnet18_64_w32.pt")
    return data, models


def test_training_script_runs_on_tiny_generated_data(tmp_path):
    """scripts/train_eurosat_ms_fusion.py end to end on 10 generated classes x 3 patches with a
    tiny generated trunk: CV, metrics JSON with the twin subsets, ONNX + card."""
    from glassbox.core.models.card import EUROSAT_CLASSES

    data, models = tiny_ms_folder_and_trunk(tmp_path)
    script = load_script("scripts/train_eurosat_ms_fusion.py")
    out = tmp_path / "out" / "fusion"
    assert script.main(["--data", str(data), "--models", str(models), "--out", str(out), "--folds", "3",
                        "--epochs", "1", "--variants", "frozen_w32", "--threads", "1"]) == 0
    metrics = json.loads(out.with_suffix(".metrics.json").read_text(encoding="utf-8"))
    variant = metrics["variants"]["frozen_w32"]
    assert variant["n"] == 30 and len(variant["per_fold"]) == 3 and set(variant["per_class_f1"]) == \
        {c.name for c in EUROSAT_CLASSES}
    twins = metrics["rgb_twins"]
    assert twins["train"] + twins["val"] + twins["test"] == 30
    from glassbox.core.models.backends import load_model

    card = load_model(out.with_suffix(".onnx")).card
    assert card.accuracy["variant"] == "frozen_w32" and card.bands == EUROSAT_MS_BANDS
    assert card.architecture["kwargs"]["trunk_width"] == 8


def test_training_script_corruptions_writes_the_fields(tmp_path):
    """--corruptions (with --no-export): the metrics hold, for the variant, accuracy clean and under
    each of the 7 corruptions, pooled and per fold, and the corrupted mean, over all patches and
    the leak-free twins; the clean figure is the CV's own; nothing but the metrics is written."""
    from glassbox.core.radiometry import CORRUPTIONS

    data, models = tiny_ms_folder_and_trunk(tmp_path)
    script = load_script("scripts/train_eurosat_ms_fusion.py")
    out, metrics_path = tmp_path / "out" / "fusion", tmp_path / "m.json"
    assert script.main(["--data", str(data), "--models", str(models), "--out", str(out), "--folds", "3",
                        "--epochs", "1", "--variants", "frozen_w32", "--threads", "1", "--no-export",
                        "--metrics-out", str(metrics_path), "--corruptions", "--adapt"]) == 0
    assert not out.parent.exists()
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert "CORRUPTIONS" in metrics["corruption_protocol"]
    variant = metrics["variants"]["frozen_w32"]
    c = variant["corruptions"]
    assert set(c) == {"all_patches", "leak_free"}
    every = c["all_patches"]
    assert every["n"] == 30 and every["n_per_fold"] == [10, 10, 10]
    assert every["clean"]["accuracy"] == variant["accuracy"] and every["clean"]["per_fold"] == variant["per_fold"]
    assert list(every["corrupted"]) == list(CORRUPTIONS)
    for entry in every["corrupted"].values():
        assert 0 <= entry["accuracy"] <= 1 and len(entry["per_fold"]) == 3
        assert entry["accuracy"] == pytest.approx(np.mean(entry["per_fold"]), abs=1e-3)  # equal folds
    assert every["corrupted_mean"] == pytest.approx(np.mean([e["accuracy"] for e in every["corrupted"].values()]),
                                                    abs=1e-3)
    assert len(every["corrupted_mean_per_fold"]) == 3
    leak_free = c["leak_free"]
    assert leak_free["n"] == metrics["rgb_twins"]["test"] == sum(leak_free["n_per_fold"])
    assert leak_free["n"] > 0 and list(leak_free["corrupted"]) == list(CORRUPTIONS)
    assert leak_free["clean"]["accuracy"] == variant["clean"]["accuracy"]
    # --adapt: the same figures after scene adaptation on each fold's held-out patches
    adapted = variant["corruptions_adapted"]["all_patches"]
    assert adapted["n"] == 30 and list(adapted["corrupted"]) == list(CORRUPTIONS)
    assert 0 <= adapted["clean"]["accuracy"] <= 1 and len(adapted["clean"]["per_fold"]) == 3
    assert adapted["corrupted"] != every["corrupted"]  # adaptation changed the predictions
    with pytest.raises(SystemExit):
        script.parse_args(["--data", str(data), "--adapt"])
