"""Reference points on the demo scene (Sentinel-2 L1C T33UUU, 2017-02-16), for the real-scene
benchmark ``bench/bench_real_scene.py``. How the committed points were chosen:

1. ``candidates``: random points (fixed seed) inside strict spectral rules, each rule holding on
   every pixel of a 7 x 7 px (70 m) window around the point so the point sits well inside a
   feature, at least 300 m apart within a class. No model output is used.

   * water: NDWI (B03-B08)/(B03+B08) > 0.2 and B11 < 400 (SWIR absorbed by open water);
   * forest: NDVI (B08-B04)/(B08+B04) > 0.3, mean of B02..B04 < 1000 (dark canopy), B11 < 1100;
   * fields: NDVI 0..0.35, mean of B02..B04 1100..1600, B11 > 1500, B02 < 1700 (no cloud), and
     B04's standard deviation in a 9 x 9 window < 60 (a homogeneous parcel);
   * cloud: B02 > 2000 and mean of B02..B04 > 1800 (bright, white);
   * town: points placed by hand on the built-up centres of the scene's villages and towns
     (listed in ``TOWN_POINTS``, pixel row/col), since no simple rule tells a village from a
     field edge in winter.

2. ``chips``: a sheet of 64 x 64 px true-colour chips (x3) per class, the point marked, for a
   visual check. Points that are not unambiguous in the image (mixed pixels, a field edge, a
   cloud shadow, a frozen or sandy shore, thin cloud over land) are rejected in
   ``bench/reference/T33UUU_20170216_review.csv`` (id, verdict, note).

3. ``build``: the accepted points as ``bench/reference/T33UUU_20170216_points.gpkg`` (EPSG:32633,
   fields ``ref_class``, ``rule``, ``row``, ``col``, ``note``).

Usage::

    python scripts/reference_points.py candidates --scene demo_output/s2l1c_T33UUU_20170216.tif --out /tmp/ref
    python scripts/reference_points.py chips --scene ... --out /tmp/ref          # look at /tmp/ref/chips_*.png
    python scripts/reference_points.py build --scene ... --out /tmp/ref \\
        --review bench/reference/T33UUU_20170216_review.csv --gpkg bench/reference/T33UUU_20170216_points.gpkg
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

#: target count of candidates per class before the visual check
TARGETS = {"water": 60, "forest": 60, "fields": 60, "cloud": 40}
SEED = 20170216
MIN_SPACING_M = 300.0
WINDOW = 7

#: hand-placed built-up points (row, col on the scene's 10 m grid, 1536 x 768 px) with the place
TOWN_POINTS: list[tuple[int, int, str]] = [
    (62, 270, "village in the north-west (north part)"),
    (90, 270, "village in the north-west (north part)"),
    (118, 268, "village in the north-west (north part)"),
    (158, 258, "village in the north-west (south part)"),
    (255, 15, "village at the west edge"),
    (282, 15, "village at the west edge"),
    (335, 712, "village on the north shore of the central lake"),
    (352, 703, "village on the north shore of the central lake"),
    (370, 697, "village on the north shore of the central lake"),
    (470, 520, "town at the south-west lake (in cloud shadow)"),
    (485, 545, "town at the south-west lake (in cloud shadow)"),
    (478, 500, "town at the south-west lake (in cloud shadow)"),
    (150, 1490, "village in the north-east, east of the river"),
    (168, 1478, "village in the north-east, east of the river"),
    (182, 1495, "village in the north-east, east of the river"),
    (402, 1120, "village south of the eastern lake"),
    (395, 1145, "village south of the eastern lake"),
    (676, 1150, "village in the south-east"),
    (684, 1180, "village in the south-east"),
    (690, 1210, "village in the south-east"),
    (675, 1125, "village in the south-east"),
    (672, 250, "village in the south-west"),
    (676, 275, "village in the south-west"),
    (688, 300, "village in the south-west"),
    (700, 320, "village in the south-west"),
    (590, 1440, "town at the east edge"),
    (600, 1470, "town at the east edge"),
    (615, 1500, "town at the east edge"),
    (625, 1460, "town at the east edge"),
    (580, 1500, "town at the east edge"),
    (530, 260, "village west of the south-west lake"),
    (555, 275, "village west of the south-west lake"),
    (585, 250, "village west of the south-west lake"),
    (570, 230, "village west of the south-west lake"),
    (315, 880, "village north of the central lake"),
    (325, 905, "village north of the central lake"),
    (340, 925, "village north of the central lake"),
    (300, 870, "village north of the central lake"),
]


def _bands(scene: Path) -> tuple[dict[str, np.ndarray], object, object]:
    import rasterio

    with rasterio.open(scene) as ds:
        bands = {name: ds.read(i + 1).astype(np.float32) for i, name in enumerate(ds.descriptions)}
        return bands, ds.transform, ds.crs


def rule_masks(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-pixel masks of the class rules, each shrunk so the rule holds on the whole window."""
    from scipy import ndimage as ndi

    ndvi = (b["B08"] - b["B04"]) / (b["B08"] + b["B04"] + 1)
    ndwi = (b["B03"] - b["B08"]) / (b["B03"] + b["B08"] + 1)
    vis = (b["B02"] + b["B03"] + b["B04"]) / 3
    mean = ndi.uniform_filter(b["B04"], 9)
    sd = np.sqrt(np.maximum(ndi.uniform_filter(b["B04"] ** 2, 9) - mean**2, 0))
    raw = {
        "water": (ndwi > 0.2) & (b["B11"] < 400),
        "forest": (ndvi > 0.3) & (vis < 1000) & (b["B11"] < 1100),
        "fields": (ndvi > 0) & (ndvi < 0.35) & (vis > 1100) & (vis < 1600) & (b["B11"] > 1500)
        & (b["B02"] < 1700) & (sd < 60),
        "cloud": (b["B02"] > 2000) & (vis > 1800),
    }
    return {k: ndi.binary_erosion(v, np.ones((WINDOW, WINDOW), bool), border_value=0) for k, v in raw.items()}


