#!/usr/bin/env python
"""Kahikatea evaluation protocol (issue 21): grouped folds by aerial frame, a locked hold-out,
pre-registered variants, per-photo logits and paired statistics. The rules are fixed in
``bench/kahikatea_protocol/PROTOCOL.md``; this module applies them and reuses the training code
of ``reproduce_paper2.py`` (whole-photo classifier, masked fine-tune) and
``kahikatea_patches.py`` (patch classifier and its whole-photo fine-tune).

Usage (from the repository root; one command per table row)::

    .venv/bin/python -m glassbox.research.kahikatea_protocol --data ../shared/data/kahikatea \\
        --variant photo --seed 0                  # one variant, one seed, all 5 folds (resumable)
    .venv/bin/python -m glassbox.research.kahikatea_protocol --data ../shared/data/kahikatea \\
        --variant all --seeds 0,1,2               # every pre-registered variant
    .venv/bin/python -m glassbox.research.kahikatea_protocol --data ../shared/data/kahikatea --summary
    .venv/bin/python -m glassbox.research.kahikatea_protocol --data ../shared/data/kahikatea --holdout
    .venv/bin/python -m glassbox.research.kahikatea_protocol --data ../shared/data/kahikatea --smoke
    .venv/bin/python -m glassbox.research.kahikatea_protocol --data ../shared/data/kahikatea --timing
    .venv/bin/python -m glassbox.research.kahikatea_protocol --data ../shared/data/kahikatea --write-split

**Groups.** A photo ``Biospatial_<date>[U]_[P|S|U]<frame>_<row>_<col>.jpg`` is tile (row, col)
of aerial frame ``<frame>`` of the flight of ``<date>``. Frames of one date whose numbers differ
by at most :data:`FRAME_GAP` (chained: 2372, 2375, 2384 are one group) form one group; the
letters (camera or line codes) are ignored, so frames of several cameras of one day with close
numbers are grouped together. A group never straddles folds, the hold-out or a calibration set.

**Split.** :func:`glassbox.core.training.loop.grouped_split` holds out about
:data:`HOLDOUT_SHARE` of every class as whole groups (seed :data:`HOLDOUT_SEED`), then
:func:`~glassbox.core.training.loop.grouped_folds` deals the other groups into :data:`FOLDS`
folds (seed :data:`FOLD_SEED`). Written once to ``bench/kahikatea_protocol/holdout.txt`` and
``folds.csv`` (``--write-split``) and read from there by every run.

**One run** (variant, seed, fold ``k``): the models train on the photos of the three folds other
than ``k`` and ``k + 1 (mod 5)``; fold ``k + 1`` is the calibration fold (it chooses the alpha of
the ensembles, nothing else); fold ``k`` is the test fold. Every model also scores the hold-out
photos; their logits go to ``sealed/`` without labels, and only ``--holdout`` scores them.
Outputs under ``--out`` (small, committed): ``<variant>/seed<s>/fold<k>.csv`` (per photo of the
calibration and test folds: photo, label, part, both logits) and ``fold<k>.json`` (accuracies,
alpha, timings, settings, git commit); ``sealed/<variant>/seed<s>/fold<k>.csv``; ``summary.json``
and ``summary.md``. Models live in ``--workdir`` (not committed). A run whose JSON exists is
skipped, so an interrupted command continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from glassbox.core.training.loop import grouped_folds, grouped_split
from glassbox.research.protocol_stats import mcnemar_exact, mean_sd, paired_bootstrap_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_DIR = REPO_ROOT / "bench" / "kahikatea_protocol"
DEFAULT_OUT = REPO_ROOT / "research" / "results" / "protocol"
SHIPPED_RGB = REPO_ROOT / "resources" / "models" / "eurosat_rgb_resnet18_64_w32.pt"
ARCHITECTURE = ("resnet18_64", {"width": 32})
CLASSES = ["negative", "positive"]

FRAME_GAP = 10  # frames of one date whose numbers differ by at most this are one group (chained)
HOLDOUT_SHARE = 0.2
FOLDS = 5
HOLDOUT_SEED = 21
FOLD_SEED = 2101
SEEDS = (0, 1, 2)
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # weight of the photo classifier in an ensemble

MEMBERS = ("photo", "masked", "patch", "mil")
ENSEMBLES = {"masked_ens": ("photo", "masked"), "patch_ens": ("photo", "patch")}
VARIANTS = MEMBERS + tuple(ENSEMBLES)
BASELINES = ("photo", "mil")
WITHIN_FLIGHT = "20160702"  # the one date with both classes in number (223 positive, 127 negative photos)

# the pre-registered settings (PROTOCOL.md); --smoke and --timing shrink them, nothing else does
SETTINGS: dict[str, Any] = {
    "photo": {"image_size": 224, "epochs": 15, "lr": 1e-3, "batch_size": 32, "val_fraction": 0.0},
    "masked": {"mask_type": "blur", "epochs": 8, "lr": 3e-4, "negative_masks": "borrowed"},
    "patch": {"photo_size": [368, 246], "patch": 64, "stride": 32, "epochs": 6, "negatives_per_positive": 2.0,
              "photo_epochs": 3, "photo_logit": True, "photo_patch_loss": True, "masks": "expert"},
    # 2 epochs: every patch of a positive photo is a positive patch, so an epoch holds about 2.7 times the
    # patches of the patch variant's; 2 epochs show it about as many patches as the patch variant's 6
    "mil": {"photo_size": [368, 246], "patch": 64, "stride": 32, "epochs": 2, "negatives_per_positive": 2.0,
            "photo_epochs": 3, "photo_logit": True, "photo_patch_loss": False, "masks": "whole photo"},
}
SMOKE = {"photo": {"image_size": 64, "epochs": 1}, "masked": {"epochs": 1},
         "patch": {"photo_size": [96, 64], "patch": 32, "stride": 16, "epochs": 1, "photo_epochs": 1},
         "mil": {"photo_size": [96, 64], "patch": 32, "stride": 16, "epochs": 1, "photo_epochs": 1}}
TIMING = {"photo": {"epochs": 1}, "masked": {"epochs": 1}, "patch": {"epochs": 1, "photo_epochs": 1},
          "mil": {"epochs": 1, "photo_epochs": 1}}

NAME = re.compile(r"^[^_]+_(?P<date>\d{8})[A-Za-z]?_[A-Za-z]?(?P<frame>\d+)_(?P<row>\d+)_(?P<col>\d+)\.\w+$")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- groups and the split -------------------------------------------------------------------
def frame_of(name: str) -> tuple[str, int]:
    """(flight date, frame number) of a photo's file name (see the module docstring)."""
    match = NAME.match(Path(name).name)
    if not match:
        raise ValueError(f"{name}: not a <source>_<date>_<frame>_<row>_<col> photo name")
    return match["date"], int(match["frame"])


