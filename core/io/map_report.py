"""The report of ``glassbox:assess_map``: a self-contained HTML page and a CSV table.

HTML: overall accuracy and kappa of the counted points, the area-adjusted overall accuracy with
its 95 % interval, a per-class table (mapped area, reference points, user's and producer's
accuracy with 95 % intervals, estimated area with its 95 % interval; :mod:`core.map_accuracy`),
the error matrix as a picture and a table of counts, what was not counted and the assumptions.

CSV (comma-separated, UTF-8, one header row), one row per map class::

    class,mapped_pixels,mapped_area_ha,reference_points,users_accuracy,users_ci95,
    producers_accuracy,producers_ci95,estimated_area_ha,estimated_area_ci95_ha,ref_<class 1>,...

the ``ref_*`` columns being that map class's column of the error matrix (how many points of each
reference class the map calls this class); then a row ``(all)`` with the totals and the
area-adjusted overall accuracy. Both files are written to temporary files and moved into place
together.
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..map_accuracy import MapAccuracy
from .report import PAGE_STYLE, _esc, _pct, matrix_section, write_page_and_table

ALL_ROW = "(all)"


def map_csv_column_names(class_names: list[str]) -> list[str]:
    return (["class", "mapped_pixels", "mapped_area_ha", "reference_points", "users_accuracy", "users_ci95",
             "producers_accuracy", "producers_ci95", "estimated_area_ha", "estimated_area_ci95_ha"]
            + [f"ref_{n}" for n in class_names])


def _value(x: float, digits: int = 4) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _pm(value: float, half: float, percent: bool = True) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if percent:
        text = f"{100 * value:.1f} %"
        return text + (f" &plusmn; {100 * half:.1f}" if np.isfinite(half) else "")
    return f"{value:,.1f}" + (f" &plusmn; {half:,.1f}" if np.isfinite(half) else "")


def render_map_html(result: MapAccuracy, raster: str, reference: str) -> str:
    m = result.metrics
    counted = m.confusion.sum(axis=0)  # points the map calls each class
    rows = []
    for i, name in enumerate(result.class_names):
        rows.append(
            f"<tr><td>{_esc(name)}</td><td>{result.mapped_area_ha[i]:,.1f}</td><td>{int(counted[i])}</td>"
            f"<td>{_pm(result.adjusted_users[i], result.users_ci95[i])}</td>"
            f"<td>{_pm(result.adjusted_producers[i], result.producers_ci95[i])}</td>"
            f"<td>{_pm(result.estimated_area_ha[i], result.area_ci95_ha[i], percent=False)}</td></tr>")
    skipped = "".join(f"<li>{n} point(s) {_esc(why)}</li>" for why, n in result.skipped.items()) or "<li>none</li>"
    warnings = ("<h2>Warnings</h2>\n<ul id=\"warnings\">"
                + "".join(f"<li>{_esc(w)}</li>" for w in result.warnings) + "</ul>") if result.warnings else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Glassbox map accuracy: {_esc(Path(raster).name)}</title>
{PAGE_STYLE}</head><body>
<h1>Map accuracy: {_esc(Path(raster).name)}</h1>
<p class="small">Made by Glassbox on {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}.
Map: {_esc(raster)}. Reference points: {_esc(reference)}.</p>
<h2>Summary</h2>
<p><span class="big" id="overall-accuracy">{_pct(m.overall_accuracy)}</span> of the {m.total} counted reference
points lie on their own class in the map (Cohen's kappa {m.kappa:.3f}).</p>
<p id="adjusted">Area-adjusted overall accuracy: {_pm(result.adjusted_overall, result.overall_ci95)} (95 %
interval), the share of the mapped area that is mapped right, each map class weighted by its area.</p>
{warnings}
<h2>Per map class</h2>
<table id="per-class"><tr><th>class</th><th>mapped area (ha)</th><th>reference points on it</th>
<th>user's accuracy (95 %)</th><th>producer's accuracy (95 %)</th><th>estimated area (ha, 95 %)</th></tr>
{''.join(rows)}
</table>
{matrix_section(m, "Error matrix", "map class", "points")}
<h2>Not counted</h2>
<ul id="skipped">{skipped}</ul>
<h2>How to read it</h2>
<ul class="small">
<li>User's accuracy of a class: the share of the area mapped as that class that is that class on the ground
(what a map user finds). Producer's accuracy: the share of the class's true area that the map shows as it.</li>
<li>Area-adjusted estimates (Olofsson et al. 2014, Remote Sensing of Environment 148: 42-57): the map classes are
strata weighted by their mapped area; the estimated area of a class corrects its mapped area by the errors the
points found, with a 95 % interval (1.96 standard errors).</li>
<li>They are unbiased only for a probability sample of points: simple random, or stratified by map class. Points
placed where the class is obvious, or on a convenient subset, make every figure here optimistic.</li>
<li>A class with fewer than 2 points on it has no interval (n/a); with few points the intervals are wide.</li>
<li>An interval of &plusmn; 0.0 means that every point on the class agreed (or none did): the formula then gives
no spread, not certainty. With n points all right, the true accuracy may still be as low as about 1 - 3/n (95 %,
the "rule of three"): 94 % for 50 points, 70 % for 10.</li>
</ul>
</body></html>
"""


def write_map_csv_rows(handle: Any, result: MapAccuracy) -> None:
    m = result.metrics
    writer = csv.writer(handle)
    writer.writerow(map_csv_column_names(result.class_names))
    counted = m.confusion.sum(axis=0)
    for i, name in enumerate(result.class_names):
        writer.writerow([name, int(result.mapped_pixels[i]), _value(result.mapped_area_ha[i], 2), int(counted[i]),
                         _value(result.adjusted_users[i]), _value(result.users_ci95[i]),
                         _value(result.adjusted_producers[i]), _value(result.producers_ci95[i]),
                         _value(result.estimated_area_ha[i], 2), _value(result.area_ci95_ha[i], 2)]
                        + [int(v) for v in m.confusion[:, i]])
    writer.writerow([ALL_ROW, int(result.mapped_pixels.sum()), _value(result.mapped_area_ha.sum(), 2), m.total,
                     _value(result.adjusted_overall), _value(result.overall_ci95), "", "",
                     _value(result.estimated_area_ha.sum(), 2), ""] + [int(v) for v in m.confusion.sum(axis=1)])


def write_map_report(html_path: str | Path | None, csv_path: str | Path | None, result: MapAccuracy, raster: str,
                     reference: str) -> dict[str, str]:
    """Write the HTML report and/or the CSV (paths or None), all or nothing."""
    return write_page_and_table(html_path, csv_path, lambda: render_map_html(result, raster, reference),
                                lambda handle: write_map_csv_rows(handle, result))