def sample(mask: np.ndarray, count: int, rng: np.random.Generator, spacing_px: float) -> list[tuple[int, int]]:
    """Up to ``count`` random pixels of ``mask``, each at least ``spacing_px`` from the others."""
    rows, cols = np.nonzero(mask)
    order = rng.permutation(rows.size)
    picked: list[tuple[int, int]] = []
    for i in order:
        r, c = int(rows[i]), int(cols[i])
        if all((r - pr) ** 2 + (c - pc) ** 2 >= spacing_px**2 for pr, pc in picked):
            picked.append((r, c))
            if len(picked) == count:
                break
    return picked


def candidates(scene: Path) -> list[dict]:
    """All candidate points, rule-sampled classes first, then the hand-placed town points."""
    b, _, _ = _bands(scene)
    rng = np.random.default_rng(SEED)
    masks = rule_masks(b)
    out = []
    for name, target in TARGETS.items():
        for r, c in sample(masks[name], target, rng, MIN_SPACING_M / 10.0):
            out.append({"ref_class": name, "rule": f"spectral rule '{name}' on a {WINDOW}x{WINDOW} px window",
                        "row": r, "col": c, "note": ""})
    for r, c, place in TOWN_POINTS:
        out.append({"ref_class": "town", "rule": "placed by hand on built-up area", "row": r, "col": c,
                    "note": place})
    for i, p in enumerate(out):
        p["id"] = i + 1
    return out


def write_candidates(points: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "ref_class", "rule", "row", "col", "note"])
        w.writeheader()
        w.writerows(points)


