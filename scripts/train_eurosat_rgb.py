#!/usr/bin/env python
"""Train Glassbox's EuroSAT RGB models with the product's training loop
(:func:`core.training.loop.train_classifier`) and export ONNX + Torch.

Usage (from the repository root)::

    .venv/bin/python scripts/train_eurosat_rgb.py --data ../shared/data/eurosat_rgb

Data: ``<data>/<Class>/<Class>_N.jpg`` (64x64 RGB jpgs = Sentinel-2 L1C B04,B03,B02 digital
numbers * 255/2750, clipped to 0..255). Split: :func:`core.training.datasets.split_of` (a fixed hash of
each file's base name: 20 % test, 10 % validation, 70 % training), given to the training loop.

Training: AdamW with a one-cycle learning rate (peak ``--lr``, a quarter of the steps rising),
label smoothing, a random rotation/flip of every tile (plus a random shift of up to ``--shift``
pixels), the jpg values scaled by the per-band mean/std of the training tiles (0..255 units;
a fine-tune keeps its model's), the epoch with the best validation accuracy kept; the card gets
the scaling of Sentinel-2 digital numbers (x 255/2750, clip 0..255, the same mean/std).
A checkpoint is written to ``--workdir`` after every epoch: running the same command again
resumes after the last finished epoch (``--restart`` discards it). Then the kept weights are
evaluated on the test split, with and without 8-fold test-time augmentation
(:func:`core.training.evaluation.evaluate`), and written as ``<out>.onnx`` (card in the ONNX metadata),
``<out>.pt`` + ``<out>.json`` (state dict + card) and ``<out>.metrics.json`` (test accuracy,
per-class F1, confusion matrix, history), all or nothing.

Options beyond the default (the default reproduces the shipped ``eurosat_rgb_paper1_cnn``):
``--arch`` trains another architecture of :mod:`core.models.architectures` (e.g. ``resnet18_64``; its
output then defaults to ``resources/models/eurosat_rgb_<arch>``); ``--init-weights`` fine-tunes
a trained model; ``--teacher A.pt B.pt ...`` trains by knowledge distillation from the mean
logits of trained models (``--distill-weight``, ``--distill-temperature``). ``--tta-eval
MODEL.pt`` only evaluates an existing model on the test split with and without TTA.
``--ensemble A.pt B.pt ... --out OUT`` evaluates the mean-logit ensemble of trained models and
writes it as ``OUT.onnx`` with its accuracy in the card (:func:`core.models.ensemble.build_mean_ensemble`)
and ``OUT.metrics.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch

from glassbox.core.models.card import EUROSAT_CLASSES, ModelCard, Scaling
from glassbox.core.training.scaling import prescaled_scaling
from glassbox.core.training.datasets import load_tiles, scan_tile_folder, split_of, split_rule_text
from glassbox.core.errors import TrainingDataError
from glassbox.core.training.evaluation import Evaluation, evaluate
from glassbox.core.training.data import TrainingData
from glassbox.core.training.loop import TrainingStopped, TrainOptions, module_model, predict_logits, train_classifier
from glassbox.core.training.saving import save_model_files

ARCH = "paper1_cnn"
TILE = 64
TEST_PERCENT = 20
VAL_PERCENT = 10
DN_SCALE = 255.0 / 2750.0
BANDS = ["B04", "B03", "B02"]
AUGMENTATION = "random horizontal flip + random 90-degree rotation (the 8 dihedral symmetries), per tile"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="path to eurosat_rgb (one sub-folder per class)")
    p.add_argument("--out", default=None,
                   help="output path without suffix (default: resources/models/eurosat_rgb_paper1_cnn, "
                   "or resources/models/eurosat_rgb_<arch> for another --arch)")
    p.add_argument("--arch", default=ARCH, help=f"architecture (core.architectures; default {ARCH})")
    p.add_argument("--arch-kwargs", default="{}", metavar="JSON",
                   help='keyword arguments of the architecture, e.g. \'{"width": 32}\' for a half-width '
                   "resnet18_64 (stored in the card)")
    p.add_argument("--shift", type=int, default=0, metavar="PIXELS",
                   help="augmentation: also translate each training tile by up to this many pixels "
                   "(reflection padding), after the dihedral transform; 0 = off")
    p.add_argument("--radiometric", type=float, default=0.0, metavar="STRENGTH",
                   help="augmentation: random radiometry per training tile (core.radiometry.random_radiometry: "
                        "gain/offset per band, brightness, contrast, gamma, haze, noise, glint, blur) at this "
                        "strength, 0 = off, 1 = full ranges (robustness to other seasons and atmospheres)")
    p.add_argument("--radiometric-fraction", type=float, default=1.0, metavar="SHARE",
                   help="share of the training tiles that get the random radiometry (0..1]; the others stay "
                        "clean (default 1: all)")
    p.add_argument("--freeze-batchnorm", action="store_true",
                   help="keep the batch-norm running statistics of --init-weights while fine-tuning (their "
                        "scale and shift still learn)")
    p.add_argument("--train-only", default=None, metavar="PART",
                   help="train only this part of the network, the rest frozen (eval mode): 'corrector' of "
                        "--arch corrected, i.e. an input corrector learnt in front of the --init-weights "
                        "classifier (core.models.architectures.InputCorrector), or 'gate' of --arch gated")
    p.add_argument("--experts", nargs=2, default=None, metavar="MODEL.pt",
                   help="with --arch gated: the two trained networks (state dicts + .json cards, same input "
                        "scaling) a per-tile gate mixes (core.models.architectures.GatedEnsemble); their "
                        "architectures fill the 'experts' of --arch-kwargs; train with --train-only gate")
    p.add_argument("--keep", choices=["best", "last"], default="best",
                   help="which epoch's weights to keep: the best clean validation accuracy (default) or the "
                        "last epoch's")
    p.add_argument("--init-weights", default=None, metavar="MODEL.pt",
                   help="start from this trained model's weights (state dict + .json card of the same "
                        "architecture; kwargs that own no weights, such as input_scale, may differ) and keep "
                        "its input scaling: fine-tuning, e.g. of the default network with "
                        "'{\"width\": 32, \"input_scale\": 1.5}'")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=None,
                   help="training checkpoint, decoded-tile cache and teacher logits (not in the repo; default "
                   "/tmp/glassbox_train_<name of --out>)")
    p.add_argument("--cache-dir", default=None, help="decoded-tile cache (default <workdir>/cache)")
    p.add_argument("--tta-eval", default=None, metavar="MODEL.pt",
                   help="only evaluate this model (state dict + .json card) on the test split, with and "
                   "without 8-fold dihedral TTA, and exit")
    p.add_argument("--export-tta-onnx", default=None, metavar="OUT.onnx",
                   help="with --tta-eval: also export the model wrapped in core.models.architectures.DihedralTTA "
                   "(logits averaged over the 8 dihedral transforms inside one forward pass) as ONNX, with "
                   "the card (accuracy = the TTA test accuracy), and report ONNX Runtime tiles/s of both")
    p.add_argument("--ensemble", nargs="+", default=None, metavar="MODEL.pt",
                   help="only build and evaluate the mean-logit ensemble of these models (state dicts + .json "
                        "cards, same scaling) and write it to --out (.onnx, .metrics.json)")
    p.add_argument("--float16-weights", action="store_true",
                   help="with --ensemble: store the ONNX file's weights as float16 (half the size, float32 "
                        "arithmetic; core.models.export.store_onnx_weights_as_float16); the card and metrics then "
                        "give the accuracy of the written file")
    p.add_argument("--teacher", nargs="+", default=None, metavar="MODEL.pt",
                   help="knowledge distillation: train against the (mean) logits of these trained models "
                   "(state dict + card, e.g. a seed ensemble) as well as the labels")
    p.add_argument("--distill-weight", type=float, default=0.7,
                   help="weight of the distillation loss (the label loss gets 1 - this)")
    p.add_argument("--distill-temperature", type=float, default=2.0,
                   help="softmax temperature of the distillation loss")
    p.add_argument("--teacher-tta", action="store_true",
                   help="teacher logits averaged over the 8 dihedral transforms (8x the teacher's cost)")
    p.add_argument("--resume", action="store_true",
                   help="(the default now; kept for old command lines) continue from <workdir>/checkpoint.pt")
    p.add_argument("--restart", action="store_true", help="discard <workdir>/checkpoint.pt and start afresh")
    p.add_argument("--reschedule", action="store_true",
                   help="accept a checkpoint with a different --epochs: the one-cycle schedule is rebuilt for "
                   "the new length and continues from the current step")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this epoch (checkpoint kept, nothing exported); 0 = never")
    p.add_argument("--stop-at-utc", default=None, metavar="HH:MM",
                   help="stop at the last epoch end before this UTC time (today) from which another epoch, "
                   "as long as the last, would not end in time; the same command resumes")
    p.add_argument("--limit-train", type=int, default=0,
                   help="use only this many training tiles (timing probes, smoke runs); 0 = all")
    p.add_argument("--limit-eval", type=int, default=0,
                   help="use only this many validation and this many test tiles (smoke runs); 0 = all")
    p.add_argument("--no-export", action="store_true", help="train only (timing probes)")
    args = p.parse_args(argv)
    try:
        args.arch_kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as exc:
        p.error(f"--arch-kwargs is not JSON: {exc}")
    if not isinstance(args.arch_kwargs, dict):
        p.error("--arch-kwargs must be a JSON object")
    if not 0.0 < args.radiometric_fraction <= 1.0:
        p.error("--radiometric-fraction must lie in (0, 1]")
    if not 0.0 <= args.distill_weight <= 1.0 or args.distill_temperature <= 0:
        p.error("--distill-weight must lie in 0..1 and --distill-temperature be positive")
    if args.stop_at_utc:
        try:
            datetime.datetime.strptime(args.stop_at_utc, "%H:%M")
        except ValueError:
            p.error(f"--stop-at-utc must be HH:MM (UTC), not {args.stop_at_utc!r}")
    if (args.arch == "gated") != bool(args.experts):
        p.error("--arch gated and --experts go together")
    if args.experts and args.init_weights:
        p.error("--experts and --init-weights exclude each other")
    if args.out is None:
        args.out = str(REPO_ROOT / f"resources/models/eurosat_rgb_{args.arch}")
    if args.workdir is None:
        args.workdir = f"/tmp/glassbox_train_{Path(args.out).name}"
    return args


def say(message: str) -> None:
    print(message, flush=True)


# -- data ----------------------------------------------------------------------------------
def load_eurosat(args: argparse.Namespace) -> tuple[TrainingData, dict[str, np.ndarray]]:
    """All tiles of ``--data`` (uint8, as in the jpgs) and the tile indices of each split
    (``train`` cut to ``--limit-train``, ``val`` and ``test`` to ``--limit-eval``, seeded)."""
    paths, labels, class_names = scan_tile_folder(args.data)
    expected = [c.name for c in EUROSAT_CLASSES]
    if class_names != expected:
        raise SystemExit(f"class folders {class_names} differ from EuroSAT's {expected}")
    tiles = load_tiles(paths, TILE, cache_dir=Path(args.cache_dir or Path(args.workdir) / "cache"))
    splits = np.array([split_of(p.name, TEST_PERCENT, VAL_PERCENT) for p in paths])
    idx = {s: np.flatnonzero(splits == s) for s in ("train", "val", "test")}
    if args.limit_train:
        rng = np.random.default_rng(args.seed)
        idx["train"] = np.sort(rng.choice(idx["train"], size=min(args.limit_train, idx["train"].size), replace=False))
    if args.limit_eval:
        rng = np.random.default_rng(args.seed + 1)
        for s in ("val", "test"):
            idx[s] = np.sort(rng.choice(idx[s], size=min(args.limit_eval, idx[s].size), replace=False))
    data = TrainingData(tiles=tiles, labels=labels, class_names=class_names, band_names=list(BANDS),
                        sources=[str(p) for p in paths], gsd=10.0,
                        description=f"EuroSAT RGB jpgs ({len(paths)} tiles of {TILE} px)")
    return data, idx


def subset(data: TrainingData, index: np.ndarray) -> TrainingData:
    return TrainingData(tiles=data.tiles[index], labels=data.labels[index], class_names=list(data.class_names),
                        band_names=list(data.band_names), sources=[data.sources[i] for i in index], gsd=data.gsd,
                        description=data.description)


def held_out(args: argparse.Namespace, splits: tuple[str, ...] = ("test",)) -> list[TrainingData]:
    data, idx = load_eurosat(args)
    return [subset(data, idx[s]) for s in splits]


def check_eurosat_card(card: ModelCard, option: str) -> None:
    """Stop unless ``card`` is a EuroSAT RGB model of this script (the 10 classes, 64 px tiles)."""
    if card.class_names != [c.name for c in EUROSAT_CLASSES] or card.tile_size != TILE:
        raise SystemExit(f"{option}: the models must be EuroSAT RGB models of this script (10 classes, 64 px)")


def jpg_scaling(card: ModelCard) -> Scaling:
    """The card's scaling for tiles that already hold the jpg values: only its mean/std."""
    return prescaled_scaling(card.scaling)


