# Set-up in one command each: `make demo` (the main job) and `make test` (the test suite).
# Both create what they need from a fresh clone: a virtual environment in .venv with
# torch 2.14.1 + torchvision 0.29.1 and simdex installed (editable), and for the demo
# Fashion-MNIST (Debian package where apt is there and we are root, else torchvision's download);
# for the tests Debian's chromium and chromium-driver (the browser test of `simdex serve`).
# The test extra brings Ray Data (the ray extra) for the Ray engine's tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.simdex-installed

.PHONY: setup data browser demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

data: setup
	@bash scripts/get-fashion-mnist.sh $(BIN)/python

# Debian's Chromium + chromedriver for the browser test of `simdex serve` (apt where we are root)
browser:
	@bash scripts/get-chromium.sh

demo: setup data
	$(BIN)/simdex demo

test: setup browser
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check simdex engine indexer cli tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
