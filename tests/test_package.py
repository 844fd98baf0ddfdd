"""`make package`: the plugin zip holds what QGIS needs and nothing else, and a QGIS profile that
installs it (as *Install from ZIP* does: unzip into the profile's plugins folder) runs
glassbox:classify with the shipped default model through qgis_process."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers import QGIS_PROCESS, load_script, qgis_env, venv_site_packages, write_raster


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    return load_script("scripts/build_package.py").build(tmp_path_factory.mktemp("dist"))


def test_zip_holds_the_plugin_and_nothing_else(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert all(n.startswith("glassbox/") for n in names)
    for required in ("glassbox/metadata.txt", "glassbox/__init__.py", "glassbox/LICENSE", "glassbox/plugin.py",
                     "glassbox/requirements-plugin.txt",
                     "glassbox/processing_provider/provider.py", "glassbox/algorithms/classify.py",
                     "glassbox/core/classify.py", "glassbox/resources/icons/glassbox.svg",
                     "glassbox/resources/processing_models/classify_explain_segment.model3",
                     "glassbox/resources/models/eurosat_rgb_resnet18_64_w32_96px.onnx",
                     "glassbox/resources/models/eurosat_rgb_resnet18_64_w32_96px.json",
                     "glassbox/resources/models/eurosat_ms_fusion_resnet18.onnx",
                     "glassbox/docs/algorithms/classify.md"):
        assert required in names, required
    for forbidden in ("/tests/", "/bench/", "/research/", "/scripts/", "/.venv/", "__pycache__", ".git/",
                      "requirements.txt"):
        assert not any(forbidden in n for n in names), forbidden
    assert not any(n.endswith((".pt", ".pth", ".pyc")) for n in names)
    assert sum(n.endswith(".onnx") for n in names) == 2  # one default model per kind of input


@pytest.fixture(scope="module")
def installed_profile(plugin_zip, tmp_path_factory):
    """A QGIS profile with the zip installed and enabled, as a desktop user without PyTorch has it:
    no PYTHONPATH, the packages found through GLASSBOX_PYTHONPATH, and torch not importable."""
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process is not installed")
    root = tmp_path_factory.mktemp("installed")
    config = root / "profile"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    no_torch = root / "no_torch" / "torch"
    no_torch.mkdir(parents=True)
    (no_torch / "__init__.py").write_text("raise ImportError('torch is not installed here (test of the ZIP install)')\n")
    env = qgis_env(config, with_venv=False)
    # the folders go first on sys.path in the order listed: the first shadows the others
    env["GLASSBOX_PYTHONPATH"] = os.pathsep.join([str(no_torch.parent), venv_site_packages()])
    enabled = subprocess.run([QGIS_PROCESS, "plugins", "enable", "glassbox"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    return env


def two_covers_scene(path, rows, cols):
    rng = np.random.default_rng(0)
    scene = np.empty((3, rows, cols), dtype=np.uint16)
    half = cols // 2
    scene[:, :, :half] = np.array([400, 700, 450])[:, None, None]   # green-ish vegetation (B04, B03, B02)
    scene[:, :, half:] = np.array([250, 400, 650])[:, None, None]   # blue-ish water
    scene = (scene + rng.normal(0, 40, scene.shape)).clip(1, None).astype(np.uint16)
    return write_raster(path, scene, crs="EPSG:32633", descriptions=["B04", "B03", "B02"])


def run_classify(env, raster, outputs, *extra):
    done = subprocess.run(
        [QGIS_PROCESS, "run", "glassbox:classify", "--json", "--", f"INPUT={raster}",
         *[f"{key}={path}" for key, path in outputs.items()], *extra],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads(done.stdout[done.stdout.index("{"):])


def test_installed_zip_classifies_through_qgis_process(installed_profile, tmp_path):
    rows, cols = 96, 128
    raster = two_covers_scene(tmp_path / "scene.tif", rows, cols)
    outputs = {"OUTPUT_CLASSES": tmp_path / "classes.tif", "OUTPUT_PROBABILITIES": tmp_path / "probabilities.tif"}
    _, report = run_classify(installed_profile, raster, outputs)
    assert report["results"]["OUTPUT_CLASSES"] == str(outputs["OUTPUT_CLASSES"])
    with rasterio.open(outputs["OUTPUT_CLASSES"]) as ds:
        assert ds.crs.to_epsg() == 32633 and (ds.width, ds.height) == (cols, rows)
        classes = ds.read(1)
    assert classes.min() >= 0 and classes.max() < 10
    with rasterio.open(outputs["OUTPUT_PROBABILITIES"]) as ds:
        assert ds.count == 10
        probabilities = ds.read()
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-3)


def test_installed_zip_adapts_the_default_to_the_scene_without_torch(installed_profile, tmp_path):
    """The ZIP ships the models as ONNX only and this profile has no PyTorch: ADAPT_TO_SCENE must
    still work (core.adaptation_onnx) and change the map."""
    rows, cols = 384, 512  # 48 tiles of 64 px: enough for the statistics
    raster = two_covers_scene(tmp_path / "scene.tif", rows, cols)
    plain = {"OUTPUT_CLASSES": tmp_path / "plain_classes.tif", "OUTPUT_PROBABILITIES": tmp_path / "plain.tif"}
    adapted = {"OUTPUT_CLASSES": tmp_path / "classes.tif", "OUTPUT_PROBABILITIES": tmp_path / "adapted.tif"}
    done_plain, plain_report = run_classify(installed_profile, raster, plain)
    assert plain_report["results"]["RADIOMETRY_DISTANCE"] > plain_report["results"]["RADIOMETRY_THRESHOLD"] > 0
    # the default's radiometry reference ships beside it: two flat covers are far from EuroSAT's tiles
    # reported as a warning (qgis_process --json lists those apart), its text not marked twice
    warnings = plain_report["log"]["warning"]
    assert len(warnings) == 1 and warnings[0].startswith("scene radiometry"), done_plain.stdout[-3000:]
    done, report = run_classify(installed_profile, raster, adapted, "ADAPT_TO_SCENE=true", "ADAPT_ALWAYS=true")
    log = done.stdout + done.stderr
    assert "scene adaptation: batch-norm statistics of 20 layers" in log, log[-3000:]
    assert "eurosat_rgb_resnet18_64_w32_96px.onnx" in log
    assert report["results"]["OUTPUT_CLASSES"] == str(adapted["OUTPUT_CLASSES"])
    with rasterio.open(adapted["OUTPUT_CLASSES"]) as ds:
        assert ds.crs.to_epsg() == 32633 and (ds.width, ds.height) == (cols, rows)
        classes = ds.read(1)
    assert classes.min() >= 0 and classes.max() < 10
    with rasterio.open(plain["OUTPUT_PROBABILITIES"]) as p, rasterio.open(adapted["OUTPUT_PROBABILITIES"]) as a:
        before, after = p.read(), a.read()
    assert np.allclose(after.sum(axis=0), 1.0, atol=1e-3)
    assert np.abs(after - before).max() > 0.05  # the adapted network is not the shipped one


def test_a_renamed_plugin_folder_classifies_with_worker_processes(plugin_zip, tmp_path):
    """Installed from a GitHub zip the folder is e.g. glassbox-main, not a Python identifier: the
    worker processes imported the plugin by a from-import of that name and failed (an audit)."""
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process is not installed")
    config = tmp_path / "profile"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    (plugins / "glassbox").rename(plugins / "glassbox-main")
    env = qgis_env(config, with_venv=False)
    env["GLASSBOX_PYTHONPATH"] = venv_site_packages()
    enabled = subprocess.run([QGIS_PROCESS, "plugins", "enable", "glassbox-main"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    raster = two_covers_scene(tmp_path / "scene.tif", 1536, 384)  # 517 tiles in three row bands
    outputs = {"OUTPUT_CLASSES": tmp_path / "workers.tif"}
    _, report = run_classify(env, raster, outputs, "WORKERS=2")
    assert "worker processes started with" in json.dumps(report["log"])
    single = {"OUTPUT_CLASSES": tmp_path / "single.tif"}
    run_classify(env, raster, single, "WORKERS=1")
    with rasterio.open(outputs["OUTPUT_CLASSES"]) as a, rasterio.open(single["OUTPUT_CLASSES"]) as b:
        assert np.array_equal(a.read(), b.read())
