"""The Glassbox toolbox as a user sees it: every algorithm in a named group, with help."""

from __future__ import annotations

import re
from pathlib import Path

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QUrl

from glassbox.algorithms.base import GROUPS, PLUGIN_DIR


def test_every_algorithm_is_grouped_named_and_documented(glassbox_processing):
    provider = QgsApplication.processingRegistry().providerById("glassbox")
    algorithms = provider.algorithms()
    assert {a.name() for a in algorithms} >= {  # none left out for an error (declares_its_parameters)
        "classify", "explain", "explanation_quality", "train_classifier", "evaluate", "assess_map", "sample_points",
        "export_onnx", "segment", "finetune_masked", "ensemble", "classify_explain_segment"}
    groups = {}
    for algorithm in algorithms:
        assert algorithm.displayName(), algorithm.id()
        assert algorithm.group() and algorithm.groupId(), algorithm.id()
        groups.setdefault(algorithm.groupId(), []).append(algorithm.name())
        if algorithm.groupId() in GROUPS:  # the algorithms; shipped models sit in "Pipelines"
            assert algorithm.group() == GROUPS[algorithm.groupId()]
            assert len(algorithm.shortHelpString()) > 200, algorithm.id()
    assert set(GROUPS) <= set(groups), groups
    for algorithm in algorithms:  # Help opens the reference page, rendered as HTML (a .md opens as text)
        page = Path(QUrl(algorithm.helpUrl()).toLocalFile())
        assert page.name == f"{algorithm.name()}.html" and page.is_file(), algorithm.id()
        html = page.read_text(encoding="utf-8")
        assert f"glassbox:{algorithm.name()}" in html and "<table" in html, algorithm.id()
        for target in re.findall(r'href="([^"#]+)', html):  # links to other pages and docs resolve
            linked = page.parent / target if "://" not in target else Path(QUrl(target).toLocalFile())
            assert target.startswith("http") or linked.is_file(), (algorithm.id(), target)
            # ... into this copy of the plugin (pages another copy rendered into the cache linked to it)
            assert target.startswith("http") or "://" not in target or PLUGIN_DIR in linked.resolve().parents
    assert "classify" in groups["classification"] and "explain" in groups["explanation"]
    assert "segment" in groups["segmentation"] and "train_classifier" in groups["training"]
    pipeline = QgsApplication.processingRegistry().algorithmById("glassbox:classify_explain_segment")
    assert pipeline.group() == "Pipelines"


def test_a_qgis_feedback_is_core_feedback():
    """core.feedback.Feedback is the one protocol core's long functions are driven by; QGIS's
    feedback satisfies it, and callbacks() turns it into core's three keyword arguments."""
    from qgis.core import QgsProcessingFeedback

    from glassbox.core.feedback import Feedback, callbacks

    feedback = QgsProcessingFeedback()
    assert isinstance(feedback, Feedback)
    hooks = callbacks(feedback)
    hooks["progress"](42.0)
    assert feedback.progress() == 42.0 and hooks["is_cancelled"]() is False
    feedback.cancel()
    assert hooks["is_cancelled"]() is True
    quiet = callbacks(None)
    assert quiet["progress"](1.0) is None and quiet["is_cancelled"]() is False


def test_an_algorithm_that_cannot_declare_its_parameters_is_left_out_not_the_toolbox(glassbox_processing):
    """QGIS calls initAlgorithm from C++: a Python error there had aborted qgis_process for every
    Glassbox algorithm (seen with an unfinished edit); the provider tries each on a copy first."""
    from glassbox.algorithms.sample_points import SamplePointsAlgorithm
    from glassbox.processing_provider.provider import declares_its_parameters

    class Broken(SamplePointsAlgorithm):
        def initAlgorithm(self, config=None):  # noqa: N802
            raise NameError("name 'UNDEFINED' is not defined")

        def createInstance(self):  # noqa: N802
            return Broken()

    assert declares_its_parameters(SamplePointsAlgorithm())
    assert not declares_its_parameters(Broken())
