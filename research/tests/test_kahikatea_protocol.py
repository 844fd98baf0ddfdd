"""research/kahikatea_protocol.py: frame groups, the locked split (the committed files and a
generated one), and the runner end to end (--smoke) on generated photos: per-photo logits,
ensembles' alpha from the calibration fold, resuming, the summary and the once-only hold-out."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from glassbox.research import kahikatea_protocol as kp

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "kahikatea"


def test_frame_of_reads_both_name_styles():
    assert kp.frame_of("Biospatial_20160702U_1860_01_03.jpg") == ("20160702", 1860)
    assert kp.frame_of("positive/Biospatial_20170317_S1578_03_01.jpg") == ("20170317", 1578)
    assert kp.frame_of("Biospatial_20170331_U0514_02_02.jpg") == ("20170331", 514)
    with pytest.raises(ValueError, match="photo name"):
        kp.frame_of("img12.jpg")


def test_frame_groups_chain_close_frames_of_one_date():
    names = ["X_20160702U_0100_01_01.jpg", "X_20160702U_0108_02_01.jpg",  # 8 apart: together
             "X_20160702U_0117_01_01.jpg",  # 9 after 108: chained into the same group
             "X_20160702U_0128_01_01.jpg",  # 11 after 117: a new group
             "X_20160603U_0100_01_01.jpg",  # other date: its own group
             "X_20170317_P1574_01_01.jpg", "X_20170317_S1577_01_01.jpg"]  # cameras ignored: together
    groups = kp.frame_groups(names, gap=10)
    assert groups.tolist() == ["20160702_100-117"] * 3 + ["20160702_128-128", "20160603_100-100"] + \
        ["20170317_1574-1577"] * 2
    # with gap 1 every frame here is its own group
    assert len(set(kp.frame_groups(names, gap=1))) == 7


def fake_names(runs: int = 14, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Photo names of ``runs`` runs of 2 consecutive frames over 3 dates, 2 tiles a frame, and
    labels (each run mostly one class)."""
    rng = np.random.default_rng(seed)
    names, labels = [], []
    for r in range(runs):
        date = ["20160603U", "20160702U", "20170317"][r % 3]
        main = r % 2
        for f in range(2):
            for t in range(2):
                frame = 100 * r + f
                code = f"{frame:04d}" if date.endswith("U") else f"P{frame:04d}"
                names.append(f"Biospatial_{date}_{code}_{t + 1:02d}_01.jpg")
                labels.append(main if rng.random() < 0.8 else 1 - main)
    return names, np.asarray(labels)


def check_split(groups: np.ndarray, fold: np.ndarray, labels: np.ndarray) -> None:
    for g in np.unique(groups):
        assert np.unique(fold[groups == g]).size == 1, f"group {g} in two parts"
    assert set(fold[fold >= 0].tolist()) == set(range(kp.FOLDS))
    for c in (0, 1):
        share = (fold[labels == c] == -1).mean()
        assert 0.1 <= share <= 0.3, f"hold-out holds {share:.0%} of class {c}"


def test_protocol_split_of_generated_names():
    names, labels = fake_names()
    split = kp.protocol_split(names, labels)
    assert np.array_equal(split["holdout"], split["fold"] == -1)
    check_split(split["group"], split["fold"], labels)
    again = kp.protocol_split(names, labels)
    assert np.array_equal(split["fold"], again["fold"])
    texts = kp.split_texts(names, labels)
    assert texts == kp.split_texts(names, labels)
    assert texts["folds.csv"].startswith("photo,class,group,fold\n")


def test_committed_split_is_grouped_balanced_and_locked():
    folder = REPO / "bench" / "kahikatea_protocol"
    split = kp.read_split(folder)
    names = sorted(split)
    assert len(names) == 519
    groups = np.asarray([split[n]["group"] for n in names])
    fold = np.asarray([split[n]["fold"] for n in names])
    labels = np.asarray([split[n]["label"] for n in names])
    check_split(groups, fold, labels)
    assert np.array_equal(groups, kp.frame_groups(names))
    counts = Counter(fold.tolist())
    assert 0.15 <= counts[-1] / len(names) <= 0.25
    for k in range(kp.FOLDS):
        assert set(labels[fold == k]) == {0, 1}, f"fold {k} lacks a class"
    if not (DATA / "images").is_dir():
        pytest.skip(f"no Kahikatea data at {DATA}: the files' agreement with the data is not checked")
    scanned, scanned_labels = kp.scan_photos(DATA)
    texts = kp.split_texts(scanned, scanned_labels)
    for file, text in texts.items():
        assert (folder / file).read_text() == text, f"{file} differs from the split of the data"