def frame_groups(names: Sequence[str], gap: int = FRAME_GAP) -> np.ndarray:
    """Group name ``<date>_<first frame>-<last frame>`` of every photo: frames of one date are
    sorted and a new group starts where the next frame number is more than ``gap`` above the
    previous one."""
    frames = [frame_of(n) for n in names]
    group_of: dict[tuple[str, int], str] = {}
    for date in sorted({d for d, _ in frames}):
        numbers = sorted({f for d, f in frames if d == date})
        runs = [[numbers[0]]]
        for number in numbers[1:]:
            if number - runs[-1][-1] <= gap:
                runs[-1].append(number)
            else:
                runs.append([number])
        for run in runs:
            for number in run:
                group_of[(date, number)] = f"{date}_{run[0]}-{run[-1]}"
    return np.asarray([group_of[f] for f in frames])


def scan_photos(root: Path) -> tuple[list[str], np.ndarray]:
    """Photo names and labels (1 = positive) of a Kahikatea folder, in the order
    ``reproduce_paper2.load_kahikatea`` loads them (negatives, then positives, each sorted)."""
    names, labels = [], []
    for label, cls in enumerate(CLASSES):
        found = sorted(p.name for p in (root / "images" / cls).glob("*.jpg"))
        names += found
        labels += [label] * len(found)
    if not names:
        raise SystemExit(f"no photos under {root}/images/negative and .../positive")
    if len(set(names)) != len(names):
        raise SystemExit(f"{root}: a photo name occurs in both classes")
    return names, np.asarray(labels)


def protocol_split(names: Sequence[str], labels: np.ndarray, gap: int = FRAME_GAP) -> dict[str, np.ndarray]:
    """``group`` of every photo, ``fold`` (0..FOLDS-1, -1 for the hold-out) and ``holdout`` (bool)."""
    groups = frame_groups(names, gap)
    holdout = grouped_split(labels, groups, [HOLDOUT_SHARE, 1.0 - HOLDOUT_SHARE], HOLDOUT_SEED) == 0
    fold = np.full(len(names), -1, dtype=np.int64)
    fold[~holdout] = grouped_folds(labels[~holdout], groups[~holdout], FOLDS, FOLD_SEED)
    return {"group": groups, "fold": fold, "holdout": holdout}


def split_texts(names: Sequence[str], labels: np.ndarray) -> dict[str, str]:
    """The contents of ``folds.csv`` and ``holdout.txt`` for these photos."""
    split = protocol_split(names, labels)
    rows = ["photo,class,group,fold"]
    rows += [f"{n},{CLASSES[l]},{g},{f}" for n, l, g, f, h in
             zip(names, labels, split["group"], split["fold"], split["holdout"]) if not h]
    holdout = [f"# Kahikatea locked hold-out (issue 21): {int(split['holdout'].sum())} photos of "
               f"{np.unique(split['group'][split['holdout']]).size} frame groups; rule in PROTOCOL.md",
               f"# groups: frames of one date within {FRAME_GAP} numbers; grouped_split share {HOLDOUT_SHARE}, "
               f"seed {HOLDOUT_SEED}",
               "# class/photo"]
    holdout += [f"{CLASSES[l]}/{n}" for n, l, h in zip(names, labels, split["holdout"]) if h]
    return {"folds.csv": "\n".join(rows) + "\n", "holdout.txt": "\n".join(holdout) + "\n"}


def write_split(root: Path, protocol_dir: Path) -> None:
    """Write ``folds.csv`` and ``holdout.txt`` from the data; files that exist must be
    identical (the split is locked: a different one is refused, not overwritten)."""
    names, labels = scan_photos(root)
    texts = split_texts(names, labels)
    protocol_dir.mkdir(parents=True, exist_ok=True)
    for file, text in texts.items():
        path = protocol_dir / file
        if path.exists():
            if path.read_text() != text:
                raise SystemExit(f"{path} exists and differs from the split of {root}: the split is locked; "
                                 "remove the file by hand only if the protocol says so")
            log(f"{path}: unchanged")
            continue
        path.write_text(text)
        log(f"wrote {path}")


def read_split(protocol_dir: Path) -> dict[str, dict[str, Any]]:
    """Photo name -> {class, label, group, fold (-1 = hold-out)} from the committed files."""
    folds_file, holdout_file = protocol_dir / "folds.csv", protocol_dir / "holdout.txt"
    if not folds_file.exists() or not holdout_file.exists():
        raise SystemExit(f"no split in {protocol_dir} (folds.csv, holdout.txt): run --write-split first")
    out: dict[str, dict[str, Any]] = {}
    with folds_file.open(newline="") as f:
        for row in csv.DictReader(f):
            out[row["photo"]] = {"class": row["class"], "label": CLASSES.index(row["class"]), "group": row["group"],
                                 "fold": int(row["fold"])}
    for line in holdout_file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            cls, name = line.strip().split("/", 1)
            if name in out:
                raise SystemExit(f"{name} is in both {folds_file.name} and {holdout_file.name}")
            out[name] = {"class": cls, "label": CLASSES.index(cls), "group": None, "fold": -1}
    names = sorted(out)
    for name, group in zip(names, frame_groups(names)):  # group names depend on all frames: recomputed
        if out[name]["group"] not in (None, group):
            raise SystemExit(f"{folds_file}: {name} is in group {out[name]['group']}, the rule gives {group}")
        out[name]["group"] = group
    return out


