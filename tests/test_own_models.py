"""A user's own model, as users export and save them (an audit as a GIS user bringing a model):
a softmax or sigmoid inside the network, a float16 or channels-last ONNX export, training
checkpoints and DataParallel weights, a TorchScript model in an ensemble, a card that names its
bands red/green/blue. Each either works as the same model in the expected form, or is refused
with what to do and no output."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import rasterio
from qgis.core import QgsProcessingException

import processing
from helpers import TINY_TILE, two_halves, write_raster

pytestmark = pytest.mark.usefixtures("glassbox_processing")


def export_plain(module, card, path, dtype=None, example=None):
    """``torch.onnx.export`` as a user writes it (dynamic batch), then the card attached."""
    import torch

    from glassbox.core.models.export import attach_card_to_onnx

    example = example if example is not None else torch.zeros(2, card.num_bands, card.tile_size, card.tile_size)
    if dtype is not None:
        module, example = module.to(dtype), example.to(dtype)
    torch.onnx.export(module.eval(), example, str(path), input_names=["tiles"], output_names=["scores"],
                      dynamic_axes={"tiles": {0: "n"}, "scores": {0: "n"}}, opset_version=17, dynamo=False)
    attach_card_to_onnx(path, card)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_raster(tmp_path_factory.mktemp("own") / "scene.tif", two_halves(48, 64), descriptions=["B08", "B03"])


def classify(scene, model, out, feedback=None, **extra):
    out.mkdir(exist_ok=True)
    params = {"INPUT": scene, "MODEL": str(model), "TILE_STRIDE": TINY_TILE // 2,
              "OUTPUT_CLASSES": str(out / "classes.tif"), "OUTPUT_PROBABILITIES": str(out / "probabilities.tif")}
    params.update(extra)
    return processing.run("glassbox:classify", params, feedback=feedback)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def reference(scene, tiny_model_files, tmp_path_factory):
    """The tiny model's own outputs (classes, probabilities) on the scene."""
    result = classify(scene, tiny_model_files["onnx"], tmp_path_factory.mktemp("reference"))
    return read(result["OUTPUT_CLASSES"]), read(result["OUTPUT_PROBABILITIES"])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_softmax_inside_the_network_with_a_logits_card_is_refused(tmp_path, scene, tiny_model_files, workers):
    """Read as logits, the probabilities would be softmaxed again: flattened, and with
    MIN_CONFIDENCE the whole map Unclassified (the audit's finding)."""
    import torch

    model = export_plain(torch.nn.Sequential(tiny_model_files["module"], torch.nn.Softmax(dim=1)),
                         tiny_model_files["card"], tmp_path / "softmax.onnx")
    with pytest.raises(QgsProcessingException, match='"output": "probabilities"'):
        classify(scene, model, tmp_path / "out", WORKERS=workers)
    assert not [f for f in os.listdir(tmp_path / "out")]


def test_a_softmax_inside_the_network_with_a_probabilities_card_gives_the_same_map(tmp_path, scene, tiny_model_files,
                                                                                   reference):
    import torch

    card = dataclasses.replace(tiny_model_files["card"], output="probabilities")
    model = export_plain(torch.nn.Sequential(tiny_model_files["module"], torch.nn.Softmax(dim=1)), card,
                         tmp_path / "softmax.onnx")
    result = classify(scene, model, tmp_path / "out")
    assert (read(result["OUTPUT_CLASSES"]) == reference[0]).all()
    assert np.allclose(read(result["OUTPUT_PROBABILITIES"]), reference[1], atol=1e-4)


def test_sigmoid_scores_are_not_taken_for_probabilities(tmp_path, scene, tiny_model_files):
    import torch

    card = dataclasses.replace(tiny_model_files["card"], output="probabilities")
    model = export_plain(torch.nn.Sequential(tiny_model_files["module"], torch.nn.Sigmoid()), card,
                         tmp_path / "sigmoid.onnx")
    with pytest.raises(QgsProcessingException, match="sum to .* not 1"):
        classify(scene, model, tmp_path / "out")


def test_a_float16_onnx_export_classifies_like_its_float32_model(tmp_path, scene, tiny_model_files, reference):
    import copy

    import torch

    model = export_plain(copy.deepcopy(tiny_model_files["module"]), tiny_model_files["card"], tmp_path / "half.onnx",
                         dtype=torch.float16)
    result = classify(scene, model, tmp_path / "out")
    assert (read(result["OUTPUT_CLASSES"]) == reference[0]).mean() > 0.99
    assert np.abs(read(result["OUTPUT_PROBABILITIES"]) - reference[1]).max() < 0.02