def torch_card(weights: str | Path) -> ModelCard:
    from glassbox.core.models.backends import card_path_for

    return ModelCard.from_json(card_path_for(Path(weights)).read_text(encoding="utf-8"), str(weights))


def initial_weights(args: argparse.Namespace) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The card and state dict of ``--init-weights``, checked against this run's architecture
    (its card must name the same architecture and every tensor must fit)."""
    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.backends import load_state_dict

    card = torch_card(args.init_weights)
    check_eurosat_card(card, "--init-weights")
    # a 'corrected' network takes the weights of the classifier it corrects
    expected = args.arch_kwargs.get("classifier", "resnet18_64") if args.arch == "corrected" else args.arch
    if card.architecture.get("name") != expected:
        raise SystemExit(f"--init-weights {args.init_weights} is a {card.architecture.get('name')}, "
                         f"not a {expected} (--arch {args.arch})")
    state = load_state_dict(Path(args.init_weights))
    try:
        network = build_model(args.arch, 3, len(EUROSAT_CLASSES), TILE, **args.arch_kwargs)
        if args.arch == "corrected":
            network.classifier.load_state_dict(state)
            state = {f"classifier.{k}": v for k, v in state.items()}
        else:
            network.load_state_dict(state)
    except RuntimeError as exc:
        raise SystemExit(f"--init-weights {args.init_weights} does not fit {args.arch} {args.arch_kwargs}: {exc}")
    return card, state


def expert_weights(args: argparse.Namespace) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The first expert's card and the gated network's state dict (``experts.0.*``,
    ``experts.1.*``) from ``--experts``; their architectures go into ``args.arch_kwargs``. Both
    must read the tiles with the same scaling (the gate and both experts see one input)."""
    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.backends import load_state_dict

    cards = [torch_card(path) for path in args.experts]
    for path, card in zip(args.experts, cards):
        check_eurosat_card(card, "--experts")
        if card.architecture.get("name") == "gated":
            raise SystemExit(f"--experts {path} is itself a gated ensemble")
    first, second = (jpg_scaling(card) for card in cards)
    if not (np.allclose(first.mean, second.mean) and np.allclose(first.std, second.std)):
        raise SystemExit(f"--experts {args.experts[0]} and {args.experts[1]} scale their input differently "
                         "(card mean/std); a gated ensemble feeds both the same tile")
    args.arch_kwargs["experts"] = [{"name": card.architecture["name"], "kwargs": dict(card.architecture.get("kwargs") or {})}
                                   for card in cards]
    network = build_model("gated", 3, len(EUROSAT_CLASSES), TILE, **args.arch_kwargs)
    state: dict[str, torch.Tensor] = {}
    for i, path in enumerate(args.experts):
        expert_state = load_state_dict(Path(path))
        try:
            network.experts[i].load_state_dict(expert_state)
        except RuntimeError as exc:
            raise SystemExit(f"--experts {path} does not fit its own card's architecture: {exc}")
        state.update({f"experts.{i}.{k}": v for k, v in expert_state.items()})
    return cards[0], state


