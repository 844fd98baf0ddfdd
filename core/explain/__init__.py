"""Attributions (Guided Grad-CAM), heatmap rasters, and explanation quality metrics."""
