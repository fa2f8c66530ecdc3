#!/usr/bin/env bash
# The GPU benchmark as run on a lent single-GPU machine (benchmarks/README.md, "GPU"): that machine's python3 holds
# jax[cuda], flax, optax, einops, torch and timm, and nothing can be installed from the network there.
#
#   bash benchmarks/gpu_bench.sh [SECTIONS] [QUICK]     # e.g. "scan,long" or "train,torch"; QUICK=1: small grid
#
# Results go to $OUT (or benchmarks/results/) as <gpu model>.json/.md/.png; BENCH_MERGE=1 keeps the sections an
# earlier call already measured, so a lease can run the sections in calls of a few minutes each.
set -euo pipefail
SECTIONS=${1:-scan,train,torch,long}
QUICK=${2:-0}
RESULTS=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# JAX must not pre-allocate 75 % of the GPU: the PyTorch reference runs in a subprocess beside it, and the
# long-sequence steps read the allocator's peak.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
# A pinned flax wheel carried in .whl/ is used only when the machine's own flax cannot build the models.
if ! $PY -c 'from pixeltok.models import create_model; create_model("vit_tiny", 16, 32, 10)' 2>/dev/null; then
  echo "machine flax failed to build a model; installing the carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
$PY -c 'import jax, flax, optax, torch; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__,
"optax", optax.__version__, "torch", torch.__version__)'
mkdir -p "$RESULTS"
MERGE=1
if [ "$QUICK" != 0 ]; then
  MERGE=0   # a quick grid is a smoke test: never merged into the full results
elif [ "$RESULTS" != benchmarks/results ]; then
  cp benchmarks/results/nvidia-*.json "$RESULTS"/ 2>/dev/null || true   # the earlier calls' sections to merge
fi
BENCH_QUICK=$QUICK BENCH_SECTIONS=$SECTIONS BENCH_MERGE=$MERGE BENCH_RESULTS_DIR=$RESULTS BENCH_TORCH_PYTHON=$PY \
  $PY -m benchmarks.run
