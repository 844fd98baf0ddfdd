"""The accuracy report of ``glassbox:evaluate``: a self-contained HTML page and a CSV table.

HTML: overall accuracy, macro averages and Cohen's kappa; a per-class table (reference tiles =
support, precision = user's accuracy, recall = producer's accuracy, F1); the confusion matrix as
a plot (a PNG drawn with matplotlib's Agg canvas, embedded as base64, so the page needs no other
file) and as a table of counts; a summary of the model card. Definitions: :mod:`core.training.metrics`.

CSV (comma-separated, UTF-8, one header row), one row per model class, in the card's order::

    class,support,precision,recall,f1,pred_<class 1>,...,pred_<class K>

the ``pred_*`` columns being that row of the confusion matrix (rows = reference class, columns =
predicted class), then two summary rows: ``(micro average = overall accuracy)`` (precision,
recall and F1 all equal the overall accuracy; ``pred_*`` hold the column totals) and ``(macro
average)`` (means over the classes with reference tiles).

Both files are written to temporary files and moved into place together.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..models.card import ModelCard
from ..errors import OutputError
from ..training.metrics import Metrics

MICRO_ROW = "(micro average = overall accuracy)"
MACRO_ROW = "(macro average)"


def csv_column_names(class_names: Sequence[str]) -> list[str]:
    return ["class", "support", "precision", "recall", "f1"] + [f"pred_{n}" for n in class_names]


def confusion_png(metrics: Metrics, dpi: int = 110, columns: str = "predicted class",
                  title: str = "Confusion matrix") -> bytes:
    """The confusion matrix as a PNG: cells shaded by the share of the reference class (row),
    annotated with counts; rows = reference class, columns = ``columns`` (the predicted class)."""
    import warnings

    with warnings.catch_warnings():  # a pip matplotlib beside Debian's warns about Axes3D
        warnings.simplefilter("ignore", UserWarning)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

    cm = metrics.confusion
    k = cm.shape[0]
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.55 * k + 2.5)
    figure = Figure(figsize=(side + 1.0, side), dpi=dpi)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(111)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(metrics.class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(metrics.class_names, fontsize=8)
    ax.set_xlabel(columns)
    ax.set_ylabel("reference class")
    ax.set_title(f"{title} (overall accuracy {metrics.overall_accuracy:.1%}, n = {metrics.total})", fontsize=9)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    colourbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colourbar.set_label("share of the reference class", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15)
    return buffer.getvalue()


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _num(value: float) -> str:
    return f"{value:.4f}"


def _esc(value: Any) -> str:
    return html.escape(str(value))


def matrix_section(metrics: Metrics, heading: str, columns: str, counted: str) -> str:
    """An HTML section: the matrix as a picture (:func:`confusion_png`) and as a table of counts,
    rows = reference class, columns = ``columns`` ('predicted class', 'map class')."""
    png = base64.b64encode(confusion_png(metrics, columns=columns, title=heading)).decode("ascii")
    header = "".join(f"<th>{_esc(n)}</th>" for n in metrics.class_names)
    rows = "".join(
        f"<tr><th>{_esc(n)}</th>" + "".join(f"<td>{int(v)}</td>" for v in metrics.confusion[i])
        + f"<td class='sum'>{int(metrics.confusion[i].sum())}</td></tr>"
        for i, n in enumerate(metrics.class_names)
    )
    rows += ("<tr class='sum'><th>total</th>" + "".join(f"<td>{int(v)}</td>" for v in metrics.confusion.sum(0))
             + f"<td>{metrics.total}</td></tr>")
    return f"""<h2>{_esc(heading)}</h2>
