# Carewatch: the two quick-start commands are `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

# Create .venv and install Carewatch into it (re-run when pyproject.toml changes).
$(STAMP): pyproject.toml
	@bash scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

## Run the whole platform on embedded defaults (own PostgreSQL + MQTT broker); Ctrl-C stops it.
demo: $(STAMP)
	$(BIN)/carewatch demo $(ARGS)

## Run the test suite against real PostgreSQL and Mosquitto.
test: $(STAMP)
	@bash scripts/ensure-test-services.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Ruff, the layer contracts (import-linter) and mypy. The two static tools read build/pkgview/, where the stage
## folders appear as carewatch.<stage> (scripts/package_view.py; see ARCHITECTURE.md).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python scripts/package_view.py build/pkgview
	cd build/pkgview && $(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml
	cd build/pkgview && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache -p carewatch

bench: $(STAMP)
	@for b in bench/bench_*.py bench/ingest/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
