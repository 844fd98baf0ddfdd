"""Glassbox core: the QGIS-free engine, laid out as the pipeline runs.

* :mod:`.io` -- reading rasters by windows (:mod:`.io.raster`), writing rasters
  (:mod:`.io.writers`) and vector layers (:mod:`.io.vectors`), checking output paths, reports;
* :mod:`.tiles` -- the tile grid, blending of overlapping tiles and the shared tile loop;
* :mod:`.models` -- model cards, backends (ONNX Runtime, Torch), architectures, export,
  ensembles and the choice of a shipped model by a raster's bands;
* :mod:`.classify` (and :mod:`.clouds`) -- classification of a raster;
* :mod:`core.explain.heatmap` -- attributions, heatmap rasters and explanation-quality metrics;
* :mod:`.segment` -- seeds, windows and polygons from explanation points, Segment Anything;
* :mod:`.training` -- labelled tiles, scaling, the training loop, evaluation, saving;
* :mod:`.masking` -- background masking from land-cover polygons and masked fine-tuning;
* :mod:`.dihedral`, :mod:`.radiometry`, :mod:`.feedback`, :mod:`.errors` -- shared pieces.

Nothing in this package imports ``qgis``. Heavy libraries (torch, onnxruntime, rasterio) are
imported by the modules that need them, never by an ``__init__``, so the QGIS plugin can load
without them.
"""
