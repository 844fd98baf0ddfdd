""":func:`segment_raster`: seeds to polygons, window by window, merged."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence
import numpy as np
from ..errors import Cancelled, SegmentationError
from ..io.vectors import VectorLayer, InMemory, is_file_target, points_layer, write_gpkg
from ..feedback import Progress, ignore, never
from .seeds import DEFAULT_CLASS, METHOD_LABELS, PALETTE, STATUS_EMPTY, STATUS_NEGATIVE, STATUS_SMALL, STATUS_NODATA, STATUS_OUTSIDE, STATUS_UNUSED_NEGATIVE, STATUS_USED, STATUS_WEAK, Seed, SeedSet, SegmentOptions, SegmentResult, check_method
from ..io.raster import read_validity
from .windows import WindowGrid, _component_with, _pieces, _stretch, choose_bands, stretch_limits, watershed_window


# -- segment_raster ---------------------------------------------------------------------------
def segment_raster(input_path: str, seeds: SeedSet | Sequence[Seed], polygons_path: str | InMemory,
                   options: SegmentOptions | None = None, progress: Progress | None = None,
                   is_cancelled: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None,
                   seeds_path: str | InMemory | None = None) -> SegmentResult:
    """Segment ``input_path`` around ``seeds`` (raster CRS) and write the polygons to the
    GeoPackage ``polygons_path`` (layer ``segments``, the raster's CRS); optionally every seed
    with its fate to ``seeds_path`` (points: ``id``, ``score``, ``class``, ``label`` 1/0,
    ``status``). Either path may be :data:`core.io.vectors.IN_MEMORY`: the layer is then only in
    ``result.layers`` (``"polygons"``, ``"seeds"``). ``progress`` gets a percentage after every
    window; ``is_cancelled`` is checked before every window. Outputs are staged: a failed or cancelled run writes nothing."""
    from rasterio.windows import Window

    from ..io.raster import MaskPolygons, open_raster
    from ..io.writers import StagedOutputs

    options = options or SegmentOptions()
    progress = progress or ignore
    is_cancelled = is_cancelled or never
    log = log or ignore
    started = time.perf_counter()
    seed_set = seeds if isinstance(seeds, SeedSet) else SeedSet(list(seeds))
    method, forced_type = check_method(options.method)
    model_type = forced_type or options.sam_model_type
    if options.window_size < 16:
        raise SegmentationError("the window size must be at least 16 pixels")
    if options.negative_points < 0 or options.min_area < 0 or options.simplify_tolerance < 0:
        raise SegmentationError("negative points, minimum area and simplify tolerance must not be negative")
    predictor = None
    if method == "sam":
        from .sam import WindowPredictor, check_checkpoint, load_sam

        check_checkpoint(options.sam_checkpoint)  # before any work: says where checkpoints come from
    area = MaskPolygons(options.mask) if options.mask is not None else None
    with open_raster(input_path) as ds:
        nodata = options.nodata if options.nodata is not None else ds.nodata
        bands = choose_bands(ds, options.bands, method)
        inverse = ~ds.transform
        grid = WindowGrid(ds.height, ds.width, int(options.window_size))

        statuses: dict[int, str] = {}
        positions: list[tuple[int, int] | None] = []  # global (row, col) per seed
        all_seeds = list(seed_set.seeds)
        candidates = sorted(seed_set.negative_candidates, key=lambda s: s.score)
        for seed in all_seeds + candidates:
            col_f, row_f = inverse * (seed.x, seed.y)
            inside = math.isfinite(row_f) and math.isfinite(col_f) and 0 <= row_f < ds.height and 0 <= col_f < ds.width
            positions.append((int(math.floor(row_f)), int(math.floor(col_f))) if inside else None)
        n_fixed = len(all_seeds)
        outside = weak = 0
        cells: dict[tuple[int, int], list[int]] = {}
        for i, seed in enumerate(all_seeds):
            if positions[i] is None:
                statuses[i] = STATUS_OUTSIDE
                outside += seed.positive
            elif not seed.positive:
                statuses[i] = STATUS_UNUSED_NEGATIVE
            elif seed.score < options.min_score:
                statuses[i] = STATUS_WEAK
                weak += 1
            else:
                cells.setdefault(grid.cell(*positions[i]), []).append(i)
        n_positive = sum(1 for s in all_seeds if s.positive)
        if outside:
            log(f"{outside} seed point(s) lie outside the raster and were skipped")
        if weak:
            log(f"{weak} seed point(s) score below {options.min_score:g} and were skipped (lower the minimum score "
                "to use them)")
        if not cells:
            raise SegmentationError(_no_seed_message(n_positive, outside, weak, 0))
        negatives_all = [i for i, s in enumerate(all_seeds) if not s.positive and positions[i] is not None]
        candidates_idx = [n_fixed + k for k in range(len(candidates)) if positions[n_fixed + k] is not None]
        limits = stretch_limits(ds, bands, nodata)
        log(f"{METHOD_LABELS[method]} on bands {bands} of {ds.width}x{ds.height} px: {len(cells)} window(s) of "
            f"up to {grid.window_size} px ({grid.margin} px context); {seed_set.source}")
        if method == "sam":
            log(f"loading Segment Anything ({model_type}) from {options.sam_checkpoint}")
            predictor = WindowPredictor(load_sam(model_type, options.sam_checkpoint, options.device))

        pieces: dict[str, list[tuple[Any, int]]] = {}
        nodata_count = empty = negatives_used = 0
        exclusion = max(3, grid.window_size // 64)
        for done, cell in enumerate(sorted(cells), start=1):
            if is_cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            r0, c0, r1, c1 = grid.window(cell)
            window = Window(c0, r0, c1 - c0, r1 - r0)
            data = ds.read(bands, window=window).astype(np.float32)
            valid = read_validity(ds, data, nodata, window)
            if area is not None:
                valid &= area.inside(ds.window_transform(window), valid.shape)
            own = []
            for i in cells[cell]:
                r, c = positions[i]
                if valid[r - r0, c - c0]:
                    own.append(i)
                else:
                    statuses[i] = STATUS_NODATA
                    nodata_count += 1
            if own:
                image = _stretch(data, valid, limits)
                local = lambda i: (positions[i][0] - r0, positions[i][1] - c0)  # noqa: E731
                negs = _window_negatives(negatives_all, candidates_idx, positions, own, valid, (r0, c0, r1, c1),
                                         options.negative_points, exclusion, statuses, n_fixed)
                negatives_used += len(negs)
                neg_px = [local(i) for i in negs]
                if method == "watershed":
                    others = [i for cl in _neighbour_cells(cell) for i in cells.get(cl, [])
                              if r0 <= positions[i][0] < r1 and c0 <= positions[i][1] < c1
                              and valid[positions[i][0] - r0, positions[i][1] - c0]]
                    markers = own + [i for i in others if i not in own]
                    labels = watershed_window(image, valid, [local(i) for i in markers], neg_px, options.smoothing,
                                              groups=[all_seeds[i].cls for i in markers])
                    masks = {i: (labels == labels[local(i)]) & (labels > 0) for i in own}
                else:
                    predictor.set_window(np.round(image * 255.0).astype(np.uint8))
                    masks = {}
                    for i in own:
                        r, c = local(i)
                        mask, _iou = predictor.predict((c + 0.5, r + 0.5), [(nc + 0.5, nr + 0.5) for nr, nc in neg_px])
                        masks[i] = _component_with(mask & valid, r, c)
                for i in own:
                    found = _pieces(masks[i], r0, c0)
                    statuses[i] = STATUS_USED if found else STATUS_EMPTY
                    empty += not found
                    for polygon in found:
                        pieces.setdefault(all_seeds[i].cls, []).append((polygon, i))
            progress(95.0 * done / len(cells))
        if nodata_count:
            log(f"{nodata_count} seed point(s) lie on nodata pixels"
                + (" or outside the mask" if area is not None else "") + " and were skipped")
        processed = sum(1 for s in statuses.values() if s in (STATUS_USED, STATUS_EMPTY))
        if processed == 0:
            raise SegmentationError(_no_seed_message(n_positive, outside, weak, nodata_count, area is not None))
        if empty:
            log(f"{empty} seed point(s) gave no segment")
        records, too_small, kept, orphans = _merge(pieces, all_seeds, ds.transform, options, method,
                                                   _square_metres_per_unit(ds), positions)
        if orphans:
            log(f"{orphans} piece(s) holding none of the seeds (parted from their seed's segment) were left out")
        for i, status in list(statuses.items()):
            if status == STATUS_USED and i < n_fixed and i not in kept:
                statuses[i] = STATUS_SMALL  # its segment was dropped as smaller than the minimum area
        used = sum(1 for i, s in statuses.items() if s == STATUS_USED and i < n_fixed)
        if too_small:
            log(("WARNING: no polygon is left: " if not records else "")
                + f"{too_small} polygon(s) smaller than the minimum area ({options.min_area:g} m2) were dropped")
        colours = dict(seed_set.class_colours)
        for name in sorted({s.cls for s in all_seeds if s.positive}):
            colours.setdefault(name, PALETTE[len(colours) % len(PALETTE)])
        crs_wkt = ds.crs.to_wkt()
        fields = [("class", "str"), ("score", "real"), ("seed_ids", "str"), ("n_seeds", "int"),
                  ("area", "real"), ("method", "str")]
        layers = {"polygons": VectorLayer("segments", crs_wkt, "Polygon", fields, records)}
        if seeds_path:
            rows = []
            for i, seed in enumerate(all_seeds + candidates):
                status = statuses.get(i)
                if i >= n_fixed and status is None:
                    continue  # a negative candidate that was not chosen
                rows.append(((seed.x, seed.y), {"id": int(seed.id), "score": float(seed.score), "class": seed.cls,
                                                "label": int(seed.positive), "status": status or STATUS_EMPTY}))
            layers["seeds"] = points_layer(
                "seeds", crs_wkt, [("id", "int"), ("score", "real"), ("class", "str"), ("label", "int"),
                                   ("status", "str")], rows)
        with StagedOutputs() as staged:
            for key, path in (("polygons", polygons_path), ("seeds", seeds_path)):
                if is_file_target(path):
                    write_gpkg(layers[key], staged.stage(path))
            staged.commit()
        progress(100.0)
    outputs = {key: str(path) for key, path in (("polygons", polygons_path), ("seeds", seeds_path))
               if is_file_target(path)}
    return SegmentResult(
        outputs=outputs, method=method, seeds_total=n_positive, seeds_used=used, seeds_outside=outside,
        seeds_nodata=nodata_count, seeds_weak=weak, seeds_without_segment=empty, negatives_used=negatives_used,
        windows=len(cells), polygons=len(records), bands=bands, stretch=limits,
        seconds=time.perf_counter() - started, class_colours=colours,
        statuses={all_seeds[i].id: s for i, s in statuses.items() if i < n_fixed},
        layers=layers,
    )


def _no_seed_message(total: int, outside: int, weak: int, nodata: int, masked: bool = False) -> str:
    if total == 0:
        return "no positive seed point was given, so there is nothing to segment"
    return (f"none of the {total} seed point(s) can be used: {outside} outside the raster, {nodata} on nodata "
            f"pixels{' or outside the mask' if masked else ''}, {weak} below the minimum score. Check that the seeds "
            "overlap the raster (and its CRS)" + (" and the mask" if masked else "") + ", or lower the minimum score.")


def _neighbour_cells(cell: tuple[int, int]) -> list[tuple[int, int]]:
    i, j = cell
    return [(i + di, j + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


def _window_negatives(explicit: list[int], candidates: list[int], positions: list, own: list[int],
                      valid: np.ndarray, bounds: tuple[int, int, int, int], count: int, exclusion: int,
                      statuses: dict[int, str], n_fixed: int) -> list[int]:
    """Negative points of a window: every explicit negative seed inside it, then up to ``count``
    candidates (lowest relevance first) inside it, on valid pixels, farther than
    ``exclusion`` pixels from the window's own seeds and from each other."""
    r0, c0, r1, c1 = bounds

    def usable(i: int) -> bool:
        r, c = positions[i]
        return r0 <= r < r1 and c0 <= c < c1 and bool(valid[r - r0, c - c0])

    chosen = [i for i in explicit if usable(i)]
    for i in chosen:
        statuses[i] = STATUS_NEGATIVE
    picked = 0
    own_px = [positions[i] for i in own]
    for i in candidates:
        if picked >= count:
            break
        if not usable(i):
            continue
        r, c = positions[i]
        if any(max(abs(r - a), abs(c - b)) <= exclusion for a, b in own_px + [positions[k] for k in chosen]):
            continue
        chosen.append(i)
        statuses[i] = STATUS_NEGATIVE
        picked += 1
    return chosen


def _square_metres_per_unit(dataset: Any) -> float:
    """Ground square metres in one square unit of the raster's CRS, at the raster's centre
    (:func:`..io.raster.pixel_size_metres`): 1 for a metric projected CRS such as UTM."""
    from ..io.raster import pixel_size_metres

    width, height = pixel_size_metres(dataset)
    return (width * height) / abs(dataset.transform.a * dataset.transform.e)


def _merge(pieces: dict[str, list[tuple[Any, int]]], seeds: list[Seed], transform: Any,
           options: SegmentOptions, method: str, square_metres_per_unit: float = 1.0,
           positions: Sequence[tuple[int, int] | None] | None = None,
           ) -> tuple[list[tuple[bytes, dict[str, Any]]], int, set[int], int]:
    """Per class: union of all pieces, split into polygons, to CRS, simplified, filtered by area
    (``options.min_area``, square metres on the ground: the CRS area times
    ``square_metres_per_unit``; holes smaller than it are filled); records ``(wkb, values)`` for
    :class:`core.io.vectors.VectorLayer`, how many polygons were dropped as smaller than the
    minimum area, the indices of the seeds whose segment was kept, and how many parts were left
    out for holding no seed. A seed belongs to the part holding its own pixel (``positions``,
    global (row, col)), so a polygon names only seeds inside it; a part holding none (a piece of a
    seed's basin or mask parted from it) is left out."""
    from osgeo import ogr

    label = "sam" if method == "sam" else "watershed"
    records, too_small, kept, orphans = [], 0, set(), 0
    for cls in sorted(pieces):
        parts, members = [], []
        # seeds without a class (a heatmap's peaks, points without a class field) are all of
        # DEFAULT_CLASS: dissolving their touching segments merged every cover into one blob
        for group in _overlapping(pieces[cls]) if cls == DEFAULT_CLASS else [pieces[cls]]:
            collection = ogr.Geometry(ogr.wkbMultiPolygon)
            for polygon, _i in group:
                collection.AddGeometry(polygon)
            found = _polygons(collection.UnionCascaded())
            envelopes = [part.GetEnvelope() for part in found]  # (xmin, xmax, ymin, ymax)
            who: list[set[int]] = [set() for _ in found]
            for polygon, i in group:  # each seed in the part that holds its own pixel (a seed's basin
                # or mask can have pieces elsewhere: they must not name it); else the piece's point
                if positions is not None and positions[i] is not None:
                    row, col = positions[i]
                    inside = ogr.Geometry(ogr.wkbPoint)
                    inside.AddPoint_2D(col + 0.5, row + 0.5)
                    if not any(part.Intersects(inside) for part in found):
                        inside = polygon.PointOnSurface()
                else:
                    inside = polygon.PointOnSurface()
                x, y = inside.GetX(), inside.GetY()
                for k, (part, (x0, x1, y0, y1)) in enumerate(zip(found, envelopes)):
                    if x0 <= x <= x1 and y0 <= y <= y1 and part.Intersects(inside):
                        who[k].add(i)
                        break
            parts.extend(found)
            members.extend(who)
        for part, who in zip(parts, members):
            if positions is not None and not who:
                orphans += 1
                continue
            geometry = _pixel_to_crs(part, transform)
            if options.simplify_tolerance > 0:
                geometry = geometry.SimplifyPreserveTopology(options.simplify_tolerance)
            if not geometry.IsValid():
                geometry = geometry.MakeValid()
            for polygon in _polygons(geometry):
                if options.min_area > 0:
                    polygon = _without_small_holes(polygon, options.min_area / square_metres_per_unit)
                area = float(polygon.GetArea()) * square_metres_per_unit
                if area <= 0 or area < options.min_area:
                    too_small += area > 0
                    continue
                kept |= who
                ids = sorted({seeds[i].id for i in who})
                records.append((bytes(polygon.ExportToIsoWkb()), {
                    "class": cls, "score": float(max((seeds[i].score for i in who), default=0.0)),
                    "seed_ids": ",".join(str(k) for k in ids), "n_seeds": len(ids), "area": area, "method": label,
                }))
    records.sort(key=lambda r: (r[1]["class"], -r[1]["score"]))
    return records, too_small, kept, orphans


def _overlapping(items: list[tuple[Any, int]]) -> list[list[tuple[Any, int]]]:
    """``items`` (pixel polygon, seed index) in groups of pieces that share area: the pieces of one
    object found in neighbouring windows overlap in their context band and are joined; segments
    of different seeds that only touch (a watershed's basins always do) stay apart, so one class's
    segments (all heatmap seeds are class ``segment``) are not dissolved into one blob."""
    from scipy.cluster.hierarchy import DisjointSet

    joined = DisjointSet(range(len(items)))
    envelopes = [polygon.GetEnvelope() for polygon, _i in items]  # (xmin, xmax, ymin, ymax)
    order = sorted(range(len(items)), key=lambda k: envelopes[k][0])
    for position, a in enumerate(order):  # a sweep along x: only pieces whose x ranges overlap are compared
        ax0, ax1, ay0, ay1 = envelopes[a]
        for following in range(position + 1, len(order)):
            b = order[following]
            bx0, bx1, by0, by1 = envelopes[b]
            if bx0 >= ax1:
                break
            if ay0 >= by1 or by0 >= ay1 or joined.connected(a, b):
                continue
            shared = items[a][0].Intersection(items[b][0])
            if shared is not None and shared.GetArea() > 0:
                joined.merge(a, b)
    groups: dict[int, list[tuple[Any, int]]] = {}
    for k, item in enumerate(items):
        groups.setdefault(joined[k], []).append(item)
    return list(groups.values())


def _without_small_holes(polygon: Any, min_area: float) -> Any:
    """``polygon`` (OGR) with its holes smaller than ``min_area`` (CRS units squared) filled."""
    from osgeo import ogr

    if polygon.GetGeometryCount() <= 1:
        return polygon
    kept = ogr.Geometry(ogr.wkbPolygon)
    for k in range(polygon.GetGeometryCount()):
        ring = polygon.GetGeometryRef(k)
        if k == 0:
            kept.AddGeometry(ring)
            continue
        hole = ogr.Geometry(ogr.wkbPolygon)
        hole.AddGeometry(ring)
        if hole.GetArea() >= min_area:
            kept.AddGeometry(ring)
    return kept


def _polygons(geometry: Any) -> list[Any]:
    """The non-empty polygons of an OGR geometry (a polygon, multipolygon or collection)."""
    from osgeo import ogr

    if geometry is None or geometry.IsEmpty():
        return []
    kind = ogr.GT_Flatten(geometry.GetGeometryType())
    if kind == ogr.wkbPolygon:
        return [geometry.Clone()]
    return [p for k in range(geometry.GetGeometryCount()) for p in _polygons(geometry.GetGeometryRef(k))]


def _pixel_to_crs(geometry: Any, transform: Any) -> Any:
    """A copy of an OGR geometry in global pixel coordinates (x = column, y = row) mapped by the
    raster's affine ``transform`` to its CRS."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    out = geometry.Clone()

    def apply(part: Any) -> None:
        for k in range(part.GetGeometryCount()):
            apply(part.GetGeometryRef(k))
        for j in range(part.GetPointCount()):
            x, y = part.GetX(j), part.GetY(j)
            part.SetPoint_2D(j, a * x + b * y + c, d * x + e * y + f)

    apply(out)
    return out
