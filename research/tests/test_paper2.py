"""research/reproduce_paper2.py end to end on a generated Kahikatea-like folder (photos of two
classes, expert masks for the positives): the table's pipeline, its resumability and the
``--init-model`` start from the shipped EuroSAT RGB network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glassbox.research import kahikatea_patches, reproduce_paper2

PLUGIN_DIR = Path(__file__).resolve().parents[2]
SHIPPED_RGB = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32.pt"


@pytest.fixture(scope="module")
def kahikatea_like(tmp_path_factory) -> Path:
    """12 positives (a dark-green disc, its mask) and 12 negatives (none), sizes varying like
    the real photos'; written as JPEG photos and PNG masks."""
    from PIL import Image

    root = tmp_path_factory.mktemp("kahikatea_like")
    rng = np.random.default_rng(0)
    for label in ("positive", "negative"):
        (root / "images" / label).mkdir(parents=True)
    (root / "masks" / "positive").mkdir(parents=True)
    for i in range(24):
        h, w = int(rng.integers(60, 90)), int(rng.integers(90, 130))
        photo = np.clip(rng.normal(150, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        label = "positive" if i % 2 else "negative"
        if label == "positive":
            yy, xx = np.mgrid[:h, :w]
            cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), int(rng.integers(10, 18))
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            photo[disc] = (30, 90, 40)
            Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / label / f"img{i}.png")
        Image.fromarray(photo).save(root / "images" / label / f"img{i}.jpg", quality=95)
    return root


def test_reproduce_paper2_smoke_with_init_model(kahikatea_like, tmp_path):
    script = reproduce_paper2
    args = ["--kahikatea", str(kahikatea_like), "--workdir", str(tmp_path / "work"), "--smoke",
            "--inits", "model", "--init-model", str(SHIPPED_RGB), "--mask-types", "blur,black",
            "--out-json", str(tmp_path / "p2.json"), "--out-md", str(tmp_path / "p2.md")]
    report = script.main(args)

    assert set(report["inits"]) == {"model"}
    assert report["init_model"]["architecture"] == "resnet18_64"
    assert report["init_model"]["kwargs"] == {"width": 32}
    for init, summary in report["inits"].items():
        accuracy = summary["accuracy"]
        expected = {"baseline"} | {f"{m} alpha={a}" for m in ("blur", "black") for a in ("0", "0.8", "0.9")}
        assert set(accuracy) == expected, init
        for entry in accuracy.values():
            assert entry["n"] == 2 and 0.0 <= entry["mean"] <= 1.0
        assert 0.0 <= summary["gradcam_jaccard"]["raw"]["mean"] <= 1.0
        assert set(summary["goal"]) == {"best_ensemble_at_least_0.90", "best_ensemble_at_least_baseline_plus_0.03"}

    # the init 'model' trains the card's architecture from the shipped weights, in its own folder
    fold0 = tmp_path / "work" / "smoke" / "model_eurosat_rgb_resnet18_64_w32" / "seed0" / "fold0"
    card = json.loads((fold0 / "baseline.json").read_text())
    assert card["architecture"] == {"name": "resnet18_64", "kwargs": {"width": 32}}
    assert card["training"]["initial_weights"] == SHIPPED_RGB.name
    masked_card = json.loads((fold0 / "masked_blur.json").read_text())
    assert masked_card["architecture"] == card["architecture"]

    # the accuracies are those of the saved test logits (hand-computed here)
    folds = script.stratified_folds(np.repeat([0, 1], 12), 2, 0)
    labels_sorted = np.repeat([0, 1], 12)  # load_kahikatea lists negatives first
    per_fold = []
    for k in range(2):
        result = json.loads((fold0.parent / f"fold{k}" / "baseline.result.json").read_text())
        per_fold.append(float((np.asarray(result["test_logits"]).argmax(1) == labels_sorted[folds == k]).mean()))
    assert report["inits"]["model"]["accuracy"]["baseline"]["mean"] == pytest.approx(np.mean(per_fold), abs=1e-4)

    table = (tmp_path / "p2.md").read_text()
    assert "resnet18_64 (width 32) started from eurosat_rgb_resnet18_64_w32.pt" in table
    assert json.loads((tmp_path / "p2.json").read_text())["inits"] == report["inits"]

    # a rerun reuses every saved model and gives the same numbers
    before = {p: p.stat().st_mtime_ns for p in fold0.glob("*.pt")}
    again = script.main(args)
    assert again["inits"] == report["inits"]
    assert {p: p.stat().st_mtime_ns for p in fold0.glob("*.pt")} == before


