# gendistill: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests
# (`make test-fast` without the slow ones, `make lint` runs ruff).
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.gendistill-installed
SUDO      := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
FMNIST    := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
THREADS   := $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup data demo test test-fast lint bench backbone clean

setup: data $(STAMP)

data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || test -f $(FMNIST) || \
	  { echo "installing Debian's dataset-fashion-mnist"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# glibc's allocator: keep large tensors in the heap instead of a fresh zero-filled mmap each time (a CPU run spends
# 42-46% of its CPU time in the kernel otherwise; benchmarks/cpu_allocator.py, docs/recipes.md)
MALLOC    := MALLOC_MMAP_THRESHOLD_=$${MALLOC_MMAP_THRESHOLD_:-4294967296} MALLOC_TRIM_THRESHOLD_=$${MALLOC_TRIM_THRESHOLD_:-4294967296}

demo: setup
	. $(VENV)/bin/activate && $(MALLOC) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(THREADS)} accelerate launch recipes/latent_dm.py

# PYTHONDONTWRITEBYTECODE= : keep Python's bytecode cache on even where the environment turns it off, or pytest
# re-parses and rewrites every test module on every run (~3 s of each worker's start-up on a 2-core machine)
test: setup
	PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest

# the edit loop: everything but the tests marked slow (process-spawning, shipped assets), one worker per core
# (pytest-xdist; each test uses one thread); CI runs `make test`, serially
test-fast: setup
	PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest -m "not slow" -n $(THREADS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/dm_speed.py

backbone: setup
	$(PY) recipes/train_autoencoder.py --dataset fashion-mnist --output gendistill/assets/backbones/fashion-mnist-vae --overwrite

clean:
	rm -rf outputs .pytest_cache
