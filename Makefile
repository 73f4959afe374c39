# The two commands of the README. Everything they need is installed here, on first use.
#   make run    virtualenv + install + `clarion serve` on SQLite at http://127.0.0.1:8080
#   make test   virtualenv + test dependencies + lint, types and the whole suite
#   make bench  what bench/ needs beyond that: nginx for the provider sink, py-spy for --profile

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench

run: $(VENV)/.installed
	$(BIN)/clarion serve

test: $(VENV)/.installed-test lint
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	command -v nginx >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx-light libnginx-mod-http-headers-more-filter)
	$(BIN)/python -m pip install --quiet py-spy

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The portal's browser tests drive Debian's Chromium (tests/portal); CI runs as root.
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $@
