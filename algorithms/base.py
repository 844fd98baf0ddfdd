"""What every Glassbox algorithm shares: group, icon, dependency check, error translation."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException
from qgis.PyQt.QtGui import QIcon

from ..dependencies import require

PLUGIN_DIR = Path(__file__).resolve().parent.parent
ICON = str(PLUGIN_DIR / "resources" / "icons" / "glassbox.svg")
MODELS_DIR = PLUGIN_DIR / "resources" / "models"
DEFAULT_MODEL = MODELS_DIR / "eurosat_rgb_paper1_cnn.onnx"


class GlassboxAlgorithm(QgsProcessingAlgorithm):
    """Base class; subclasses set ``required_modules`` for the packages they import."""

    required_modules = ["numpy", "rasterio", "onnxruntime"]

    def icon(self):
        return QIcon(ICON)

    def createInstance(self):  # noqa: N802 (QGIS API name)
        return type(self)()

    @contextmanager
    def core_errors(self):
        """Run core code: missing packages and core's typed errors become
        QgsProcessingException with the same message."""
        try:
            require(self.required_modules)
        except ImportError as exc:
            raise QgsProcessingException(str(exc)) from exc
        from ..core.errors import GlassboxError

        try:
            yield
        except GlassboxError as exc:
            raise QgsProcessingException(str(exc)) from exc


def check_extension(path: str, allowed: tuple[str, ...], what: str) -> None:
    if path and Path(path).suffix.lower() not in allowed:
        raise QgsProcessingException(f"{what} must be written as {' or '.join(allowed)}, not {path}")