def test_a_channels_last_onnx_is_refused_for_its_layout_not_its_card(tmp_path, scene, tiny_model_files):
    import torch

    class ChannelsLast(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):  # x: (N, H, W, bands), as Keras exports take it
            return self.net(x.permute(0, 3, 1, 2))

    card = tiny_model_files["card"]
    model = export_plain(ChannelsLast(tiny_model_files["module"]), card, tmp_path / "nhwc.onnx",
                         example=torch.zeros(2, card.tile_size, card.tile_size, card.num_bands))
    with pytest.raises(QgsProcessingException, match="channels-last") as error:
        classify(scene, model, tmp_path / "out")
    assert "does not belong" not in str(error.value)


@pytest.mark.parametrize("layout", ["checkpoint", "dataparallel"])
def test_training_checkpoints_and_dataparallel_weights_load(tmp_path, scene, tiny_model_files, reference, layout):
    """{"epoch", "model_state_dict", "optimizer_state_dict"} and keys prefixed "module." are how
    the usual training recipes save; both are still read with weights_only=True."""
    import shutil

    import torch

    state = {k: v.detach().clone() for k, v in tiny_model_files["module"].state_dict().items()}
    if layout == "checkpoint":
        saved = {"epoch": 7, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    else:
        saved = {f"module.{k}": v for k, v in state.items()}
    weights = tmp_path / "own.pt"
    torch.save(saved, weights)
    shutil.copy(tiny_model_files["torch"].with_suffix(".json"), tmp_path / "own.json")
    result = classify(scene, weights, tmp_path / "out")
    assert (read(result["OUTPUT_CLASSES"]) == reference[0]).all()


def test_weights_of_another_kind_name_what_the_file_holds(tmp_path, tiny_model_files):
    import shutil

    import torch

    from glassbox.core.errors import ModelLoadError
    from glassbox.core.models.backends import TorchModel

    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "odd.pt")
    shutil.copy(tiny_model_files["torch"].with_suffix(".json"), tmp_path / "odd.json")
    with pytest.raises(ModelLoadError, match="it holds epoch, weights"):
        TorchModel(tmp_path / "odd.pt", "cpu")


def test_an_ensemble_of_a_torchscript_model_says_to_export_it_first(tmp_path, tiny_model_files):
    import torch

    from glassbox.core.models.card import TORCHSCRIPT_EXTRA_FILE

    scripted = torch.jit.script(tiny_model_files["module"].eval())
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path), _extra_files={TORCHSCRIPT_EXTRA_FILE: tiny_model_files["card"].to_json()})
    with pytest.raises(QgsProcessingException, match="glassbox:export_onnx"):
        processing.run("glassbox:ensemble", {"RAW_MODEL": str(path), "MASKED_MODEL": str(tiny_model_files["onnx"]),
                                             "ALPHA": 0.5, "OUTPUT": str(tmp_path / "ensemble.onnx")})
    assert not (tmp_path / "ensemble.onnx").exists()


def test_a_card_of_red_green_blue_finds_the_sentinel2_bands():
    from glassbox.core.io.raster import raster_band_names

    assert raster_band_names(["B04", "B03", "B02", "B08"], ["red", "green", "blue"])[:3] == ["RED", "GREEN", "BLUE"]
    assert raster_band_names(["red", "green", "blue"], ["B04", "B03", "B02"]) == ["B04", "B03", "B02"]


def test_a_float16_onnx_export_is_explained(tmp_path, scene, tiny_model_files):
    import copy

    import torch

    model = export_plain(copy.deepcopy(tiny_model_files["module"]), tiny_model_files["card"], tmp_path / "half.onnx",
                         dtype=torch.float16)
    result = processing.run("glassbox:explain", {"INPUT": scene, "MODEL": str(model), "TILE_STRIDE": TINY_TILE // 2,
                                                 "OUTPUT_HEATMAP": str(tmp_path / "heatmap.tif")})
    heat = read(result["OUTPUT_HEATMAP"])[0]
    assert np.nanmax(heat) > 0 and np.nanstd(heat) > 0


