"""Static checks over the plugin's own Python files."""

from __future__ import annotations

import subprocess
import sys

from helpers import PLUGIN_DIR

CHECKED = ["__init__.py", "plugin.py", "dependencies.py", "processing_provider", "algorithms", "core", "bench", "research",
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


def test_plugin_code_never_imports_shapely():
    """Inside QGIS executables (qgis_process, the desktop) QGIS's own GEOS is in the global
    symbol namespace and a shapely wheel's bundled GEOS partly runs QGIS's copy: coordinate and
    WKB/WKT export break there (segment once wrote polygons without geometry). Geometry work in
    the plugin goes through OGR, which uses the GEOS QGIS links (see core/vectors.py)."""
    offenders = [str(path.relative_to(PLUGIN_DIR)) for folder in ("core", "algorithms", "processing_provider")
                 for path in (PLUGIN_DIR / folder).rglob("*.py")
                 if any(line.lstrip().startswith(("import shapely", "from shapely"))
                        for line in path.read_text(encoding="utf-8").splitlines())]
    assert offenders == []


def test_one_package_name_everywhere():
    """Scripts, benchmarks, research and tests import the plugin as ``glassbox`` (installed by
    `make setup`); a bare ``core`` import would load a second copy whose typed errors do not
    match the first's."""
    import re

    pattern = re.compile(r"^\s*(from|import)\s+core(\.|\s|$)")
    offenders = [f"{path.relative_to(PLUGIN_DIR)}:{n}" for folder in ("scripts", "bench", "research", "tests")
                 for path in (PLUGIN_DIR / folder).rglob("*.py")
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if pattern.match(line)]
    assert offenders == [], "import glassbox.core instead: " + ", ".join(offenders)


def test_ready_for_qt6():
    """QGIS 4 runs Qt6 and PyQt6: the plugin says it supports it (metadata ``supportsQt6``), takes
    Qt only through ``qgis.PyQt``, and uses none of what PyQt6 removed (``exec_``, unscoped Qt
    enums such as ``Qt.AlignLeft``, ``QVariant`` types outside the version switch in base.py)."""
    import re

    metadata = (PLUGIN_DIR / "metadata.txt").read_text(encoding="utf-8")
    assert re.search(r"^supportsQt6=(True|yes)$", metadata, re.MULTILINE | re.IGNORECASE)
    removed = re.compile(r"^\s*(from|import)\s+PyQt[56]\b|\.exec_\(|\bQt\.[A-Z][A-Za-z]+\b(?!\.)|QVariant\.[A-Z]")
    offenders = [f"{path.relative_to(PLUGIN_DIR)}:{n}: {line.strip()}"
                 for path in [PLUGIN_DIR / "plugin.py", PLUGIN_DIR / "__init__.py", PLUGIN_DIR / "dependencies.py",
                              *(PLUGIN_DIR / "processing_provider").rglob("*.py"),
                              *(PLUGIN_DIR / "algorithms").rglob("*.py")]
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if removed.search(line) and "Qt6-safe" not in line]
    assert offenders == [], offenders
