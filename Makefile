# pixeltok: every step a fresh machine needs. `make run` and `make test` are the two commands of the README.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# The embedded data set: official Fashion-MNIST IDX files from Debian's dataset-fashion-mnist package.
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORKDIR ?= runs/quickstart
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install data bench sweep clean

run: install data
	$(PY) -m pixeltok.main --config=configs/quickstart.py --workdir=$(WORKDIR)

test: install data
	$(PY) -m pytest -q

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# The CPU wheel first (torch==2.13.0 resolves to the local 2.13.0+cpu), so '.[dev]' finds its torch pin met
	# and never pulls a CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

data:
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi
	@test -f $(FASHION_MNIST_DIR)/t10k-labels-idx1-ubyte.gz || \
	  { echo "Fashion-MNIST IDX files missing in $(FASHION_MNIST_DIR)"; exit 1; }

clean:
	rm -rf $(VENV) build *.egg-info runs

# `make bench`: benchmarks/run.py (limits, SSD scan, train steps, PyTorch reference) -> benchmarks/results/.
# The PyTorch reference lives in its own env; torch==2.13.0 is the local CPU wheel (any other version pulls CUDA).
VENV_TORCH ?= .venv-torch
TORCH_STAMP = $(VENV_TORCH)/.installed

bench: install $(TORCH_STAMP)
	BENCH_TORCH_PYTHON=$(VENV_TORCH)/bin/python $(PY) -m benchmarks.run

$(TORCH_STAMP):
	$(PYTHON) -m venv $(VENV_TORCH)
	$(VENV_TORCH)/bin/pip install -q torch==2.13.0 'numpy>=2,<3'
	touch $(TORCH_STAMP)

# `make sweep`: the compute-frontier sweep (hours on 2 cores; rerunning continues it: finished runs are skipped,
# interrupted ones resume), then its analysis into reports/patch_frontier/.
SWEEP      ?= configs/sweeps/patch_frontier.py
SWEEP_ROOT ?= runs/patch_frontier
SWEEP_OUT  ?= reports/patch_frontier
# Two runs at a time: 1.42x the throughput of one at these small, overhead-bound models (throughput.md).
SWEEP_PARALLEL ?= 2

sweep: install data
	$(PY) launch/sweep.py --sweep $(SWEEP) --root $(SWEEP_ROOT) --parallel $(SWEEP_PARALLEL)
	$(PY) -m pixeltok.scaling --runs $(SWEEP_ROOT) --out $(SWEEP_OUT) --frontier
