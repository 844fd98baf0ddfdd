"""scripts/train_eurosat_rgb.py (a caller of core.training.loop.train_classifier) on a generated
EuroSAT-like folder: a fresh run, a fine-tune that starts from its weights (``--init-weights``),
the shipped default's two steps with the shipped card's fields, stop and resume to the
uninterrupted result, distillation, ``--tta-eval`` and ``--ensemble``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import load_script

PLUGIN_DIR = Path(__file__).resolve().parent.parent
SHIPPED_RGB = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32.pt"
EUROSAT_NAMES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                 "PermanentCrop", "Residential", "River", "SeaLake"]


@pytest.fixture(scope="module")
def eurosat_like(tmp_path_factory) -> Path:
    """30 JPEG tiles (64 px) per EuroSAT class name; each class its own colour plus noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("eurosat_like")
    rng = np.random.default_rng(0)
    colours = rng.integers(20, 236, (len(EUROSAT_NAMES), 3))
    for label, name in enumerate(EUROSAT_NAMES):
        (root / name).mkdir()
        for i in range(30):
            tile = np.clip(colours[label] + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(tile).save(root / name / f"{name}_{i}.jpg", quality=95)
    return root


def run(script, *argv: str) -> int:
    return script.main([*argv, "--threads", "1", "--batch-size", "16"])


def test_fine_tune_starts_from_the_given_weights_and_keeps_their_scaling(eurosat_like, tmp_path):
    script = load_script("scripts/train_eurosat_rgb.py")
    first = tmp_path / "first"
    assert run(script, "--data", str(eurosat_like), "--epochs", "4", "--lr", "3e-3",
               "--workdir", str(tmp_path / "w1"), "--out", str(first)) == 0
    first_card = json.loads(first.with_suffix(".json").read_text())
    assert first_card["accuracy"]["test_overall"] >= 0.9  # colours are easy: the run really learnt

    # one epoch at a learning rate far too small to learn anything from a random start: the
    # accuracy can only come from the initial weights
    tuned = tmp_path / "tuned"
    assert run(script, "--data", str(eurosat_like), "--epochs", "1", "--lr", "1e-7",
               "--init-weights", f"{first}.pt", "--workdir", str(tmp_path / "w2"), "--out", str(tuned)) == 0
    card = json.loads(tuned.with_suffix(".json").read_text())
    assert card["accuracy"]["test_overall"] >= 0.9
    assert card["training"]["initial_weights"]["model"] == "first.pt"
    assert card["scaling"]["mean"] == first_card["scaling"]["mean"]

    scratch = tmp_path / "scratch"
    assert run(script, "--data", str(eurosat_like), "--epochs", "1", "--lr", "1e-7",
               "--workdir", str(tmp_path / "w3"), "--out", str(scratch)) == 0
    assert json.loads(scratch.with_suffix(".json").read_text())["accuracy"]["test_overall"] < 0.5


def test_init_weights_of_another_architecture_are_refused(eurosat_like, tmp_path):
    script = load_script("scripts/train_eurosat_rgb.py")
    with pytest.raises(SystemExit, match="resnet18_64, not a paper1_cnn"):
        run(script, "--data", str(eurosat_like), "--epochs", "1", "--init-weights", str(SHIPPED_RGB),
            "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "m"))


SHIPPED_96PX = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32_96px"


def state_of(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_retrains_like_the_shipped_default_and_records_the_same_fields(eurosat_like, tmp_path):
    """The shipped default's two steps (a half-width resnet18_64, then its fine-tune at 96 px
    with --shift 4), on tiny settings: every file is written, the card and metrics hold the
    shipped files' fields, the card reads Sentinel-2 digital numbers and the ONNX file gives
    the accuracy its card states."""
    from glassbox.core.models.backends import load_model
    from glassbox.core.training.evaluation import evaluate

    script = load_script("scripts/train_eurosat_rgb.py")
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert run(script, "--data", str(eurosat_like), "--arch", "resnet18_64", "--arch-kwargs", '{"width": 8}',
               "--shift", "4", "--epochs", "2", "--weight-decay", "0.05", "--out", str(base),
               "--workdir", str(tmp_path / "w_base")) == 0
    assert run(script, "--data", str(eurosat_like), "--arch", "resnet18_64",
               "--arch-kwargs", '{"width": 8, "input_scale": 1.5}', "--init-weights", f"{base}.pt",
               "--epochs", "1", "--lr", "1e-3", "--weight-decay", "0.05", "--shift", "4", "--out", str(tuned),
               "--workdir", str(tmp_path / "w_tuned")) == 0
    for suffix in (".onnx", ".pt", ".json", ".metrics.json"):
        assert (tmp_path / f"tuned{suffix}").is_file(), suffix
    assert (tmp_path / "w_tuned" / "checkpoint.pt").is_file()
    assert script.parse_args(["--data", "d", "--out", "x/m_96px"]).workdir == "/tmp/glassbox_train_m_96px"
    card = json.loads(tuned.with_suffix(".json").read_text())
    shipped = json.loads(SHIPPED_96PX.with_suffix(".json").read_text())
    assert set(shipped["training"]) <= set(card["training"])
    assert set(shipped["accuracy"]) == set(card["accuracy"])
    assert set(json.loads(Path(f"{SHIPPED_96PX}.metrics.json").read_text())) <= \
        set(json.loads(Path(f"{tuned}.metrics.json").read_text()))
    training = card["training"]
    assert training["augmentation"] == shipped["training"]["augmentation"]
    assert training["optimizer"] == shipped["training"]["optimizer"]
    # the same rule; only the module path of split_of moved (core.datasets -> core.training.datasets)
    assert training["split_rule"].split(" (core.")[0] == shipped["training"]["split_rule"].split(" (core.")[0]
    assert "core.training.datasets.split_of" in training["split_rule"]
    assert training["initial_weights"]["model"] == "base.pt"
    assert training["initial_weights"]["architecture"] == {"name": "resnet18_64", "kwargs": {"width": 8}}
    assert training["trainer"] == "core.training.loop.train_classifier"
    assert card["architecture"] == {"name": "resnet18_64", "kwargs": {"width": 8, "input_scale": 1.5}}
    base_card = json.loads(base.with_suffix(".json").read_text())
    assert card["scaling"] == base_card["scaling"]  # a fine-tune keeps the scaling of its weights
    assert card["scaling"]["scale"] == pytest.approx(255 / 2750) and card["scaling"]["clip"] == [0.0, 255.0]
    assert training["n_train"] + training["n_val"] + training["n_test"] == 300

    # the ONNX model, on the test tiles as the jpgs hold them, gives the card's accuracy
    script_args = script.parse_args(["--data", str(eurosat_like), "--out", str(tuned), "--workdir", str(tmp_path / "w_tuned")])
    [test] = script.held_out(script_args)
    assert test.num_tiles == card["accuracy"]["n_test"] == training["n_test"]
    onnx = evaluate(load_model(f"{tuned}.onnx"), test, prescaled=True)
    assert onnx.metrics.overall_accuracy == pytest.approx(card["accuracy"]["test_overall"], abs=1e-4)
    # the mean/std are those of the base run's training tiles, in 0..255 units
    data, idx = script.load_eurosat(script_args)
    train = data.tiles[idx["train"]].astype(np.float64)
    assert base_card["scaling"]["mean"] == pytest.approx(train.mean(axis=(0, 2, 3)).tolist(), rel=1e-6)


def test_stopped_run_resumes_to_the_uninterrupted_result(eurosat_like, tmp_path):
    script = load_script("scripts/train_eurosat_rgb.py")
    common = ["--data", str(eurosat_like), "--epochs", "3", "--lr", "3e-3", "--shift", "2", "--limit-train", "120"]
    whole = tmp_path / "whole"
    assert run(script, *common, "--workdir", str(tmp_path / "w1"), "--out", str(whole)) == 0

    parts = tmp_path / "parts"
    args = [*common, "--workdir", str(tmp_path / "w2"), "--out", str(parts)]
    assert run(script, *args, "--stop-after", "1") == 0
    assert (tmp_path / "w2" / "checkpoint.pt").is_file() and not list(tmp_path.glob("parts.*"))
    assert state_of(tmp_path / "w2" / "checkpoint.pt")["epoch"] == 1
    with pytest.raises(SystemExit, match=r"other settings \(lr: 0.003 in the checkpoint, 0.001 now\)"):
        run(script, *[a if a != "3e-3" else "1e-3" for a in args])
    assert run(script, *args) == 0  # the same command resumes after epoch 1
    a, b = state_of(f"{whole}.pt"), state_of(f"{parts}.pt")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    metrics_a = json.loads(Path(f"{whole}.metrics.json").read_text())
    metrics_b = json.loads(Path(f"{parts}.metrics.json").read_text())
    assert strip(metrics_a["history"]) == strip(metrics_b["history"]) and len(metrics_b["history"]) == 3
    assert metrics_a["confusion_matrix"] == metrics_b["confusion_matrix"]
    assert json.loads(whole.with_suffix(".json").read_text())["training"]["n_train"] == 120

    # --restart discards the checkpoint: a second model from the start, with another learning rate
    assert run(script, *[a if a != "3e-3" else "1e-3" for a in args], "--restart") == 0
    assert state_of(tmp_path / "w2" / "checkpoint.pt")["config"]["lr"] == 1e-3


def test_distillation_tta_eval_and_ensemble(eurosat_like, tmp_path, capsys):
    script = load_script("scripts/train_eurosat_rgb.py")
    common = ["--data", str(eurosat_like), "--lr", "3e-3"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert run(script, *common, "--epochs", "2", "--workdir", str(tmp_path / "w1"), "--out", str(first)) == 0
    # a student distilled from the first model with weight 1: it learns only from the teacher's logits
    assert run(script, *common, "--epochs", "2", "--seed", "1", "--teacher", f"{first}.pt", "--distill-weight", "1",
               "--workdir", str(tmp_path / "w2"), "--out", str(second)) == 0
    assert (tmp_path / "w2" / "teacher_logits.npz").is_file()
    card = json.loads(second.with_suffix(".json").read_text())
    assert card["training"]["distillation"]["teacher"] == ["first.pt"] and "distilled from 1" in card["name"]
    assert card["accuracy"]["test_overall"] >= 0.8
    assert json.loads(Path(f"{second}.metrics.json").read_text())["distillation"]["weight"] == 1.0

    capsys.readouterr()
    assert run(script, "--data", str(eurosat_like), "--tta-eval", f"{first}.pt", "--workdir", str(tmp_path / "w1"),
               "--export-tta-onnx", str(tmp_path / "first_tta.onnx")) == 0
    result = json.loads(capsys.readouterr().out.strip().split("\n", 1)[1])
    assert result["test_overall"] == pytest.approx(json.loads(first.with_suffix(".json").read_text())["accuracy"]["test_overall"], abs=1e-4)
    assert 0 <= result["test_overall_tta8"] <= 1 and (tmp_path / "first_tta.onnx").is_file()

    ensemble = tmp_path / "ensemble"
    assert run(script, "--data", str(eurosat_like), "--ensemble", f"{first}.pt", f"{second}.pt", "--float16-weights",
               "--workdir", str(tmp_path / "w1"), "--out", str(ensemble)) == 0
    metrics = json.loads(Path(f"{ensemble}.metrics.json").read_text())
    assert metrics["members"] == ["first.pt", "second.pt"] and metrics["float16_weights"]["test_tiles_changed"] >= 0
    from glassbox.core.models.backends import load_model

    assert load_model(f"{ensemble}.onnx").card.accuracy["test_overall"] == pytest.approx(metrics["test_overall"], abs=1e-4)


def test_a_gate_learns_to_mix_two_unchanged_trained_networks(eurosat_like, tmp_path):
    """--arch gated --experts A.pt B.pt --train-only gate: both experts are written back tensor
    for tensor (weights and batch-norm statistics), the gate learnt something, the card names the
    experts; experts that scale their input differently are refused."""
    import torch

    script = load_script("scripts/train_eurosat_rgb.py")
    paper1 = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_paper1_cnn.pt"
    out = tmp_path / "gated"
    assert run(script, "--data", str(eurosat_like), "--arch", "gated", "--arch-kwargs", '{"gate_width": 8}',
               "--experts", str(SHIPPED_RGB), str(paper1), "--train-only", "gate", "--keep", "last",
               "--radiometric", "1", "--radiometric-fraction", "0.5", "--epochs", "1", "--lr", "1e-2",
               "--workdir", str(tmp_path / "w"), "--out", str(out)) == 0
    written = state_of(out.with_suffix(".pt"))
    for i, expert in enumerate((SHIPPED_RGB, paper1)):
        assert all(torch.equal(written[f"experts.{i}.{k}"], v) for k, v in state_of(expert).items())
    assert written["gate.head.2.weight"].abs().sum() > 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["architecture"]["name"] == "gated" and card["name"].startswith("EuroSAT RGB gated ensemble of")
    assert [e["name"] for e in card["architecture"]["kwargs"]["experts"]] == ["resnet18_64", "paper1_cnn"]
    assert [e["model"] for e in card["training"]["experts"]] == [SHIPPED_RGB.name, paper1.name]
    assert "gate" in card["training"]["trained_part"]

    other = tmp_path / "rescaled"
    other.mkdir()
    (other / paper1.name).write_bytes(paper1.read_bytes())
    rescaled = json.loads(paper1.with_suffix(".json").read_text())
    rescaled["scaling"]["mean"] = [m + 10 for m in rescaled["scaling"]["mean"]]
    (other / paper1.with_suffix(".json").name).write_text(json.dumps(rescaled))
    with pytest.raises(SystemExit, match="scale their input differently"):
        run(script, "--data", str(eurosat_like), "--arch", "gated", "--experts", str(SHIPPED_RGB),
            str(other / paper1.name), "--train-only", "gate",
            "--workdir", str(tmp_path / "w2"), "--out", str(tmp_path / "m"))


def test_an_input_corrector_learns_in_front_of_the_unchanged_shipped_classifier(eurosat_like, tmp_path):
    """--arch corrected --init-weights <the shipped 64 px network> --train-only corrector: the
    written model's classifier is the shipped network tensor for tensor (weights and batch-norm
    statistics), its corrector learnt something, and the card says what was trained."""
    import torch

    script = load_script("scripts/train_eurosat_rgb.py")
    out = tmp_path / "corrected"
    assert run(script, "--data", str(eurosat_like), "--arch", "corrected", "--arch-kwargs",
               '{"classifier": "resnet18_64", "classifier_kwargs": {"width": 32}, "corrector_width": 8}',
               "--init-weights", str(SHIPPED_RGB), "--train-only", "corrector", "--keep", "last",
               "--radiometric", "1", "--radiometric-fraction", "0.5", "--epochs", "1", "--lr", "1e-3",
               "--workdir", str(tmp_path / "w"), "--out", str(out)) == 0
    written, shipped = state_of(out.with_suffix(".pt")), state_of(SHIPPED_RGB)
    assert all(torch.equal(written[f"classifier.{k}"], v) for k, v in shipped.items())
    assert written["corrector.local_fit.6.weight"].abs().sum() > 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["architecture"]["name"] == "corrected" and "corrector" in card["training"]["trained_part"]
    with pytest.raises(SystemExit, match="resnet18_64, not a paper1_cnn"):
        run(script, "--data", str(eurosat_like), "--arch", "corrected", "--arch-kwargs", '{"classifier": "paper1_cnn"}',
            "--init-weights", str(SHIPPED_RGB), "--train-only", "corrector",
            "--workdir", str(tmp_path / "w2"), "--out", str(tmp_path / "m"))
