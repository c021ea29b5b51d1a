# flowprep: see README.md.  Everything runs from the virtualenv at .venv/.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= demo
OUT ?= out/$(DATASET).zarr
JOBS ?= 2

.PHONY: install flow test lint clean bench-scale

$(BIN)/flowprep: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: pip takes the CPU wheel from local disk (see setup.cfg)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/flowprep

flow: install
	$(BIN)/flowprep run pipelines/$(DATASET).toml --out $(OUT) --jobs $(JOBS)

test: install
	$(BIN)/python -m pytest -q -rs

# open_store / status / finalize over a synthetic store of 100k videos; Kinetics-400 file count
bench-scale: install
	$(BIN)/python benchmarks/bench_scale.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check flowprep tests benchmarks

clean:
	rm -rf out .pytest_cache