def test_export_checks_large_logits_relative_to_their_size(tmp_path, tiny_model_files):
    """float32 rounding of logits in the thousands exceeds an absolute 1e-4 without the export being
    wrong (the ensemble of a model with large logits failed on it)."""
    import torch

    from glassbox.core.models.export import export_onnx

    class Scaled(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * 3000.0 + 12345.678

    path = export_onnx(Scaled(tiny_model_files["module"]).eval(), tiny_model_files["card"], tmp_path / "large.onnx")
    assert path.is_file()


def test_a_card_whose_scaling_misses_the_model_is_warned_about(tmp_path, scene, tiny_model_files):
    """ImageNet-like mean/std for 0-1 values on raw digital numbers: every tile one class at
    probability 1.0 and no word (an audit); a run this certain of a whole raster is warned about."""
    from qgis.core import QgsProcessingFeedback

    from glassbox.core.models.card import Scaling
    from glassbox.core.models.export import export_onnx

    card = dataclasses.replace(tiny_model_files["card"], scaling=Scaling(scale=1 / 1000.0, offset=0.0, clip=[0, 10],
                                                                          mean=[0.45, 0.45], std=[0.005, 0.005]))
    model = export_onnx(tiny_model_files["module"], card, tmp_path / "misscaled.onnx")
    warnings = []
    feedback = QgsProcessingFeedback()
    feedback.pushWarning = warnings.append
    classify(scene, model, tmp_path / "out", feedback=feedback)
    assert any(w.startswith("every tile went to") and "scaling" in w for w in warnings), warnings
    warnings.clear()
    classify(scene, tiny_model_files["onnx"], tmp_path / "good", feedback=feedback)
    assert not any(w.startswith("every tile went to") for w in warnings)


def test_a_model_of_numeric_class_codes_says_the_raster_holds_class_numbers(tmp_path, scene, tiny_model_files):
    """Classes named by codes (LCDB's 21, 40): the raster's value 1 is the second class, '40', not
    40; identify or a comparison with a code raster mixed them up without a word (an audit)."""
    from qgis.core import QgsProcessingFeedback

    from glassbox.core.models.card import ClassInfo
    from glassbox.core.models.export import export_onnx

    card = dataclasses.replace(tiny_model_files["card"], classes=[ClassInfo("21", "#2ca02c"), ClassInfo("40", "#1f77b4")])
    model = export_onnx(tiny_model_files["module"], card, tmp_path / "codes.onnx")
    messages = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = messages.append
    classify(scene, model, tmp_path / "out", feedback=feedback)
    assert any(m.startswith("The class raster holds class numbers") and "0 = 21, 1 = 40" in m for m in messages)
    messages.clear()
    classify(scene, tiny_model_files["onnx"], tmp_path / "names", feedback=feedback)
    assert not any("class numbers" in m for m in messages)


def test_explain_and_ensembles_refuse_a_softmax_inside_with_a_logits_card(tmp_path, scene, tiny_model_files):
    """Classify refused it; explain and ensemble had used it silently (ensemble: probabilities
    mixed with logits; a verification audit)."""
    import torch

    model = export_plain(torch.nn.Sequential(tiny_model_files["module"], torch.nn.Softmax(dim=1)),
                         tiny_model_files["card"], tmp_path / "softmax.onnx")
    with pytest.raises(QgsProcessingException, match='"output": "probabilities"'):
        processing.run("glassbox:explain", {"INPUT": scene, "MODEL": str(model),
                                            "OUTPUT_HEATMAP": str(tmp_path / "heatmap.tif")})
    with pytest.raises(QgsProcessingException, match='"output": "probabilities"'):
        processing.run("glassbox:ensemble", {"RAW_MODEL": str(tiny_model_files["torch"]), "MASKED_MODEL": str(model),
                                             "ALPHA": 0.5, "OUTPUT": str(tmp_path / "ensemble.onnx")})
    assert not (tmp_path / "heatmap.tif").exists() and not (tmp_path / "ensemble.onnx").exists()


def test_an_ensemble_with_a_float16_member_is_built(tmp_path, tiny_model_files):
    import copy

    import torch

    half = export_plain(copy.deepcopy(tiny_model_files["module"]), tiny_model_files["card"], tmp_path / "half.onnx",
                        dtype=torch.float16)
    result = processing.run("glassbox:ensemble", {"RAW_MODEL": str(tiny_model_files["torch"]), "MASKED_MODEL": str(half),
                                                  "ALPHA": 0.5, "OUTPUT": str(tmp_path / "ensemble.onnx")})
    assert os.path.isfile(result["OUTPUT"])