def test_reproduce_paper2_init_model_needs_a_card(kahikatea_like, tmp_path):
    script = reproduce_paper2
    weights_only = tmp_path / "bare.pt"
    weights_only.write_bytes(SHIPPED_RGB.read_bytes())
    with pytest.raises(SystemExit, match="card"):
        script.main(["--kahikatea", str(kahikatea_like), "--workdir", str(tmp_path / "w"), "--smoke",
                     "--inits", "model", "--init-model", str(weights_only)])
    with pytest.raises(SystemExit):
        script.parse_args(["--kahikatea", str(kahikatea_like), "--workdir", str(tmp_path / "w"), "--inits", "model"])


def green_square_photos(count: int, side: int, seed: int) -> dict[str, np.ndarray]:
    """``count`` 96x64 px noise photos, the second half positive with a dark-green ``side`` px
    square at a random place and its mask: ``{"images", "masks", "labels"}``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], count // 2)
    images = rng.integers(120, 180, (count, 3, 64, 96)).astype(np.uint8)
    masks = np.zeros((count, 64, 96), dtype=bool)
    for i in np.flatnonzero(labels == 1):
        r, c = rng.integers(0, 65 - side), rng.integers(0, 97 - side)
        masks[i, r : r + side, c : c + side] = True
        images[i][:, masks[i]] = np.array([[30], [90], [40]])
    return {"images": images, "masks": masks, "labels": labels}


def test_patch_grid_labels_and_threshold():
    patches = kahikatea_patches
    origins = patches.patch_origins(6, 10, 4, 3)
    # rows 0 and 2 (moved in to end at the edge), columns 0, 3 and 6
    assert origins == [(0, 0), (0, 3), (0, 6), (2, 0), (2, 3), (2, 6)]
    with pytest.raises(ValueError, match="larger"):
        patches.patch_origins(3, 10, 4, 2)

    masks = np.zeros((2, 6, 10), dtype=bool)
    masks[1, :2, :2] = True  # 4 of the 16 pixels of patch (0, 0)
    masks[1, 2:, 7:] = True  # 6 pixels of patch (0, 6), 12 of patch (2, 6)
    shares = patches.mask_shares(masks, origins, 4)
    assert shares[1].tolist() == [0.25, 0.0, 0.375, 0.0, 0.0, 0.75]
    labels = patches.patch_labels(np.array([0, 1]), shares)
    # negative photo: all negative; positive photo: >= half inside positive, none inside negative, else unused
    assert labels.tolist() == [[0] * 6, [-1, 0, -1, 0, 0, 1]]

    margins = np.array([[-3.0, 2.0, -1.0], [0.5, 0.4, 4.0], [-2.0, -1.5, -1.0]])
    assert patches.photo_scores(margins, 1).tolist() == [2.0, 4.0, -1.0]
    assert patches.photo_scores(margins, 2).tolist() == pytest.approx([0.5, 2.25, -1.25])
    # scores 2, 4, -1 with labels 0, 1, 0: only a threshold in (2, 4) classifies all three
    threshold = patches.best_threshold(np.array([2.0, 4.0, -1.0]), np.array([0, 1, 0]))
    assert 2.0 < threshold < 4.0

    heat = patches.patch_map(np.array([0.0, 100.0]), [(0, 0), (0, 2)], 4, 4, 6)
    assert heat[0, 0] == pytest.approx(0.5) and heat[0, 5] == pytest.approx(1.0)
    assert heat[0, 2] == pytest.approx(0.75)  # covered by both patches


@pytest.mark.parametrize("input_scale", [1.0, 1.5])
def test_context_margins_match_cropped_patches_where_the_patch_is_the_whole_photo(input_scale):
    """A photo that is one patch is scored the same by both ways; in a larger photo the
    in-context margins of a patch differ from its cropped margins (its features see past its
    edges): pixels just outside a patch change its in-context margin only."""
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.card import Scaling

    patches = kahikatea_patches
    torch.manual_seed(0)
    net = build_model("resnet18_64", 3, 2, 64, width=8, input_scale=input_scale).eval()
    scaling = Scaling(mean=[128.0] * 3, std=[40.0] * 3)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 255, (3, 3, 64, 64)).astype(np.uint8)
    origin = [(0, 0)]
    np.testing.assert_allclose(patches.context_margins(net, scaling, one, origin, 64),
                               patches.patch_margins(net, scaling, one, origin, 64), atol=1e-4)

    photos = rng.integers(0, 255, (2, 3, 128, 192)).astype(np.uint8)
    origins = patches.patch_origins(128, 192, 64, 32)
    in_context = patches.context_margins(net, scaling, photos, origins, 64)
    cropped = patches.patch_margins(net, scaling, photos, origins, 64)
    assert in_context.shape == cropped.shape == (2, len(origins))
    assert not np.allclose(in_context, cropped, atol=1e-3)
    # pixels just past the first patch's right edge change its in-context margin, not its cropped one
    changed = photos.copy()
    changed[:, :, :64, 64:80] = 255 - changed[:, :, :64, 64:80]
    assert not np.allclose(patches.context_margins(net, scaling, changed, origins, 64)[:, 0], in_context[:, 0],
                           atol=1e-4)
    np.testing.assert_allclose(patches.patch_margins(net, scaling, changed, origins, 64)[:, 0], cropped[:, 0],
                               atol=1e-5)


def test_reproduce_paper2_smoke_with_patch_classifier(kahikatea_like, tmp_path):
    script = reproduce_paper2
    args = ["--kahikatea", str(kahikatea_like), "--workdir", str(tmp_path / "work"), "--smoke",
            "--inits", "scratch", "--mask-types", "blur", "--patch-model", str(SHIPPED_RGB),
            "--out-md", str(tmp_path / "p2.md")]
    report = script.main(args)

    accuracy = report["inits"]["scratch"]["accuracy"]
    assert {"patch alpha=0", "patch alpha=0.3", "patch alpha=0.9"} <= set(accuracy)
    fold0 = tmp_path / "work" / "smoke" / "patch_eurosat_rgb_resnet18_64_w32" / "seed0" / "fold0"
    card = json.loads((fold0 / "patch.json").read_text())
    assert card["architecture"] == {"name": "resnet18_64", "kwargs": {"width": 32}}
    assert [c["name"] for c in card["classes"]] == ["negative", "positive"]
    assert card["tile_size"] == 32  # the smoke run's patches
    assert card["training"]["initial_weights"] == SHIPPED_RGB.name

    # the patch classifier alone and its ensembles are those of the saved logits
    folds = script.stratified_folds(np.repeat([0, 1], 12), 2, 0)
    labels_sorted = np.repeat([0, 1], 12)
    alone, mixed = [], []
    patch_fold0 = json.loads((fold0 / "patch.result.json").read_text())
    for k in range(2):
        patch = np.asarray(json.loads((fold0.parent / f"fold{k}" / "patch.result.json").read_text())["test_logits"])
        raw = np.asarray(json.loads((tmp_path / "work" / "smoke" / "scratch" / "seed0" / f"fold{k}" /
                                     "baseline.result.json").read_text())["test_logits"])
        truth = labels_sorted[folds == k]
        assert patch.shape == (truth.size, 2)
        assert np.allclose(patch[:, 0], -patch[:, 1])
        alone.append((patch.argmax(1) == truth).mean())
        mixed.append(((0.3 * raw + 0.7 * patch).argmax(1) == truth).mean())
    assert accuracy["patch alpha=0"]["mean"] == pytest.approx(np.mean(alone), abs=1e-4)
    assert accuracy["patch alpha=0.3"]["mean"] == pytest.approx(np.mean(mixed), abs=1e-4)
    assert 0.0 <= report["inits"]["scratch"]["gradcam_jaccard"]["patch map"]["mean"] <= 1.0
    assert "Mask-labelled patch classifier" in (tmp_path / "p2.md").read_text()

    # another scoring (test-time augmentation) reuses the trained patch classifiers
    before = (fold0 / "patch.pt").stat().st_mtime_ns
    again = script.main(args + ["--patch-tta"])
    assert (fold0 / "patch.pt").stat().st_mtime_ns == before
    tta = json.loads((fold0 / "patch_tta.result.json").read_text())
    assert tta["dihedral_tta"] is True and tta["test_logits"] != patch_fold0["test_logits"]
    assert again["inits"]["scratch"]["accuracy"]["baseline"] == accuracy["baseline"]

    # so does scoring the patches in one pass over the whole photo
    in_context = script.main(args + ["--patch-context"])
    assert (fold0 / "patch.pt").stat().st_mtime_ns == before
    ctx = json.loads((fold0 / "patch_ctx.result.json").read_text())
    assert ctx["context"] is True and ctx["test_logits"] != patch_fold0["test_logits"]
    assert in_context["settings"]["patch"]["context"] is True
    assert "scored in one pass over the whole photo" in (tmp_path / "p2.md").read_text()
    for wrong in (["--patch-context", "--patch-tta"], ["--patch-photo-epochs", "2", "--patch-tta"],
                  ["--patch-photo-epochs", "-1"]):
        with pytest.raises(SystemExit):
            script.parse_args(args + wrong)

    # the photo-level fine-tune starts from the trained patch classifier and is saved beside it
    finetuned = script.main(args + ["--patch-photo-epochs", "1"])
    assert (fold0 / "patch.pt").stat().st_mtime_ns == before
    photo = json.loads((fold0 / "patch_photo1_ctx.result.json").read_text())
    assert photo["context"] is True and len(photo["photo_finetune"]["loss"]) == 1
    tuned_card = json.loads((fold0 / "patch_photo1.json").read_text())
    assert "photo-level fine-tune" in tuned_card["name"]
    assert photo["test_logits"] != ctx["test_logits"]
    assert finetuned["settings"]["patch"]["photo_epochs"] == 1


def test_patch_classifier_cross_fit_scores_every_training_photo(tmp_path):
    from glassbox.core.models.backends import TorchModel

    patches = kahikatea_patches
    data = green_square_photos(20, 40, seed=1)
    images, labels = data["images"], data["labels"]
    train, test = np.arange(20)[np.arange(20) % 4 != 0], np.arange(20)[np.arange(20) % 4 == 0]
    folder = tmp_path / "fold"
    result = patches.run_patch_fold(data, train, test, folder, SHIPPED_RGB, ("resnet18_64", {"width": 32}),
                                    ["negative", "positive"], 0, patch=32, stride=16, epochs=1, cross_fit=2,
                                    log=lambda message: None)

    assert not (folder / "patch.pt").exists()
    models = [TorchModel(folder / f"patch_cf{j}.pt", "cpu") for j in range(2)]
    group = patches.cross_fit_groups(labels[train], 2, 0)
    assert result["cross_fit"] == 2 and result["calibration_photos"] == train.size
    assert [m["calibration_photos"] for m in result["models"]] == [int((group == j).sum()) for j in range(2)]
    # the threshold comes from every training photo scored by the classifier that did not train on it
    origins = patches.patch_origins(64, 96, 32, 16)
    held_scores = np.concatenate([patches.photo_scores(patches.patch_margins(
        m.module, m.card.scaling, images[train[group == j]], origins, 32), 1) for j, m in enumerate(models)])
    held_labels = np.concatenate([labels[train[group == j]] for j in range(2)])
    assert result["threshold"] == pytest.approx(patches.best_threshold(held_scores, held_labels), abs=1e-5)
    # a test photo's margins are the mean of both classifiers'
    mean_margins = np.mean([patches.patch_margins(m.module, m.card.scaling, images[test], origins, 32)
                            for m in models], axis=0)
    logits = np.asarray(result["test_logits"])
    assert np.allclose(logits[:, 1] - logits[:, 0], patches.photo_scores(mean_margins, 1) - result["threshold"],
                       atol=1e-4)
    # rerun: reuses both classifiers
    before = [(folder / f"patch_cf{j}.pt").stat().st_mtime_ns for j in range(2)]
    patches.run_patch_fold(data, train, test, folder, SHIPPED_RGB, ("resnet18_64", {"width": 32}),
                           ["negative", "positive"], 0, patch=32, stride=16, epochs=1, cross_fit=2, top_k=2,
                           log=lambda message: None)
    assert [(folder / f"patch_cf{j}.pt").stat().st_mtime_ns for j in range(2)] == before
    assert (folder / "patch_top2.result.json").exists()

    script = reproduce_paper2
    with pytest.raises(SystemExit):
        script.parse_args(["--kahikatea", ".", "--workdir", ".", "--inits", "scratch", "--patch-cross-fit", "1"])
    assert script.patch_folder(script.parse_args(["--kahikatea", ".", "--workdir", ".", "--inits", "scratch",
                                                  "--patch-cross-fit", "2"]), SHIPPED_RGB).endswith("_cf2")


def test_cross_fit_groups_balance_each_class():
    from glassbox.core.training.loop import stratified_folds

    patches = kahikatea_patches
    labels = np.array([0] * 7 + [1] * 5)
    groups = patches.cross_fit_groups(labels, 2, 0)
    assert sorted(np.bincount(groups[labels == 0])) == [3, 4]
    assert sorted(np.bincount(groups[labels == 1])) == [2, 3]
    assert np.array_equal(groups, patches.cross_fit_groups(labels, 2, 0))
    # dealt apart from the photo folds drawn with the same seed
    assert not all(np.array_equal(patches.cross_fit_groups(labels, 2, s), stratified_folds(labels, 2, s))
                   for s in range(5))


def test_photo_finetune_learns_the_photo_labels_from_a_random_start():
    """Photos whose positives hold a dark-green square somewhere: from a random width-8
    network, the whole-photo fine-tune lowers its loss and ends up ranking the positives
    (strongest in-context patch margin) above the negatives."""
    import torch

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.card import Scaling

    patches = kahikatea_patches
    data = green_square_photos(24, 32, seed=2)
    images, labels = data["images"], data["labels"]
    torch.manual_seed(0)
    net = build_model("resnet18_64", 3, 2, 32, width=8)
    scaling = Scaling(mean=[150.0] * 3, std=[30.0] * 3)
    origins = patches.patch_origins(64, 96, 32, 16)
    figures = patches.photo_finetune(net, scaling, data,
                                     np.arange(24), origins, 32, epochs=8, seed=0, lr=3e-3, log=lambda m: None)
    assert len(figures["loss"]) == 8 and figures["loss"][-1] < 0.5 * figures["loss"][0]
    scores = patches.photo_scores(patches.context_margins(net, scaling, images, origins, 32), 1)
    assert scores[labels == 1].min() > scores[labels == 0].max()


def test_smooth_max_lies_between_mean_and_max_for_numpy_and_torch():
    import torch

    patches = kahikatea_patches
    margins = np.array([[-3.0, 0.5, 2.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    pooled = patches.smooth_max(margins)
    assert isinstance(pooled, np.ndarray) and pooled.shape == (2,)
    assert np.all(margins.mean(axis=1) <= pooled + 1e-9) and np.all(pooled <= margins.max(axis=1) + 1e-9)
    assert pooled[1] == pytest.approx(-1.0)  # equal margins: their value
    assert patches.smooth_max(margins, sharpness=200.0)[0] == pytest.approx(2.0, abs=0.01)
    as_torch = patches.smooth_max(torch.from_numpy(margins))
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), pooled)


def test_photo_logit_and_mirror_scoring_of_the_photo_finetune(tmp_path):
    """--patch-photo-logit scores a photo by the fine-tune's smooth maximum, decided at 0;
    --patch-mirror averages the photo's and its mirror image's scores; neither retrains."""
    from glassbox.core.models.backends import TorchModel

    patches = kahikatea_patches
    data = green_square_photos(20, 40, seed=1)
    images = data["images"]
    train, test = np.arange(20)[np.arange(20) % 4 != 0], np.arange(20)[np.arange(20) % 4 == 0]
    folder = tmp_path / "fold"

    def run(**scoring):
        return patches.run_patch_fold(data, train, test, folder, SHIPPED_RGB, ("resnet18_64", {"width": 32}),
                                      ["negative", "positive"], 0, patch=32, stride=16, epochs=1,
                                      photo_epochs=1, log=lambda message: None, **scoring)

    calibrated = run()
    before = (folder / "patch_photo1.pt").stat().st_mtime_ns
    tuned = TorchModel(folder / "patch_photo1.pt", "cpu")
    origins = patches.patch_origins(64, 96, 32, 16)

    def smooth_max_of(photos):
        return patches.smooth_max(patches.context_margins(tuned.module, tuned.card.scaling, photos, origins, 32))

    logit = run(photo_logit=True)
    assert logit["threshold"] == 0.0 and logit["photo_logit"] is True and logit["top_k"] is None
    difference = np.diff(np.asarray(logit["test_logits"]), axis=1)[:, 0]
    np.testing.assert_allclose(difference, smooth_max_of(images[test]), atol=1e-4)
    assert logit["jaccard"] == calibrated["jaccard"]  # same patch maps, another photo score

    mirrored = run(photo_logit=True, mirror=True)
    difference = np.diff(np.asarray(mirrored["test_logits"]), axis=1)[:, 0]
    expected = (smooth_max_of(images[test]) + smooth_max_of(np.ascontiguousarray(images[test][..., ::-1]))) / 2
    np.testing.assert_allclose(difference, expected, atol=1e-4)
    assert mirrored["mirror"] is True and all(0.0 <= j <= 1.0 for j in mirrored["jaccard"])
    assert (folder / "patch_photo1.pt").stat().st_mtime_ns == before
    assert {p.name for p in folder.glob("*.result.json")} == {
        "patch_photo1_ctx.result.json", "patch_photo1_logit_ctx.result.json", "patch_photo1_logit_ctx_mirror.result.json"}

    with pytest.raises(ValueError, match="photo_epochs"):
        patches.run_patch_fold(data, train, test, folder, SHIPPED_RGB, ("resnet18_64", {"width": 32}),
                               ["negative", "positive"], 0, photo_logit=True)
    with pytest.raises(ValueError, match="context"):
        patches.run_patch_fold(data, train, test, folder, SHIPPED_RGB, ("resnet18_64", {"width": 32}),
                               ["negative", "positive"], 0, mirror=True)
    script = reproduce_paper2
    base = ["--kahikatea", ".", "--workdir", ".", "--inits", "scratch"]
    for wrong in (["--patch-photo-logit"], ["--patch-mirror"], ["--patch-mirror", "--patch-tta"]):
        with pytest.raises(SystemExit):
            script.parse_args(base + wrong)
    assert script.parse_args(base + ["--patch-context", "--patch-mirror"]).patch_mirror
    caption = script.patch_caption({"size": 64, "photo_size": [368, 246], "model": "m.pt", "top_k": 1,
                                    "dihedral_tta": False, "context": True, "photo_epochs": 3,
                                    "photo_logit": True, "mirror": True})
    assert "positive above 0" in caption and "mirror" in caption and "calibration" not in caption
