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
