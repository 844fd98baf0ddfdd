"""Is a raster in the units a model reads? Unambiguous mistakes are caught before any tile is
classified: an 8-bit image (Byte, 0..255) or reflectance 0..1 (floats) given to a model of
digital numbers (e.g. the shipped Sentinel-2 L1C models, trained on values up to 2750 or more),
and values far beyond 0..255 in every band (16-bit digital numbers) given to a model of 8-bit
images (e.g. a model trained on aerial photos or on EuroSAT's jpgs).

Both used to give a map of one class (all SeaLake, or all AnnualCrop) with only the general
radiometry warning. The check uses the raster's data type and, for floats, the 99th percentile of
a decimated read (at most 512 x 512 pixels); it never refuses a raster of digital numbers, however
dark (those are integers above 255 somewhere, or floats above 2).
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Sequence

import numpy as np

from ..models.card import Scaling

#: a model whose training values (per band, the raw value its scaling maps to the top of its range)
#: are mostly above this reads digital numbers, not 8-bit values
DIGITAL_NUMBER_MODEL = 1020.0
#: floats whose 99th percentile is at most this in every band are reflectance 0..1 (with margin)
REFLECTANCE_MAX = 2.0
#: EuroSAT's RGB jpgs hold L1C digital numbers x 255 / 2750; an 8-bit image stretched the same way
EUROSAT_8BIT_TOP = 2750
#: the Copernicus Browser's (and Sentinel Hub's) 'True color': 2.5 x reflectance, i.e. DN 0-4000 -> 0-255
COPERNICUS_8BIT_TOP = 4000


def model_top_values(scaling: Scaling, bands: int) -> np.ndarray | None:
    """Per band, the raw value a card's scaling maps to the top of the model's input range: the
    clip's upper end when the scaling clips, else the training mean + 3 standard deviations; None
    for a scaling that does not scale raw values (a model of 8-bit images reads them as they are)."""
    scale = np.broadcast_to(np.asarray(scaling.scale, dtype=np.float64).reshape(-1), (bands,))
    offset = np.broadcast_to(np.asarray(scaling.offset, dtype=np.float64).reshape(-1), (bands,))
    if np.all(scale == 1.0) or np.any(scale <= 0):
        return None
    if scaling.clip is not None:
        top = np.full(bands, float(scaling.clip[1]))
    elif scaling.mean is not None and scaling.std is not None:
        top = np.asarray(scaling.mean, dtype=np.float64) + 3 * np.asarray(scaling.std, dtype=np.float64)
    else:
        return None
    return (top - offset) / scale


def units_mismatch(dataset: Any, band_indices: Sequence[int], scaling: Scaling, model_name: str,
                   nodata: float | None = None, band_names: Sequence[str] | None = None) -> str | None:
    """None when the raster ``dataset`` (rasterio, open) may be in the units the model reads, else
    the error message: what the raster holds, what the model reads and how to convert it.
    ``band_indices`` are the 1-based bands fed to the model; ``band_names`` (the card's, in the
    same order) let the +1000 offset of newer Sentinel-2 products be recognised by band B10."""
    top = model_top_values(scaling, len(band_indices))
    dtypes = {dataset.dtypes[b - 1] for b in band_indices}
    if top is None:
        return _beyond_eight_bit(dataset, band_indices, scaling, model_name, nodata, dtypes)
    if float(np.median(top)) <= DIGITAL_NUMBER_MODEL:
        return None
    offset = _sentinel2_offset(dataset, band_indices, band_names, nodata)
    if offset:
        return (f"the raster looks like Sentinel-2 digital numbers with the offset of processing baseline 04.00 or "
                f"later ({offset}), but '{model_name}' reads digital numbers without it (reflectance x 10000, as "
                "before 25 January 2022): every band would be read 1000 too bright and the map would be "
                "wrong. Subtract the offset first, keeping the band names (gdal_calc.py and the Raster Calculator "
                "drop them, and an unnamed stack is read in the model's band order, B8A and B09 to B12 shifted "
                "in the product's order), e.g. gdal_translate -scale 1000 65535 0 64535 in.tif out.tif (Translate "
                "(Convert format), additional options: -scale 1000 65535 0 64535; values below 1000 become 0)")
    reads = (f"'{model_name}' reads digital numbers (its scaling reaches the top of its range at about "
             f"{float(np.median(top)):.0f}; Sentinel-2 L1C digital numbers are reflectance x 10000)")
    if dtypes == {"uint8"}:
        return (f"the raster is an 8-bit image (Byte, values 0-255), but {reads}: on 8-bit values the map would be "
                "one class. Use the raw digital numbers (e.g. the product's band files), or undo the image's own "
                "stretch, which only its maker knows: for the Copernicus Browser's or Sentinel Hub's 'True color' "
                f"(2.5 x reflectance -> 0-255): gdal_translate -ot UInt16 -scale 0 255 0 {COPERNICUS_8BIT_TOP} in.tif "
                f"out.tif (or the Raster Calculator, \"band\" * {COPERNICUS_8BIT_TOP / 255:.2f}); for an image stretched "
                f"as EuroSAT's jpgs (0-{EUROSAT_8BIT_TOP} -> 0-255): gdal_translate -ot UInt16 -scale 0 255 0 "
                f"{EUROSAT_8BIT_TOP} in.tif out.tif. An image with "
                "a gamma or a per-scene stretch cannot be undone this way")
    if all(np.issubdtype(np.dtype(d), np.floating) for d in dtypes):
        high = _percentile_99(dataset, band_indices, nodata)
        if high is not None and float(np.max(high)) <= REFLECTANCE_MAX:
            return (f"the raster holds values of at most {float(np.max(high)):.2f} (99th percentile), reflectance "
                    f"0-1, but {reads}: on reflectance the map would be one class. Convert it first: the Raster "
                    "Calculator, \"band\" * 10000, or gdal_translate -ot UInt16 -scale 0 1 0 10000 in.tif out.tif")
    return None


#: metadata items of Sentinel-2 products of processing baseline 04.00 or later (L1C, L2A)
OFFSET_TAGS = ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET")
#: B10 (cirrus, 1375 nm) top-of-atmosphere digital numbers stay far below this without the offset
B10_OFFSET_MEDIAN = 500.0


def _sentinel2_offset(dataset: Any, band_indices: Sequence[int], band_names: Sequence[str] | None,
                      nodata: float | None) -> str | None:
    """Why the raster seems to carry the +1000 offset of Sentinel-2 processing baseline >= 04.00 (no
    band holds values below 1000, and an offset tag is in its metadata or B10's median is far above
    what cirrus reflectance gives), else None. Zero, Sentinel-2's nodata, is left out."""
    tags = {k.upper(): v for k, v in dataset.tags().items()}
    for b in band_indices:
        tags.update({k.upper(): v for k, v in dataset.tags(b).items()})
    tagged = [f"{k}={v}" for k, v in tags.items() if any(k.endswith(t) for t in OFFSET_TAGS)
              and _number(v) not in (None, 0.0)]
    # GDAL's band offset and scale (value = DN x scale + offset), as readers of the product set them:
    # -1000 on digital numbers, or -0.1 with the scale 0.0001 of reflectance
    for b in band_indices:
        scale, offset = float(dataset.scales[b - 1] or 1.0), float(dataset.offsets[b - 1] or 0.0)
        if math.isclose(offset, -1000.0 * scale, rel_tol=1e-6) and offset != 0.0:
            tagged.append(f"band {b} offset {offset:g} with scale {scale:g}")
            break
    low = _percentile(dataset, band_indices, nodata, 0.1, positive=True)
    if low is None or float(np.min(low)) < 1000:
        return None  # values below the offset: none to subtract (or subtracted already)
    if tagged:
        return f"its metadata says {tagged[0]} and no band holds values below 1000"
    if band_names:
        names = [str(n).strip().upper() for n in band_names]
        if "B10" in names:
            median = _percentile(dataset, [band_indices[names.index("B10")]], nodata, 50, positive=True)
            if median is not None and float(median[0]) >= B10_OFFSET_MEDIAN:
                return (f"no band holds values below 1000 and band B10, the cirrus band, has a median of "
                        f"{float(median[0]):.0f}, where L1C holds a few tens unless high cloud covers the scene")
    return None


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _beyond_eight_bit(dataset: Any, band_indices: Sequence[int], scaling: Scaling, model_name: str,
                      nodata: float | None, dtypes: set) -> str | None:
    """The message for a raster of values far beyond 0..255 given to a model of 8-bit images (a
    scaling that reads raw values as they are, with training values within 0..255), else None."""
    if scaling.mean is None or scaling.std is None or "uint8" in dtypes:
        return None
    training_top = float(np.max(np.asarray(scaling.mean, dtype=np.float64) + 3 * np.asarray(scaling.std, dtype=np.float64)))
    if training_top > 255 * 1.2:
        return None
    high = _percentile_99(dataset, band_indices, nodata)
    if high is None or float(np.min(high)) <= DIGITAL_NUMBER_MODEL:
        return None
    return (f"the raster holds values up to {float(np.max(high)):.0f} (99th percentile; {', '.join(sorted(dtypes))}), but "
            f"'{model_name}' reads 8-bit images (values 0-255, as its training images): on such values the map would "
            f"be one class. Convert it first, e.g. gdal_translate -ot Byte -scale 0 {float(np.max(high)):.0f} 0 255 "
            "in.tif out.tif (a linear stretch; best the one the training images were made with)")