# -- runs -------------------------------------------------------------------------------------
def settings_for(mode: str) -> dict[str, Any]:
    """The variants' settings: the pre-registered ones, shrunk for ``smoke`` and ``timing``."""
    out = {k: dict(v) for k, v in SETTINGS.items()}
    for variant, changes in {"smoke": SMOKE, "timing": TIMING}.get(mode, {}).items():
        out[variant].update(changes)
    return out


def git_state() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "research", "core", "bench"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty)}


class Context:
    """Data, split and folders of one invocation."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.root = Path(args.data)
        self.mode = "smoke" if args.smoke else "timing" if args.timing else "full"
        self.settings = settings_for(self.mode)
        sub = "" if self.mode == "full" else self.mode
        self.out = Path(args.out) / sub if sub else Path(args.out)
        self.workdir = Path(args.workdir).expanduser() / sub if sub else Path(args.workdir).expanduser()
        self.split = read_split(Path(args.protocol_dir))
        names, labels = scan_photos(self.root)
        missing = sorted(set(names) ^ set(self.split))
        if missing:
            raise SystemExit(f"the photos of {self.root} and the committed split differ ({len(missing)} photos, e.g. "
                             f"{missing[:3]}): this is not the data the protocol was registered on")
        for n, l in zip(names, labels):
            if self.split[n]["label"] != l:
                raise SystemExit(f"{n}: class {CLASSES[l]} in the data but {self.split[n]['class']} in the split")
        self.names, self.labels = np.asarray(names), labels
        self.fold = np.asarray([self.split[n]["fold"] for n in names])
        self.group = np.asarray([self.split[n]["group"] for n in names])
        self._photos: dict[Any, dict[str, np.ndarray]] = {}

    def photos(self, size: int | tuple[int, int]) -> dict[str, np.ndarray]:
        from glassbox.research.reproduce_paper2 import load_kahikatea

        key = size if isinstance(size, int) else tuple(size)
        if key not in self._photos:
            data = load_kahikatea(self.root, key, 0, Path(self.args.workdir).expanduser() / "cache")
            if not np.array_equal(data["names"], self.names):
                raise SystemExit("internal error: the loaded photos are not in the scanned order")
            self._photos[key] = data
        return self._photos[key]

    def parts(self, k: int) -> dict[str, np.ndarray]:
        """Indices (into the data) of the fit, calibration, test and hold-out photos of fold k;
        --smoke and --timing keep a few of each, per class (seeded, fixed)."""
        parts = {"fit": np.flatnonzero((self.fold >= 0) & (self.fold != k) & (self.fold != (k + 1) % FOLDS)),
                 "calibration": np.flatnonzero(self.fold == (k + 1) % FOLDS),
                 "test": np.flatnonzero(self.fold == k), "holdout": np.flatnonzero(self.fold == -1)}
        if self.mode != "full":
            limits = {"fit": self.args.few_photos, "calibration": max(2, self.args.few_photos // 2),
                      "test": max(2, self.args.few_photos // 2), "holdout": max(2, self.args.few_photos // 2)}
            rng = np.random.default_rng(0)
            for part, idx in parts.items():
                keep = [np.sort(rng.permutation(idx[self.labels[idx] == c])[: limits[part]]) for c in (0, 1)]
                parts[part] = np.sort(np.concatenate(keep))
        return parts

    def folds(self) -> list[int]:
        return [0] if self.mode != "full" else list(self.args.folds)


def _subset(data: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in data.items()}


def train_member(ctx: Context, variant: str, seed: int, k: int, parts: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """Train (or reuse) the member ``variant`` of (seed, fold k) on the fit photos and return
    its logits ``(len(scored), 2)`` for ``scored = calibration + test + hold-out`` (that order)
    and its training figures."""
    scored = np.concatenate([parts["calibration"], parts["test"], parts["holdout"]])
    used = np.concatenate([parts["fit"], scored])
    n_fit = parts["fit"].size
    folder = ctx.workdir / variant / f"seed{seed}" / f"fold{k}"
    s = ctx.settings[variant]
    if variant in ("photo", "masked"):
        from glassbox.research import reproduce_paper2

        p, m = ctx.settings["photo"], ctx.settings["masked"]
        ns = reproduce_paper2.parse_args([
            "--kahikatea", str(ctx.root), "--workdir", str(ctx.workdir), "--inits", "scratch",
            "--image-size", str(p["image_size"]), "--epochs", str(p["epochs"]), "--lr", str(p["lr"]),
            "--batch-size", str(p["batch_size"]), "--val-fraction", str(p["val_fraction"]),
            "--finetune-epochs", str(m["epochs"]), "--finetune-lr", str(m["lr"]),
            "--negative-masks", m["negative_masks"], "--alphas", "",
            "--mask-types", m["mask_type"] if variant == "masked" else ""])
        data = _subset(ctx.photos(p["image_size"]), used)
        folds = np.zeros(used.size, dtype=np.int64)
        folds[:n_fit] = 1  # run_fold trains on folds != 0 and scores folds == 0, in index order
        # the photo classifier and its masked fine-tune share one folder: the fine-tune starts from it
        result = reproduce_paper2.run_fold(ns, data, "model", SHIPPED_RGB, ARCHITECTURE, seed, 0, folds,
                                           ctx.workdir / "photo" / f"seed{seed}" / f"fold{k}")
        info = result["baseline"] if variant == "photo" else result["masked"][m["mask_type"]]
        logits = np.asarray(info["test_logits"], dtype=np.float64)
        figures = {key: v for key, v in info.items() if key not in ("test_logits", "jaccard", "ensemble_jaccard")}
        return logits, figures
    from glassbox.research.kahikatea_patches import run_patch_fold

    data = _subset(ctx.photos(tuple(s["photo_size"])), used)
    if s["masks"] == "whole photo":  # photo labels only: every patch of a positive photo is positive
        data["masks"] = np.broadcast_to((data["labels"] == 1)[:, None, None], data["masks"].shape).copy()
    result = run_patch_fold(
        data, np.arange(n_fit), np.arange(n_fit, used.size), folder, SHIPPED_RGB, ARCHITECTURE, CLASSES, seed,
        patch=s["patch"], stride=s["stride"], epochs=s["epochs"], negatives_per_positive=s["negatives_per_positive"],
        calibration_fraction=0.0, photo_epochs=s["photo_epochs"], photo_logit=s["photo_logit"],
        photo_patch_loss=s["photo_patch_loss"], log=log)
    logits = np.asarray(result["test_logits"], dtype=np.float64)
    figures = {key: v for key, v in result.items() if key not in ("test_logits", "jaccard")}
    return logits, figures


def choose_alpha(photo: np.ndarray, member: np.ndarray, labels: np.ndarray,
                 alphas: Sequence[float] = ALPHAS) -> tuple[float, dict[str, float]]:
    """The alpha of ``alpha * photo + (1 - alpha) * member`` with the best accuracy on the
    calibration photos; ties: the alpha nearest 0.5, then the larger. Also every alpha's
    calibration accuracy."""
    accuracy = {f"{a:g}": float(((a * photo + (1 - a) * member).argmax(1) == labels).mean()) for a in alphas}
    best = max(accuracy.values())
    chosen = min((a for a in alphas if accuracy[f"{a:g}"] == best), key=lambda a: (abs(a - 0.5), -a))
    return float(chosen), accuracy


def run_paths(out: Path, variant: str, seed: int, k: int) -> dict[str, Path]:
    return {"json": out / variant / f"seed{seed}" / f"fold{k}.json",
            "csv": out / variant / f"seed{seed}" / f"fold{k}.csv",
            "sealed": out / "sealed" / variant / f"seed{seed}" / f"fold{k}.csv"}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_run(ctx: Context, variant: str, seed: int, k: int, parts: dict[str, np.ndarray], logits: np.ndarray,
              record: dict[str, Any]) -> dict[str, Any]:
    """Write the per-photo logits (calibration and test; hold-out sealed, without labels) and
    the run's JSON (last: its presence marks the run done)."""
    paths = run_paths(ctx.out, variant, seed, k)
    n_cal, n_test = parts["calibration"].size, parts["test"].size
    rows = ["photo,label,part,logit_negative,logit_positive"]
    for part, idx, block in (("calibration", parts["calibration"], logits[:n_cal]),
                             ("test", parts["test"], logits[n_cal : n_cal + n_test])):
        rows += [f"{ctx.names[i]},{ctx.labels[i]},{part},{a:.6g},{b:.6g}" for i, (a, b) in zip(idx, block)]
    _write(paths["csv"], "\n".join(rows) + "\n")
    sealed = ["photo,logit_negative,logit_positive"]
    sealed += [f"{ctx.names[i]},{a:.6g},{b:.6g}" for i, (a, b) in zip(parts["holdout"], logits[n_cal + n_test :])]
    _write(paths["sealed"], "\n".join(sealed) + "\n")
    test_labels = ctx.labels[parts["test"]]
    cal_labels = ctx.labels[parts["calibration"]]
    record = {"variant": variant, "seed": seed, "fold": k, "calibration_fold": (k + 1) % FOLDS, "mode": ctx.mode,
              "n": {p: int(i.size) for p, i in parts.items()},
              "test_accuracy": float((logits[n_cal : n_cal + n_test].argmax(1) == test_labels).mean()),
              "calibration_accuracy": float((logits[:n_cal].argmax(1) == cal_labels).mean()),
              **record, "git": git_state(), "finished": datetime.datetime.now().isoformat(timespec="seconds"),
              "load_average": list(os.getloadavg()), "threads": ctx.args.threads}
    _write(paths["json"], json.dumps(record, indent=1) + "\n")
    return record


