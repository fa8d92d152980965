# The README's two commands: `make demo` (the whole default run) and `make test` (the test suite).
# Both create or reuse the local virtual environment .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: demo test lint dryrun report readme clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --keep-going --rerun-incomplete --printshellcmds

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(CORES) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check msamil workflow tests benchmarks
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules

dryrun: $(STAMP)
	$(BIN)/snakemake -n

report: $(STAMP)
	$(BIN)/snakemake --report results/report.html

clean-results:
	rm -rf results/*/ results/tables results/figures results/logs results/benchmarks .snakemake

readme: $(STAMP)
	$(BIN)/python -m msamil.reporting.readme
