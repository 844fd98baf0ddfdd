"""Sanity checks of explanations (core.explain.sanity): model randomization, class sensitivity,
edge similarity; and their section in glassbox:explanation_quality."""

import numpy as np
import pytest

import test_explain
from test_explain import _square_batch

square_model = test_explain.square_model  # the trained bright-square detector and its explainer (fixtures)
explainer = test_explain.explainer

pytestmark = pytest.mark.usefixtures("glassbox_processing", "one_torch_thread")


def test_spearman_per_tile():
    from glassbox.core.explain.sanity import spearman_per_tile

    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 8))
    b = np.stack([a[0], -a[1], np.full((8, 8), 0.5)])
    rho = spearman_per_tile(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0) and np.isnan(rho[2])
    monotone = spearman_per_tile(a[:1], np.exp(5 * a[:1]))  # ranks only
    assert monotone[0] == pytest.approx(1.0)


def test_edge_magnitude_is_high_on_edges_only():
    from glassbox.core.explain.sanity import edge_magnitude

    tile = np.zeros((1, 2, 16, 16), np.float32)
    tile[0, :, :, 8:] = 1.0  # a vertical step
    edges = edge_magnitude(tile)[0]
    assert edges.shape == (16, 16)
    assert edges[:, 7:9].min() > 0 and edges[:, :6].max() == 0 and edges[:, 10:].max() == 0


def test_weighted_layers_in_forward_order_and_randomization_leaves_the_model_alone(explainer, square_model):
    import torch

    from glassbox.core.explain.sanity import randomized_explainer, weighted_layers

    layers = weighted_layers(explainer)
    convs = [n for n, m in explainer.module.named_modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [n for n, m in explainer.module.named_modules() if isinstance(m, torch.nn.Linear)]
    assert layers[:len(convs)] == convs and layers[len(convs):] == linears  # convolutions, then the head
    before = {k: v.clone() for k, v in explainer.module.state_dict().items()}
    first = randomized_explainer(explainer, layers[::-1][:2], seed=0)
    again = randomized_explainer(explainer, layers[::-1][:2], seed=0)
    for key, value in explainer.module.state_dict().items():
        assert torch.equal(value, before[key]), key  # the trained network is untouched
    changed = [k for k, v in first.module.state_dict().items() if not torch.equal(v, before[k])]
    top_two = {f"{layers[-1]}.weight", f"{layers[-1]}.bias", f"{layers[-2]}.weight", f"{layers[-2]}.bias"}
    assert set(changed) == top_two & set(before)
    for key, value in first.module.state_dict().items():
        assert torch.equal(value, again.module.state_dict()[key])  # same seed, same random weights
    weight = dict(first.module.named_modules())[layers[-1]].weight
    trained = before[f"{layers[-1]}.weight"]
    assert float(weight.std()) == pytest.approx(float(trained.std()), rel=0.5)  # the trained spread


def test_randomizing_the_model_changes_grad_cam_but_hardly_guided_backpropagation(explainer, square_model):
    """The square detector's heatmaps: Grad-CAM loses its map once the weights are random;
    guided backpropagation stays close to what it was after the output layer alone is randomized
    (Adebayo et al.'s finding, reproduced); and the checks report it."""
    from glassbox.core.explain.sanity import model_randomization_check, weighted_layers

    batch, _masks = _square_batch(square_model["card"], n=24, seed=11)
    count = len(weighted_layers(explainer))
    gradcam = model_randomization_check(explainer, batch, "gradcam", stages=[1, count], target=1)
    guided = model_randomization_check(explainer, batch, "guided_backprop", stages=[1, count], target=1)
    assert [s.layers_randomized for s in gradcam.stages] == [1, count]
    assert gradcam.stages[-1].lowest_layer == weighted_layers(explainer)[0]
    assert guided.stages[0].spearman_mean > 0.8 > gradcam.stages[-1].spearman_mean
    assert guided.stages[0].spearman_mean < 0.9999  # randomized, not the same network
    assert guided.stages[-1].spearman_mean < guided.stages[0].spearman_mean
    assert 0 <= gradcam.stages[0].prediction_agreement <= 1
    assert -1 <= gradcam.class_spearman <= 1 and np.isfinite(guided.edge_spearman_trained)


def test_stage_counts_are_checked(explainer, square_model):
    from glassbox.core.explain.attribution import ExplainError
    from glassbox.core.explain.sanity import model_randomization_check

    batch, _ = _square_batch(square_model["card"], n=2)
    with pytest.raises(ExplainError, match="must randomize 1 to"):
        model_randomization_check(explainer, batch, "gradcam", stages=[0])


def test_bench_explain_sanity_on_a_tiny_eurosat_folder(tmp_path, capsys):
    """bench/bench_explain_sanity.py end to end: a EuroSAT-like folder (validation-split names),
    a random paper1_cnn saved with its card; one JSON entry per model, one per method."""
    import json

    import torch
    from PIL import Image

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.card import ClassInfo, ModelCard, Scaling
    from glassbox.core.models.export import save_torch
    from glassbox.core.training.datasets import split_of
    from helpers import load_script

    rng = np.random.default_rng(0)
    for level, name in ((60, "Forest"), (160, "SeaLake")):
        (tmp_path / "rgb" / name).mkdir(parents=True)
        for file_name in [f"{name}_{k}.jpg" for k in range(1, 400) if split_of(f"{name}_{k}.jpg") == "val"][:3]:
            pixels = np.clip(rng.normal(level, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "rgb" / name / file_name, quality=95)
    torch.manual_seed(0)
    card = ModelCard(classes=[ClassInfo("Forest", "#006400"), ClassInfo("SeaLake", "#1f77b4")],
                     bands=["B04", "B03", "B02"], scaling=Scaling(scale=1.0, mean=[110.0] * 3, std=[50.0] * 3),
                     tile_size=64, gsd=10.0, name="random rgb test model",
                     architecture={"name": "paper1_cnn", "kwargs": {}})
    model = save_torch(build_model("paper1_cnn", 3, 2, 64).eval(), card, tmp_path / "rgb.pt")
    bench = load_script("bench/bench_explain_sanity.py")
    output = tmp_path / "sanity.json"
    assert bench.main(["--eurosat-rgb", str(tmp_path / "rgb"), "--models", str(model), "--tiles", "4",
                       "--stages", "1,2", "--threads", "1", "--output", str(output)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    entry = printed["rgb.pt"]
    assert entry["tiles"] == 4 and entry["data"] == "EuroSAT RGB validation split"
    assert set(entry["methods"]) == {"guided_gradcam", "gradcam", "guided_backprop"}
    for figures in entry["methods"].values():
        assert [s["layers_randomized"] for s in figures["stages"]] == [1, 2]
        assert figures["stages"][0]["lowest_layer"] == figures["weighted_layers"][-1]
        for stage in figures["stages"]:
            assert stage["spearman_mean"] is None or -1 <= stage["spearman_mean"] <= 1
