"""Cloud masking of Sentinel-2 L1C rasters with s2cloudless, window by window.

`s2cloudless <https://github.com/sentinel-hub/sentinel2-cloud-detector>`_ (Sentinel Hub) is a
per-pixel LightGBM classifier of ten L1C bands (B01, B02, B04, B05, B08, B8A, B09, B10, B11,
B12, as top-of-atmosphere reflectance = digital number / 10000). Its model file ships inside the
package: nothing is downloaded. Its cloud probabilities are smoothed with a disk of
:data:`AVERAGE_OVER` pixels, thresholded and dilated by :data:`DILATION` pixels (the library's
documented example settings), giving the cloud mask.

The package itself is not imported: ``import s2cloudless`` imports ``sentinelhub`` (for its
download helper), which imports ``pyproj``, whose bundled PROJ library clashes with QGIS's own
and crashes ``qgis_process`` when it exits. :class:`CloudDetector` loads the package's
``pixel_classifier.py`` (it imports only numpy and lightgbm) and its LightGBM model file from
the installed package, applies them and post-processes exactly as
``s2cloudless.S2PixelCloudDetector`` does (a test compares the two).

:class:`CloudMasker` finds the bands by name (band descriptions such as ``B8A``), reads only the
rows it is asked for plus a margin of ``AVERAGE_OVER + DILATION`` rows and columns (so the mask
of a window equals that of the whole raster), predicts each pixel once (probabilities of the
margin rows are kept for the next window) and never holds more than a few row bands.

lightgbm and cv2 are imported only when a :class:`CloudMasker` is made.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GlassboxError, RasterInputError
from .io.raster import Area, band_descriptions, normalise_band_name

#: the bands s2cloudless reads, in its order
CLOUD_BANDS = ["B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"]
#: L1C digital numbers per unit of reflectance
DN_SCALE = 10000.0
#: default probability above which a pixel is cloud. s2cloudless's own default is 0.4; on the
#: demo's winter scene 0.4 also marks bright bare fields (25 % of the scene flagged), 0.6 the
#: clouds seen in the image (9 %); Earth Engine's s2cloudless tutorials use 0.5-0.65
DEFAULT_THRESHOLD = 0.6
#: radius in pixels of the disk the probabilities are averaged over before the threshold
AVERAGE_OVER = 4
#: radius in pixels of the disk the thresholded mask is dilated by
DILATION = 2
#: the LightGBM model inside the s2cloudless package (``s2cloudless.cloud_detector.MODEL_FILENAME``)
MODEL_FILENAME = "pixel_s2_cloud_detector_lightGBM_v0.1.txt"


def cloud_band_indices(descriptions: Any, path: Any = "the raster") -> list[int]:
    """1-based indices of :data:`CLOUD_BANDS` in a raster with these band descriptions;
    :class:`RasterInputError` naming the missing bands otherwise."""
    by_name = {normalise_band_name(d): i + 1 for i, d in enumerate(descriptions) if d}
    missing = [b for b in CLOUD_BANDS if b not in by_name]
    if missing:
        named = sorted(by_name, key=by_name.get)
        raise RasterInputError(
            f"cloud masking (s2cloudless) needs the Sentinel-2 L1C bands {', '.join(CLOUD_BANDS)} named in the "
            f"band descriptions; {path} has no band named {', '.join(missing)}"
            + (f" (its bands are named {', '.join(named)})" if named else " (its bands have no names)")
            + ". Use a Sentinel-2 L1C stack with these bands, or switch cloud masking off"
        )
    return [by_name[b] for b in CLOUD_BANDS]


def _missing(what: str) -> GlassboxError:
    return GlassboxError(
        f"cloud masking needs the Python package s2cloudless (with lightgbm and opencv): {what}; install "
        "Glassbox's requirements.txt (pip install -r requirements.txt)"
    )


def s2cloudless_folder() -> Path:
    """The installed s2cloudless package's folder (found, not imported)."""
    spec = importlib.util.find_spec("s2cloudless")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("it is not installed")
    return Path(list(spec.submodule_search_locations)[0])


