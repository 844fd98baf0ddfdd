"""Scene adaptation of ONNX models with ONNX Runtime alone (core.adaptation_onnx): the same
statistics as Torch's AdaBN, the product's route for ONNX models with batch-norm nodes, and a
plugin installed from the ZIP (ONNX models only, no Torch) can adapt."""

import copy
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch

from helpers import TINY_TILE, pattern_tile
from test_adaptation import SHIFT, folded_onnx, labelled_tiles, shifted_scene
from test_unclassified_cloud import LogFeedback, run_classify

from glassbox.core.adaptation import adapt_batchnorm
from glassbox.core.adaptation_onnx import OnnxAdaptationError, adapt_onnx_batchnorm, onnx_batchnorm_count
from glassbox.core.models.backends import OnnxModel
from glassbox.core.models.export import store_onnx_weights_as_float16

pytestmark = pytest.mark.usefixtures("glassbox_processing", "one_torch_thread")

PLUGIN_DIR = Path(__file__).resolve().parents[1]
MODELS = PLUGIN_DIR / "resources" / "models"


def run_onnx(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def scene_inputs(card, n_per_class=50, seed=7):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    tiles = np.stack([pattern_tile(k, TINY_TILE, rng) for k in labels]) + SHIFT
    return card.scaling.apply(tiles).astype(np.float32)


@pytest.mark.parametrize("source_weight", [0.0, 0.25])
def test_onnx_adaptation_gives_torch_adabn_statistics(tiny_model_files, source_weight):
    card = tiny_model_files["card"]
    inputs = scene_inputs(card)  # 100 tiles: batches of 32, 32, 32 and 4, in the same random order
    module = copy.deepcopy(tiny_model_files["module"])
    adapt_batchnorm(module, inputs, batch_size=32, seed=3, source_weight=source_weight)
    original = onnx.load(str(tiny_model_files["onnx"]))
    adapted, layers = adapt_onnx_batchnorm(original, inputs, batch_size=32, seed=3, source_weight=source_weight)
    assert layers == onnx_batchnorm_count(tiny_model_files["onnx"]) == 5
    tiles, _ = labelled_tiles(SHIFT, per_class=10)
    x = card.scaling.apply(tiles).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = run_onnx(adapted, x)
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    assert np.abs(run_onnx(original, x) - expected).max() > 0.1  # the statistics did change the logits
    assert onnx.load(str(tiny_model_files["onnx"])) == original  # the input model is not changed


def test_adapted_graph_keeps_its_structure_and_card(tiny_model_files):
    original = onnx.load(str(tiny_model_files["onnx"]))
    adapted, _ = adapt_onnx_batchnorm(original, scene_inputs(tiny_model_files["card"]))
    assert Counter(n.op_type for n in adapted.graph.node) == Counter(n.op_type for n in original.graph.node)
    assert {p.key: p.value for p in adapted.metadata_props} == {p.key: p.value for p in original.metadata_props}
    used = {i for n in adapted.graph.node for i in n.input}
    assert all(init.name in used for init in adapted.graph.initializer)  # the old statistics are gone


def test_weights_stored_as_float16_can_be_adapted(tiny_model_files, tmp_path):
    half = shutil.copy(tiny_model_files["onnx"], tmp_path / "half.onnx")
    store_onnx_weights_as_float16(half, min_elements=1)  # the statistics become Casts of float16 tensors
    inputs = scene_inputs(tiny_model_files["card"])
    full, _ = adapt_onnx_batchnorm(onnx.load(str(tiny_model_files["onnx"])), inputs, source_weight=0.25)
    halved, _ = adapt_onnx_batchnorm(onnx.load(str(half)), inputs, source_weight=0.25)
    x = inputs[::10]
    assert np.abs(run_onnx(full, x) - run_onnx(halved, x)).max() < 0.05
    assert not any(n.op_type == "Cast" and n.output[0].endswith(("running_mean", "running_var"))
                   for n in halved.graph.node)  # the unused casts of the replaced statistics are pruned


def test_a_folded_export_and_bad_inputs_are_refused(tiny_model_files, tmp_path):
    folded = onnx.load(str(folded_onnx(tiny_model_files, tmp_path / "folded.onnx")))
    inputs = scene_inputs(tiny_model_files["card"])
    with pytest.raises(OnnxAdaptationError, match="no BatchNormalization nodes"):
        adapt_onnx_batchnorm(folded, inputs)
    with_bn = onnx.load(str(tiny_model_files["onnx"]))
    with pytest.raises(OnnxAdaptationError, match="source weight"):
        adapt_onnx_batchnorm(with_bn, inputs, source_weight=1.0)
    with pytest.raises(OnnxAdaptationError, match="tiles"):
        adapt_onnx_batchnorm(with_bn, inputs[:0])


def test_processing_adapts_an_onnx_model_that_has_no_torch_weights(tiny_model_files, tmp_path):
    raster = shifted_scene(tmp_path / "scene.tif")
    alone = shutil.copy(tiny_model_files["onnx"], tmp_path / "alone.onnx")
    feedback = LogFeedback()
    result = run_classify(raster, alone, tmp_path / "out", feedback, ADAPT_TO_SCENE=True, ADAPT_ALWAYS=True)
    line = feedback.line("scene adaptation: batch-norm statistics of")
    assert line is not None and "alone.onnx" in line and "5 layers" in line
    with rasterio.open(result["OUTPUT_CLASSES"]) as ds:
        classes = ds.read(1)
    assert (classes[:, 8:24] == 0).mean() > 0.95 and (classes[:, 40:56] == 1).mean() > 0.95
    plain = run_classify(raster, alone, tmp_path / "plain", ADAPT_TO_SCENE=False)
    with rasterio.open(plain["OUTPUT_CLASSES"]) as ds:
        unadapted = ds.read(1)
    assert min((unadapted[:, 8:24] == 0).mean(), (unadapted[:, 40:56] == 1).mean()) < 0.5


def test_explain_adapts_an_onnx_model_that_has_no_torch_weights(tiny_model_files, tmp_path):
    from glassbox.core.explain.heatmap import ExplainOptions, explain_raster

    raster = shifted_scene(tmp_path / "scene.tif")
    alone = shutil.copy(tiny_model_files["onnx"], tmp_path / "alone.onnx")
    lines = []
    result = explain_raster(raster, str(alone), str(tmp_path / "heat.tif"),
                            options=ExplainOptions(adapt_to_scene=True, peaks_per_tile=0), log=lines.append)
    assert any(line.startswith("scene adaptation: batch-norm statistics of 5 layers") and "alone.onnx" in line
               for line in lines)
    assert result.target_counts.get("Water", 0) > 0 and result.target_counts.get("Vegetation", 0) > 0


def test_adaptation_of_an_onnx_model_runs_without_torch(tiny_model_files, tmp_path):
    """What a plugin installed from the ZIP has: ONNX models, onnxruntime and onnx, no Torch."""
    raster = shifted_scene(tmp_path / "scene.tif")
    alone = shutil.copy(tiny_model_files["onnx"], tmp_path / "alone.onnx")
    out = tmp_path / "classes.tif"
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "from glassbox.core.classify import ClassifyOptions, classify_raster\n"
        f"r = classify_raster({str(raster)!r}, {str(alone)!r}, {str(out)!r}, "
        "options=ClassifyOptions(adapt_to_scene=True), log=print)\n"
        "assert r.adaptation is not None\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    env = dict(os.environ)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scene adaptation: batch-norm statistics of 5 layers" in done.stdout
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    assert (classes[:, 8:24] == 0).mean() > 0.95 and (classes[:, 40:56] == 1).mean() > 0.95


@pytest.mark.parametrize("name", ["eurosat_rgb_resnet18_64_w32_96px.onnx", "eurosat_ms_fusion_resnet18.onnx"])
def test_the_shipped_default_onnx_models_can_be_adapted_without_torch(name):
    """The ZIP ships the defaults as ONNX only: they keep their batch-norm nodes (ONNX Runtime
    folds them at load), and the ONNX route gives the Torch route's adapted logits."""
    path = MODELS / name
    assert onnx_batchnorm_count(path) >= 20
    model = OnnxModel(path)
    card = model.card
    rng = np.random.default_rng(0)
    inputs = rng.normal(0.5, 1.5, (48, card.num_bands, card.tile_size, card.tile_size)).astype(np.float32)
    adapted, layers = adapt_onnx_batchnorm(onnx.load(str(path)), inputs, batch_size=16, threads=2)
    from glassbox.core.models.backends import TorchModel

    module = TorchModel(path.with_suffix(".pt"), "cpu").module
    adapt_batchnorm(module, inputs, batch_size=16)
    x = inputs[:8]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.abs(run_onnx(adapted, x) - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    assert np.abs(model.predict_logits(x) - expected).max() > 0.1
