"""Output writers. Everything is written to a temporary file beside the target and moved into
place only when the whole run succeeded, so a failed or cancelled run leaves no partial output.

Rasters are GeoTIFFs on the processing area's grid in the input CRS:

* classes: uint8, nodata 255, colour table and category names from the card; when asked for,
  also :data:`UNCLASSIFIED` (254, pixels below the minimum confidence) and :data:`CLOUD` (253,
  cloud-masked pixels) with their own colours and names (:data:`EXTRA_CLASSES`);
* probabilities: float32, one band per class (band description = class name), nodata -1;
* confidence: float32, the highest class probability of the pixel (0..1), nodata -1.

They are written as tiled, DEFLATE-compressed GeoTIFFs (float rasters with the floating-point
predictor at compression level 1: about half the size of plain DEFLATE for blended
probabilities, at two thirds of its time; :data:`FLOAT_DEFLATE`). A staged GeoTIFF with a side of
at least :data:`COG_MIN_SIZE` pixels is converted at ``commit()`` into a Cloud-Optimized GeoTIFF
with internal overviews (nearest neighbour for integer rasters such as classes, average for float
rasters; nodata is honoured), by GDAL's COG driver, which streams block by block: values,
nodata, band descriptions, colour table, category names and CRS stay the same. Such a staged
file is only an intermediate, so it is written fast (:func:`staged_options`: blocks of 16 rows,
ZSTD level 1 where GDAL has it) and the COG driver compresses once. Outputs are deterministic: the
same run on the same input writes byte-identical files.

Memory: rows reach the files through :class:`BlockRowWriter`, which hands GDAL whole rows of
blocks only, so GDAL's block cache (limited while a job runs, :func:`.raster.block_cache_limit`)
never has to write out and read back a half-filled block, and each block is compressed once.

The optional tile grid is a GeoPackage of tile footprints with the tile's class, confidence
and one probability field per class.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..models.card import ModelCard
from ..errors import OutputError
from .vectors import VectorLayer, boxes_layer

CLASS_NODATA = 255
#: class values beside the model's classes (0..n-1), the same for every model
UNCLASSIFIED = 254
CLOUD = 253
#: value -> (name, colour) of the classes that are not the model's
EXTRA_CLASSES = {UNCLASSIFIED: ("Unclassified", "#9a9a9a"), CLOUD: ("Cloud", "#f2f2ee")}
FLOAT_NODATA = -1.0
#: band metadata item prefix of the class raster: ``CLASS_NAME_<value>=<name>``, stored inside the GeoTIFF
CLASS_NAME_ITEM = "CLASS_NAME_"
_GTIFF_OPTIONS = dict(tiled=True, blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
#: extra creation options of float outputs (GeoTIFF and COG): the floating-point predictor and
#: DEFLATE level 1
FLOAT_DEFLATE = dict(predictor=3, zlevel=1)
#: GDAL's block cache while a COG is written (it streams; a larger cache only costs memory: 64 MB
#: instead of 8-16 MB took 80 MB more at the peak for 8192 x 8192 x 10 float32, no less time)
COG_CACHE = 8 * 2**20
#: threads compressing a COG's blocks (two halve its time on two cores, for about 50 MB more)
COG_THREADS = 2
#: block height of staged GeoTIFFs that become COGs (small, so that a band of rows rarely leaves a
#: block half written)
STAGED_BLOCK_ROWS = 16
#: staged GeoTIFFs with a width or height of at least this many pixels become Cloud-Optimized
#: GeoTIFFs with internal overviews at commit; smaller ones stay plain tiled GeoTIFFs
COG_MIN_SIZE = 2048
_RASTER_SUFFIXES = (".tif", ".tiff")


class StagedOutputs:
    """Temporary paths for a set of outputs; ``commit()`` moves them all into place,
    ``discard()`` (also on an exception in a ``with`` block) removes them."""

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}
        self._obsolete: list[Path] = []

    def remove_at_commit(self, path: str | Path) -> None:
        """Remove ``path`` (if it exists) when the outputs are committed: a file beside an output
        that would describe the replaced output, not the new one."""
        self._obsolete.append(Path(path))

    def stage(self, target: str | Path) -> Path:
        from .outputs import check_output_path, output_error

        target = Path(target)
        check_output_path(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_temporaries(target)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.{os.getpid()}-", suffix=f".partial{target.suffix}",
                                       dir=target.parent)
        except OSError as exc:
            raise output_error(target, exc) from exc
        os.close(fd)
        os.remove(tmp)  # the writers create it
        earlier = self._staged.get(target)
        if earlier is not None:  # staged again: the earlier temporary will never be committed
            for path in [earlier, *_sidecars(earlier)]:
                if path.exists():
                    path.unlink()
        self._staged[target] = Path(tmp)
        return Path(tmp)

    def commit(self) -> None:
        for tmp in self._staged.values():  # before anything moves: a failure leaves no output
            if tmp.suffix.lower() in _RASTER_SUFFIXES and tmp.is_file():
                finish_raster(tmp)
        for target, tmp in self._staged.items():
            # a file this replaces may have GDAL sidecars (.aux.xml statistics, .ovr overviews) that
            # would describe the new file wrongly (QGIS would stretch it by the old statistics)
            for stale in _sidecars(target):
                stale.unlink()
            for sidecar in _sidecars(tmp):
                os.replace(sidecar, Path(str(target) + sidecar.name[len(tmp.name):]))
            os.replace(tmp, target)
        for path in self._obsolete:
            if path.is_file() and path not in self._staged:
                path.unlink()
        self._staged.clear()
        self._obsolete.clear()

    def discard(self) -> None:
        for tmp in self._staged.values():
            for path in [tmp, *_sidecars(tmp)]:
                if path.exists():
                    path.unlink()
        self._staged.clear()

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.discard()


#: temporaries untouched this long are taken as abandoned even when their writer's process cannot
#: be checked (another machine on a shared folder, or Windows)
ABANDONED_AFTER_SECONDS = 3600.0


def _remove_abandoned_temporaries(target: Path) -> None:
    """Remove the hidden temporaries (``.<stem>.<pid>-<8 random>.partial<suffix>`` and their
    sidecars) that a killed run staged for ``target`` and never committed: a new output for the
    same file replaces them (a crash during writing can leave gigabytes). A temporary is taken as
    abandoned when the process that made it no longer runs (POSIX; checked by its pid) or it has
    not been touched for :data:`ABANDONED_AFTER_SECONDS`; this process's own are kept. Best
    effort: a file that cannot be removed is left."""
    import glob
    import re
    import time

    pattern = re.compile(rf"^\.{re.escape(target.stem)}\.(\d+)-[A-Za-z0-9_]{{8}}\.partial{re.escape(target.suffix)}"
                         r"(\..+)?$")
    now = time.time()
    for candidate in target.parent.glob(f".{glob.escape(target.stem)}.*"):
        match = pattern.match(candidate.name)
        if not match:
            continue
        try:
            pid = int(match.group(1))
            if pid == os.getpid():
                continue
            if not (_process_gone(pid) or now - candidate.stat().st_mtime > ABANDONED_AFTER_SECONDS):
                continue
            candidate.unlink()
        except OSError:
            continue


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (POSIX); False where that cannot be told."""
    if os.name != "posix":
        return False  # os.kill on Windows would end the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by someone else
        return False
    return False


