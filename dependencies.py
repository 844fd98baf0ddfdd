"""Finding the Python packages Glassbox needs, without importing them.

QGIS runs the system Python, not a virtual environment. Glassbox looks for its packages on
``sys.path``, then in the folders listed in the environment variable ``GLASSBOX_PYTHONPATH``,
then in the plugin's own ``.venv`` (made by ``make setup`` or by the command
:func:`install_hint` prints).
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


def venv_site_packages() -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return PLUGIN_DIR / ".venv" / "lib" / version / "site-packages"


def add_dependency_paths() -> list[str]:
    """Put the extra package folders first on ``sys.path`` (they hold numpy 2, which must
    shadow an older system numpy). Returns the folders added."""
    candidates = [p for p in os.environ.get("GLASSBOX_PYTHONPATH", "").split(os.pathsep) if p]
    candidates.append(str(venv_site_packages()))
    added = []
    for folder in candidates:
        if os.path.isdir(folder) and folder not in sys.path:
            sys.path.insert(0, folder)
            added.append(folder)
    if added:
        importlib.invalidate_caches()
    return added


def missing_dependencies(include_optional: bool = False) -> list[str]:
    """pip names of the packages that cannot be found (nothing is imported)."""
    wanted = dict(REQUIRED, **(OPTIONAL if include_optional else {}))
    return [pip for module, pip in wanted.items() if importlib.util.find_spec(module) is None]


def install_hint() -> str:
    venv = PLUGIN_DIR / ".venv"
    requirements = PLUGIN_DIR / "requirements.txt"
    return (
        "Install them where Glassbox looks, with this one command, then restart QGIS: "
        f'/usr/bin/python3 -m venv --system-site-packages "{venv}" && '
        f'"{venv}/bin/pip" install -r "{requirements}"'
    )


def require(modules: list[str]) -> None:
    """Raise ImportError naming each missing module and the command that installs them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"Glassbox needs the Python package(s) {', '.join(missing)}. {install_hint()}")
