"""Documentation that cannot drift: README's model table is made from the models' own files."""

from __future__ import annotations

from helpers import PLUGIN_DIR, load_script


def test_readme_model_table_is_made_from_the_metrics_files():
    script = load_script("scripts/models_table.py")
    readme = (PLUGIN_DIR / "README.md").read_text(encoding="utf-8")
    table = readme.split(script.START, 1)[1].split(script.END, 1)[0].strip()
    assert table == script.table(), "README's model table is stale: run scripts/models_table.py --update README.md"
    assert table.count("\n| `") == len(list((PLUGIN_DIR / "resources" / "models").glob("*.onnx")))


def test_readme_is_a_few_pages_and_its_links_resolve():
    """README: what it is, two commands, install, one example per algorithm, the models; the
    reference lives in docs/. Every relative link of README and docs/ points at a file."""
    import re

    readme = PLUGIN_DIR / "README.md"
    assert len(readme.read_text(encoding="utf-8")) < 30_000
    pages = [readme, *(PLUGIN_DIR / "docs").rglob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(PLUGIN_DIR)} links to missing {target}"


def test_readme_kahikatea_table_is_made_from_the_committed_protocol_results():
    """README's Kahikatea table is rebuilt from research/results/protocol (summary.json, and
    holdout.json once the hold-out is scored) by ``kahikatea_protocol --update-readme``."""
    import json

    from glassbox.research import kahikatea_protocol as kp

    out = PLUGIN_DIR / "research" / "results" / "protocol"
    summary = json.loads((out / "summary.json").read_text())
    holdout = json.loads((out / "holdout.json").read_text()) if (out / "holdout.json").exists() else None
    readme = (PLUGIN_DIR / "README.md").read_text(encoding="utf-8")
    table = readme.split(kp.README_START, 1)[1].split(kp.README_END, 1)[0].strip()
    assert table == kp.readme_table(summary, holdout), (
        "README's Kahikatea table is stale: run python -m glassbox.research.kahikatea_protocol --update-readme README.md")
    for variant in kp.VARIANTS:
        assert f"| `{variant}` |" in table