#: the decimated reads of each open dataset, by band tuple (freed with the dataset)
_DECIMATED: "weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], np.ndarray]]" = weakref.WeakKeyDictionary()


def decimated_read(dataset: Any, band_indices: Sequence[int]) -> np.ndarray:
    """Bands ``band_indices`` (1-based) of the open rasterio ``dataset`` read at most 512 x 512
    pixels (nearest neighbour), in its data type. Read once per dataset: the checks made when a
    raster is opened (unmarked zeros, units, the +1000 offset, B10's median) share it, a subset of
    bands read before is taken from that read (nearest decimation samples every band alike)."""
    from rasterio.enums import Resampling

    bands = tuple(int(b) for b in band_indices)
    reads = _DECIMATED.setdefault(dataset, {})
    if bands not in reads:
        wider = next((key for key in reads if set(bands) <= set(key)), None)
        if wider is not None:
            reads[bands] = reads[wider][[wider.index(b) for b in bands]]
        else:
            shape = (len(bands), min(dataset.height, 512), min(dataset.width, 512))
            reads[bands] = dataset.read(list(bands), out_shape=shape, resampling=Resampling.nearest)
    return reads[bands]


def _percentile_99(dataset: Any, band_indices: Sequence[int], nodata: float | None) -> np.ndarray | None:
    """Per band, the 99th percentile of the valid values of a decimated read; None if none is valid."""
    return _percentile(dataset, band_indices, nodata, 99)


