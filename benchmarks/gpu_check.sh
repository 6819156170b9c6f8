#!/usr/bin/env bash
# One prepared GPU check (< 10 minutes on one H100/H200): images/s for the paper's configs
# (a)-(c) next to the naive baseline on the same GPU, fp32 / TF32 / bf16, then a short real
# `spatial-vae train` with the stack resident on the GPU and one streamed from pinned memory.
# Run from the repository root:   bash benchmarks/gpu_check.sh [PYTHON]
# The naive baseline is read from ../shared/bench/naive_svae.py (NAIVE=path to move it: the
# device tool carries the checkout alone, so copy it into an ignored folder and carry that).
set -euo pipefail
PY=${1:-.venv/bin/python}
NAIVE=${NAIVE:-../shared/bench/naive_svae.py}
OUT=${OUT:-/tmp/svae-gpu-check}
mkdir -p "$OUT"
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.__version__, torch.cuda.get_device_name(0))
PYEOF
# (a)-(c) and defaults: 20 timed steps per block, 3 interleaved repeats, all precisions
timeout 420 "$PY" benchmarks/throughput.py --device cuda --configs a,b,c,default \
    --precisions fp32,tf32,bf16 --steps 20 --repeats 3 --threads 8 --naive "$NAIVE" | tee "$OUT/throughput.txt"
# end to end: resident on the GPU vs streamed through pinned memory (--resident-gb 0)
"$PY" -m napari_spatial_vae simulate -o "$OUT/sim.mrcs" --n 20000 --size 40 >/dev/null
# what a user gets from the defaults (auto precision, batch 16), then large batches
rm -rf "$OUT/run"
{ timeout 120 "$PY" -m napari_spatial_vae train "$OUT/sim.mrcs" -o "$OUT/run" --device cuda \
    --epochs 2 2>&1 | grep -E "precision|completed" | sed "s/^/train defaults: /" \
    | tee -a "$OUT/throughput.txt"; } || echo "train defaults: did not finish (exit $?)"
for resident in "" "--resident-gb 0"; do
  rm -rf "$OUT/run"
  timeout 90 "$PY" -m napari_spatial_vae train "$OUT/sim.mrcs" -o "$OUT/run" --device cuda \
      --epochs 2 --batch-size 256 --precision bf16 $resident -q 2>&1 | tail -1 \
      | sed "s/^/train ${resident:-resident}: /" | tee -a "$OUT/throughput.txt"
done
