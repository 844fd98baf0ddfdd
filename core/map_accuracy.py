"""Accuracy of a class map against reference points, and the class areas it implies.

A classified raster (``glassbox:classify``'s class raster, or any single-band integer class
raster) is compared with reference points whose class is known (field visits, photo
interpretation): each point reads the map's class at its pixel. The result is the error matrix
(rows = reference class, columns = map class), overall, user's and producer's accuracy and
Cohen's kappa (:mod:`.training.metrics`), and the *area-adjusted* estimates of good practice
(Olofsson et al. 2014, Remote Sensing of Environment 148, 42-57): the map classes are the
strata, weighted by their share of the mapped area ``W_i``; the cell proportions are
``p_ij = W_i n_ij / n_i.`` (``i`` map class, ``j`` reference class), the estimated area of
class ``j`` is ``A * sum_i p_ij`` and its standard error
``A * sqrt(sum_i W_i^2 (n_ij / n_i.)(1 - n_ij / n_i.) / (n_i. - 1))``; 95 % intervals are 1.96
standard errors. These hold for a probability sample: simple random points, or points stratified
by map class. Points placed where the class is obvious give optimistic accuracy.

Points outside the raster or on nodata are not counted. Every other point is: the
``Unclassified`` (254) and ``Cloud`` (253) pixels of an 8-bit Glassbox map are strata of their
own (the map gives no land-cover class there, so their points count as errors unless the
reference says ``Cloud``; left out, the estimates would cover the classified area only, and the
uncertain pixels that ``MIN_CONFIDENCE`` set aside would drop out of the accuracy), and a
reference class the map never shows becomes a class of the matrix with no mapped area (its
points are errors of the map class they lie on, and its area is estimated from them; left out,
they hid real errors). Areas are in hectares, from the raster's pixel size in metres
(:func:`.io.raster.pixel_size_metres`). QGIS-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import Cancelled, RasterInputError, TrainingDataError
from .feedback import IsCancelled, Log, Progress, ignore, never
from .io.writers import CLOUD, UNCLASSIFIED
from .training.metrics import Metrics, metrics_from_confusion

#: z of a two-sided 95 % interval
Z95 = 1.959964
#: reference points per map class that good practice asks for (Olofsson et al. 2014)
MIN_POINTS_PER_CLASS = 50
#: why a reference feature the caller could not read was not counted (see :func:`assess_map`)
UNREAD = "without a geometry or a class value"
#: a class raster without a legend holding more different values than this is taken for an image
MAX_UNNAMED_CLASSES = 255


@dataclass
class MapAccuracy:
    """The assessment of one map. ``metrics``: error-matrix metrics over the counted points
    (rows = reference class, columns = map class, both in ``class_names`` order);
    ``mapped_pixels``: pixels of each class in the map; ``pixel_area_ha``; ``estimated_area_ha``,
    ``area_ci95_ha``, ``users_ci95``, ``producers_ci95``, ``overall_ci95``: area-adjusted
    estimates (NaN where a class has too few points); the ``adjusted_*`` accuracies are the
    area-weighted ones; ``skipped``: why points were not counted -> how many."""

    class_names: list[str]
    metrics: Metrics
    mapped_pixels: np.ndarray
    pixel_area_ha: float
    adjusted_overall: float
    overall_ci95: float
    adjusted_users: np.ndarray
    users_ci95: np.ndarray
    adjusted_producers: np.ndarray
    producers_ci95: np.ndarray
    estimated_area_ha: np.ndarray
    area_ci95_ha: np.ndarray
    skipped: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    @property
    def mapped_area_ha(self) -> np.ndarray:
        return self.mapped_pixels * self.pixel_area_ha


def area_adjusted(confusion: np.ndarray, mapped_pixels: np.ndarray, pixel_area_ha: float) -> dict[str, Any]:
    """Olofsson et al. (2014) estimators from an error matrix ``confusion`` (rows = reference
    class, columns = map class: the transpose of their n_ij) and the mapped pixels per class."""
    n = np.asarray(confusion, dtype=np.float64).T  # n[i, j]: map class i, reference class j
    k = n.shape[0]
    total_area = float(mapped_pixels.sum()) * pixel_area_ha
    weights = mapped_pixels / max(float(mapped_pixels.sum()), 1.0)
    per_stratum = n.sum(axis=1)  # n_i.
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(per_stratum[:, None] > 0, n / per_stratum[:, None], 0.0)  # n_ij / n_i.
        p = weights[:, None] * share
        # Var(p_.j) = sum_i W_i^2 (n_ij/n_i.)(1 - n_ij/n_i.) / (n_i. - 1); strata of one point add nothing knowable
        term = np.where(per_stratum[:, None] > 1,
                        weights[:, None] ** 2 * share * (1 - share) / (per_stratum[:, None] - 1), 0.0)
        se_area_share = np.sqrt(term.sum(axis=0))
        p_row, p_col = p.sum(axis=1), p.sum(axis=0)
        users = np.where(p_row > 0, np.diag(p) / p_row, np.nan)
        producers = np.where(p_col > 0, np.diag(p) / p_col, np.nan)
        overall = float(np.trace(p))
        var_overall = float(np.sum(np.where(per_stratum > 1, weights ** 2 * users * (1 - users) / (per_stratum - 1),
                                            0.0)))
        var_users = np.where(per_stratum > 1, users * (1 - users) / (per_stratum - 1), np.nan)
        # producer's accuracy variance (Olofsson et al. 2014, eq. 7), with N_i in pixels
        counts = mapped_pixels.astype(np.float64)
        estimated = np.array([np.sum(np.where(per_stratum > 0, counts / np.maximum(per_stratum, 1) * n[:, j], 0.0))
                              for j in range(k)])
        var_producers = np.full(k, np.nan)
        for j in range(k):
            if estimated[j] <= 0 or per_stratum[j] <= 1:
                continue
            first = counts[j] ** 2 * (1 - producers[j]) ** 2 * users[j] * (1 - users[j]) / (per_stratum[j] - 1)
            others = [counts[i] ** 2 * share[i, j] * (1 - share[i, j]) / (per_stratum[i] - 1)
                      for i in range(k) if i != j and per_stratum[i] > 1]
            second = producers[j] ** 2 * float(np.sum(others)) if others else 0.0
            var_producers[j] = (first + second) / estimated[j] ** 2
    return {
        "overall": overall, "overall_ci95": Z95 * np.sqrt(var_overall),
        "users": users, "users_ci95": Z95 * np.sqrt(var_users),
        "producers": producers, "producers_ci95": Z95 * np.sqrt(var_producers),
        "area_ha": p_col * total_area, "area_ci95_ha": Z95 * se_area_share * total_area,
    }


def check_class_raster(dataset: Any, raster_path: str) -> None:
    """Raise :class:`RasterInputError` unless the open rasterio ``dataset`` is a class map: one
    band of integer class values."""
    if dataset.count < 1 or np.dtype(dataset.dtypes[0]).kind not in "iu":
        raise RasterInputError(f"{raster_path}: a class raster has integer class values in band 1, "
                               f"not {dataset.dtypes[0]}; give the class raster of Classify raster")
    if dataset.count > 1:
        raise RasterInputError(f"{raster_path} has {dataset.count} bands: a class raster has one band of class "
                               "values (an image is not a map); give the class raster of Classify raster")


def band_rows(dataset: Any, is_cancelled: IsCancelled | None = None) -> Iterator[tuple[int, np.ndarray, float]]:
    """Band 1 of an open rasterio ``dataset`` in windows of whole block rows (at least 256 rows, so
    memory stays bounded whatever the raster's size): ``(first row, block, share of the rows read
    so far)``; raises :class:`Cancelled` when asked between windows."""
    from rasterio.windows import Window

    is_cancelled = is_cancelled or never
    step = max(int(dataset.block_shapes[0][0]), 256)
    for row in range(0, dataset.height, step):
        if is_cancelled():
            raise Cancelled("cancelled by the user; no output was written")
        block = dataset.read(1, window=Window(0, row, dataset.width, min(step, dataset.height - row)))
        yield row, block, min(row + step, dataset.height) / dataset.height


def pixel_counts(dataset: Any, progress: Progress | None = None,
                 is_cancelled: IsCancelled | None = None, max_values: int | None = None) -> dict[int, int]:
    """Pixels of every value in band 1 of an open rasterio ``dataset`` (value -> count), read in
    windows of whole block rows (:func:`band_rows`; ``progress`` in percent of the rows); stops
    early, with what it has, once more than ``max_values`` different values are found."""
    progress, is_cancelled = progress or ignore, is_cancelled or never
    counts: dict[int, int] = {}
    for _row, block, done in band_rows(dataset, is_cancelled):
        progress(100.0 * done)
        found, number = np.unique(block, return_counts=True)
        for value, count in zip(found.tolist(), number.tolist()):
            counts[int(value)] = counts.get(int(value), 0) + int(count)
        if max_values is not None and len(counts) > max_values:
            break
    if is_cancelled():  # asked for while the last rows were counted
        raise Cancelled("cancelled by the user; no output was written")
    return counts


def assess_map(raster_path: str, points: Sequence[tuple[float, float]], reference: Sequence[Any],
               class_names: dict[int, str] | None = None, progress: Progress | None = None,
               is_cancelled: IsCancelled | None = None, log: Log | None = None, unread: int = 0,
               groups: dict[str, Sequence[str]] | None = None) -> MapAccuracy:
    """The accuracy of the class raster ``raster_path`` (band 1) at ``points`` ((x, y) in the
    raster's CRS) whose reference classes are ``reference`` (class names, or the map's integer
    values). ``class_names``: map value -> class name (default: every value the raster holds but
    its nodata, Cloud (253) and Unclassified (254), named by its number). ``unread``: reference
    features the caller could not read as a point with a class, listed first among the skipped
    (:data:`UNREAD`). ``groups``: group name -> the map classes (names or values) it merges, e.g.
    ``{"water": ["SeaLake", "River"]}``: each group is one class of the assessment (its mapped area
    the sum of its members'), for reference data whose classes are coarser than the map's; map
    classes in no group stay as they are. Raises :class:`TrainingDataError` when no point can be
    counted, :class:`RasterInputError` for a group member the map does not have."""
    from .io.raster import open_raster, pixel_size_metres

    if len(points) != len(reference):
        raise TrainingDataError(f"{len(points)} points but {len(reference)} reference classes")
    with open_raster(raster_path, "the class raster") as ds:
        check_class_raster(ds, raster_path)
        nodata = ds.nodata
        inside = [(x, y) for x, y in points if ds.bounds.left <= x < ds.bounds.right
                  and ds.bounds.bottom < y <= ds.bounds.top]
        mapped_at = {xy: int(v[0]) for xy, v in zip(inside, ds.sample(inside, indexes=1))} if inside else {}
        names = dict(class_names or {})
        eight_bit = np.dtype(ds.dtypes[0]) == np.uint8
        # on 8 bits 255 is Glassbox's nodata and a usual fill: no class unless the legend names it
        fill = 255 if eight_bit and 255 not in names else None
        # counting stops a little past the limit: room for the values that are no classes (nodata, 253-255)
        counts = pixel_counts(ds, progress, is_cancelled, max_values=None if names else MAX_UNNAMED_CLASSES + 3)
        if not names:  # no legend: the classes are the values the raster holds (on 8 bits, none of 253-255)
            names = {v: str(v) for v in sorted(set(counts) | set(mapped_at.values()))
                     if v != nodata and not (eight_bit and v >= CLOUD)}
            if len(names) > MAX_UNNAMED_CLASSES:
                raise RasterInputError(f"{raster_path} holds more than {MAX_UNNAMED_CLASSES} different values and no "
                                       "legend: it looks like an image, not a class map; give the class raster of "
                                       "Classify raster")
        log = log or ignore
        aliases: dict[str, str] = {}
        if groups:
            names, counts, mapped_at, aliases = _merged(names, counts, mapped_at, groups, log)
        values = sorted(v for v in names if v != nodata and not (eight_bit and v in (CLOUD, UNCLASSIFIED)))
        ordered = [names[v] for v in values]
        land_classes = len(ordered)
        log(f"map classes: {'; '.join(f'{v} {n}' for v, n in zip(values, ordered)) or 'none'}")
        no_class = {UNCLASSIFIED: "Unclassified", CLOUD: "Cloud"} if eight_bit else {}
        for value, name in no_class.items():  # strata where the map gives no land-cover class
            if value != nodata and (counts.get(value, 0) or value in mapped_at.values()):
                values.append(value)
                ordered.append(names.get(value, name))
        by_name = {name: i for i, name in enumerate(ordered)}
        by_value = {v: i for i, v in enumerate(values)}
        pairs: list[tuple[int, int]] = []
        skipped = {"outside the raster": 0, "on nodata": 0}
        regrouped = 0
        for xy, ref in zip(points, reference):
            if xy not in mapped_at:
                skipped["outside the raster"] += 1
                continue
            value = mapped_at[xy]
            if value in (nodata, fill):
                skipped["on nodata"] += 1
                continue
            if value not in by_value:
                unnamed = f"on a value the legend does not name ({value})"
                skipped[unnamed] = skipped.get(unnamed, 0) + 1
                continue
            key = str(int(float(ref))) if _is_integer(ref) else str(ref).strip().casefold()
            if key in aliases:  # a member class of a group: a point of the group (AnnualCrop is a crop)
                ref = aliases[key]
                regrouped += 1
            row = _reference_index(ref, by_name, by_value)
            if row is None:  # a class the map never shows: a class of the matrix without mapped area
                row = by_name.setdefault(str(int(float(ref))) if _is_integer(ref) else str(ref).strip(), len(by_name))
            pairs.append((row, by_value[value]))
        mapped_classes = len(ordered)
        ordered = ordered + [n for n in by_name if n not in ordered]
        confusion = np.zeros((len(ordered), len(ordered)), dtype=np.int64)
        for row, column in pairs:
            confusion[row, column] += 1
        reference_only = {ordered[row]: int(confusion[row].sum()) for row in range(mapped_classes, len(ordered))}
        if pairs and not confusion[:land_classes].any():
            raise TrainingDataError(
                f"no reference point holds a class of the map: their classes are {_listed(list(reference_only))}, the "
                f"map's are {_listed(ordered[:land_classes])}; choose the class field that holds the map's class names "
                "or values" + ("" if class_names else " (the raster has no legend naming its classes, so give class "
                                                       "values)"))
        if regrouped:
            log(f"{regrouped} reference point(s) name a map class of a class group and count as that group")
        if reference_only:
            log(f"WARNING: {sum(reference_only.values())} reference point(s) of class(es) the map never shows ("
                + "; ".join(f"{n} x{c}" for n, c in reference_only.items()) + "): counted as errors of the map class "
                "they lie on, and their classes' areas estimated from them (no mapped area)")
        on_no_class = [ordered[by_value[v]] for v in no_class if v in by_value and confusion[:, by_value[v]].sum()]
        if on_no_class:
            log(f"points on {' and '.join(on_no_class)} pixels are counted in strata of their own: the map gives no "
                "land-cover class there, so they count as errors (unless the reference says Cloud on Cloud)")
        if confusion.sum() == 0:
            raise TrainingDataError(
                "no reference point could be counted (" + ", ".join(f"{n} {w}" for w, n in skipped.items() if n)
                + f"); the map's classes are {_listed(ordered)}: check that the points overlap the "
                "raster (and their CRS) and that the class field holds these names or values"
                + ("" if class_names else " (the raster has no legend naming its classes, so give class values)"))
        width, height = pixel_size_metres(ds)
        mapped = np.array([counts.get(v, 0) for v in values] + [0] * (len(ordered) - mapped_classes), dtype=np.int64)
    pixel_area_ha = width * height / 10_000.0
    adjusted = area_adjusted(confusion, mapped, pixel_area_ha)
    return MapAccuracy(
        class_names=ordered, metrics=metrics_from_confusion(confusion, ordered), mapped_pixels=mapped,
        pixel_area_ha=pixel_area_ha, adjusted_overall=adjusted["overall"], overall_ci95=adjusted["overall_ci95"],
        adjusted_users=adjusted["users"], users_ci95=adjusted["users_ci95"],
        adjusted_producers=adjusted["producers"], producers_ci95=adjusted["producers_ci95"],
        estimated_area_ha=adjusted["area_ha"], area_ci95_ha=adjusted["area_ci95_ha"],
        skipped={k: v for k, v in {UNREAD: unread, **skipped}.items() if v},
        warnings=sampling_warnings(ordered, confusion, mapped),
    )


def parse_class_groups(text: str) -> dict[str, list[str]]:
    """``"water: SeaLake, River; town: Residential, Industrial"`` (``=`` works as ``:`` too) ->
    ``{"water": ["SeaLake", "River"], "town": ["Residential", "Industrial"]}``. Empty text: no
    groups. A part without a group name or without classes raises :class:`RasterInputError`."""
    groups: dict[str, list[str]] = {}
    for part in (text or "").replace("\n", ";").split(";"):
        if not part.strip():
            continue
        name, sep, members = part.replace("=", ":", 1).partition(":")
        classes = [m.strip() for m in members.split(",") if m.strip()]
        if not sep or not name.strip() or not classes:
            raise RasterInputError(f"class groups: cannot read '{part.strip()}'; write each group as "
                                   "'group: class, class', groups separated by ';' (e.g. 'water: SeaLake, River; "
                                   "town: Residential, Industrial')")
        if name.strip() in groups:
            raise RasterInputError(f"class groups: the group '{name.strip()}' is given twice")
        groups[name.strip()] = classes
    return groups


def _merged(names: dict[int, str], counts: dict[int, int], mapped_at: dict, groups: dict[str, Sequence[str]],
            log: Log) -> tuple[dict[int, str], dict[int, int], dict, dict[str, str]]:
    """``names``, pixel ``counts`` and the values at the points with each group's map classes
    merged into one value (its smallest) named after the group; and the reference labels that name
    a member class (its class name casefolded, or its value) -> its group's name: after the merge
    the member class is no class of the map, so a point labelled with it would otherwise count as
    a class the map never shows (every such point an error)."""
    by_name: dict[str, list[int]] = {}
    for value, name in names.items():
        by_name.setdefault(name.strip().lower(), []).append(value)
    names, counts, merge, members_of, aliases = dict(names), dict(counts), {}, {}, {}
    for group, members in groups.items():
        group_values: list[int] = []
        for member in members:
            text = str(member).strip()
            found = by_name.get(text.lower()) or ([int(float(text))] if _is_integer(text) and int(float(text)) in names
                                                  else None)
            if not found:
                raise RasterInputError(f"class group '{group}': the map has no class '{text}'; its classes are "
                                       f"{_listed(sorted(set(names.values())))}")
            for value in found:
                if value in merge:
                    raise RasterInputError(f"the map class '{names[value]}' is in two class groups "
                                           f"('{merge[value][1]}' and '{group}'); give each class one group")
                merge[value] = (None, group)
                group_values.append(value)
        if not group_values:
            continue
        kept = min(group_values)
        members_of[group] = [names[v] for v in sorted(group_values)]
        for value in group_values:
            merge[value] = (kept, group)
            aliases[names[value].strip().casefold()] = aliases[str(value)] = str(group).strip()
            if value != kept:
                counts[kept] = counts.get(kept, 0) + counts.pop(value, 0)
                del names[value]
        names[kept] = str(group).strip()
    seen: dict[str, int] = {}
    for value, name in names.items():
        if name.lower() in seen:
            raise RasterInputError(f"the class group '{name}' has the name of a map class outside it; name the "
                                   "group differently, or put that class in it")
        seen[name.lower()] = value
    log("class groups: " + "; ".join(f"{g} = {' + '.join(m)}" for g, m in members_of.items()))
    mapped_at = {xy: merge[v][0] if v in merge else v for xy, v in mapped_at.items()}
    return names, counts, mapped_at, aliases


def sampling_warnings(class_names: Sequence[str], confusion: np.ndarray, mapped_pixels: np.ndarray) -> list[str]:
    """What in the sample makes the area-adjusted estimates unreliable: mapped classes without
    any reference point on them (their errors are unknown, so the estimated areas leave their area
    out and the adjusted overall accuracy counts it as wrong), and mapped classes with fewer than
    :data:`MIN_POINTS_PER_CLASS` points. ``confusion``: rows = reference class, columns = map class."""
    on_class = np.asarray(confusion).sum(axis=0)
    mapped = np.asarray(mapped_pixels, dtype=np.float64)
    total = max(float(mapped.sum()), 1.0)
    warnings = []
    empty = [i for i in range(len(class_names)) if mapped[i] > 0 and on_class[i] == 0]
    if empty:
        share = sum(mapped[i] for i in empty) / total
        warnings.append(
            f"map class(es) {'; '.join(class_names[i] for i in empty)} "
            f"({'under 0.1%' if share < 0.001 else f'{share:.1%}'} of the mapped area) have no "
            "reference point on them: their errors are unknown, so the estimated areas leave that area out and the "
            "area-adjusted overall accuracy counts it as wrong; add points on every mapped class")
    few = [i for i in range(len(class_names)) if 0 < on_class[i] < MIN_POINTS_PER_CLASS]
    if few:
        warnings.append(
            f"fewer than {MIN_POINTS_PER_CLASS} reference points on map class(es) "
            + "; ".join(f"{class_names[i]} ({int(on_class[i])})" for i in few)
            + ": their accuracies and areas are uncertain (wide intervals); good practice (Olofsson et al. 2014) "
            f"places at least {MIN_POINTS_PER_CLASS} points on each map class")
    return warnings


def _listed(names: Sequence[str], at_most: int = 30) -> str:
    if not names:
        return "none"
    shown = "; ".join(names[:at_most])
    return shown + (f"; ... ({len(names)} in all)" if len(names) > at_most else "")


def _is_integer(value: Any) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError):
        return False


def _reference_index(value: Any, by_name: dict[str, int], by_value: dict[int, int]) -> int | None:
    """The row of a reference class given by name (case and surrounding spaces ignored) or by
    the map's integer value."""
    text = str(value).strip()
    if text in by_name:
        return by_name[text]
    folded = {name.casefold(): i for name, i in by_name.items()}
    if text.casefold() in folded:
        return folded[text.casefold()]
    if _is_integer(value) and int(float(value)) in by_value:
        return by_value[int(float(value))]
    return None
