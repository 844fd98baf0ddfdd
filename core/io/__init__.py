"""Reading rasters, writing rasters and vector layers, checking output paths, reports."""
