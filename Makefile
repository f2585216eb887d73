# Two commands on a fresh machine: `make run` (demo server) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/activate: setup.py requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -e .
	touch $(BIN)/activate

run: $(BIN)/activate
	$(BIN)/python run.py --demo

test: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --cov --cov-report=term

lint: $(BIN)/activate
	$(BIN)/ruff check .

bench: $(BIN)/activate
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage htmlcov
