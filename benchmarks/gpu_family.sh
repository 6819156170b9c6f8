#!/usr/bin/env bash
# The design family's runs side by side on one GPU: one process per design and seed, each the
# defaults' full schedule (38 epochs) trained on the GPU and scored on the CPU, run folders kept.
#
#   bash benchmarks/gpu_family.sh PYTHON OUTDIR JOB [JOB ...] [-- field=value ...]
#
# (EPOCHS and N_TRAIN in the environment shrink it for a quick try.)
# JOB is design:seed or design:seed:snr (trained and scored at that SNR; default the design's).
# Writes OUTDIR/<design>_s<seed>[_snr<snr>].log (the JSON row is its last-but-table line) and
# OUTDIR/runs[_snr<snr>]/<design>_s<seed> (load with design_family.py --from-runs).
# Small models leave a GPU mostly idle, so the runs share it (MPS=1 starts CUDA MPS first, so
# that their kernels can overlap). MINUTES (default 60) is each run's training budget.
set -uo pipefail
PY=$1 OUTDIR=$2
shift 2
jobs=()
while (($#)) && [[ $1 != -- ]]; do jobs+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
mkdir -p "$OUTDIR"
if [[ ${MPS:-0} == 1 ]]; then nvidia-cuda-mps-control -d && echo "CUDA MPS started"; fi
logs=()
for job in "${jobs[@]}"; do
  IFS=: read -r design seed snr <<<"$job"
  tag=${design}_s${seed}${snr:+_snr$snr}
  logs+=("$OUTDIR/$tag.log")
  OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 "$PY" benchmarks/design_family.py --designs "$design" --seeds "$seed" \
      --epochs "${EPOCHS:-38}" --n-train "${N_TRAIN:-4000}" --minutes "${MINUTES:-60}" --threads 1 ${snr:+--snr "$snr"} --apply-snr 0.1 \
      --keep-runs "$OUTDIR/runs${snr:+_snr$snr}" device=cuda "$@" >"$OUTDIR/$tag.log" 2>&1 &
done
wait
if [[ ${MPS:-0} == 1 ]]; then echo quit | nvidia-cuda-mps-control; fi
grep -h '^{' "${logs[@]}"