def read_run(out: Path, variant: str, seed: int, k: int) -> dict[str, Any] | None:
    """The run's JSON with ``rows`` (photo -> (label, part, logits)) and ``sealed`` (photo ->
    logits) added; None when it has not finished."""
    paths = run_paths(out, variant, seed, k)
    if not paths["json"].exists():
        return None
    record = json.loads(paths["json"].read_text())
    with paths["csv"].open(newline="") as f:
        record["rows"] = {r["photo"]: (int(r["label"]), r["part"], (float(r["logit_negative"]),
                                                                      float(r["logit_positive"])))
                          for r in csv.DictReader(f)}
    with paths["sealed"].open(newline="") as f:
        record["sealed"] = {r["photo"]: (float(r["logit_negative"]), float(r["logit_positive"]))
                            for r in csv.DictReader(f)}
    return record


def run_one(ctx: Context, variant: str, seed: int, k: int) -> dict[str, Any]:
    """Run (or skip, when done) one (variant, seed, fold)."""
    done = read_run(ctx.out, variant, seed, k)
    if done is not None:
        log(f"{variant} seed {seed} fold {k}: done ({done['test_accuracy']:.3f}), skipped")
        return done
    parts = ctx.parts(k)
    if variant in ENSEMBLES:
        first, second = ENSEMBLES[variant]
        members = [run_one(ctx, m, seed, k) for m in (first, second)]
        order = [ctx.names[i] for i in np.concatenate([parts["calibration"], parts["test"]])]
        sealed_order = [ctx.names[i] for i in parts["holdout"]]
        stacked = [np.asarray([m["rows"][n][2] for n in order] + [m["sealed"][n] for n in sealed_order])
                   for m in members]
        n_cal = parts["calibration"].size
        alpha, by_alpha = choose_alpha(stacked[0][:n_cal], stacked[1][:n_cal], ctx.labels[parts["calibration"]])
        logits = alpha * stacked[0] + (1 - alpha) * stacked[1]
        record = {"members": [first, second], "alpha": alpha, "calibration_accuracy_by_alpha": by_alpha,
                  "rule": "alpha * L_" + first + " + (1 - alpha) * L_" + second + "; alpha: best calibration "
                          "accuracy over " + ", ".join(f"{a:g}" for a in ALPHAS) + ", ties nearest 0.5 then larger",
                  "seconds": 0.0}
    else:
        log(f"{variant} seed {seed} fold {k}: training on {parts['fit'].size} photos")
        started, cpu = time.perf_counter(), time.process_time()
        logits, figures = train_member(ctx, variant, seed, k, parts)
        record = {"settings": ctx.settings[variant], "training": figures,
                  "seconds": round(time.perf_counter() - started, 1),
                  "cpu_seconds": round(time.process_time() - cpu, 1)}
    result = write_run(ctx, variant, seed, k, parts, logits, record)
    log(f"{variant} seed {seed} fold {k}: test accuracy {result['test_accuracy']:.3f} "
        f"(calibration {result['calibration_accuracy']:.3f}), {result['seconds']:.0f} s")
    return read_run(ctx.out, variant, seed, k)


