# make demo: set up .venv, get Fashion-MNIST, train the DCGAN demo (~10 min on 2 CPU cores).
# make test: same set-up plus the PyTorch peer, headless Chromium and the emoji font and table
# (as root), then the fast test suite (make test-all adds the slow tests). Versions come from
# constraints.txt (make lock refreshes it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
DATA := /usr/share/datasets/fashion-mnist
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
EMOJI_TABLE := /usr/share/unicode/emoji/emoji-test.txt
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
LINT_STAMP := $(VENV)/.installed-lint
TEST_WORKERS ?= 2

.PHONY: setup setup-bench data data-emoji browser demo test test-all bench device-check lint format lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) -e ".[test]"
	touch $(STAMP)

# The PyTorch peer (torch==2.13.0, a CPU wheel); where it cannot install, its tests skip.
setup-bench: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP)
	@if $(PIP) -e ".[test,bench]"; then touch $(BENCH_STAMP); else \
	  echo "torch==2.13.0 did not install here: the PyTorch peer tests will be skipped"; fi

# ruff (configured in pyproject.toml): make lint checks formatting and lint rules (CI runs it);
# make format rewrites the tree in the project's style.
$(LINT_STAMP): $(STAMP)
	$(PIP) -e ".[test,lint]"
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(LINT_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Rewrites constraints.txt with the newest versions pyproject.toml allows (in a scratch venv).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e ".[test,bench,lint]"
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable \
	  | sed 's/+cpu$$//'; } > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf .lock-venv
	@echo "constraints.txt rewritten: run make test, then commit it"

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

# The emoji data set's font and table (jaxgen.data.emoji); without them its real-font tests skip.
data-emoji:
	@if [ -f $(EMOJI_FONT) ] && [ -f $(EMOJI_TABLE) ]; then \
	  echo "emoji: $(EMOJI_FONT), $(EMOJI_TABLE)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's fonts-noto-color-emoji and unicode-data"; \
	  apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji unicode-data >/dev/null; \
	else \
	  echo "the emoji font or table is missing: the emoji data set's real-font tests will be" \
	       "skipped. Either: sudo apt-get install fonts-noto-color-emoji unicode-data;" \
	       "or put NotoColorEmoji.ttf and emoji-test.txt in a folder and pass" \
	       "--config.data.source_dir=FOLDER to jaxgen train."; \
	fi

# Headless Chromium for the report's browser test (tests/test_report.py skips without one).
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium (headless, for the report test)"; \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "no chromium: the report's browser test will be skipped; install it with:" \
	       "sudo apt-get install chromium"; \
	fi

demo: setup data
	$(VENV)/bin/jaxgen train --config experiments/configs/dcgan_fashion_cond.py --workdir runs/demo
	@echo "sample grids: runs/demo/samples/   metrics: runs/demo/metrics.jsonl   checkpoints: runs/demo/checkpoints/"

# Two pytest-xdist workers (TEST_WORKERS=1 for one process): compiling is single-threaded, so
# two workers keep both cores busy; --dist loadfile keeps a file's module fixtures (trained runs)
# in one worker.
test: setup setup-bench data data-emoji browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-all: setup setup-bench data data-emoji browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m ""

bench: setup setup-bench
	$(PY) -m benchmarks.throughput

# On a GPU/TPU host: installs the accelerator's jax (and a CUDA torch), runs the
# backend-independent tests there, then the throughput table in float32 and bfloat16 beside
# the PyTorch peer; one JSON file (runs/device_check/device_check.json). Quick sizes on CPU.
device-check:
	benchmarks/device_check.sh

clean:
	rm -rf runs .pytest_cache
