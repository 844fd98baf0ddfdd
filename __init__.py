"""Glassbox QGIS plugin entry point. Loading it imports neither torch nor onnxruntime."""


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin import GlassboxPlugin

    return GlassboxPlugin(iface)
