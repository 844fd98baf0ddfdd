"""Segmentation from explanation seed points: seeds, windows, polygons, SAM."""

#: positive seeds scoring less are skipped unless told otherwise (heatmap peaks and model scores are
#: 0-1); here, not in ``seeds``, so that the Processing algorithm can show it without numpy
DEFAULT_MIN_SCORE = 0.2
