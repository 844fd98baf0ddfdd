"""The Glassbox toolbox as a user sees it: every algorithm in a named group, with help."""

from __future__ import annotations

from qgis.core import QgsApplication

from glassbox.algorithms.base import GROUPS


def test_every_algorithm_is_grouped_named_and_documented(glassbox_processing):
    provider = QgsApplication.processingRegistry().providerById("glassbox")
    algorithms = provider.algorithms()
    assert len(algorithms) >= 9
    groups = {}
    for algorithm in algorithms:
        assert algorithm.displayName(), algorithm.id()
        assert algorithm.group() and algorithm.groupId(), algorithm.id()
        groups.setdefault(algorithm.groupId(), []).append(algorithm.name())
        if algorithm.groupId() in GROUPS:  # the algorithms; shipped models sit in "Pipelines"
            assert algorithm.group() == GROUPS[algorithm.groupId()]
            assert len(algorithm.shortHelpString()) > 200, algorithm.id()
    assert set(GROUPS) <= set(groups), groups
    assert "classify" in groups["classification"] and "explain" in groups["explanation"]
    assert "segment" in groups["segmentation"] and "train_classifier" in groups["training"]
    pipeline = QgsApplication.processingRegistry().algorithmById("glassbox:classify_explain_segment")
    assert pipeline.group() == "Pipelines"
