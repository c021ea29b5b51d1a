# flowprep: see README.md.  Everything runs from the virtualenv at .venv/.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= demo
OUT ?= out/$(DATASET).zarr
JOBS ?= 2

.PHONY: install flow test lint clean

$(BIN)/flowprep: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: pip takes the CPU wheel from local disk (see setup.cfg)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/flowprep

# DATASET is a recipe name in pipelines/ (demo, kinetics = kinetics400, ucf101, ...)
flow: install
	$(BIN)/flowprep run $(DATASET) --out $(OUT) --jobs $(JOBS)
	$(BIN)/flowprep inspect $(OUT) --preview $(basename $(OUT))_preview.png

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check flowprep tests benchmarks

clean:
	rm -rf out .pytest_cache