def _sidecars(tmp: Path) -> list[Path]:
    return [p for p in tmp.parent.glob(tmp.name + ".*") if p.is_file()]


def finish_raster(path: Path, min_size: int | None = None) -> bool:
    """Convert the GeoTIFF ``path`` in place into a Cloud-Optimized GeoTIFF with internal
    overviews when its width or height is at least ``min_size`` (default :data:`COG_MIN_SIZE`)
    pixels. The COG is written beside it first (a sidecar of ``path``, so a failure leaves only
    files that :meth:`StagedOutputs.discard` removes); its PAM sidecar (category names) replaces
    the old one. Returns whether it converted."""
    import rasterio
    import rasterio.shutil

    path = Path(path)
    limit = COG_MIN_SIZE if min_size is None else min_size
    with rasterio.open(path) as ds:
        if ds.driver != "GTiff" or max(ds.width, ds.height) < limit:
            return False
        floating = np.dtype(ds.dtypes[0]).kind == "f"
    cog = Path(str(path) + ".cog.tif")
    options = dict(driver="COG", COMPRESS="DEFLATE", BIGTIFF="IF_SAFER", OVERVIEWS="AUTO",
                   RESAMPLING="AVERAGE" if floating else "NEAREST", NUM_THREADS=str(COG_THREADS))
    if floating:
        options.update(PREDICTOR="FLOATING_POINT", LEVEL=str(FLOAT_DEFLATE["zlevel"]))
    from .raster import block_cache_limit

    try:
        with block_cache_limit(COG_CACHE, override=True):
            rasterio.shutil.copy(path, cog, **options)
    except Exception as exc:
        raise OutputError(f"cannot write the Cloud-Optimized GeoTIFF {path.name}: {exc}") from exc
    new_sidecars = _sidecars(cog)
    for old in _sidecars(path):
        if old not in new_sidecars and old != cog:
            old.unlink()
    os.replace(cog, path)
    for sidecar in new_sidecars:
        os.replace(sidecar, Path(str(path) + sidecar.name[len(cog.name):]))
    return True


