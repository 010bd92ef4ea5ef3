# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first (the local CPU wheel), then the project; pycanon/anjana pin old stacks and openmined-psi
# pins protobuf==6.30.2 (pyproject.toml says why): --no-deps.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps pycanon==1.3.6 anjana==1.2.3 beartype tabulate openmined-psi==2.0.6
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/privmodel demo --out out

# The report's browser test drives Debian's Chromium (Playwright's own browser download cannot work here).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The budget store's tests run a throwaway PostgreSQL server (tests/conftest.py: initdb + pg_ctl in a temp
# directory); they fail, never skip, when it is missing, so install Debian's package when initdb is absent.
PG_INITDB = $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
.PHONY: postgresql
postgresql:
	@if [ -z "$(PG_INITDB)" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; fi

test: $(STAMP) $(CHROMIUM) postgresql
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache
