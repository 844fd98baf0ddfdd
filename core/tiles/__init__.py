"""Cutting rasters into model tiles, blending overlapping tiles, the shared tile loop."""
