"""The reference pages and README name the parameters the algorithms really have: every parameter
and output of an algorithm appears on its page (docs/algorithms/<name>.md, backticked), every name
in the first column of a page's tables is one of them, and every NAME= of a README command is a
parameter of the algorithm it runs (or an output of the pipeline model)."""

from __future__ import annotations

import re

import pytest

from helpers import PLUGIN_DIR

pytestmark = pytest.mark.usefixtures("glassbox_processing")

NAME = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def glassbox_algorithms():
    from qgis.core import QgsApplication

    return QgsApplication.processingRegistry().providerById("glassbox").algorithms()


def declared(algorithm) -> set[str]:
    return {p.name() for p in algorithm.parameterDefinitions()} | {o.name() for o in algorithm.outputDefinitions()}


def test_every_parameter_is_on_its_page_and_every_table_name_is_a_parameter():
    problems = []
    for algorithm in glassbox_algorithms():
        page = PLUGIN_DIR / "docs" / "algorithms" / f"{algorithm.name()}.md"
        text = page.read_text(encoding="utf-8")
        if algorithm.name() == "classify_explain_segment":  # the pipeline model: names such as classify:classes
            missing = {name for name in declared(algorithm) if f"`{name}`" not in text}
            if missing:
                problems.append(f"{page.name} lacks {sorted(missing)}")
            continue
        on_page = set(NAME.findall(text))
        in_tables = {name for line in text.splitlines() if line.startswith("| `")
                     for name in NAME.findall(line.split("|")[1])}
        names = declared(algorithm)
        if names - on_page:
            problems.append(f"{page.name}: not documented: {', '.join(sorted(names - on_page))}")
        if in_tables - names:
            problems.append(f"{page.name}: documented but not a parameter or output: "
                            f"{', '.join(sorted(in_tables - names))}")
    assert not problems, "\n".join(problems)


def test_readme_commands_use_real_parameter_names():
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    readme = (PLUGIN_DIR / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"scripts/qgis_process run (glassbox:\w+) -- ((?:[^\n]*\\\n)*[^\n]*)", readme)
    assert len(commands) >= 10
    problems = []
    for algorithm_id, arguments in commands:
        algorithm = registry.algorithmById(algorithm_id)
        assert algorithm is not None, algorithm_id
        used = set(re.findall(r"(?:^|\s)([A-Za-z][\w:]*)=", arguments))
        unknown = used - declared(algorithm)
        if unknown:
            problems.append(f"{algorithm_id}: {', '.join(sorted(unknown))}")
    assert not problems, "README commands name parameters the algorithms do not have:\n" + "\n".join(problems)


def test_a_page_says_advanced_exactly_for_the_advanced_parameters():
    """The dialog hides advanced parameters under "Advanced parameters"; a page's table row says
    so ("advanced: ...") for those and only those, so a user knows where to look."""
    from qgis.core import QgsProcessingParameterDefinition

    problems = []
    for algorithm in glassbox_algorithms():
        if algorithm.name() == "classify_explain_segment":
            continue
        page = PLUGIN_DIR / "docs" / "algorithms" / f"{algorithm.name()}.md"
        rows = {}
        for line in page.read_text(encoding="utf-8").splitlines():
            cells = line.split("|")
            if line.startswith("| `") and len(cells) > 2:
                for name in NAME.findall(cells[1]):
                    rows[name] = cells[2].strip().startswith("advanced:")
        for parameter in algorithm.parameterDefinitions():
            is_advanced = bool(parameter.flags() & QgsProcessingParameterDefinition.FlagAdvanced)
            if parameter.name() in rows and rows[parameter.name()] != is_advanced:
                problems.append(f"{page.name}: {parameter.name()} is {'' if is_advanced else 'not '}advanced")
    assert not problems, "\n".join(problems)
