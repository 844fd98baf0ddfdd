"""Shared test fixtures: the plugin as the package ``glassbox`` (installed from this folder by
`make setup`), a tiny model trained here on a clear two-class pattern, and raster writers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PLUGIN_DIR = Path(__file__).resolve().parent.parent

import glassbox  # noqa: E402  (the plugin folder, installed as a package by `make setup`: pip install -e .)

assert Path(glassbox.__file__).resolve().parent == PLUGIN_DIR, (
    f"'glassbox' is imported from {glassbox.__file__}, not from this checkout: run `make setup` here")

from helpers import QGIS_PROCESS, TINY_BANDS, TINY_CLASSES, TINY_TILE, pattern_tile, qgis_env  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def collect_garbage_before_qgis_exits(qgis_app):
    """Destroy what only reference cycles still hold while QGIS is up. ``pytest.raises(...) as
    raised`` around ``processing.run`` keeps the exception, whose traceback holds Processing's
    ``runAlgorithm`` frame and so its QgsProcessingContext, whose temporary layer store owns the
    input layers; the test's frame, which holds ``raised``, is in that traceback: a cycle only the
    garbage collector frees. Freed after pytest-qgis's ``exitQgis()`` (which destroys GDAL's
    drivers), a raster layer's GDAL provider calls GDALClose on a dead driver: a segmentation
    fault at interpreter exit, after every test passed. Depends on ``qgis_app``, so it is torn
    down first.

    Also the frames of tests whose ``processing.run`` failed: QGIS 3.22 never releases the Python
    exception a ``processAlgorithm`` raises (GlassboxAlgorithm releases that frame's own locals),
    and the raising frame's callers (``f_back``: Processing's ``runAlgorithm``, the test) stay
    alive with it; a test's layers in them are cleared here."""
    yield
    import gc
    import inspect
    import types

    gc.collect()
    tests = str(Path(__file__).resolve().parent)
    for frame in [o for o in gc.get_objects() if isinstance(o, types.FrameType)]:
        if frame.f_code.co_filename.startswith(tests) and not frame.f_code.co_flags & inspect.CO_GENERATOR:
            try:
                frame.clear()
            except RuntimeError:  # still running (this fixture's caller)
                pass
    gc.collect()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Other jobs share the CPU: one thread is much faster than two fighting for it (use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` in a module of heavy tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """A paper1_cnn (16-pixel tiles, 2 bands) trained here in a few seconds to tell the two
    patterns of :func:`pattern_tile` apart; saved as ONNX and as Torch state dict + card."""
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.card import ClassInfo, ModelCard, Scaling
    from glassbox.core.models.export import export_onnx, save_torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    card = ModelCard(
        name="tiny test model",
        classes=[ClassInfo(n, c) for n, c in TINY_CLASSES],
        bands=list(TINY_BANDS),
        scaling=Scaling(scale=1 / 1000.0, offset=0.0, clip=[0, 10], mean=[1.8, 1.8], std=[1.2, 1.2]),
        tile_size=TINY_TILE,
        gsd=10.0,
        architecture={"name": "paper1_cnn", "kwargs": {}},
        training={"data": "generated two-pattern tiles", "seed": 0},
        accuracy={},
    )
    model = build_model("paper1_cnn", 2, 2, TINY_TILE)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is several times faster than two sharing the CPU
    for _ in range(60):
        labels = rng.integers(0, 2, 32)
        x = np.stack([pattern_tile(k, TINY_TILE, rng) for k in labels])
        x = torch.from_numpy(card.scaling.apply(x))
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    model.eval()
    folder = tmp_path_factory.mktemp("tiny_model")
    onnx_path = export_onnx(model, card, folder / "tiny.onnx")
    torch_path = save_torch(model, card, folder / "tiny.pt")
    return {"onnx": onnx_path, "torch": torch_path, "card": card, "module": model}


@pytest.fixture(scope="session")
def qgis_profile(tmp_path_factory):
    """A throw-away QGIS profile with the plugin linked in and enabled, as `make plugin` does
    (run qgis_process with ``env=qgis_env(qgis_profile)``)."""
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process is not installed")
    config = tmp_path_factory.mktemp("qgis_config")
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "glassbox").symlink_to(PLUGIN_DIR)
    done = subprocess.run([QGIS_PROCESS, "plugins", "enable", "glassbox"], env=qgis_env(config),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return config


@pytest.fixture(scope="session")
def glassbox_processing(qgis_app):
    """Processing initialised with the Glassbox provider registered the way QGIS does it."""
    from processing.core.Processing import Processing
    from qgis.core import QgsApplication

    import glassbox

    Processing.initialize()
    plugin = glassbox.classFactory(None)
    plugin.initProcessing()
    assert QgsApplication.processingRegistry().algorithmById("glassbox:classify") is not None
    yield plugin
    plugin.unload()
