#!/usr/bin/env bash
# Candidate settings side by side on one GPU, each on the tune split's jobs (designs and seeds
# defaults may be chosen on, core/designs.py), then one table (benchmarks/sweep_table.py):
#
#   bash benchmarks/gpu_sweep.sh PYTHON OUTDIR LABEL='field=value ...' [LABEL='...' ...]
#   bash benchmarks/gpu_sweep.sh python3 /tmp/sweep defaults= deeper='num_layers=3 hidden_dim=96'
#
# Each candidate is one benchmarks/gpu_family.sh call (OUTDIR/LABEL/, run folders kept) on
# JOBS (default: the five below), all calls at once; MINUTES caps each run's training as there,
# MPS=1 starts CUDA MPS once for all of them. LABEL: letters, digits, '.', '_', '-'; 'LABEL='
# alone is the defaults. The table's last column, the mean worse-motion |Pearson| over the
# jobs, is the rule to decide by; a winner is then run once on the report split
# (gpu_family.sh), never chosen there. Every run is one process with one CPU thread: keep
# candidates x jobs within the CPU cores.
set -uo pipefail
PY=$1 OUTDIR=$(realpath -m "$2")
shift 2
JOBS=${JOBS:-"tilted-hinge:0 tilted-hinge:1 two-hinges:0 two-hinges:1 tilted-hinge:0:0.1"}
cd "$(dirname "$0")/.." || exit 1  # gpu_family.sh runs benchmarks/ from the repository root
labels=()
for candidate in "$@"; do
  label=${candidate%%=*}
  if [[ $candidate != *=* || ! $label =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "gpu_sweep.sh: candidate '$candidate' is not LABEL='field=value ...'" >&2; exit 2
  fi
  if [[ " ${labels[*]} " == *" $label "* ]]; then
    echo "gpu_sweep.sh: label '$label' given twice" >&2; exit 2
  fi
  labels+=("$label")
done
mkdir -p "$OUTDIR"
if [[ ${MPS:-0} == 1 ]]; then nvidia-cuda-mps-control -d && echo "CUDA MPS started"; fi
rows=()
read -ra jobs <<<"$JOBS"
for candidate in "$@"; do
  label=${candidate%%=*}
  read -ra overrides <<<"${candidate#*=}"
  rows+=("$OUTDIR/$label.rows")
  MPS=0 bash benchmarks/gpu_family.sh "$PY" "$OUTDIR/$label" "${jobs[@]}" -- "${overrides[@]}" \
      >"$OUTDIR/$label.rows" 2>&1 &
done
wait
if [[ ${MPS:-0} == 1 ]]; then echo quit | nvidia-cuda-mps-control; fi
"$PY" benchmarks/sweep_table.py "${rows[@]}"