# -- summaries --------------------------------------------------------------------------------
def _correct(run: dict[str, Any], part: str = "test") -> dict[str, bool]:
    return {n: int(np.argmax(logits)) == label for n, (label, p, logits) in run["rows"].items() if p == part}


def summarise(ctx: Context, seeds: Sequence[int]) -> dict[str, Any]:
    """Every finished run of every variant: mean +- SD over seeds x folds, per-fold figures,
    alphas, paired comparisons with both baselines and the goal (when complete)."""
    folds = ctx.folds()
    runs = {v: {(s, k): r for s in seeds for k in folds if (r := read_run(ctx.out, v, s, k)) is not None}
            for v in VARIANTS}
    expected = len(seeds) * len(folds)
    report: dict[str, Any] = {"mode": ctx.mode, "seeds": list(seeds), "folds": folds, "variants": {},
                              "comparisons": {}, "generated": datetime.datetime.now().isoformat(timespec="seconds")}
    correct: dict[str, dict[int, dict[str, bool]]] = {}
    for v, found in runs.items():
        if not found:
            report["variants"][v] = {"runs": 0, "expected": expected}
            continue
        acc = [r["test_accuracy"] for r in found.values()]
        entry = {"runs": len(found), "expected": expected, "complete": len(found) == expected,
                 "test_accuracy": mean_sd(acc),
                 "per_run": {f"seed{s}_fold{k}": round(r["test_accuracy"], 4) for (s, k), r in sorted(found.items())},
                 "calibration_accuracy": mean_sd([r["calibration_accuracy"] for r in found.values()]),
                 "seconds": round(sum(r.get("seconds", 0.0) for r in found.values()), 1),
                 "seconds_by_seed": {f"seed{s}": round(sum(r.get("seconds", 0.0) for (rs, _), r in found.items() if rs == s), 1)
                                     for s in seeds}}
        if v in ENSEMBLES:
            entry["alphas"] = {f"seed{s}_fold{k}": r["alpha"] for (s, k), r in sorted(found.items())}
        report["variants"][v] = entry
        correct[v] = {}
        for s in seeds:
            if all((s, k) in found for k in folds):
                merged: dict[str, bool] = {}
                for k in folds:
                    merged.update(_correct(found[(s, k)]))
                correct[v][s] = merged
        if correct[v]:  # every test photo once per seed: the accuracy over photos, folds of any size
            entry["pooled_accuracy"] = mean_sd([np.mean(list(c.values())) for c in correct[v].values()])
            entry["pooled_seeds"] = sorted(correct[v])
            # secondary: only the photos of the flight that holds both classes, where the date
            # (light, season, flood) cannot tell the classes apart
            within = [[ok for n, ok in c.items() if frame_of(n)[0] == WITHIN_FLIGHT] for c in correct[v].values()]
            entry["pooled_accuracy_within_flight"] = mean_sd([np.mean(w) for w in within if w])
    for base in BASELINES:
        for v in VARIANTS:
            if v == base or v not in correct or base not in correct:
                continue
            common = [s for s in seeds if s in correct[v] and s in correct[base]]
            if not common:
                continue
            photos = sorted(correct[v][common[0]])
            per_seed = {f"seed{s}": mcnemar_exact([correct[v][s][p] for p in photos], [correct[base][s][p] for p in photos])
                        for s in common}
            a = np.mean([[correct[v][s][p] for p in photos] for s in common], axis=0)
            b = np.mean([[correct[base][s][p] for p in photos] for s in common], axis=0)
            groups = [ctx.split[p]["group"] for p in photos]
            report["comparisons"][f"{v} vs {base}"] = {
                "seeds": common, "photos": len(photos), "mcnemar_per_seed": per_seed,
                "bootstrap_photos": paired_bootstrap_ci(a, b, seed=0),
                "bootstrap_groups": paired_bootstrap_ci(a, b, seed=0, groups=groups)}
    report["goal"] = goal(report)
    return report


def goal(report: dict[str, Any]) -> dict[str, Any]:
    """The pre-registered goal on the grouped folds: best ensemble >= 90 % and >= the better
    baseline + 3 points, on the pooled accuracy (all test photos of a seed's 5 folds, mean over
    the seeds); only when every run is in."""
    variants = report["variants"]
    if not all(variants.get(v, {}).get("complete") for v in VARIANTS):
        return {"status": "incomplete"}
    best = max(ENSEMBLES, key=lambda v: variants[v]["pooled_accuracy"]["mean"])
    base = max(BASELINES, key=lambda v: variants[v]["pooled_accuracy"]["mean"])
    b_acc, base_acc = variants[best]["pooled_accuracy"]["mean"], variants[base]["pooled_accuracy"]["mean"]
    at_90, plus_3 = b_acc >= 0.90, b_acc >= base_acc + 0.03
    return {"status": "met" if at_90 and plus_3 else "not met", "best_ensemble": best, "accuracy": b_acc,
            "baseline": base, "baseline_accuracy": base_acc, "at_least_0.90": at_90,
            "at_least_baseline_plus_0.03": plus_3}


