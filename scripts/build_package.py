"""Build the plugin zip that QGIS's *Plugins > Install from ZIP* takes (`make package`).

The zip holds one folder, ``glassbox/``: the plugin code (``__init__.py``, ``plugin.py``,
``dependencies.py``, ``processing_provider/``, ``algorithms/``, ``core/``), ``metadata.txt``,
``LICENSE``, ``requirements-plugin.txt`` (the install hint points at it), the icon, the pipeline model,
the reference pages in ``docs/`` (each algorithm's Help opens its page)
and, per kind of input, the default ONNX model with its card and metrics: the RGB default and
the 13-band model. Tests, benchmarks, research, scripts, Torch duplicates of the models and any
virtual environment stay out.

Usage: ``.venv/bin/python scripts/build_package.py [--out dist]``; prints the zip's path.
"""

from __future__ import annotations

import argparse
import configparser
import zipfile
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "glassbox"
CODE = ["__init__.py", "plugin.py", "dependencies.py", "processing_provider", "algorithms", "core"]
FILES = ["metadata.txt", "LICENSE", "requirements-plugin.txt", "resources/icons/glassbox.svg"]
FOLDERS = ["resources/processing_models", "docs"]
#: the default model of each kind of input (RGB, Sentinel-2 13 bands), as ONNX with its card files
DEFAULT_MODELS = ["eurosat_rgb_resnet18_64_w32_96px", "eurosat_ms_fusion_resnet18"]
MODEL_SUFFIXES = [".onnx", ".json", ".metrics.json", ".radiometry.json"]


def package_files() -> list[Path]:
    """Paths (relative to the plugin folder) that go into the zip, sorted."""
    files: list[Path] = []
    for name in CODE + FOLDERS:
        path = PLUGIN_DIR / name
        if path.is_file():
            files.append(path)
        else:
            files.extend(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                         and p.suffix not in (".pyc", ".pyo"))
    files.extend(PLUGIN_DIR / name for name in FILES)
    for stem in DEFAULT_MODELS:
        for suffix in MODEL_SUFFIXES:
            path = PLUGIN_DIR / "resources" / "models" / f"{stem}{suffix}"
            if path.exists():
                files.append(path)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise SystemExit(f"missing from the plugin folder: {', '.join(missing)}")
    return sorted(p.relative_to(PLUGIN_DIR) for p in files)


def plugin_version() -> str:
    metadata = configparser.ConfigParser()
    metadata.read(PLUGIN_DIR / "metadata.txt", encoding="utf-8")
    return metadata["general"]["version"]


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE_NAME}-{plugin_version()}.zip"
    tmp = target.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative in package_files():
            archive.write(PLUGIN_DIR / relative, f"{PACKAGE_NAME}/{relative.as_posix()}")
    tmp.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PLUGIN_DIR / "dist", help="folder for the zip (default: dist)")
    args = parser.parse_args()
    print(build(args.out))


if __name__ == "__main__":
    main()