def test_write_split_refuses_a_different_split(tmp_path):
    root = kahikatea_like(tmp_path / "data", fake_names()[0][:40], fake_names()[1][:40])
    kp.main(["--data", str(root), "--write-split", "--protocol-dir", str(tmp_path / "p")])
    before = (tmp_path / "p" / "folds.csv").read_text()
    kp.main(["--data", str(root), "--write-split", "--protocol-dir", str(tmp_path / "p")])  # same: fine
    (tmp_path / "p" / "folds.csv").write_text(before.replace(",0\n", ",1\n", 1))
    with pytest.raises(SystemExit, match="locked"):
        kp.main(["--data", str(root), "--write-split", "--protocol-dir", str(tmp_path / "p")])


def kahikatea_like(root: Path, names: list[str], labels: np.ndarray) -> Path:
    """Photos (noise; positives with a dark-green disc and its mask) under the given names."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls in kp.CLASSES:
        (root / "images" / cls).mkdir(parents=True, exist_ok=True)
    (root / "masks" / "positive").mkdir(parents=True, exist_ok=True)
    for name, label in zip(names, labels):
        h, w = int(rng.integers(60, 80)), int(rng.integers(90, 120))
        photo = np.clip(rng.normal(150, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        cls = kp.CLASSES[label]
        if label:
            yy, xx = np.mgrid[:h, :w]
            cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), int(rng.integers(10, 18))
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            photo[disc] = (30, 90, 40)
            Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / cls / (Path(name).stem + ".png"))
        Image.fromarray(photo).save(root / "images" / cls / name, quality=95)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_runner_smoke_end_to_end(tmp_path):
    names, labels = fake_names()
    root = kahikatea_like(tmp_path / "data", names, labels)
    protocol = tmp_path / "protocol"
    kp.main(["--data", str(root), "--write-split", "--protocol-dir", str(protocol)])
    out, work = tmp_path / "out", tmp_path / "work"
    base = ["--data", str(root), "--protocol-dir", str(protocol), "--out", str(out), "--workdir", str(work),
            "--smoke", "--seed", "0", "--threads", "1"]
    report = kp.main(base + ["--variant", "all"])

    smoke = out / "smoke"
    split = kp.read_split(protocol)
    for variant in kp.VARIANTS:
        record = json.loads((smoke / variant / "seed0" / "fold0.json").read_text())
        rows = read_csv(smoke / variant / "seed0" / "fold0.csv")
        sealed = read_csv(smoke / "sealed" / variant / "seed0" / "fold0.csv")
        assert record["mode"] == "smoke" and record["calibration_fold"] == 1
        # calibration photos come from fold 1, test photos from fold 0, sealed ones from the hold-out
        assert {split[r["photo"]]["fold"] for r in rows if r["part"] == "calibration"} == {1}
        assert {split[r["photo"]]["fold"] for r in rows if r["part"] == "test"} == {0}
        assert {split[s["photo"]]["fold"] for s in sealed} == {-1}
        assert "label" not in sealed[0]
        test = [r for r in rows if r["part"] == "test"]
        accuracy = np.mean([(float(r["logit_positive"]) > float(r["logit_negative"])) == int(r["label"]) for r in test])
        assert record["test_accuracy"] == pytest.approx(accuracy)
        assert report["variants"][variant]["runs"] == 1
        assert report["variants"][variant]["pooled_accuracy"]["mean"] == pytest.approx(accuracy)
        within = any(kp.frame_of(r["photo"])[0] == kp.WITHIN_FLIGHT for r in test)
        assert report["variants"][variant]["pooled_accuracy_within_flight"]["n"] == int(within)
    # an ensemble mixes its members' logits with the alpha chosen on the calibration photos
    ens = json.loads((smoke / "patch_ens" / "seed0" / "fold0.json").read_text())
    assert ens["alpha"] in kp.ALPHAS and ens["members"] == ["photo", "patch"]
    assert ens["calibration_accuracy_by_alpha"][f"{ens['alpha']:g}"] == max(ens["calibration_accuracy_by_alpha"].values())
    photo = {r["photo"]: r for r in read_csv(smoke / "photo" / "seed0" / "fold0.csv")}
    patch = {r["photo"]: r for r in read_csv(smoke / "patch" / "seed0" / "fold0.csv")}
    for r in read_csv(smoke / "patch_ens" / "seed0" / "fold0.csv"):
        for col in ("logit_negative", "logit_positive"):
            mixed = ens["alpha"] * float(photo[r["photo"]][col]) + (1 - ens["alpha"]) * float(patch[r["photo"]][col])
            assert float(r[col]) == pytest.approx(mixed, abs=1e-4)
    # the photo-labels-only baseline trained its fine-tune without the patch term
    mil = json.loads((smoke / "mil" / "seed0" / "fold0.json").read_text())
    assert mil["training"]["photo_finetune"]["patch_loss"] is False
    assert json.loads((smoke / "patch" / "seed0" / "fold0.json").read_text())["training"]["photo_finetune"]["patch_loss"]
    assert (smoke / "summary.md").read_text().startswith("# Kahikatea protocol")
    assert "masked_ens vs photo" in report["comparisons"] and report["goal"]["status"] in ("met", "not met")

    # resuming: a second command trains nothing and rewrites no run
    stamps = {p: p.stat().st_mtime_ns for p in smoke.rglob("fold0.*")}
    models = {p: p.stat().st_mtime_ns for p in (work / "smoke").rglob("*.pt")}
    kp.main(base + ["--variant", "all"])
    assert {p: p.stat().st_mtime_ns for p in smoke.rglob("fold0.*")} == stamps
    assert {p: p.stat().st_mtime_ns for p in (work / "smoke").rglob("*.pt")} == models

    # the hold-out: scored once; a second scoring needs --force and is recorded
    held = kp.main(base + ["--holdout"])
    assert held["photos"] == len(read_csv(smoke / "sealed" / "photo" / "seed0" / "fold0.csv"))
    assert len(held["scorings"]) == 1 and set(held["variants"]) == set(kp.VARIANTS)
    with pytest.raises(SystemExit, match="once"):
        kp.main(base + ["--holdout"])
    again = kp.main(base + ["--holdout", "--force"])
    assert len(again["scorings"]) == 2 and again["scorings"][-1]["forced"] is True
    report = (smoke / "holdout.md").read_text()
    assert "scored 2 time(s)" in report and "(forced rescoring recorded)" in report
    assert "| patch_ens vs mil |" in report and "Goal on the hold-out" in report and "{" not in report

    # README's table, rebuilt from these results between its markers; the rest of README kept
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{kp.README_START}\nold table\n{kp.README_END}\n\nAfter.\n")
    kp.main(["--update-readme", str(readme), "--out", str(smoke)])
    text = readme.read_text()
    assert text.startswith("# Title\n") and text.endswith("\n\nAfter.\n") and "old table" not in text
    for variant in kp.VARIANTS:
        held = again["variants"][variant]["accuracy"]
        assert f"| `{variant}` |" in text and kp._pct(held) in text.split(f"| `{variant}` |")[1].split("\n")[0]
    assert "On the locked hold-out" in text


def test_holdout_refused_before_every_run_is_in(tmp_path):
    names, labels = fake_names()
    root = kahikatea_like(tmp_path / "data", names, labels)
    kp.main(["--data", str(root), "--write-split", "--protocol-dir", str(tmp_path / "p")])
    with pytest.raises(SystemExit, match="not finished"):
        kp.main(["--data", str(root), "--protocol-dir", str(tmp_path / "p"), "--out", str(tmp_path / "o"),
                 "--workdir", str(tmp_path / "w"), "--holdout"])
    assert not (tmp_path / "o" / "holdout.json").exists()


def test_choose_alpha_ties_go_nearest_one_half():
    photo = np.array([[0.0, 1.0], [1.0, 0.0]])
    member = np.array([[0.0, 1.0], [1.0, 0.0]])
    alpha, by_alpha = kp.choose_alpha(photo, member, np.array([1, 0]))
    assert alpha == 0.5 and set(by_alpha.values()) == {1.0}
    # only the photo classifier is right on the second photo: mixed logits (a, 2 - 2a) are right
    # for alphas above 2/3; the nearest to 0.5 of those is 0.7
    member = np.array([[0.0, 1.0], [0.0, 2.0]])
    alpha, _ = kp.choose_alpha(photo, member, np.array([1, 0]))
    assert alpha == 0.7


def test_variant_and_fold_arguments_are_checked():
    with pytest.raises(SystemExit):
        kp.parse_args(["--data", ".", "--variant", "best"])
    with pytest.raises(SystemExit):
        kp.parse_args(["--data", ".", "--folds", "5"])
    assert kp.parse_args(["--data", ".", "--seed", "2"]).seeds == [2]


def test_patch_fold_without_calibration_photos_needs_the_photo_logit(tmp_path):
    from glassbox.research.kahikatea_patches import run_patch_fold

    data = {"images": np.zeros((4, 3, 64, 96), np.uint8), "masks": np.zeros((4, 64, 96), bool),
            "labels": np.array([0, 1, 0, 1])}
    with pytest.raises(ValueError, match="calibration"):
        run_patch_fold(data, np.arange(2), np.arange(2, 4), tmp_path, kp.SHIPPED_RGB, kp.ARCHITECTURE, kp.CLASSES,
                       0, calibration_fraction=0.0, photo_epochs=1)