def chips(scene: Path, points: list[dict], out: Path, size: int = 64, zoom: int = 3, per_sheet: int = 40) -> list[Path]:
    """Sheets of true-colour chips around the points (8 per row), each labelled with its id."""
    from PIL import Image, ImageDraw

    b, _, _ = _bands(scene)

    def stretch(x, lo, hi):
        return np.clip((x - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)

    rgb = np.dstack([stretch(b["B04"], 500, 2500), stretch(b["B03"], 600, 2500), stretch(b["B02"], 900, 2800)])
    pad = size // 2
    rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)))
    sheets = []
    for cls in sorted({p["ref_class"] for p in points}):
        group = [p for p in points if p["ref_class"] == cls]
        for s in range(0, len(group), per_sheet):
            part = group[s : s + per_sheet]
            cols = 8
            rows = (len(part) + cols - 1) // cols
            cell = size * zoom + 4
            sheet = Image.new("RGB", (cols * cell, rows * (cell + 14)), "white")
            draw = ImageDraw.Draw(sheet)
            for k, p in enumerate(part):
                r, c = p["row"] + pad, p["col"] + pad
                chip = Image.fromarray(rgb[r - pad : r + pad, c - pad : c + pad]).resize((size * zoom,) * 2, Image.NEAREST)
                x, y = (k % cols) * cell, (k // cols) * (cell + 14)
                sheet.paste(chip, (x, y + 14))
                cx, cy = x + size * zoom // 2, y + 14 + size * zoom // 2
                draw.rectangle([cx - 2 * zoom, cy - 2 * zoom, cx + 2 * zoom, cy + 2 * zoom], outline=(255, 0, 255))
                draw.text((x + 2, y), f"{p['id']}", fill="black")
            path = out / f"chips_{cls}_{s // per_sheet + 1}.png"
            sheet.save(path)
            sheets.append(path)
    return sheets


def build(scene: Path, points: list[dict], review: Path, gpkg: Path) -> int:
    """Write the points whose verdict in ``review`` is ``accept`` as a GeoPackage; returns the count."""
    from osgeo import ogr, osr

    verdicts = {int(r["id"]): r for r in csv.DictReader(open(review))}
    missing = [p["id"] for p in points if p["id"] not in verdicts]
    if missing:
        raise SystemExit(f"no verdict for candidates {missing[:10]}{'...' if len(missing) > 10 else ''}")
    _, transform, crs = _bands(scene)
    gpkg.parent.mkdir(parents=True, exist_ok=True)
    if gpkg.exists():
        gpkg.unlink()
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs.to_wkt())
    layer = ds.CreateLayer("reference_points", srs, ogr.wkbPoint)
    for name, kind in (("id", ogr.OFTInteger), ("ref_class", ogr.OFTString), ("rule", ogr.OFTString),
                       ("row", ogr.OFTInteger), ("col", ogr.OFTInteger), ("note", ogr.OFTString)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    kept = 0
    for p in points:
        v = verdicts[p["id"]]
        if v["verdict"] != "accept":
            continue
        x, y = transform * (p["col"] + 0.5, p["row"] + 0.5)
        feature = ogr.Feature(layer.GetLayerDefn())
        for key in ("id", "ref_class", "rule", "row", "col"):
            feature.SetField(key, p[key])
        feature.SetField("note", v.get("note") or p["note"])
        geom = ogr.Geometry(ogr.wkbPoint)
        geom.AddPoint_2D(float(x), float(y))
        feature.SetGeometry(geom)
        layer.CreateFeature(feature)
        kept += 1
    ds = None
    return kept


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["candidates", "chips", "build"])
    p.add_argument("--scene", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="work folder (candidates.csv, chip sheets)")
    p.add_argument("--review", type=Path, default=Path("bench/reference/T33UUU_20170216_review.csv"))
    p.add_argument("--gpkg", type=Path, default=Path("bench/reference/T33UUU_20170216_points.gpkg"))
    args = p.parse_args()
    points = candidates(args.scene)
    if args.step == "candidates":
        write_candidates(points, args.out / "candidates.csv")
        counts = {c: sum(p["ref_class"] == c for p in points) for c in sorted({p["ref_class"] for p in points})}
        print(f"{len(points)} candidates: {counts} -> {args.out / 'candidates.csv'}")
    elif args.step == "chips":
        args.out.mkdir(parents=True, exist_ok=True)
        for path in chips(args.scene, points, args.out):
            print(path)
    else:
        print(f"{build(args.scene, points, args.review, args.gpkg)} accepted points -> {args.gpkg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
