# Two commands run everything:  `make demo` (the main job, offline) and `make test` (the whole test suite).
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_EVALUATE_OFFLINE := 1

.PHONY: install demo test test-fast style quality clean

$(BIN)/fastfcn-hub: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,eval,export,parity,dev]"
	touch $(BIN)/fastfcn-hub

install: $(BIN)/fastfcn-hub

demo: install
	$(BIN)/fastfcn-hub demo --output-dir outputs/demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not parity"

style: install
	$(BIN)/ruff format src scripts tests && $(BIN)/ruff check --fix src scripts tests

quality: install
	$(BIN)/ruff check src scripts tests && $(BIN)/ruff format --check src scripts tests

clean:
	rm -rf $(VENV) outputs .pytest_cache