def staged_options(width: int, height: int, dtype: str) -> dict:
    """GeoTIFF creation options of a staged output of ``width`` x ``height`` pixels: its final
    layout (:data:`_GTIFF_OPTIONS`, plus :data:`FLOAT_DEFLATE` for floats) when it stays a plain
    GeoTIFF, else (it becomes a COG at commit) a fast intermediate: tiles 256 pixels wide and
    :data:`STAGED_BLOCK_ROWS` high, ZSTD level 1 with a predictor where GDAL has ZSTD (else
    uncompressed)."""
    floating = np.dtype(dtype).kind == "f"
    if max(width, height) < COG_MIN_SIZE:
        return dict(_GTIFF_OPTIONS, **(FLOAT_DEFLATE if floating else {}))
    options = dict(tiled=True, blockxsize=256, blockysize=STAGED_BLOCK_ROWS, BIGTIFF="IF_SAFER")
    if _has_zstd():
        options.update(compress="zstd", zstd_level=1, predictor=3 if floating else 2)
    return options


_zstd: list[bool] = []


def _has_zstd() -> bool:
    """Whether rasterio's GDAL writes ZSTD-compressed GeoTIFFs."""
    if not _zstd:
        import warnings

        import rasterio
        from rasterio.io import MemoryFile

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with MemoryFile() as memory:
                    with memory.open(driver="GTiff", width=16, height=16, count=1, dtype="uint8",
                                     compress="zstd") as ds:
                        ds.write(np.zeros((1, 16, 16), np.uint8))
                    with memory.open() as ds:
                        ok = str(ds.compression).lower().endswith("zstd")
        except (rasterio.errors.RasterioError, OSError, ValueError):
            ok = False
        _zstd.append(ok)
    return _zstd[0]


