# The two commands a new user runs on a fresh Debian/Ubuntu machine: `make demo`, `make test`.
# Each first checks the Debian packages it needs (scripts/system-packages): as root it installs
# the missing ones, otherwise it stops with one line naming the apt-get command. The venv's own
# recipe checks what builds it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := PYTHON='$(PYTHON)' scripts/system-packages

# What each target runs that pip does not install, as CHECK=PACKAGE (a command on PATH, or
# python-venv: $(PYTHON) can make virtualenvs, which Debian's python3 needs python3-venv for).
VENV_NEEDS := python-venv=python3-venv
# `make demo` runs a real Prometheus and Alertmanager; the tests run them, promtool, and the
# timeline page in a headless chromium (driven by Playwright at that executable).
DEMO_NEEDS := $(VENV_NEEDS) prometheus=prometheus prometheus-alertmanager=prometheus-alertmanager
TEST_NEEDS := $(DEMO_NEEDS) promtool=prometheus chromium=chromium
BENCH_NEEDS := $(VENV_NEEDS) wrk=wrk

.PHONY: demo test lint bench clean packages-demo packages-test packages-bench
# Prerequisites in the order written: the packages are checked before the venv is built
# (also under -j), and two apt-gets never run at once.
.NOTPARALLEL:

$(STAMP): pyproject.toml
	@$(SYSTEM_PACKAGES) $(VENV_NEEDS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

packages-demo:
	@$(SYSTEM_PACKAGES) $(DEMO_NEEDS)

packages-test:
	@$(SYSTEM_PACKAGES) $(TEST_NEEDS)

packages-bench:
	@$(SYSTEM_PACKAGES) $(BENCH_NEEDS)

demo: packages-demo $(STAMP)
	$(BIN)/vigil demo

test: packages-test $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: packages-bench $(STAMP)
	$(BIN)/python -m bench.eventlog
	$(BIN)/python -m bench.webhook
	$(BIN)/python -m bench.responder
	$(BIN)/python -m bench.saga

clean:
	rm -rf $(VENV) .vigil .pytest_cache .ruff_cache
