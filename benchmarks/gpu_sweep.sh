#!/usr/bin/env bash
# Candidate settings side by side on one GPU, each on the tune split's jobs (designs and seeds
# defaults may be chosen on, core/designs.py), then one table (benchmarks/sweep_table.py):
#
#   bash benchmarks/gpu_sweep.sh PYTHON OUTDIR LABEL='field=value ...' [LABEL='...' ...]
#   bash benchmarks/gpu_sweep.sh python3 /tmp/sweep defaults= deeper='num_layers=3 hidden_dim=96'
#
# Each candidate is one benchmarks/gpu_family.sh call (OUTDIR/LABEL/, run folders kept) on
# JOBS (default: the five below), all calls at once; MINUTES caps each run's training as there.
# The table's last column, the mean worse-motion |Pearson| over the jobs, is the rule to decide
# by; a winner is then run once on the report split (gpu_family.sh), never chosen there.
# Every run is one process with one CPU thread: keep candidates x jobs within the CPU cores.
set -uo pipefail
PY=$1 OUTDIR=$2
shift 2
JOBS=${JOBS:-"tilted-hinge:0 tilted-hinge:1 two-hinges:0 two-hinges:1 tilted-hinge:0:0.1"}
here=$(dirname "$0")
mkdir -p "$OUTDIR"
rows=()
for candidate in "$@"; do
  label=${candidate%%=*} overrides=${candidate#*=}
  rows+=("$OUTDIR/$label.rows")
  # shellcheck disable=SC2086  # JOBS and the overrides are word lists
  bash "$here/gpu_family.sh" "$PY" "$OUTDIR/$label" $JOBS -- $overrides >"$OUTDIR/$label.rows" 2>&1 &
done
wait
"$PY" "$here/sweep_table.py" "${rows[@]}"
