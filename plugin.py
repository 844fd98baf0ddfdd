"""The QGIS plugin: registers the Glassbox Processing provider.

The provider is registered in ``initProcessing`` so ``qgis_process`` (which has no GUI and
calls only that) gets the algorithms too.
"""

from qgis.core import QgsApplication

from .dependencies import install_hint, missing_dependencies, add_dependency_paths


class GlassboxPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS API name)
        from .processing_provider.provider import GlassboxProvider

        add_dependency_paths()
        self.provider = GlassboxProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS API name)
        self.initProcessing()
        missing = missing_dependencies()
        if missing and self.iface is not None:
            self.iface.messageBar().pushWarning(
                "Glassbox", f"Missing Python packages: {', '.join(missing)}. {install_hint()}"
            )

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
