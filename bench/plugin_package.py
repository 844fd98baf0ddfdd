"""Import the plugin folder as the package ``glassbox`` (whatever the folder is called), so that
benchmarks use its modules exactly as QGIS does, relative imports included."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PLUGIN_DIR = Path(__file__).resolve().parent.parent


def import_glassbox() -> ModuleType:
    """The plugin as the package ``glassbox`` (imported once, then taken from ``sys.modules``)."""
    if "glassbox" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "glassbox", PLUGIN_DIR / "__init__.py", submodule_search_locations=[str(PLUGIN_DIR)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["glassbox"] = module
        spec.loader.exec_module(module)
    return sys.modules["glassbox"]
