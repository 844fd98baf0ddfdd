# Glassbox: `make demo` (set-up + classify, explain and segment a real Sentinel-2 scene) and `make test`.
# Set-up installs only what is missing: Debian's QGIS (as root, via apt), a .venv made from
# Debian's Python with the pinned requirements, and the plugin linked into the QGIS profile
# that qgis_process uses.
SHELL := /bin/bash
.DEFAULT_GOAL := help

SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PYTHON := $(VENV)/bin/python
PYVER := $(shell $(SYSTEM_PYTHON) -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)
SITE_PACKAGES := $(CURDIR)/$(VENV)/lib/$(PYVER)/site-packages
QGIS_PROFILE ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default
PLUGIN_LINK := $(QGIS_PROFILE)/python/plugins/glassbox
DEMO_DIR ?= $(CURDIR)/demo_output
DEMO_CACHE ?= $(HOME)/.cache/glassbox-demo
DEMO_MODEL ?=
APT_PACKAGES := qgis python3-qgis qgis-providers xvfb python3-venv python3-pip
export QT_QPA_PLATFORM := offscreen

.PHONY: help setup system venv plugin demo test test-research package clean

help:
	@echo "make demo   - install what is missing, then classify, explain and segment a real Sentinel-2 scene into $(DEMO_DIR)"
	@echo "make test   - install what is missing, then run the test suite"
	@echo "make test-research - the tests of the paper reproductions in research/"
	@echo "make package - the plugin zip for QGIS's Install from ZIP, in dist/"

setup: system venv plugin

system:
	@if ! command -v qgis_process.bin >/dev/null || ! $(SYSTEM_PYTHON) -c 'import qgis.core, ensurepip' 2>/dev/null; then \
		echo "Installing QGIS and Python venv support from Debian (needs root)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-plugin.txt pyproject.toml
	@test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-deps -e .
	@touch $@

plugin: venv
	@mkdir -p $(dir $(PLUGIN_LINK))
	@ln -sfn $(CURDIR) $(PLUGIN_LINK)
	@scripts/qgis_process plugins enable glassbox >/dev/null 2>&1 || true
	@echo "Glassbox plugin linked at $(PLUGIN_LINK)"

demo: setup
	$(PYTHON) scripts/demo.py --workdir $(DEMO_CACHE) --out $(DEMO_DIR) $(if $(DEMO_MODEL),--model $(DEMO_MODEL))

test: setup
	$(PYTHON) -m pytest -q tests

package:
	$(SYSTEM_PYTHON) scripts/build_package.py --out dist

test-research: setup
	$(PYTHON) -m pytest -q research/tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
