"""glassbox:evaluate (numbers against hand-computed confusion matrices, HTML + CSV report) and
glassbox:export_onnx (same card, same probabilities, clear errors)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re

import numpy as np
import pytest

import processing
from glassbox.core.models.backends import load_model
from glassbox.core.training.metrics import compute_metrics, confusion_matrix, metrics_from_confusion
from helpers import TINY_TILE, pattern_tile, two_halves, write_raster

VEG, WATER = 0, 1


def test_metrics_match_a_hand_computed_example():
    true = [0] * 6 + [1] * 6 + [2] * 4
    pred = [0, 0, 0, 0, 0, 1] + [0, 0, 1, 1, 1, 2] + [2, 2, 2, 2]
    cm = confusion_matrix(np.array(true), np.array(pred), 3)
    assert cm.tolist() == [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    np.testing.assert_allclose(m.precision, [5 / 7, 3 / 4, 4 / 5])
    np.testing.assert_allclose(m.recall, [5 / 6, 3 / 6, 4 / 4])
    f1 = [2 * p * r / (p + r) for p, r in zip([5 / 7, 3 / 4, 4 / 5], [5 / 6, 1 / 2, 1])]
    np.testing.assert_allclose(m.f1, f1)
    assert m.overall_accuracy == 12 / 16 and m.support.tolist() == [6, 6, 4]
    expected_agreement = (6 * 7 + 6 * 4 + 4 * 5) / 16**2
    assert m.kappa == pytest.approx((12 / 16 - expected_agreement) / (1 - expected_agreement))
    assert m.macro_f1 == pytest.approx(np.mean(f1))
    # a class never predicted and never present: zeros, left out of the macro average
    m = compute_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "c"])
    assert m.precision[2] == 0 and m.recall[2] == 0 and m.macro_recall == pytest.approx((1 / 2 + 1) / 2)


def _expected(cm):
    cm = np.asarray(cm, dtype=float)
    precision = np.diag(cm) / cm.sum(0)
    recall = np.diag(cm) / cm.sum(1)
    return precision, recall, 2 * precision * recall / (precision + recall), np.trace(cm) / cm.sum()


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _check_report(result, cm, names):
    precision, recall, f1, overall = _expected(cm)
    rows = _read_csv(result["OUTPUT_CSV"])
    assert rows[0] == ["class", "support", "precision", "recall", "f1"] + [f"pred_{n}" for n in names]
    for i, name in enumerate(names):
        row = rows[1 + i]
        assert row[0] == name and int(row[1]) == sum(cm[i])
        assert [int(v) for v in row[5:]] == list(cm[i])
        np.testing.assert_allclose([float(v) for v in row[2:5]], [precision[i], recall[i], f1[i]], atol=5e-5)
    micro = rows[1 + len(names)]
    assert micro[0].startswith("(micro") and float(micro[2]) == pytest.approx(overall, abs=5e-5)
    assert result["OVERALL_ACCURACY"] == pytest.approx(overall) and result["N_TILES"] == np.sum(cm)
    page = open(result["OUTPUT_REPORT"], encoding="utf-8").read()
    assert f'id="overall-accuracy">{100 * overall:.2f} %<' in page
    png = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(png.group(1)))) as image:
        assert image.format == "PNG" and image.size[0] > 200
    table = re.search(r'<table id="confusion">(.*?)</table>', page, re.S).group(1)
    cells = [[int(v) for v in re.findall(r"<td>(\d+)</td>", r)[: len(names)]]
             for r in re.findall(r"<tr><th>(?!total|reference).*?</tr>", table)]
    assert cells == [list(r) for r in cm]


@pytest.mark.parametrize("tta", [False, True], ids=["one_pass", "test_time_augmentation"])
def test_evaluate_tile_folder_matches_hand_computed_matrix(tmp_path, tiny_model_files, glassbox_processing, tta):
    """The tiny model tells the two patterns apart without doubt, so with some tiles filed
    under the wrong class the confusion matrix is known: [[6, 2], [1, 5]], with or without
    test-time augmentation (which the report then states)."""
    rng = np.random.default_rng(5)
    folder_plan = {"Vegetation": [VEG] * 6 + [WATER] * 2, "Water": [WATER] * 5 + [VEG]}
    for folder, patterns in folder_plan.items():
        (tmp_path / "ref" / folder).mkdir(parents=True)
        for i, kind in enumerate(patterns):
            write_raster(tmp_path / "ref" / folder / f"{folder}_{i}.tif",
                         pattern_tile(kind, TINY_TILE, rng).astype(np.uint16))
    result = processing.run("glassbox:evaluate", {
        "MODEL": str(tiny_model_files["onnx"]), "INPUT_FOLDER": str(tmp_path / "ref"),
        "OUTPUT_REPORT": str(tmp_path / "report.html"), "OUTPUT_CSV": str(tmp_path / "report.csv"),
        "TEST_TIME_AUGMENTATION": tta,
    })
    _check_report(result, [[6, 2], [1, 5]], ["Vegetation", "Water"])
    assert ("Test-time augmentation" in open(result["OUTPUT_REPORT"], encoding="utf-8").read()) == tta


def _label_layer(items):
    from qgis.core import QgsFeature, QgsField, QgsGeometry, QgsRectangle, QgsVectorLayer
    from qgis.PyQt.QtCore import QVariant

    layer = QgsVectorLayer("Polygon?crs=EPSG:32633", "reference", "memory")
    layer.dataProvider().addAttributes([QgsField("name", QVariant.String), QgsField("klass", QVariant.String)])
    layer.updateFields()
    features = []
    for (col0, row0, col1, row1), klass in items:
        feature = QgsFeature(layer.fields())
        x0, y0 = 500000.0, 6000000.0
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0 + 10 * col0, y0 - 10 * row1, x0 + 10 * col1, y0 - 10 * row0)))
        feature["name"] = f"polygon {len(features) + 1}"
        feature["klass"] = klass
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


def test_evaluate_raster_and_polygons(tmp_path, tiny_model_files, glassbox_processing):
    """Scene: left 48 columns 'Vegetation' pattern, right 48 'Water'. Polygons (class field
    'klass'): columns 0-32 x rows 0-48 Vegetation (2 x 3 tiles), columns 64-96 x rows 0-32
    Water (2 x 2 tiles), and columns 48-64 x rows 0-48 wrongly labelled Vegetation (1 x 3
    tiles of water) -> [[6, 3], [0, 4]]."""
    raster = write_raster(tmp_path / "scene.tif", two_halves(48, 96), descriptions=["B08", "B03"])
    layer = _label_layer([((0, 0, 32, 48), "Vegetation"), ((64, 0, 96, 32), "Water"), ((48, 0, 64, 48), "Vegetation")])
    result = processing.run("glassbox:evaluate", {
        "MODEL": str(tiny_model_files["torch"]), "INPUT": raster, "POLYGONS": layer, "CLASS_FIELD": "klass",
        "OUTPUT_REPORT": str(tmp_path / "report.html"), "OUTPUT_CSV": str(tmp_path / "report.csv"),
    })
    _check_report(result, [[6, 3], [0, 4]], ["Vegetation", "Water"])
    # 3 polygons, one all wrong: the interval is the bootstrap over polygons, much wider than over tiles
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "bootstrap over the 3 polygons" in page and "95 % interval of the overall accuracy: 0.0% to 100.0%" in page


def test_accuracy_interval_resamples_whole_polygons():
    """Clustered errors (whole polygons right or wrong) give a wider interval over polygons than
    over tiles; with one group per tile it is the ordinary bootstrap, around the accuracy."""
    from glassbox.core.training.evaluation import accuracy_interval

    correct = np.repeat([True] * 14 + [False] * 6, 10)  # 20 polygons of 10 tiles, 70 % right
    polygons = np.repeat(np.arange(20), 10)
    by_polygon = accuracy_interval(correct, polygons)
    by_tile = accuracy_interval(correct, np.arange(correct.size))
    assert by_polygon[0] < by_tile[0] < 0.7 < by_tile[1] < by_polygon[1]
    assert 0.4 < by_polygon[0] and by_polygon[1] <= 0.9
    assert accuracy_interval(correct, polygons) == by_polygon  # seeded


def test_evaluate_polygons_with_codes_through_a_class_mapping(tmp_path, tiny_model_files, glassbox_processing):
    """Polygons holding land-cover codes (as LCDB's Class_2018) are evaluated through a class
    mapping: the same scene and matrix as above with codes 71/69 = Vegetation and 20 = Water, a
    polygon of the unmapped code 0 skipped with a log line (the code alone: LCDB names only with the
    LCDB mapping, a custom mapping's codes may mean anything else); without the mapping the codes are
    refused as classes the model does not have."""
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    raster = write_raster(tmp_path / "scene.tif", two_halves(48, 96), descriptions=["B08", "B03"])
    layer = _label_layer([((0, 0, 32, 48), "71"), ((64, 0, 96, 32), "20"), ((48, 0, 64, 48), "69"),
                          ((32, 32, 48, 48), "0")])
    lines = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = lines.append
    params = {"MODEL": str(tiny_model_files["torch"]), "INPUT": raster, "POLYGONS": layer, "CLASS_FIELD": "klass",
              "CLASS_MAPPING": 2, "CUSTOM_MAPPING": "71, 69 = Vegetation; 20,21=Water",
              "OUTPUT_REPORT": str(tmp_path / "report.html"), "OUTPUT_CSV": str(tmp_path / "report.csv")}
    result = processing.run("glassbox:evaluate", params, feedback=feedback)
    _check_report(result, [[6, 3], [0, 4]], ["Vegetation", "Water"])
    assert any("1 polygon(s) have values the mapping 'custom' does not map and are skipped: 0 x1" in line
               for line in lines), lines
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException, match="are not classes of the model"):
        processing.run("glassbox:evaluate", dict(params, CLASS_MAPPING=1, OUTPUT_REPORT=str(out / "r.html"),
                                                 OUTPUT_CSV=str(out / "r.csv")))
    with pytest.raises(QgsProcessingException, match="the class mapping maps none of the polygons' class values .mapping 'LCDB v5 -> 7 class groups'.|"
                                                     "not classes of the model"):
        processing.run("glassbox:evaluate", dict(params, CLASS_MAPPING=0, OUTPUT_REPORT=str(out / "r.html")))
    with pytest.raises(QgsProcessingException, match="cannot read 'Water' in the class mapping"):
        processing.run("glassbox:evaluate", dict(params, CUSTOM_MAPPING="71=Vegetation; Water",
                                                 OUTPUT_REPORT=str(out / "r.html")))
    assert os.listdir(out) == []


def test_evaluate_refuses_unknown_classes_and_writes_nothing(tmp_path, tiny_model_files, glassbox_processing):
    from qgis.core import QgsProcessingException

    rng = np.random.default_rng(6)
    (tmp_path / "ref" / "Urban").mkdir(parents=True)
    write_raster(tmp_path / "ref" / "Urban" / "u.tif", pattern_tile(0, TINY_TILE, rng).astype(np.uint16))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException, match="Urban of the labelled tiles are not classes of the model"):
        processing.run("glassbox:evaluate", {
            "MODEL": str(tiny_model_files["onnx"]), "INPUT_FOLDER": str(tmp_path / "ref"),
            "OUTPUT_REPORT": str(out / "r.html"), "OUTPUT_CSV": str(out / "r.csv"),
        })
    (tmp_path / "ref" / "Urban" / "u.tif").unlink()
    (tmp_path / "ref" / "Water").mkdir()
    write_raster(tmp_path / "ref" / "Water" / "w.tif", np.ones((3, TINY_TILE, TINY_TILE), dtype=np.uint16))
    with pytest.raises(QgsProcessingException, match=r"reads 2 band\(s\) \(B08, B03\) but the tiles have 3"):
        processing.run("glassbox:evaluate", {
            "MODEL": str(tiny_model_files["onnx"]), "INPUT_FOLDER": str(tmp_path / "ref"),
            "OUTPUT_REPORT": str(out / "r.html"),
        })
    # polygons whose geometry is missing are named as the reason, not their class values
    from qgis.core import QgsFeature, QgsVectorLayer

    raster = write_raster(tmp_path / "scene.tif", np.ones((2, 32, 32), dtype=np.uint16), descriptions=["B08", "B03"])
    bare = QgsVectorLayer("Polygon?crs=EPSG:32633&field=class:string(20)", "bare", "memory")
    features = []
    for _ in range(3):
        feature = QgsFeature(bare.fields())
        feature["class"] = "Water"
        features.append(feature)
    assert bare.dataProvider().addFeatures(features)[0]
    with pytest.raises(QgsProcessingException, match="with a geometry and a 'class' value .3 feature.s. without a geom"):
        processing.run("glassbox:evaluate", {
            "MODEL": str(tiny_model_files["onnx"]), "INPUT": raster, "POLYGONS": bare, "CLASS_FIELD": "class",
            "OUTPUT_REPORT": str(out / "r.html"),
        })
    assert os.listdir(out) == []


def test_export_onnx_gives_the_same_card_and_probabilities(tmp_path, tiny_model_files, glassbox_processing):
    out = tmp_path / "exported.onnx"
    from qgis.core import QgsProcessingFeedback

    lines = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, text):  # noqa: N802 (QGIS API name)
            lines.append(text)

    result = processing.run("glassbox:export_onnx", {"MODEL": str(tiny_model_files["torch"]), "OUTPUT": str(out)},
                            feedback=Feedback())
    assert result["OUTPUT"] == str(out) and 0 <= result["MAX_DIFFERENCE"] <= 1e-4
    # the largest of the two logged differences (probabilities, logits) is the one returned
    logged = re.search(r"is ([\d.e+-]+) in class probabilities and ([\d.e+-]+) in logits", " ".join(lines))
    assert logged, lines
    assert result["MAX_DIFFERENCE"] == pytest.approx(max(float(logged[1]), float(logged[2])), rel=0.01)
    torch_model, onnx_model = load_model(tiny_model_files["torch"]), load_model(out)
    assert onnx_model.backend == "onnx" and onnx_model.card == torch_model.card
    rng = np.random.default_rng(8)
    raw = np.stack([pattern_tile(k % 2, TINY_TILE, rng) for k in range(10)])
    x = torch_model.card.scaling.apply(raw)
    p_torch, p_onnx = torch_model.predict_proba(x), onnx_model.predict_proba(x)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    assert (p_onnx.argmax(1) == np.arange(10) % 2).all()
    assert json.loads((tiny_model_files["torch"].with_suffix(".json")).read_text()) == onnx_model.card.to_dict()


def test_export_onnx_refuses_a_model_without_card(tmp_path, tiny_model_files, glassbox_processing):
    from qgis.core import QgsProcessingException

    bare = tmp_path / "nocard.pt"
    bare.write_bytes(tiny_model_files["torch"].read_bytes())
    with pytest.raises(QgsProcessingException, match="no Glassbox model card"):
        processing.run("glassbox:export_onnx", {"MODEL": str(bare), "OUTPUT": str(tmp_path / "x.onnx")})
    assert sorted(os.listdir(tmp_path)) == ["nocard.pt"]


def test_unknown_classes_point_to_the_class_mapping_the_model_was_trained_with():
    """LCDB codes against a model trained on LCDB's groups: the error says which mapping (and
    field) the card records, as evaluate's default is no mapping."""
    from glassbox.core.errors import TrainingDataError
    from glassbox.core.models.card import ClassInfo, ModelCard, Scaling
    from glassbox.core.training.data import TrainingData
    from glassbox.core.training.evaluation import check_data_fits_model

    card = ModelCard(classes=[ClassInfo("Forest", "#006400"), ClassInfo("Cropland", "#dddd00")], bands=["b1"],
                     scaling=Scaling(scale=1.0), tile_size=4, gsd=10.0, name="groups",
                     training={"class_field": "Class_2018", "class_mapping": {"name": "lcdb"}})
    data = TrainingData(np.zeros((2, 1, 4, 4), np.uint16), np.array([0, 1]), ["30", "71"], ["b1"], ["a", "b"])
    with pytest.raises(TrainingDataError, match="trained with the class mapping 'lcdb' of the field 'Class_2018'"):
        check_data_fits_model(card, data)
    card.training = {}
    with pytest.raises(TrainingDataError) as plain:
        check_data_fits_model(card, data)
    assert "trained with" not in str(plain.value)


def test_the_report_carries_the_warnings_that_explain_its_accuracy(tmp_path, tiny_model_files, glassbox_processing):
    """8-bit tiles for a model that scales raw values: the log warned, but the shared report showed
    the (meaningless) accuracy alone (an audit)."""
    rng = np.random.default_rng(5)
    for folder, kind in (("Vegetation", VEG), ("Water", WATER)):
        (tmp_path / "ref" / folder).mkdir(parents=True)
        for i in range(3):
            write_raster(tmp_path / "ref" / folder / f"{folder}_{i}.tif",
                         np.clip(pattern_tile(kind, TINY_TILE, rng), 0, 255).astype(np.uint8))
    result = processing.run("glassbox:evaluate", {
        "MODEL": str(tiny_model_files["onnx"]), "INPUT_FOLDER": str(tmp_path / "ref"),
        "OUTPUT_REPORT": str(tmp_path / "report.html"), "OUTPUT_CSV": str(tmp_path / "report.csv")})
    report = open(result["OUTPUT_REPORT"], encoding="utf-8").read()
    assert "WARNING: the tiles are 8-bit but the model scales raw values" in report
