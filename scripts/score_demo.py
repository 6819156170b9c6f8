"""Compare inferred poses with the simulation's ground truth (used by scripts/demo.sh)."""

import sys

import pandas as pd

from napari_spatial_vae.core import metrics

poses, truth = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
pearson = max(
    abs(metrics.pearson(poses[c], truth["conformation"]))
    for c in poses.columns
    if c.startswith("z") and not c.endswith("_std")
)
print(f"|Pearson(z, conformation)| = {pearson:.3f}")
print(
    f"circular correlation of theta (Fisher-Lee) = "
    f"{abs(metrics.circular_correlation_fl(poses['theta'], truth['theta'])):.3f}"
)