class CloudDetector:
    """s2cloudless's pixel classifier (``PixelClassifier`` over its LightGBM ``Booster``) and
    its post-processing (``S2PixelCloudDetector.get_mask_from_prob``), without importing the
    package (see the module's note)."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, average_over: int = AVERAGE_OVER,
                 dilation_size: int = DILATION):
        try:
            import cv2
            from lightgbm import Booster
        except ImportError as exc:
            raise _missing(str(exc)) from exc
        folder = s2cloudless_folder()
        model = folder / "models" / MODEL_FILENAME
        source = folder / "pixel_classifier.py"
        if not model.is_file() or not source.is_file():
            raise _missing(f"{model if not model.is_file() else source} is not in the installed package")
        spec = importlib.util.spec_from_file_location("glassbox_s2cloudless_pixel_classifier", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.classifier = module.PixelClassifier(Booster(model_file=str(model)))
        self.threshold = threshold
        self.cv2 = cv2
        disk = self.disk(average_over)
        self.conv_filter = disk / np.sum(disk)
        self.dilation_filter = self.disk(dilation_size)

    def disk(self, radius: int) -> np.ndarray:
        return self.cv2.circle(np.zeros((radius * 2 + 1, radius * 2 + 1), dtype=np.uint8), (radius, radius),
                               radius, color=1, thickness=-1)

    def probabilities(self, reflectance: np.ndarray) -> np.ndarray:
        """Cloud probability ``(rows, cols)`` float32 of ``(rows, cols, 10)`` reflectances of
        :data:`CLOUD_BANDS`."""
        return self.classifier.image_predict_proba(reflectance[None], num_threads=1)[0, ..., 1].astype(np.float32)

    def mask(self, probabilities: np.ndarray) -> np.ndarray:
        """Cloud mask ``(rows, cols)`` bool: probabilities averaged over the disk, above the
        threshold, dilated."""
        averaged = self.cv2.filter2D(probabilities, -1, self.conv_filter, borderType=self.cv2.BORDER_REFLECT)
        return self.cv2.dilate((averaged > self.threshold).astype(np.uint8), self.dilation_filter).astype(bool)


class CloudMasker:
    """The s2cloudless cloud mask of the area ``area`` of ``dataset`` (an open rasterio
    dataset), asked for in consecutive row bands: :meth:`rows` ``(first, count)`` returns a bool
    ``(count, area.width)`` array (True = cloud). Pixels whose cloud bands hold NaN or all equal
    ``nodata`` get probability 0."""

    def __init__(self, dataset: Any, area: Area, threshold: float = DEFAULT_THRESHOLD,
                 nodata: float | None = None):
        if not 0.0 <= threshold <= 1.0:
            raise RasterInputError(f"the cloud probability threshold must be 0..1, got {threshold}")
        self.dataset = dataset
        self.area = area
        self.threshold = threshold
        self.nodata = nodata if nodata is not None else dataset.nodata
        self.bands = cloud_band_indices(band_descriptions(dataset), getattr(dataset, "name", "the raster"))
        self.detector = CloudDetector(threshold)
        self.margin = AVERAGE_OVER + DILATION
        self.col0 = max(0, area.col_off - self.margin)
        self.col1 = min(dataset.width, area.col_off + area.width + self.margin)
        self._start = self._stop = 0  # raster rows held in self._probs
        self._probs = np.zeros((0, self.col1 - self.col0), np.float32)

    def probabilities(self, row0: int, row1: int) -> np.ndarray:
        """Cloud probabilities (rows, columns col0..col1) of raster rows ``row0..row1``."""
        from rasterio.windows import Window

        data = self.dataset.read(self.bands, window=Window(self.col0, row0, self.col1 - self.col0, row1 - row0),
                                 masked=False).astype(np.float32)
        invalid = np.any(np.isnan(data), axis=0)
        if self.nodata is not None and not np.isnan(self.nodata):
            invalid |= np.all(data == np.float32(self.nodata), axis=0)
        reflectance = np.nan_to_num(np.moveaxis(data, 0, -1) / DN_SCALE)
        probs = self.detector.probabilities(reflectance)
        probs[invalid] = 0.0
        return probs

    def rows(self, first: int, count: int) -> np.ndarray:
        """Cloud mask of area rows ``first..first + count`` (asked for in increasing order)."""
        top = self.area.row_off + first
        need0 = max(0, top - self.margin)
        need1 = min(self.dataset.height, top + count + self.margin)
        if need0 < self._start or need0 > self._stop:  # not consecutive: start afresh
            self._start = self._stop = need0
            self._probs = self._probs[:0]
        if need1 > self._stop:
            self._probs = np.concatenate([self._probs, self.probabilities(self._stop, need1)])
            self._stop = need1
        self._probs = self._probs[need0 - self._start:]
        self._start = need0
        held = self._probs[: need1 - need0]
        mask = self.detector.mask(held)
        c0 = self.area.col_off - self.col0
        return mask[top - need0: top - need0 + count, c0: c0 + self.area.width]


#: a tile with at least this share of cloud is left out of the tiles a scene is judged by (scene
#: radiometry check, scene adaptation)
CLOUDY_TILE_SHARE = 0.5


class CloudBits:
    """The cloud mask of a :class:`CloudMasker`'s area computed once, in row bands, and held at
    one bit per pixel (15 MB for a 10980 px Sentinel-2 tile). :meth:`rows` answers as
    :meth:`CloudMasker.rows` does (any order); :meth:`tile_mask` and :meth:`tile_share` look
    under a tile (:class:`core.tiles.grid.Tile`, area pixels). ``pixels``: cloud pixels in all."""

    def __init__(self, masker: CloudMasker, is_cancelled: Any = None, band_rows: int = 256):
        from .errors import Cancelled

        self.width = masker.area.width
        self.bands = masker.bands
        packed = []
        for first in range(0, masker.area.height, band_rows):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            packed.append(np.packbits(masker.rows(first, min(band_rows, masker.area.height - first)), axis=1))
        self.bits = np.concatenate(packed) if packed else np.zeros((0, (self.width + 7) // 8), np.uint8)
        self.pixels = int(np.unpackbits(self.bits, axis=1, count=self.width).sum()) if packed else 0

    def rows(self, first: int, count: int) -> np.ndarray:
        return np.unpackbits(self.bits[first:first + count], axis=1, count=self.width).astype(bool)

    def _under(self, tile: Any) -> np.ndarray:
        return self.rows(tile.row_off, tile.height)[:, tile.col_off:tile.col_off + tile.width]

    def tile_mask(self, tile: Any, size: int) -> np.ndarray:
        """(size, size) bool: the mask under ``tile`` at the model's resolution (nearest pixel)."""
        block = self._under(tile)
        rows = np.minimum((np.arange(size) * block.shape[0]) // size, block.shape[0] - 1)
        cols = np.minimum((np.arange(size) * block.shape[1]) // size, block.shape[1] - 1)
        return block[np.ix_(rows, cols)]

    def tile_share(self, tile: Any) -> float:
        block = self._under(tile)
        return float(block.mean()) if block.size else 0.0

    def clear(self, tile: Any) -> bool:
        """Whether ``tile`` holds less than :data:`CLOUDY_TILE_SHARE` cloud."""
        return self.tile_share(tile) < CLOUDY_TILE_SHARE


def mask_plan_clouds(plan: Any, threshold: float, nodata: float | None, effect: str, is_cancelled: Any = None,
                     log: Any = None) -> tuple[Any, CloudBits]:
    """The cloud mask of a :class:`core.tiles.loop.TilePlan`'s area (:class:`CloudBits`, logged with
    the bands read and ``effect``, what a cloud pixel becomes), and the plan with cloudy tiles left
    out of the scene's sample (``sample_filter``: radiometry check, adaptation). For classify and
    explain alike, so both judge the scene from the same tiles."""
    from dataclasses import replace

    masker = CloudMasker(plan.source.dataset, plan.area, threshold, nodata)
    if log is not None:
        pairs = ", ".join(f"{n}<-band {b}" for n, b in zip(CLOUD_BANDS, masker.bands))
        log(f"cloud masking with s2cloudless: {pairs}, read as reflectance (digital number / 10000); cloud "
            f"probability above {threshold:g}: {effect}; tiles at least half cloud are left out of the scene's "
            "radiometry check and adaptation")
    clouds = CloudBits(masker, is_cancelled)
    return replace(plan, sample_filter=clouds.clear), clouds
