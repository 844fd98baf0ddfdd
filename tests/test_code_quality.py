"""Static checks over the plugin's own Python files."""

from __future__ import annotations

import subprocess
import sys

from helpers import PLUGIN_DIR

CHECKED = ["__init__.py", "plugin.py", "dependencies.py", "processing_provider", "algorithms", "core", "bench",
           "scripts", "tests"]


def test_pyflakes_finds_nothing():
    """No unused import, undefined name or shadowed variable in the plugin's code."""
    result = subprocess.run([sys.executable, "-m", "pyflakes", *CHECKED], cwd=PLUGIN_DIR,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_never_imports_qgis():
    """core is the QGIS-free engine (usable in scripts and notebooks without QGIS)."""
    offenders = [str(path.relative_to(PLUGIN_DIR)) for path in (PLUGIN_DIR / "core").rglob("*.py")
                 if any(line.lstrip().startswith(("import qgis", "from qgis"))
                        for line in path.read_text(encoding="utf-8").splitlines())]
    assert offenders == []
