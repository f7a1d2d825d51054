# make demo: set up .venv, get Fashion-MNIST, train the DCGAN demo (~10 min on 2 CPU cores).
# make test: same set-up, then the fast test suite (make test-all adds the slow tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: setup data demo test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

data:
	@if [ -f $(DATA)/train-images-idx3-ubyte.gz ] || [ -f $(DATA)/train-images-idx3-ubyte ]; then \
	  echo "Fashion-MNIST: $(DATA)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST is not in $(DATA). Either: sudo apt-get install dataset-fashion-mnist;" \
	       "or put the four IDX files (train-images-idx3-ubyte.gz ...) in a folder and pass" \
	       "--config.data.source_dir=FOLDER to jaxgen train."; \
	  exit 1; \
	fi

demo: setup data
	$(VENV)/bin/jaxgen train --config experiments/configs/dcgan_fashion.py --workdir runs/demo
	@echo "sample grids: runs/demo/samples/   metrics: runs/demo/metrics.jsonl   checkpoints: runs/demo/checkpoints/"

test: setup data
	$(PY) -m pytest -q

test-all: setup data
	$(PY) -m pytest -q -m ""

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.throughput

clean:
	rm -rf runs .pytest_cache
