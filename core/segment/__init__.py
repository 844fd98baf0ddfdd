"""Segmentation from explanation seed points: seeds, windows, polygons, SAM."""