def init_weights_info(args: argparse.Namespace, card: ModelCard) -> dict:
    """Which trained model a ``--init-weights`` run started from, for its card."""
    return {"model": Path(args.init_weights).name, "architecture": card.architecture,
            "test_overall": card.accuracy.get("test_overall")}


def distillation_info(args: argparse.Namespace) -> dict:
    """How a ``--teacher`` run was trained, for its card and metrics."""
    return {"teacher": [Path(t).name for t in args.teacher], "teacher_tta8": args.teacher_tta,
            "weight": args.distill_weight, "temperature": args.distill_temperature,
            "loss": "(1 - weight) * label-smoothed cross-entropy + weight * T^2 * KL(teacher || student) at "
                    "temperature T; teacher logits (mean over the teacher models) of the untransformed "
                    "training tiles"}


def teacher_logits(args: argparse.Namespace, tiles: np.ndarray, workdir: Path) -> np.ndarray:
    """Logits ``(N, 10)`` of the ``--teacher`` models (the mean of their logits) on the training
    tiles, each model with its own card's mean/std; cached in ``<workdir>/teacher_logits.npz``."""
    from glassbox.core.models.architectures import DihedralTTA
    from glassbox.core.models.ensemble import load_mean_ensemble, load_torch_module

    key = json.dumps({"teacher": [[Path(t).name, Path(t).stat().st_size] for t in args.teacher],
                      "tta": args.teacher_tta, "n": int(tiles.shape[0]), "limit_train": args.limit_train,
                      "seed": args.seed})
    cache = workdir / "teacher_logits.npz"
    if cache.exists():
        with np.load(cache) as saved:
            if str(saved["key"]) == key:
                return saved["logits"]
    if len(args.teacher) == 1:
        module, card = load_torch_module(args.teacher[0])
    else:
        module, card, _ = load_mean_ensemble(args.teacher)
    check_eurosat_card(card, "--teacher")
    started = time.time()
    logits = predict_logits(DihedralTTA(module).eval() if args.teacher_tta else module, tiles, jpg_scaling(card))
    say(f"teacher logits of {len(args.teacher)} model(s) on {tiles.shape[0]} training tiles in "
        f"{time.time() - started:.0f} s")
    np.savez(cache, key=np.array(key), logits=logits)
    return logits


