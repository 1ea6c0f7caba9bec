# fss: the two commands a new user needs are `make demo` and `make test`; both set up first.
#
# The virtualenv lives in .venv at the repo root. It is created with --system-site-packages so
# that a machine which already has torch/torchvision (and friends) installed for its Python
# reuses them instead of downloading ~6 GB again; anything missing is installed into .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fss-installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: install test demo lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.1"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/python -m fss fit --config configs/demo.yaml

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check fss tests benchmarks

format: install
	$(BIN)/python -m ruff check --fix .
	$(BIN)/python -m ruff format fss tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs lightning_logs wandb
