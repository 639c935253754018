PY ?= .venv/bin/python

.PHONY: install check lint typecheck test bench
install:
	python3 -m venv .venv
	$(PY) -m pip install -q -e '.[dev,bench]'

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy

test:
	$(PY) -m pytest

bench:
	$(PY) -m bench

check: lint typecheck test