def onnx_tiles_per_second(onnx_path: Path, batch: int = 64, repeats: int = 5) -> float:
    """ONNX Runtime (CPU) throughput on random batches of ``batch`` tiles (median of repeats)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, TILE, TILE)).astype(np.float32)
    sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def reads_and_classifies(class_names: list[str]) -> str:
    """The card sentence on what the EuroSAT RGB models read and output."""
    return ("It reads the digital numbers "
            "(top-of-atmosphere reflectance x 10000) of bands B04 (red), B03 (green) and B02 (blue) "
            "at 10 m, scales them by 255/2750 and clips to 0..255 (as the EuroSAT RGB jpgs), and "
            "classifies each 64 x 64-pixel tile (640 m x 640 m) into one of the 10 EuroSAT classes: "
            + ", ".join(class_names))


def on_test_split(model: Any, test: TrainingData) -> tuple[Evaluation, Evaluation]:
    """``model`` on the test tiles (jpg values: the card's mean/std only), without and with
    8-fold dihedral test-time augmentation."""
    return (evaluate(model, test, batch_size=256, prescaled=True),
            evaluate(model, test, batch_size=256, prescaled=True, test_time_augmentation=True))


def f1_by_class(evaluation: Evaluation, digits: int | None = None) -> dict[str, float]:
    m = evaluation.metrics
    return {c: (round(float(v), digits) if digits else float(v)) for c, v in zip(m.class_names, m.f1)}


def confusion_json(evaluation: Evaluation) -> dict:
    return {"rows": "true class", "cols": "predicted class", "counts": evaluation.metrics.confusion.tolist()}


# -- evaluation only -----------------------------------------------------------------------
def tta_eval(args: argparse.Namespace) -> int:
    """--tta-eval: test accuracy of an existing model with and without TTA."""
    from glassbox.core.models.architectures import DihedralTTA
    from glassbox.core.models.backends import TorchModel
    from glassbox.core.models.export import export_onnx

    weights = Path(args.tta_eval)
    model = TorchModel(weights)
    card = model.card
    check_eurosat_card(card, "--tta-eval")
    [test] = held_out(args)
    plain, tta = on_test_split(model, test)
    result = {"model": weights.name, "n_test": test.num_tiles, "test_overall": plain.metrics.overall_accuracy,
              "test_overall_tta8": tta.metrics.overall_accuracy, "seconds_plain": round(plain.seconds, 1),
              "seconds_tta8": round(tta.seconds, 1)}
    say(json.dumps(result))
    onnx_plain = weights.with_suffix(".onnx")
    if onnx_plain.exists():
        result["onnx_tiles_per_second_batch64"] = round(onnx_tiles_per_second(onnx_plain), 1)
    if args.export_tta_onnx:
        out = Path(args.export_tta_onnx)
        acc, acc_plain = tta.metrics.overall_accuracy, plain.metrics.overall_accuracy
        card.name = f"{card.name} + 8-fold dihedral TTA"
        card.architecture = dict(card.architecture, wrapper="DihedralTTA (core.architectures): logits averaged "
                                 "over the 8 dihedral transforms; ONNX only")
        card.accuracy = dict(card.accuracy, test_overall=round(acc, 4), test_overall_single_pass=round(acc_plain, 4),
                             tta="8-fold dihedral test-time augmentation inside the network")
        card.description = card.description + (
            f" This file wraps the network in 8-fold dihedral test-time augmentation (rotations and flips, "
            f"logits averaged): overall accuracy {acc:.1%} on the same held-out tiles, about 8x slower.")
        export_onnx(DihedralTTA(model.module).eval(), card, out)
        result["tta_onnx"] = str(out)
        result["tta_onnx_tiles_per_second_batch64"] = round(onnx_tiles_per_second(out), 1)
    say(json.dumps(result, indent=2))
    return 0


def ensemble_description(members: int, class_names: list[str], test_accuracy: float, n_test: int,
                         storage_note: str = "") -> str:
    """The card description of a mean ensemble of ``members`` networks with its test accuracy."""
    return ("Land-cover classifier for Sentinel-2 Level-1C imagery: the mean of the logits of "
            f"{members} separately trained networks (different seeds or widths). "
            + reads_and_classifies(class_names)
            + f"; overall accuracy {test_accuracy:.1%} on {n_test} held-out EuroSAT tiles{storage_note}.")


def ensemble_eval(args: argparse.Namespace) -> int:
    """--ensemble: the mean-logit ensemble of trained models, evaluated on the validation and
    test splits (test with and without TTA) and written as ONNX with the test accuracy in its card."""
    from glassbox.core.models.backends import load_model
    from glassbox.core.models.ensemble import build_mean_ensemble, load_mean_ensemble
    from glassbox.core.models.export import attach_card_to_onnx, store_onnx_weights_as_float16

    t0 = time.time()
    loaded = load_mean_ensemble(args.ensemble)
    module, card, _ = loaded
    check_eurosat_card(card, "--ensemble")
    val, test = held_out(args, ("val", "test"))
    model = module_model(module, card)
    val_acc = evaluate(model, val, batch_size=256, prescaled=True).metrics.overall_accuracy
    say(f"ensemble of {len(args.ensemble)}: validation accuracy {val_acc:.4f} on {val.num_tiles} tiles")
    plain, tta = on_test_split(model, test)
    test_acc = plain.metrics.overall_accuracy
    say(f"ensemble of {len(args.ensemble)}: TEST accuracy {test_acc:.4f} on {test.num_tiles} tiles; "
        f"with 8-fold dihedral TTA {tta.metrics.overall_accuracy:.4f}")
    members = card.accuracy["members"]
    class_names = card.class_names
    card.name = f"EuroSAT RGB, mean of {len(args.ensemble)} x {card.architecture['members'][0]['name']}"
    card.accuracy = {
        "test_overall": round(test_acc, 4),
        "n_test": test.num_tiles,
        "per_class_f1": f1_by_class(plain, 4),
        "test_overall_tta8_python": round(tta.metrics.overall_accuracy, 4),
        "val_overall": round(val_acc, 4),
        "members_test_overall": [m.get("test_overall") for m in members],
        "members_val_overall": [m.get("val_overall") for m in members],
        "note": "the ensemble measured on the held-out test split; no choice was made on test tiles "
                "(each member kept its best-validation epoch)",
    }
    card.description = ensemble_description(len(args.ensemble), class_names, test_acc, test.num_tiles)
    card.training["ensemble"]["script"] = "scripts/train_eurosat_rgb.py --ensemble"
    card.training["split_rule"] = split_rule_text(TEST_PERCENT, VAL_PERCENT) + " (core.training.datasets.split_of)"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = Path(f"{out}.onnx")
    build_mean_ensemble(args.ensemble, onnx_path, loaded=loaded, log=say)
    written = plain
    storage = None
    if args.float16_weights:  # the accuracy of the written file, measured on the file itself
        storage = store_onnx_weights_as_float16(onnx_path)
        written = evaluate(load_model(onnx_path), test, batch_size=256, prescaled=True)
        changed = int((written.predicted != plain.predicted).sum())
        accuracy = written.metrics.overall_accuracy
        card.accuracy = dict(card.accuracy, test_overall=round(accuracy, 4), per_class_f1=f1_by_class(written, 4),
                             float16_weights=f"weights stored as float16 (float32 arithmetic): {changed} of "
                                             f"{test.num_tiles} test tiles change class against the float32 ensemble")
        card.description = ensemble_description(len(args.ensemble), class_names, accuracy, test.num_tiles,
                                                " (weights stored as float16)")
        attach_card_to_onnx(onnx_path, card)
        storage = dict(storage, test_overall=accuracy, test_tiles_changed=changed)
        say(f"float16 weights: {storage['bytes_before'] / 1e6:.1f} -> {storage['bytes_after'] / 1e6:.1f} MB; "
            f"TEST accuracy of the file {accuracy:.4f} ({changed} tiles changed class)")
    metrics = {
        "test_overall": written.metrics.overall_accuracy,
        "n_test": test.num_tiles,
        "test_overall_tta8": tta.metrics.overall_accuracy,
        "val_overall": val_acc,
        "n_val": val.num_tiles,
        "members": [str(Path(m).name) for m in args.ensemble],
        "members_test_overall": card.accuracy["members_test_overall"],
        "members_val_overall": card.accuracy["members_val_overall"],
        "classes": class_names,
        "per_class_f1": f1_by_class(written),
        "confusion_matrix": confusion_json(written),
        "split_rule": card.training["split_rule"],
        "onnx_tiles_per_second_batch64": onnx_tiles_per_second(onnx_path),
    }
    if storage:
        metrics["float16_weights"] = storage
    say(f"ONNX Runtime {metrics['onnx_tiles_per_second_batch64']:.0f} tiles/s (batch 64)")
    Path(f"{out}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {out}.onnx, .metrics.json in {time.time() - t0:.0f} s")
    return 0


# -- training ------------------------------------------------------------------------------
def stop_time(args: argparse.Namespace) -> float | None:
    if not args.stop_at_utc:
        return None
    hh, mm = (int(v) for v in args.stop_at_utc.split(":"))
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()


def train(args: argparse.Namespace) -> int:
    t0 = time.time()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "checkpoint.pt"
    if args.restart and checkpoint.exists():
        checkpoint.unlink()
    data, idx = load_eurosat(args)
    n = {s: int(i.size) for s, i in idx.items()}
    say(f"tiles: train {n['train']}, val {n['val']}, test {n['test']} (loaded in {time.time() - t0:.1f} s)")

    init_card, init_state, scaling = None, None, None
    if args.init_weights:  # fine-tuning keeps the input scaling the weights were trained with
        init_card, init_state = initial_weights(args)
        scaling = jpg_scaling(init_card)
        say(f"initial weights: {args.init_weights}")
    elif args.experts:  # a gate learns in front of two trained networks, with their input scaling
        init_card, init_state = expert_weights(args)
        scaling = jpg_scaling(init_card)
        say(f"experts: {args.experts[0]} (gate weight g), {args.experts[1]} (1 - g)")
    # else: the per-band mean/std of the training tiles, in 0..255 units (core.training.scaling.compute_scaling)
    teacher = teacher_logits(args, data.tiles[idx["train"]], workdir) if args.teacher else None
    if teacher is not None:
        agree = float((teacher.argmax(1) == data.labels[idx["train"]]).mean())
        say(f"distillation: weight {args.distill_weight}, temperature {args.distill_temperature}; "
            f"teacher agrees with {agree:.2%} of the training labels")
    split_rule = split_rule_text(TEST_PERCENT, VAL_PERCENT) + " (core.training.datasets.split_of; base name e.g. 'Forest_10.jpg')"
    options = TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed, patience=0, threads=args.threads,
        augment=True, schedule="onecycle", channels_last=True, gsd=10.0,
        colours={c.name: c.color for c in EUROSAT_CLASSES}, architecture_kwargs=dict(args.arch_kwargs),
        scaling=scaling, initial_state=init_state,
        initial_state_name=(Path(args.init_weights).name if args.init_weights
                            else " + ".join(Path(e).name for e in args.experts) if args.experts else None),
        split=(idx["train"], idx["val"]), split_description=split_rule, shift=args.shift,
        radiometric=args.radiometric, radiometric_fraction=args.radiometric_fraction,
        freeze_batchnorm=args.freeze_batchnorm, train_only=args.train_only, keep=args.keep,
        teacher_logits=teacher, distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature,
        checkpoint_path=checkpoint, reschedule=args.reschedule, stop_after_epoch=args.stop_after,
        stop_at=stop_time(args),
        checkpoint_config={"script": "scripts/train_eurosat_rgb.py",
                           **({"distillation": distillation_info(args)} if args.teacher else {})},
    )
    try:
        result = train_classifier(data, args.arch, options, log=say)
    except TrainingStopped as stop:
        say(f"{stop}")
        return 0
    except TrainingDataError as exc:
        raise SystemExit(str(exc)) from exc
    if args.no_export:
        return 0

    # -- the kept (best-validation) weights on the held-out test split; the card; export ---------
    trained = result.card
    mean, std = list(trained.scaling.mean), list(trained.scaling.std)
    best_val = result.val_metrics.overall_accuracy
    card = ModelCard(
        name=("EuroSAT RGB CNN (paper 1)" if args.arch == ARCH
              else "EuroSAT RGB gated ensemble of " + " and ".join(Path(e).stem for e in args.experts)
              if args.experts else f"EuroSAT RGB {args.arch}")
        + (f", distilled from {len(args.teacher)} model(s)" if args.teacher else ""),
        classes=list(EUROSAT_CLASSES),
        bands=list(BANDS),
        scaling=Scaling(scale=DN_SCALE, offset=0.0, clip=[0.0, 255.0], mean=mean, std=std),
        tile_size=TILE,
        gsd=10.0,
        architecture=dict(trained.architecture),
        output="logits",
    )
    test = subset(data, idx["test"])
    plain, tta = on_test_split(module_model(result.module, card), test)
    test_acc, test_acc_tta = plain.metrics.overall_accuracy, tta.metrics.overall_accuracy
    say(f"TEST accuracy {test_acc:.4f} on {n['test']} tiles (best val {best_val:.4f}, epoch {result.best_epoch}); "
        f"with 8-fold dihedral TTA {test_acc_tta:.4f}")
    card.description = (
        "Land-cover classifier for Sentinel-2 Level-1C imagery. " + reads_and_classifies(data.class_names)
        + ". Trained on EuroSAT RGB (Sentinel-2 tiles from European countries); "
        f"overall accuracy {test_acc:.1%} on {n['test']} held-out EuroSAT tiles."
        + (" Two trained networks mixed per tile: a learnt gate weighs their logits a and 1 - a from "
           "the tile's own statistics." if args.experts else "")
    )
    card.training = {
        "dataset": "EuroSAT RGB (Helber et al. 2019), 27,000 Sentinel-2 tiles 64x64, 10 classes, MIT licence",
        "split_rule": split_rule,
        "n_train": n["train"],
        "n_val": n["val"],
        "n_test": n["test"],
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW (weight decay {args.weight_decay}), one-cycle LR, peak {args.lr}, "
        f"label smoothing {args.label_smoothing}; "
        + ("last epoch kept" if args.keep == "last" else "best-validation-accuracy epoch kept"),
        "schedule_changes": result.schedule_changes,
        **({k: result.card.training[k] for k in ("trained_part", "batchnorm") if k in result.card.training}),
        "augmentation": AUGMENTATION + (f"; random translation up to {args.shift} px (reflection padding)"
                                        if args.shift else "")
        + (f"; random radiometry at strength {args.radiometric:g}"
           + (f" on {args.radiometric_fraction:.0%} of the tiles" if args.radiometric_fraction < 1 else "")
           + " (core.radiometry.random_radiometry)" if args.radiometric else ""),
        **({"distillation": distillation_info(args)} if args.teacher else {}),
        **({"initial_weights": init_weights_info(args, init_card)} if args.init_weights else {}),
        **({"experts": [{"model": Path(e).name, "architecture": c.architecture,
                         "test_overall": c.accuracy.get("test_overall")}
                        for e, c in zip(args.experts, map(torch_card, args.experts))]}
           if args.experts else {}),
        "best_epoch": result.best_epoch,
        "trainer": "core.training.loop.train_classifier",
        "date": datetime.date.today().isoformat(),
        "torch_version": torch.__version__,
        "script": "scripts/train_eurosat_rgb.py",
    }
    card.accuracy = {
        "test_overall": round(test_acc, 4),
        "n_test": n["test"],
        "per_class_f1": f1_by_class(plain, 4),
        "val_overall": round(best_val, 4),
    }
    if args.arch != ARCH:  # extra fields only for new models (the shipped card stays reproducible)
        card.accuracy["test_overall_tta8_python"] = round(test_acc_tta, 4)
        card.accuracy["tta_note"] = ("test_overall_tta8_python: logits averaged over the 8 dihedral transforms "
                                     "(Python evaluation; the ONNX model itself runs one pass)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model_files(result.module, card, f"{out}.pt", onnx_path=f"{out}.onnx")
    metrics = {
        "test_overall": test_acc,
        "n_test": n["test"],
        "val_overall": best_val,
        "classes": data.class_names,
        "per_class_f1": f1_by_class(plain),
        "confusion_matrix": confusion_json(plain),
        "split_rule": split_rule,
        "history": result.history,
        "schedule_changes": result.schedule_changes,
    }
    if args.teacher:
        metrics["distillation"] = distillation_info(args)
    if args.arch != ARCH:
        metrics["test_overall_tta8"] = test_acc_tta
        metrics["onnx_tiles_per_second_batch64"] = onnx_tiles_per_second(Path(f"{out}.onnx"))
        say(f"ONNX Runtime {metrics['onnx_tiles_per_second_batch64']:.0f} tiles/s (batch 64)")
    Path(f"{out}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {out}.onnx, .pt, .json, .metrics.json in {time.time() - t0:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tta_eval:
        return tta_eval(args)
    if args.ensemble:
        return ensemble_eval(args)
    return train(args)


if __name__ == "__main__":
    raise SystemExit(main())
