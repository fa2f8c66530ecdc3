#!/usr/bin/env bash
# Compiled per-device training memory of Adventurer-B and ViT-B at p=1 (the configs' own bf16 compute and remat,
# one image per data-parallel group) under seq-parallel meshes of virtual CPU devices (docs/sharding.md):
#   bash benchmarks/seq_parallel_fit.sh [model:res:seq ...] > benchmarks/results/seq_parallel_fit.txt
# `--measure_grads`: loss + gradients of the model under the mesh (no ImageNet needed); add the train state
# (params + grads + AdamW, 16 B/param / fsdp, the "train state" line) for a training step's total.
set -u
PY=${PY:-.venv/bin/python}
POINTS=${*:-adventurer_base:224:1 adventurer_base:224:8 adventurer_base:448:8 vit_base:224:1 vit_base:224:8 vit_base:448:8}
for point in $POINTS; do
  IFS=: read -r model res seq <<< "$point"
  echo "== ${model} p1 res=${res} seq=${seq}"
  XLA_FLAGS=--xla_force_host_platform_device_count=${seq} JAX_PLATFORMS=cpu timeout 3000 "$PY" -m pixeltok.memory \
    --config="configs/${model}.py:p1,res=${res}" --config.mesh.data=1 --config.mesh.seq=${seq} \
    --config.batch_size=1 --measure_grads 2>&1 | grep -E "tokens|train state|total|compiled|error"
done
