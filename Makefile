# Two promises: `make quickstart` and `make test` work on a fresh machine (Python >= 3.10, pip).
.PHONY: setup test test-slow lint quickstart

setup:
	./scripts/setup.sh dev

lint: setup
	.venv/bin/ruff check .

test: setup lint
	./scripts/need_chromium.sh
	.venv/bin/python -m pytest -q

test-slow: setup
	.venv/bin/python -m pytest -q -m slow

quickstart: setup
	.venv/bin/python experiments/quickstart.py