def _percentile(dataset: Any, band_indices: Sequence[int], nodata: float | None, q: float,
                positive: bool = False) -> np.ndarray | None:
    """Per band, the ``q`` th percentile of the valid values (``positive``: above 0 only) of a
    decimated read; None if none is valid."""
    data = decimated_read(dataset, band_indices).astype(np.float64)
    valid = np.all(np.isfinite(data), axis=0)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~np.all(data == nodata, axis=0)
    if positive:
        valid &= np.all(data > 0, axis=0)
    if not valid.any():
        return None
    return np.percentile(data[:, valid], q, axis=1)


#: Sentinel-2's 13 bands in band-number order (B8A ninth: SNAP, sen2cor and GDAL's SENTINEL2 driver
#: write them so) and in file-name order (B8A last: band files sorted by name, and EuroSAT)
S2_BAND_NUMBER_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
S2_FILE_NAME_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
#: the cirrus band is taken to be recognised when its median is below this share of the next darkest band's
CIRRUS_DARKEST_RATIO = 0.5


def infer_sentinel2_order(dataset: Any, band_indices: Sequence[int], nodata: float | None) -> tuple[list[str], str] | None:
    """For 13 unnamed bands (1-based ``band_indices``, alpha bands left out) of a Sentinel-2 Level-1C
    stack: the band names in the order the raster most likely holds them, and why. Sentinel-2's
    cirrus band B10 (1375 nm) is by far its darkest (a few tens of digital numbers, where the others
    hold hundreds to thousands): the 10th band in file-name order, the 11th in band-number order.
    None when no band is the darkest by far (CIRRUS_DARKEST_RATIO) or it sits elsewhere."""
    if len(band_indices) != 13:
        return None
    medians = _percentile(dataset, band_indices, nodata, 50)
    if medians is None:
        return None
    ranked = np.argsort(medians)
    darkest, next_darkest = float(medians[ranked[0]]), float(medians[ranked[1]])
    if not darkest < CIRRUS_DARKEST_RATIO * next_darkest:
        return None
    orders = {9: (S2_FILE_NAME_ORDER, "file-name order (B8A last)"),
              10: (S2_BAND_NUMBER_ORDER, "band-number order (B8A ninth)")}
    if int(ranked[0]) not in orders:
        return None
    names, order = orders[int(ranked[0])]
    return names, (f"band {band_indices[int(ranked[0])]} is by far the darkest (median {darkest:.0f}, the next "
                   f"{next_darkest:.0f}), as Sentinel-2's cirrus band B10 is, so the bands are taken in Sentinel-2's "
                   f"{order}")


#: share of a raster's pixels that may be 0 in every band, with no nodata value set, before the log
#: warns that they are probably a border outside the image
UNMARKED_ZERO_SHARE = 0.01


def unmarked_zeros_warning(dataset: Any, band_indices: Sequence[int], nodata: float | None, masked: bool) -> str | None:
    """A warning when no nodata value or mask is set and more than :data:`UNMARKED_ZERO_SHARE` of the
    pixels (a decimated read) are 0 in every band read: usually the border a reprojection or a
    mosaic leaves outside the image (Sentinel-2's own no-data value is 0), which would be
    classified as land cover. None otherwise."""
    if nodata is not None or masked:
        return None
    share = float(np.mean(np.all(decimated_read(dataset, band_indices) == 0, axis=0)))
    if share <= UNMARKED_ZERO_SHARE:
        return None
    return (f"WARNING: about {share:.0%} of the raster's pixels are 0 in every band read and it has no nodata value: "
            "they are read as image (classified, explained), not as nodata. If they are a border outside the image (e.g. left by a reprojection "
            "or a mosaic; Sentinel-2's own no-data value is 0), set NODATA=0, or give the raster a nodata value "
            "(gdal_edit.py -a_nodata 0, or Raster > Conversion > Translate with 'Assign a specified nodata value')")
