# torchhouse: `make demo` and `make test` work on a fresh machine with only Python 3 and pip.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test check lint bench docs clean venv dev

# The demo's environment: torch (the file pip finds for TORCH_VERSION) and torchhouse's core.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e .
	touch $@

# Everything the tests need on top: the optional extras and the dev tools.
$(VENV)/.installed: $(VENV)/.core
	$(PIP) install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.core
dev: $(VENV)/.installed

demo: venv
	$(VENV)/bin/torchhouse demo --overwrite  # runs/demo is the demo's own folder: replace it

lint: dev
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

# The whole suite, every skip printed with its reason (-rs); PostgreSQL and Chromium are
# installed from Debian first when missing (as root), as CI does.
test: lint
	bash scripts/test_system_deps.sh
	$(VENV)/bin/pytest -rs

# The fast tier: lint, types and the tests not marked slow (no subprocess fleets, servers
# or browsers); about 2 minutes here.
check: lint
	$(VENV)/bin/pytest -rs -m "not slow"

# The docs site (MkDocs Material, API reference from the docstrings) in strict mode:
# a broken link or reference fails the build. Output: site/.
docs: dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The peers' rows need: $(PIP) install -e ".[bench]" (Lightning, torchkeras, Keras 3).
bench: dev
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .mypy_cache .ruff_cache
