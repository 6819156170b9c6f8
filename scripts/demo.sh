#!/usr/bin/env bash
# The main job on generated sample data: simulate 4,000 particles (40x40, SNR 1, a hinge
# motion, random rotations and shifts), train spatial-VAE with the default settings for at most
# 8 minutes, infer poses/aligned particles/reconstructions, and walk the latent space.
# Everything lands in ./demo-run/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh none >/dev/null
out=demo-run
mkdir -p "$out"
sv=.venv/bin/spatial-vae
$sv simulate -o "$out/particles.mrcs" --n 4000 --size 40 --snr 1 --pixel-size 2.0
rm -rf "$out/model"
$sv train "$out/particles.mrcs" -o "$out/model" --z-dim 1 --max-minutes 8
$sv infer "$out/model" "$out/particles.mrcs" -o "$out/poses.csv" \
    --aligned "$out/aligned.mrcs" --reconstructions "$out/reconstructions.mrcs"
$sv infer "$out/model" "$out/particles.mrcs" -o "$out/poses.star" -q
$sv traverse "$out/model" -o "$out/traversal.mrcs" --steps 9
.venv/bin/python scripts/score_demo.py "$out/poses.csv" "$out/particles_truth.csv"
