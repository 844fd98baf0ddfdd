"""Where Glassbox finds its Python packages and what it tells a user who lacks them (dependencies.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from glassbox import dependencies


def test_the_install_command_puts_the_packages_outside_the_plugin_folder(monkeypatch, tmp_path):
    """QGIS's plugin installer deletes the plugin folder on every upgrade and uninstall: a venv
    inside it was lost each time (and its symlinks made the uninstall fail)."""
    from qgis.core import QgsApplication

    monkeypatch.delenv("GLASSBOX_VENV", raising=False)
    venv = dependencies.venv_dir()
    assert venv == Path(QgsApplication.qgisSettingsDirPath()) / "python" / "glassbox-venv"
    assert venv.parent != dependencies.PLUGIN_DIR
    hint = dependencies.install_hint()
    assert f'"{venv}"' in hint and "-m venv --system-site-packages" in hint
    assert str(dependencies.PLUGIN_DIR / "requirements-plugin.txt") in hint
    monkeypatch.setenv("GLASSBOX_VENV", str(tmp_path / "elsewhere"))
    assert dependencies.venv_dir() == tmp_path / "elsewhere"
    # the runtime list leaves the test tools out
    runtime = (dependencies.PLUGIN_DIR / "requirements-plugin.txt").read_text()
    assert "onnxruntime==" in runtime and "rasterio==" in runtime and "pytest" not in runtime


def test_extra_folders_go_first_in_the_order_given(monkeypatch, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.setenv("GLASSBOX_PYTHONPATH", f"{first}{os.pathsep}{second}")
    monkeypatch.setattr(sys, "path", list(sys.path))
    added = dependencies.add_dependency_paths()
    assert added[:2] == [str(first), str(second)] and sys.path[:2] == [str(first), str(second)]


def test_a_package_that_is_there_but_does_not_import_is_named_with_the_cause(monkeypatch, tmp_path):
    """Debian's matplotlib or scipy, built for numpy 1, beside numpy 2: found, but broken; the
    check said nothing and the run ended in a traceback (an audit)."""
    package = tmp_path / "brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('numpy.core.multiarray failed to import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=r"cannot import the Python package\(s\) brokenpkg .*multiarray failed"):
        dependencies.require(["brokenpkg"])
    with pytest.raises(ImportError, match=r"needs the Python package\(s\) notthere"):
        dependencies.require(["notthere"])
