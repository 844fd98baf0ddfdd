"""The plugin as QGIS loads it: qgis_process, no torch at load, and missing packages."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers import QGIS_PLUGIN_PRELUDE, PLUGIN_DIR, QGIS_PROCESS, qgis_env, two_halves, write_raster


@pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="qgis_process is not installed")
def test_qgis_process_runs_classify(tmp_path, qgis_profile, tiny_model_files):
    raster = write_raster(tmp_path / "scene.tif", two_halves(48, 64), crs="EPSG:2193",
                          origin=(1570000.0, 5180000.0), descriptions=["B08", "B03"])
    out = tmp_path / "classes.tif"
    done = subprocess.run(
        [QGIS_PROCESS, "run", "glassbox:classify", "--json", "--", f"INPUT={raster}",
         f"MODEL={tiny_model_files['onnx']}", f"OUTPUT_CLASSES={out}",
         f"OUTPUT_PROBABILITIES={tmp_path / 'probabilities.tif'}", "TILE_STRIDE=8"],
        env=qgis_env(qgis_profile), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["results"]["OUTPUT_CLASSES"] == str(out)
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 2193
        classes = ds.read(1)
    assert (classes[:, :24] == 0).all() and (classes[:, 40:] == 1).all()
    assert out.with_suffix(".qml").exists()


LOAD_SCRIPT = QGIS_PLUGIN_PRELUDE + textwrap.dedent(
    """
    plugin = module.classFactory(None)
    plugin.initProcessing()
    from glassbox.dependencies import missing_dependencies
    algorithm = QgsApplication.processingRegistry().algorithmById("glassbox:classify")
    report = {"heavy": [m for m in ("torch", "onnxruntime", "rasterio", "onnx") if m in sys.modules],
              "registered": algorithm is not None, "missing": missing_dependencies()}
    if len(sys.argv) > 2:
        import processing
        from qgis.core import QgsProcessingException
        try:
            processing.run("glassbox:classify", {"INPUT": sys.argv[2], "MODEL": sys.argv[4], "OUTPUT_CLASSES": sys.argv[3],
                                                 "OUTPUT_PROBABILITIES": sys.argv[3] + ".p.tif"})
            report["error"] = None
        except QgsProcessingException as exc:
            report["error"] = str(exc)
        except Exception as exc:
            report["error"] = "unexpected " + repr(exc)
    print("REPORT" + json.dumps(report))
    """
)


def run_loader(plugin_dir, python, env, *args):
    done = subprocess.run([python, "-c", LOAD_SCRIPT, str(plugin_dir), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert "REPORT" in done.stdout, done.stdout + done.stderr
    return json.loads(done.stdout.split("REPORT", 1)[1])


def test_plugin_loads_without_importing_torch(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    report = run_loader(PLUGIN_DIR, sys.executable, env)
    assert report["registered"]
    assert report["heavy"] == []
    assert report["missing"] == []


def test_missing_packages_are_named_with_the_install_command(tmp_path):
    """A desktop QGIS without the packages: the plugin loads, and running says what is missing
    and the one command that installs it where the plugin looks."""
    bare = tmp_path / "glassbox"
    shutil.copytree(PLUGIN_DIR, bare, ignore=shutil.ignore_patterns(".venv", ".git", "tests", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["GLASSBOX_VENV"] = str(tmp_path / "venv")  # else <QGIS profile>/python/glassbox-venv
    probe = subprocess.run(["/usr/bin/python3", "-c", "import onnxruntime"], env=env, capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the system Python has onnxruntime itself")
    raster = write_raster(tmp_path / "scene.tif", np.ones((3, 8, 8), np.uint16))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not needed: the missing packages are reported first")
    report = run_loader(bare, "/usr/bin/python3", env, raster, tmp_path / "c.tif", model)
    assert report["registered"]
    assert "onnxruntime" in report["missing"]
    assert "onnxruntime" in report["error"]
    assert f'-m venv --system-site-packages "{tmp_path / "venv"}"' in report["error"]
    assert f'"{tmp_path / "venv"}/bin/pip" install -r "{bare}/requirements-plugin.txt"' in report["error"]
    assert not (tmp_path / "c.tif").exists()
