"""`make package`: the plugin zip holds what QGIS needs and nothing else, and a QGIS profile that
installs it (as *Install from ZIP* does: unzip into the profile's plugins folder) runs
glassbox:classify with the shipped default model through qgis_process."""

from __future__ import annotations

import json
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
                     "glassbox/processing_provider/provider.py", "glassbox/algorithms/classify.py",
                     "glassbox/core/classify.py", "glassbox/resources/icons/glassbox.svg",
                     "glassbox/resources/processing_models/classify_explain_segment.model3",
                     "glassbox/resources/models/eurosat_rgb_resnet18_64_w32_96px.onnx",
                     "glassbox/resources/models/eurosat_rgb_resnet18_64_w32_96px.json",
                     "glassbox/resources/models/eurosat_ms_fusion_resnet18.onnx",
                     "glassbox/docs/algorithms/classify.md"):
        assert required in names, required
    for forbidden in ("/tests/", "/bench/", "/research/", "/scripts/", "/.venv/", "__pycache__", ".git/"):
        assert not any(forbidden in n for n in names), forbidden
    assert not any(n.endswith((".pt", ".pth", ".pyc")) for n in names)
    assert sum(n.endswith(".onnx") for n in names) == 2  # one default model per kind of input


def test_installed_zip_classifies_through_qgis_process(plugin_zip, tmp_path):
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process is not installed")
    config = tmp_path / "profile"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    # a desktop user's QGIS: no PYTHONPATH; the packages are found where the plugin looks
    env = qgis_env(config, with_venv=False)
    env["GLASSBOX_PYTHONPATH"] = venv_site_packages()
    enabled = subprocess.run([QGIS_PROCESS, "plugins", "enable", "glassbox"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr

    rng = np.random.default_rng(0)
    rows, cols = 96, 128
    scene = np.empty((3, rows, cols), dtype=np.uint16)
    scene[:, :, :64] = np.array([400, 700, 450])[:, None, None]   # green-ish vegetation (B04, B03, B02)
    scene[:, :, 64:] = np.array([250, 400, 650])[:, None, None]   # blue-ish water
    scene = (scene + rng.normal(0, 40, scene.shape)).clip(1, None).astype(np.uint16)
    raster = write_raster(tmp_path / "scene.tif", scene, crs="EPSG:32633", descriptions=["B04", "B03", "B02"])
    outputs = {"OUTPUT_CLASSES": tmp_path / "classes.tif", "OUTPUT_PROBABILITIES": tmp_path / "probabilities.tif"}
    done = subprocess.run(
        [QGIS_PROCESS, "run", "glassbox:classify", "--json", "--", f"INPUT={raster}",
         *[f"{key}={path}" for key, path in outputs.items()]],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["results"]["OUTPUT_CLASSES"] == str(outputs["OUTPUT_CLASSES"])
    with rasterio.open(outputs["OUTPUT_CLASSES"]) as ds:
        assert ds.crs.to_epsg() == 32633 and (ds.width, ds.height) == (cols, rows)
        classes = ds.read(1)
    assert classes.min() >= 0 and classes.max() < 10
    with rasterio.open(outputs["OUTPUT_PROBABILITIES"]) as ds:
        assert ds.count == 10
        probabilities = ds.read()
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-3)
