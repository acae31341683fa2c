# Set-up in one command each: `make demo` (the main job) and `make test` (the test suite).
# Both create what they need from a fresh clone: a virtual environment in .venv with
# torch 2.14.1 + torchvision 0.29.1 and simdex installed (editable), and for the demo
# Fashion-MNIST (Debian package where apt is there and we are root, else torchvision's download).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.simdex-installed

.PHONY: setup data demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

data: setup
	@bash scripts/get-fashion-mnist.sh $(BIN)/python

demo: setup data
	$(BIN)/simdex demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check simdex engine indexer cli tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