<img alt="{_esc(heading.lower())}" src="data:image/png;base64,{png}">
<p class="small">Rows: reference class; columns: {_esc(columns)}; counts of {_esc(counted)}.</p>
<table id="confusion"><tr><th>reference \\ {_esc(columns.split()[0])}</th>{header}<th>total</th></tr>
{rows}
</table>"""


#: the reports' page style
PAGE_STYLE = """<style>
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 60em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.sum td, tr.sum th, td.sum { font-weight: bold; background: #f3f3f3; }
.sw { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em; border: 1px solid #555; vertical-align: middle; }
.big { font-size: 1.6em; font-weight: bold; }
.small { color: #555; font-size: 0.9em; }
</style>"""


def render_html(metrics: Metrics, card: ModelCard, model_path: str, data_description: str,
                notes: Sequence[str] = ()) -> str:
    """The report page as a string (see the module docstring)."""
    colours = {c.name: c.color for c in card.classes}
    rows = []
    for i, name in enumerate(metrics.class_names):
        swatch = f'<span class="sw" style="background:{_esc(colours.get(name, "#ffffff"))}"></span>'
        rows.append(
            f"<tr><td>{swatch}{_esc(name)}</td><td>{int(metrics.support[i])}</td>"
            f"<td>{_num(metrics.precision[i])}</td><td>{_num(metrics.recall[i])}</td><td>{_num(metrics.f1[i])}</td></tr>"
        )
    rows.append(f"<tr class='sum'><td>macro average</td><td>{metrics.total}</td><td>{_num(metrics.macro_precision)}</td>"
                f"<td>{_num(metrics.macro_recall)}</td><td>{_num(metrics.macro_f1)}</td></tr>")
    s = card.scaling
    stated = card.accuracy or {}
    stated_text = ", ".join(f"{k} {v}" for k, v in stated.items() if not isinstance(v, (dict, list))) or "none"
    training = card.training or {}
    training_text = ", ".join(f"{k}: {v}" for k, v in training.items()
                              if k in ("data", "dataset", "n_train", "n_val", "seed", "epochs_run", "date")) or "not stated"
    note_items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Glassbox accuracy report: {_esc(card.name)}</title>
{PAGE_STYLE}</head><body>
<h1>Accuracy report: {_esc(card.name)}</h1>
<p class="small">Made by Glassbox on {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}.
Model: {_esc(model_path)}. Reference data: {_esc(data_description)}.</p>
<h2>Summary</h2>
<p><span class="big" id="overall-accuracy">{_pct(metrics.overall_accuracy)}</span> overall accuracy:
{int(np.trace(metrics.confusion))} of {metrics.total} tiles classified as their reference class.</p>
<p>Macro-averaged F1 {_num(metrics.macro_f1)}, Cohen's kappa {_num(metrics.kappa)}.</p>
<h2>Per class</h2>
<table id="per-class"><tr><th>class</th><th>reference tiles</th><th>precision (user's accuracy)</th>
<th>recall (producer's accuracy)</th><th>F1</th></tr>
{''.join(rows)}
</table>
{matrix_section(metrics, "Confusion matrix", "predicted class", "tiles")}
<h2>Model</h2>
<table id="model-card">
<tr><td>name</td><td>{_esc(card.name)}</td></tr>
<tr><td>architecture</td><td>{_esc(card.architecture.get("name", "not stated"))}</td></tr>
<tr><td>classes</td><td>{_esc(", ".join(card.class_names))}</td></tr>
<tr><td>bands (model order)</td><td>{_esc(", ".join(card.bands))}</td></tr>
<tr><td>tile</td><td>{card.tile_size} x {card.tile_size} px at {card.gsd:g} m = {card.tile_size * card.gsd:g} m</td></tr>
<tr><td>scaling</td><td>{_esc(f"scale {s.scale}, offset {s.offset}, clip {s.clip}, mean {s.mean}, std {s.std}")}</td></tr>
<tr><td>training</td><td>{_esc(training_text)}</td></tr>
<tr><td>accuracy stated in the card</td><td>{_esc(stated_text)}</td></tr>
</table>
<h2>Definitions</h2>
<ul class="small">
<li>Precision (user's accuracy) of a class: share of the tiles predicted as that class whose reference is that class.</li>
<li>Recall (producer's accuracy): share of the reference tiles of that class that were predicted as it.</li>
<li>F1: 2 x precision x recall / (precision + recall). A ratio with nothing to divide by is shown as 0.</li>
<li>Macro averages: plain means over the classes that have reference tiles.</li>
{note_items}
</ul>
</body></html>
"""


def write_csv_rows(handle: Any, metrics: Metrics) -> None:
    writer = csv.writer(handle)
    writer.writerow(csv_column_names(metrics.class_names))
    for i, name in enumerate(metrics.class_names):
        writer.writerow([name, int(metrics.support[i]), _num(metrics.precision[i]), _num(metrics.recall[i]),
                         _num(metrics.f1[i])] + [int(v) for v in metrics.confusion[i]])
    oa = _num(metrics.overall_accuracy)
    writer.writerow([MICRO_ROW, metrics.total, oa, oa, oa] + [int(v) for v in metrics.confusion.sum(0)])
    writer.writerow([MACRO_ROW, metrics.total, _num(metrics.macro_precision), _num(metrics.macro_recall),
                     _num(metrics.macro_f1)] + [""] * len(metrics.class_names))


def write_report(html_path: str | Path | None, csv_path: str | Path | None, metrics: Metrics, card: ModelCard,
                 model_path: str, data_description: str, notes: Sequence[str] = ()) -> dict[str, str]:
    """Write the HTML report and/or the CSV (paths or None), all or nothing."""
    return write_page_and_table(html_path, csv_path,
                                lambda: render_html(metrics, card, model_path, data_description, notes),
                                lambda handle: write_csv_rows(handle, metrics))


def write_page_and_table(html_path: str | Path | None, csv_path: str | Path | None, page: Callable[[], str],
                         rows: Callable[[Any], None]) -> dict[str, str]:
    """Write the HTML ``page()`` and/or the CSV that ``rows(handle)`` writes (paths or None),
    all or nothing; returns {"html", "csv"} -> path for what was written."""
    from .writers import StagedOutputs

    if not html_path and not csv_path:
        raise OutputError("no report output requested")
    for path, suffixes in ((html_path, (".html", ".htm")), (csv_path, (".csv",))):
        if path and Path(path).suffix.lower() not in suffixes:
            raise OutputError(f"{Path(path).name}: write the report as {' or '.join(suffixes)}")
    written = {}
    with StagedOutputs() as staged:
        if html_path:
            staged.stage(html_path).write_text(page(), encoding="utf-8")
            written["html"] = str(html_path)
        if csv_path:
            with open(staged.stage(csv_path), "w", encoding="utf-8", newline="") as handle:
                rows(handle)
            written["csv"] = str(csv_path)
        staged.commit()
    return written