def _pct(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    return f"{100 * entry['mean']:.1f} ± {100 * entry['sd']:.1f}"


def summary_markdown(report: dict[str, Any]) -> str:
    lines = ["# Kahikatea protocol (issue 21): results so far", "",
             f"Mode {report['mode']}; seeds {report['seeds']}; folds {report['folds']}; generated "
             f"{report['generated']}. Pooled: accuracy over all test photos of a seed's folds, mean ± SD over "
             "seeds (the goal's figure); per fold: mean ± sample SD over seeds x folds; every variant run is "
             "listed. Rules: bench/kahikatea_protocol/PROTOCOL.md.", "",
             "| variant | runs | pooled test accuracy % | per-fold test accuracy % | calibration accuracy % | "
             f"pooled, {WITHIN_FLIGHT} flight only % | alphas |",
             "|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        e = report["variants"].get(v, {})
        alphas = ", ".join(f"{a:g}" for a in e.get("alphas", {}).values()) or ""
        lines.append(f"| {v} | {e.get('runs', 0)}/{e.get('expected', '?')} | {_pct(e.get('pooled_accuracy'))} | "
                     f"{_pct(e.get('test_accuracy'))} | "
                     f"{_pct(e.get('calibration_accuracy'))} | {_pct(e.get('pooled_accuracy_within_flight'))} | {alphas} |")
    lines += ["", "| comparison | seeds | McNemar exact p per seed (only A / only B right) | difference, 95 % CI "
              "(photos) | 95 % CI (frame groups) |", "|---|---|---|---|---|"]
    for name, c in report["comparisons"].items():
        mc = "; ".join(f"{s}: {m['p_value']:.3g} ({m['a_only']}/{m['b_only']})" for s, m in c["mcnemar_per_seed"].items())
        bp, bg = c["bootstrap_photos"], c["bootstrap_groups"]
        lines.append(f"| {name} | {c['seeds']} | {mc} | {100 * bp['difference']:+.1f} [{100 * bp['low']:+.1f}, "
                     f"{100 * bp['high']:+.1f}] | [{100 * bg['low']:+.1f}, {100 * bg['high']:+.1f}] |")
    g = report["goal"]
    lines += ["", f"Goal (best ensemble >= 90 % and >= better baseline + 3 points): **{g['status']}**"
              + (f" ({g['best_ensemble']} {100 * g['accuracy']:.1f} % vs {g['baseline']} "
                 f"{100 * g['baseline_accuracy']:.1f} %)" if g["status"] != "incomplete" else ""), ""]
    return "\n".join(lines)


def write_summary(ctx: Context, seeds: Sequence[int]) -> dict[str, Any]:
    report = summarise(ctx, seeds)
    _write(ctx.out / "summary.json", json.dumps(report, indent=1) + "\n")
    _write(ctx.out / "summary.md", summary_markdown(report))
    return report


README_START = "<!-- kahikatea-table -->"
README_END = "<!-- /kahikatea-table -->"
LABELS_USED = {"photo": "photo labels", "masked": "photo labels + expert masks",
               "patch": "photo labels + expert masks", "mil": "photo labels",
               "masked_ens": "photo labels + expert masks", "patch_ens": "photo labels + expert masks"}
WHAT = {"photo": "whole-photo ResNet18 (224 px); baseline",
        "masked": "`photo` fine-tuned on photos with the background blurred (the toolbox's `finetune_masked`)",
        "patch": "mask-labelled 64 px patch classifier, then fine-tuned on whole photos",
        "mil": "as `patch`, photo labels only; **fair baseline** (same backbone, size, pretraining)",
        "masked_ens": "alpha x `photo` + (1 - alpha) x `masked`, alpha on the calibration fold",
        "patch_ens": "alpha x `photo` + (1 - alpha) x `patch`, alpha on the calibration fold"}


def readme_table(summary: dict[str, Any], holdout: dict[str, Any] | None) -> str:
    """README's Kahikatea table, made from the committed ``summary.json`` (and ``holdout.json``
    once the hold-out is scored): per variant the pooled grouped-CV accuracy (mean +- SD over
    seeds), the difference to the fair baseline ``mil`` with its 95 % CI over frame groups,
    the hold-out accuracy, and the command and measured time that rebuild the row."""
    lines = ["| variant | what it is | labels | grouped 5-fold CV, pooled % (mean ± SD, seeds) | vs `mil`, points "
             "[95 % CI, frame groups] | hold-out % (mean ± SD over models) | rebuild: `--variant`, hours for 3 seeds |",
             "|---|---|---|---|---|---|---|"]
    variants = summary["variants"]
    for v in VARIANTS:
        e = variants.get(v, {})
        comparison = summary["comparisons"].get(f"{v} vs mil")
        diff = (f"{100 * comparison['bootstrap_groups']['difference']:+.1f} [{100 * comparison['bootstrap_groups']['low']:+.1f}, "
                f"{100 * comparison['bootstrap_groups']['high']:+.1f}]") if comparison else "-"
        held = _pct(holdout["variants"][v]["accuracy"]) if holdout else "sealed"
        members = ENSEMBLES.get(v, (v,))
        if v == "masked":  # it fine-tunes the photo model, so rebuilding it trains photo too
            members = ("photo", "masked")
        # seed 0 ran alone on 2 idle cores (seeds 1 and 2 side by side, a core each): its time x 3
        hours = len(SEEDS) * sum(variants.get(m, {}).get("seconds_by_seed", {}).get(f"seed{SEEDS[0]}", 0.0)
                                 for m in members) / 3600
        lines.append(f"| `{v}` | {WHAT[v]} | {LABELS_USED[v]} | {_pct(e.get('pooled_accuracy'))} "
                     f"({len(e.get('pooled_seeds', []))}) | {diff} | {held} | `{v}`, {hours:.1f} |")
    g = summary["goal"]
    if g["status"] == "incomplete":
        done = sum(variants.get(m, {}).get("runs", 0) for m in MEMBERS)
        expected = len(MEMBERS) * len(SEEDS) * FOLDS
        lines += ["", f"**Interim**: {done} of the {expected} pre-registered trainings are in; a pooled figure "
                      "covers the seeds whose 5 folds are all in (their number in brackets), the CIs the same "
                      "seeds; the goal is judged and the hold-out unsealed only when all are in."]
    else:
        lines += ["", f"Goal on the grouped folds (best ensemble >= 90 % and >= the better baseline + 3 points): "
                      f"**{g['status']}**: `{g['best_ensemble']}` {100 * g['accuracy']:.1f} % against "
                      f"`{g['baseline']}` {100 * g['baseline_accuracy']:.1f} %."]
    if holdout and "confirms" in holdout:
        c = holdout["confirms"]
        lines += ["", f"On the locked hold-out ({holdout['photos']} photos, scored {len(holdout['scorings'])} time(s)): "
                      f"`{c['best_ensemble_by_cv']}` {100 * c['accuracy']:.1f} % against the better baseline "
                      f"{100 * c['better_baseline_accuracy']:.1f} %: **{c['status']}**."]
    return "\n".join(lines)


def update_readme(readme: Path, out: Path) -> str:
    """Replace the table between README_START and README_END in ``readme`` with
    :func:`readme_table` of the results in ``out``; returns the table."""
    summary = json.loads((out / "summary.json").read_text())
    holdout_file = out / "holdout.json"
    holdout = json.loads(holdout_file.read_text()) if holdout_file.exists() else None
    if holdout is not None:
        _write(out / "holdout.md", holdout_markdown(holdout))  # rendering only: the scoring is in holdout.json
    table = readme_table(summary, holdout)
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}", encoding="utf-8")
    return table


def holdout_markdown(report: dict[str, Any]) -> str:
    """``holdout.md``: the hold-out report of :func:`score_holdout` (``holdout.json``) as Markdown."""
    history = report["scorings"]
    lines = ["# Kahikatea protocol: the locked hold-out", "",
             f"{report['photos']} photos; scored {len(history)} time(s), last {history[-1]['when']}"
             + (" (forced rescoring recorded)" if any(h.get("forced") for h in history) else "") + ". "
             "Every (seed, fold) model of a variant scores them; no retraining. Rules: "
             "bench/kahikatea_protocol/PROTOCOL.md.", "",
             "| variant | models | accuracy % (mean ± SD over models) | accuracy of the mean logits % |",
             "|---|---|---|---|"]
    for v, e in report["variants"].items():
        lines.append(f"| {v} | {e['models']} | {_pct(e['accuracy'])} | {100 * e['mean_logit_accuracy']:.1f} |")
    lines += ["", "| comparison | McNemar exact p, mean logits (only A / only B right) | difference of the share "
              "of models right, 95 % CI (photos) | 95 % CI (frame groups) |", "|---|---|---|---|"]
    for name, c in report["comparisons"].items():
        m, bp, bg = c["mcnemar_mean_logits"], c["bootstrap_photos"], c["bootstrap_groups"]
        lines.append(f"| {name} | {m['p_value']:.3g} ({m['a_only']}/{m['b_only']}) | {100 * bp['difference']:+.1f} "
                     f"[{100 * bp['low']:+.1f}, {100 * bp['high']:+.1f}] | [{100 * bg['low']:+.1f}, {100 * bg['high']:+.1f}] |")
    if "confirms" in report:
        c = report["confirms"]
        lines += ["", f"Goal on the hold-out (the ensemble of the better grouped-CV figure, `{c['best_ensemble_by_cv']}`, "
                      f">= 90 % and >= the better baseline + 3 points): **{c['status']}**: "
                      f"{100 * c['accuracy']:.1f} % against {100 * c['better_baseline_accuracy']:.1f} %."]
    return "\n".join(lines) + "\n"


def score_holdout(ctx: Context, seeds: Sequence[int], force: bool) -> dict[str, Any]:
    """Score the locked hold-out once: every (variant, seed, fold) model's sealed logits against
    the hold-out labels; per variant the mean +- SD of those accuracies and, per photo, the
    prediction of the mean logits over all its models (paired tests against both baselines).
    Refused when it was scored before (``holdout.json``) unless ``force``; every scoring is
    recorded in it."""
    target = ctx.out / "holdout.json"
    history: list[dict[str, Any]] = []
    if target.exists():
        previous = json.loads(target.read_text())
        if not force:
            raise SystemExit(f"the hold-out was already scored ({previous['scorings'][-1]['when']}; {target}); "
                             "it is scored once. --force scores it again and records that it did")
        history = previous["scorings"]
    folds = ctx.folds()
    missing = [(v, s, k) for v in VARIANTS for s in seeds for k in folds if read_run(ctx.out, v, s, k) is None]
    if missing:
        raise SystemExit(f"{len(missing)} runs are not finished (e.g. {missing[:3]}): the hold-out is scored once, "
                         "after every pre-registered run")
    cv = summarise(ctx, seeds)
    holdout = [n for n in ctx.names[ctx.fold == -1]]
    if ctx.mode != "full":
        holdout = [ctx.names[i] for i in ctx.parts(0)["holdout"]]
    labels = np.asarray([ctx.split[n]["label"] for n in holdout])
    groups = [ctx.split[n]["group"] for n in holdout]
    report: dict[str, Any] = {"photos": len(holdout), "variants": {}, "comparisons": {}}
    correct_mean, correct_share = {}, {}
    for v in VARIANTS:
        runs = [read_run(ctx.out, v, s, k) for s in seeds for k in folds]
        logits = np.asarray([[r["sealed"][n] for n in holdout] for r in runs])  # (models, photos, 2)
        accs = [(m.argmax(1) == labels).mean() for m in logits]
        correct_mean[v] = logits.mean(axis=0).argmax(1) == labels
        correct_share[v] = np.mean([m.argmax(1) == labels for m in logits], axis=0)
        report["variants"][v] = {"models": len(runs), "accuracy": mean_sd(accs),
                                 "mean_logit_accuracy": float(correct_mean[v].mean())}
    for base in BASELINES:
        for v in VARIANTS:
            if v != base:
                report["comparisons"][f"{v} vs {base}"] = {
                    "mcnemar_mean_logits": mcnemar_exact(correct_mean[v], correct_mean[base]),
                    "bootstrap_photos": paired_bootstrap_ci(correct_share[v], correct_share[base], seed=0),
                    "bootstrap_groups": paired_bootstrap_ci(correct_share[v], correct_share[base], seed=0,
                                                            groups=groups)}
    cv_goal = cv["goal"]
    if cv_goal["status"] != "incomplete":
        best, base_cv = cv_goal["best_ensemble"], cv_goal["baseline"]
        acc = report["variants"][best]["accuracy"]["mean"]
        base_acc = max(report["variants"][b]["accuracy"]["mean"] for b in BASELINES)
        report["confirms"] = {"best_ensemble_by_cv": best, "baseline_by_cv": base_cv, "accuracy": acc,
                              "better_baseline_accuracy": base_acc, "at_least_0.90": bool(acc >= 0.90),
                              "at_least_baseline_plus_0.03": bool(acc >= base_acc + 0.03),
                              "status": "confirmed" if acc >= 0.90 and acc >= base_acc + 0.03 else "not confirmed"}
    history.append({"when": datetime.datetime.now().isoformat(timespec="seconds"), "forced": bool(force and history),
                    "git": git_state()})
    report["scorings"] = history
    _write(target, json.dumps(report, indent=1) + "\n")
    _write(ctx.out / "holdout.md", holdout_markdown(report))
    return report


def estimate(ctx: Context) -> dict[str, Any]:
    """Full-run time from the --timing runs (fold 0, a few photos, 1 epoch a stage): training
    seconds scaled by photos x epochs of the full run, scoring seconds by photos scored; per
    fold and for every pre-registered (variant, seed, fold)."""
    full = settings_for("full")
    timing = settings_for("timing")
    fold = ctx.fold
    n_fit = int(np.mean([((fold >= 0) & (fold != k) & (fold != (k + 1) % FOLDS)).sum() for k in range(FOLDS)]))
    n_scored = int(np.mean([((fold == k) | (fold == (k + 1) % FOLDS) | (fold == -1)).sum() for k in range(FOLDS)]))
    out: dict[str, Any] = {"full_fit_photos": n_fit, "full_scored_photos": n_scored, "variants": {}}
    for v in MEMBERS:
        run = read_run(ctx.out, v, SEEDS[0], 0)
        if run is None:
            continue
        fit, scored = run["n"]["fit"], run["n"]["calibration"] + run["n"]["test"] + run["n"]["holdout"]
        t = run["training"]
        if v in ("photo", "masked"):
            stages = [(t["seconds"], full[v]["epochs"] / timing[v]["epochs"])]
        else:
            tune = t.get("photo_finetune", {}).get("seconds", 0.0)
            stages = [(t["seconds"], full[v]["epochs"] / timing[v]["epochs"]),
                      (tune, full[v]["photo_epochs"] / timing[v]["photo_epochs"])]
        train = sum(sec for sec, _ in stages)
        score = max(0.0, run["seconds"] - train)  # loading, scoring, Grad-CAM / patch-map Jaccards
        per_fold = sum(sec * ratio for sec, ratio in stages) * n_fit / max(fit, 1) + score * n_scored / max(scored, 1)
        out["variants"][v] = {"timing_run_seconds": run["seconds"], "timing_train_seconds": round(train, 1),
                              "timing_fit_photos": fit, "timing_scored_photos": scored,
                              "estimated_seconds_per_fold": round(per_fold), "load_average": run.get("load_average")}
    total = sum(e["estimated_seconds_per_fold"] for e in out["variants"].values()) * FOLDS * len(SEEDS)
    out["estimated_hours_all_runs"] = round(total / 3600, 1)
    out["note"] = ("linear in photos x epochs; patch stages also scale with patches (proportional to photos); "
                   "early stopping of the patch stage can only shorten it; measured on a shared, loaded CPU")
    _write(ctx.out / "estimate.json", json.dumps(out, indent=1) + "\n")
    return out


# -- command line -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="Kahikatea folder: images/{positive,negative}, masks/positive (needed by all but --update-readme)")
    p.add_argument("--variant", default="all", help=f"one of {', '.join(VARIANTS)}, or all")
    p.add_argument("--seed", type=int, help="one training seed (default: --seeds)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--folds", default=",".join(map(str, range(FOLDS))), help="test folds to run (default all)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="per-photo logits and results (committed)")
    p.add_argument("--workdir", default="~/kahikatea_protocol_work", help="models and caches (not committed)")
    p.add_argument("--protocol-dir", default=str(PROTOCOL_DIR), help="folds.csv and holdout.txt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write-split", action="store_true", help="write folds.csv and holdout.txt from the data "
                                                              "(refused when different ones exist)")
    p.add_argument("--summary", action="store_true", help="only rewrite summary.json and summary.md")
    p.add_argument("--update-readme", metavar="README", help="only rewrite the Kahikatea table of README (between "
                                                           f"{README_START} and {README_END}) from the committed results")
    p.add_argument("--holdout", action="store_true", help="score the locked hold-out (once)")
    p.add_argument("--force", action="store_true", help="with --holdout: score it again (recorded)")
    p.add_argument("--smoke", action="store_true", help="fold 0, a few photos, 1 epoch, tiny images: "
                                                        "proves the pipeline (outputs under <out>/smoke)")
    p.add_argument("--timing", action="store_true", help="fold 0, a few photos, 1 epoch a stage, real sizes: "
                                                         "measures the time per fold (outputs under <out>/timing)")
    p.add_argument("--few-photos", type=int, default=0,
                   help="--smoke/--timing: fit photos per class (default 8 / 30); half as many of the others")
    args = p.parse_args(argv)
    if args.smoke and args.timing:
        p.error("--smoke or --timing, not both")
    if not args.data and not args.update_readme:
        p.error("--data is required (the Kahikatea folder)")
    if not args.few_photos:
        args.few_photos = 30 if args.timing else 8
    args.seeds = [args.seed] if args.seed is not None else [int(s) for s in args.seeds.split(",") if s.strip()]
    args.folds = [int(k) for k in args.folds.split(",") if k.strip()]
    if any(not 0 <= k < FOLDS for k in args.folds):
        p.error(f"--folds: numbers 0..{FOLDS - 1}")
    args.variants = list(VARIANTS) if args.variant == "all" else [v.strip() for v in args.variant.split(",")]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)} or all")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.write_split:
        write_split(Path(args.data), Path(args.protocol_dir))
        return {}
    if args.update_readme:
        print(update_readme(Path(args.update_readme), Path(args.out)))
        return {}
    ctx = Context(args)
    if args.summary:
        return write_summary(ctx, args.seeds)
    if args.holdout:
        return score_holdout(ctx, args.seeds, args.force)
    import torch

    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants if not (ctx.mode == "timing" and v in ENSEMBLES)]
    for seed in args.seeds:
        for k in ctx.folds():
            for v in variants:
                run_one(ctx, v, seed, k)
    if ctx.mode == "timing":
        return estimate(ctx)
    report = write_summary(ctx, args.seeds)
    print(summary_markdown(report))
    return report


if __name__ == "__main__":
    main()
