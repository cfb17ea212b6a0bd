# Quick start:  make run   (set up, then train on real MNIST and write run folders with pictures and metrics)
#               make test  (set up, then run the test suite)
PYTHON ?= python3
VENV ?= .venv
# MNIST's IDX files: <PYROVAE_DATA>/MNIST/raw/. Defaults to the shared data folder beside this checkout.
PYROVAE_DATA ?= $(abspath ../shared/data)
export PYROVAE_DATA

.PHONY: setup run test bench clean-venv

setup: $(VENV)/.installed

# torch is pinned through constraints.txt: 2.13.0 is the CPU build available on our machines; an
# unpinned torch would pull a multi-GB CUDA build. Install it first, then the rest under the same pin.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt torch
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

run: setup
	$(VENV)/bin/pyrovae train --epochs 10 --eval-num-samples 100 --out runs/quickstart-$$(date +%Y%m%d-%H%M%S)-mlp-z50
	$(VENV)/bin/pyrovae train --z-dim 2 --epochs 10 --eval-num-samples 100 --out runs/quickstart-$$(date +%Y%m%d-%H%M%S)-mlp-z2

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python benchmarks/throughput.py
