"""Finding the Python packages Glassbox needs (without importing them while QGIS loads the
plugin; :func:`require` imports them when an algorithm runs, to tell a broken package from a
missing one).

QGIS runs the system Python, not a virtual environment. Glassbox looks for its packages on
``sys.path``, then in the folders listed in the environment variable ``GLASSBOX_PYTHONPATH``,
then in the virtual environment that :func:`install_hint`'s command makes: ``glassbox-venv`` in
the QGIS profile's ``python`` folder (or ``$GLASSBOX_VENV``), outside the plugin folder, which
QGIS's plugin installer deletes on every upgrade and uninstall; last in the plugin's own
``.venv`` (made by ``make setup`` in a development checkout).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
#: import name -> pip name, for what every algorithm needs
REQUIRED = {"numpy": "numpy", "rasterio": "rasterio", "onnxruntime": "onnxruntime"}
#: needed only for Torch models, training and explanations (torch, onnx) and scene adaptation (onnx)
OPTIONAL = {"torch": "torch", "onnx": "onnx"}


def venv_dir() -> Path:
    """Where the install command puts Glassbox's packages: ``$GLASSBOX_VENV``, else
    ``<QGIS profile>/python/glassbox-venv``. Not inside the plugin folder: QGIS's plugin installer
    deletes that folder on every upgrade and uninstall (and fails to, on a venv's symlinks)."""
    if os.environ.get("GLASSBOX_VENV"):
        return Path(os.environ["GLASSBOX_VENV"])
    try:
        from qgis.core import QgsApplication

        profile = QgsApplication.qgisSettingsDirPath()
    except ImportError:
        profile = ""
    if profile:
        return Path(profile) / "python" / "glassbox-venv"
    # <profile>/python/plugins/<plugin folder>/dependencies.py, a development link not resolved
    return Path(os.path.abspath(__file__)).parent.parent.parent / "glassbox-venv"


def venv_site_packages(venv: Path | None = None) -> Path:
    venv = PLUGIN_DIR / ".venv" if venv is None else venv
    if os.name == "nt":
        return venv / "Lib" / "site-packages"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return venv / "lib" / version / "site-packages"


def add_dependency_paths() -> list[str]:
    """Put the extra package folders first on ``sys.path`` (they hold numpy 2, which must
    shadow an older system numpy). Returns the folders added."""
    candidates = [p for p in os.environ.get("GLASSBOX_PYTHONPATH", "").split(os.pathsep) if p]
    candidates.append(str(venv_site_packages(venv_dir())))
    candidates.append(str(venv_site_packages()))  # make setup's .venv in a development checkout
    added = []
    for folder in candidates:
        if os.path.isdir(folder) and folder not in sys.path:
            sys.path.insert(len(added), folder)  # first, in this order of precedence
            added.append(folder)
    if added:
        importlib.invalidate_caches()
    return added


def missing_dependencies(include_optional: bool = False) -> list[str]:
    """pip names of the packages that cannot be found (nothing is imported)."""
    wanted = dict(REQUIRED, **(OPTIONAL if include_optional else {}))
    return [pip for module, pip in wanted.items() if importlib.util.find_spec(module) is None]


def base_python() -> str:
    """The Python to make the virtual environment with: QGIS's own Python (its version, and its
    system packages seen through ``--system-site-packages``)."""
    import shutil

    if os.name == "nt":  # OSGeo4W / the standalone installer: python.exe in QGIS's Python prefix
        return str(Path(sys.base_exec_prefix) / "python.exe")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    # QGIS's own Python first (macOS: inside QGIS.app; /usr/bin/python3 there is Apple's, another version)
    for candidate in (str(Path(sys.base_exec_prefix) / "bin" / version), f"/usr/bin/{version}", "/usr/bin/python3"):
        if os.path.isfile(candidate):
            return candidate
    return shutil.which(version) or shutil.which("python3") or "python3"


def install_hint() -> str:
    venv = venv_dir()
    pip = venv / "Scripts" / "pip.exe" if os.name == "nt" else venv / "bin" / "pip"
    requirements = PLUGIN_DIR / "requirements-plugin.txt"
    return (
        "Install them where Glassbox looks, with this one command, then restart QGIS: "
        f'"{base_python()}" -m venv --system-site-packages "{venv}" && '
        f'"{pip}" install -r "{requirements}"'
    )


def require(modules: list[str]) -> None:
    """Raise ImportError naming each missing module and the command that installs them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"Glassbox needs the Python package(s) {', '.join(missing)}. {install_hint()}")
    broken = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # e.g. Debian's matplotlib or scipy, built for numpy 1, beside numpy 2
            broken.append(f"{module} ({importlib.util.find_spec(module).origin}: {str(exc).strip().splitlines()[-1]})")
    if broken:
        raise ImportError(f"Glassbox cannot import the Python package(s) {'; '.join(broken)}: it needs its own "
                          f"copies, built for numpy 2. {install_hint()}")
