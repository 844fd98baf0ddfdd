"""Glassbox core: the QGIS-free engine (raster windows, tiling, models, inference, writers).

Nothing in this package imports ``qgis``. Heavy libraries (torch, onnxruntime, rasterio) are
imported by the modules that need them, never by this ``__init__``, so the QGIS plugin can load
without them.
"""