class BlockRowWriter:
    """Writes the rows of a dataset opened for writing top to bottom, handing GDAL whole rows of
    blocks only (the last one may be shorter): ``write(first_row, values)`` with ``values``
    ``(bands, rows, width)`` or ``(rows, width)`` for a one-band raster, rows in order without
    gaps; ``flush()`` writes what is held (at the end). At most one row of blocks is held.
    Rows that do not follow the previous ones are written at once (after what is held)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.block_rows = max(1, int(dataset.block_shapes[0][0]))
        self.buffer = np.empty((dataset.count, self.block_rows, dataset.width), dtype=dataset.dtypes[0])
        self.start = 0  # first row of the buffer
        self.filled = 0  # rows held in the buffer

    def write(self, first_row: int, values: np.ndarray) -> None:
        values = values[None] if values.ndim == 2 else values
        if first_row != self.start + self.filled:
            self.flush()
            self._write(first_row, values)
            self.start = first_row + values.shape[1]
            return
        rows, done = values.shape[1], 0
        while done < rows:
            if self.filled == 0 and self.start % self.block_rows == 0 and rows - done >= self.block_rows:
                whole = (rows - done) // self.block_rows * self.block_rows  # whole blocks pass through
                self._write(self.start, values[:, done : done + whole])
                self.start += whole
                done += whole
                continue
            room = self.block_rows - (self.start + self.filled) % self.block_rows
            take = min(room, rows - done)
            self.buffer[:, self.filled : self.filled + take] = values[:, done : done + take]
            self.filled += take
            done += take
            if (self.start + self.filled) % self.block_rows == 0 or self.start + self.filled >= self.dataset.height:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            self._write(self.start, self.buffer[:, : self.filled])
            self.start += self.filled
            self.filled = 0

    def _write(self, first_row: int, values: np.ndarray) -> None:
        from rasterio.windows import Window

        self.dataset.write(values, window=Window(0, first_row, values.shape[2], values.shape[1]))


class ClassificationWriter:
    """Streams rows of blended probabilities into the class, probability and confidence
    rasters (each optional). ``extra_classes``: values of :data:`EXTRA_CLASSES` the class raster
    may hold (given a colour and a name there)."""

    def __init__(self, staged: StagedOutputs, card: ModelCard, crs: Any, transform: Any, height: int, width: int,
                 classes_path: str | None, probabilities_path: str | None, confidence_path: str | None,
                 extra_classes: Sequence[int] = (), provenance: dict[str, str] | None = None):
        import rasterio

        if extra_classes and card.num_classes > min(EXTRA_CLASSES):
            raise OutputError(f"the model has {card.num_classes} classes: class values {min(EXTRA_CLASSES)} and up "
                              "are kept for Unclassified and Cloud")
        self.card = card
        self.extra_classes = sorted(extra_classes)
        self.paths: dict[str, Path] = {}
        self.datasets: dict[str, Any] = {}
        self.rows: dict[str, BlockRowWriter] = {}
        base = dict(driver="GTiff", height=height, width=width, crs=crs, transform=transform)
        specs = {
            "classes": (classes_path, dict(count=1, dtype="uint8", nodata=CLASS_NODATA)),
            "probabilities": (probabilities_path, dict(count=card.num_classes, dtype="float32", nodata=FLOAT_NODATA)),
            "confidence": (confidence_path, dict(count=1, dtype="float32", nodata=FLOAT_NODATA)),
        }
        try:
            for key, (target, profile) in specs.items():
                if not target:
                    continue
                tmp = staged.stage(target)
                self.paths[key] = tmp
                options = staged_options(width, height, profile["dtype"])
                self.datasets[key] = rasterio.open(tmp, "w", **base, **profile, **options)
                self.rows[key] = BlockRowWriter(self.datasets[key])
        except Exception as exc:
            self.close()
            raise OutputError(f"cannot create output raster: {exc}") from exc
        for ds in self.datasets.values():  # in the file itself (GDAL_METADATA tag), not only in a sidecar
            ds.update_tags(**(provenance or {}))
        if "classes" in self.datasets:
            ds = self.datasets["classes"]
            colours = {i: (*c.rgb(), 255) for i, c in enumerate(card.classes)}
            colours.update({v: (*_rgb(EXTRA_CLASSES[v][1]), 255) for v in self.extra_classes})
            ds.write_colormap(1, colours)
            ds.set_band_description(1, "class")
            # class names inside the GeoTIFF too: GDAL keeps category names only in the .aux.xml
            # sidecar, which is lost when the .tif travels alone
            ds.update_tags(1, **{f"{CLASS_NAME_ITEM}{v}": name for v, name in enumerate(self.category_names()) if name})
        if "probabilities" in self.datasets:
            for i, name in enumerate(card.class_names, start=1):
                self.datasets["probabilities"].set_band_description(i, name)
        if "confidence" in self.datasets:
            self.datasets["confidence"].set_band_description(1, "confidence (highest class probability)")

    def write_rows(self, first_row: int, probabilities: np.ndarray, valid: np.ndarray,
                   classes: np.ndarray | None = None) -> None:
        """``probabilities`` ``(classes, rows, width)``; ``valid`` ``(rows, width)`` bool;
        ``classes`` ``(rows, width)``: the class values to write (default: the most probable
        class)."""
        if "classes" in self.datasets:
            classes = (np.argmax(probabilities, axis=0) if classes is None else classes).astype(np.uint8)
            classes[~valid] = CLASS_NODATA
            self.rows["classes"].write(first_row, classes)
        if "probabilities" in self.datasets:
            probs = np.where(valid[None], probabilities, FLOAT_NODATA).astype(np.float32, copy=False)
            self.rows["probabilities"].write(first_row, probs)
        if "confidence" in self.datasets:
            confidence = np.where(valid, probabilities.max(axis=0), FLOAT_NODATA).astype(np.float32, copy=False)
            self.rows["confidence"].write(first_row, confidence)

    def close(self) -> None:
        try:
            for rows in self.rows.values():
                rows.flush()
        finally:
            self.rows = {}
            for ds in self.datasets.values():
                ds.close()
            self.datasets = {}
        if "classes" in self.paths and self.paths["classes"].exists():
            set_category_names(self.paths["classes"], self.category_names())

    def category_names(self) -> list[str]:
        """Class names by class value ("" for values that are no class)."""
        names = list(self.card.class_names)
        for value in self.extra_classes:
            names += [""] * (value + 1 - len(names))
            names[value] = EXTRA_CLASSES[value][0]
        return names


def metadata_class_names(raster_path: str) -> dict[int, str]:
    """Class value -> name from the ``CLASS_NAME_<value>`` band metadata that classify writes inside
    its class GeoTIFF (band 1); empty when there is none or the file cannot be read."""
    import rasterio

    try:
        with rasterio.open(str(raster_path).split("|")[0]) as ds:
            items = ds.tags(1)
    except (rasterio.errors.RasterioError, OSError):
        return {}
    return {int(key[len(CLASS_NAME_ITEM):]): value for key, value in items.items()
            if key.startswith(CLASS_NAME_ITEM) and key[len(CLASS_NAME_ITEM):].isdigit() and value}


def glassbox_version() -> str:
    """The plugin version of ``metadata.txt`` ("unknown" when it cannot be read)."""
    import configparser

    parser = configparser.ConfigParser()
    try:
        parser.read(Path(__file__).resolve().parents[2] / "metadata.txt", encoding="utf-8")
        return parser.get("general", "version")
    except (configparser.Error, OSError):
        return "unknown"


def provenance_tags(model_path: str | Path, card: ModelCard, inputs: Sequence[str], parameters: dict) -> dict[str, str]:
    """GDAL dataset metadata items that say what made an output: Glassbox's version, the model
    (card name, file name, SHA-256 of the file), the input file names and the parameters (JSON).
    No timestamp, so reruns stay byte-identical."""
    import json

    from ..tiles.checkpoints import file_hash

    model_path = Path(model_path)
    return {
        "GLASSBOX_VERSION": glassbox_version(),
        "GLASSBOX_MODEL": card.name,
        "GLASSBOX_MODEL_FILE": model_path.name,
        "GLASSBOX_MODEL_SHA256": file_hash(model_path) if model_path.is_file() else "",
        "GLASSBOX_INPUT": ";".join(Path(str(p)).name for p in inputs),
        "GLASSBOX_PARAMETERS": json.dumps(parameters, sort_keys=True, default=str),
    }


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i: i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def set_category_names(path: Path, names: Sequence[str]) -> None:
    """Store class names as GDAL category names (rasterio has no API for them)."""
    try:
        from osgeo import gdal
    except ImportError:  # GDAL's Python bindings are optional outside QGIS
        return
    ds = gdal.Open(str(path), gdal.GA_Update)
    if ds is None:
        return
    ds.GetRasterBand(1).SetCategoryNames(list(names))
    ds = None


#: a tile is Cloud in the tile grid when more than this share of its mapped pixels is cloud
TILE_CLOUD_SHARE = 0.5


def tile_grid_layer(crs_wkt: str, card: ModelCard,
                    records: Sequence[tuple[int, int, tuple[float, float, float, float], np.ndarray]],
                    min_confidence: float = 0.0, cloud_shares: Sequence[float] | None = None) -> VectorLayer:
    """The tile footprints as a polygon layer ``tiles``: ``records`` are (grid_row, grid_col,
    (xmin, ymin, xmax, ymax) in the raster CRS, probabilities (classes,)); fields grid_row,
    grid_col, class_id, class, confidence and one ``p_<class>`` per class. As in the class
    raster, a tile whose confidence is below ``min_confidence`` is ``Unclassified``
    (:data:`UNCLASSIFIED`) and, with ``cloud_shares`` (share of each tile's mapped pixels that
    are cloud, also the field ``cloud_share``), one more than :data:`TILE_CLOUD_SHARE` cloud is
    ``Cloud`` (:data:`CLOUD`); ``confidence`` and the probabilities stay the model's."""
    prob_fields = _probability_field_names(card.class_names)
    fields = [("grid_row", "int"), ("grid_col", "int"), ("class_id", "int"), ("class", "str"),
              ("confidence", "real")] + ([("cloud_share", "real")] if cloud_shares is not None else []) + [
                  (f, "real") for f in prob_fields]
    rows = []
    for index, (grid_row, grid_col, bounds, probs) in enumerate(records):
        best = int(np.argmax(probs))
        class_id, name = best, card.class_names[best]
        if min_confidence > 0 and probs[best] < min_confidence:
            class_id, name = UNCLASSIFIED, EXTRA_CLASSES[UNCLASSIFIED][0]
        values = dict(grid_row=int(grid_row), grid_col=int(grid_col), confidence=float(probs[best]))
        if cloud_shares is not None:
            values["cloud_share"] = float(cloud_shares[index])
            if cloud_shares[index] > TILE_CLOUD_SHARE:
                class_id, name = CLOUD, EXTRA_CLASSES[CLOUD][0]
        values.update({"class_id": class_id, "class": name})
        values.update({f: float(p) for f, p in zip(prob_fields, probs)})
        rows.append((bounds, values))
    return boxes_layer("tiles", crs_wkt, fields, rows)


def _probability_field_names(class_names: Sequence[str]) -> list[str]:
    names = []
    for name in class_names:
        field = "p_" + re.sub(r"\W+", "_", name).strip("_").lower()
        while field in names:
            field += "_"
        names.append(field)
    return names
