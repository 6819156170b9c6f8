"""A trained model's encoder on a stack, as inference preprocesses it (shared by tests)."""

from __future__ import annotations

import numpy as np
import torch

from napari_spatial_vae.core.data import input_scale, preprocess


def encode(model, config, stack: np.ndarray, ctf: torch.Tensor | None = None):
    """``(images, theta, shift, z)``: the preprocessed ``(N, 1, H, W)`` stack and the means.

    ``ctf`` ``(N, H, W // 2 + 1)``: the particles' CTF filters, as inference passes them (the
    half-turn check at reading compares renderings with the particles).
    """
    images = torch.from_numpy(stack)[:, None]
    images = preprocess(images, input_scale("gaussian", np.dtype(np.float32)), config.normalize)
    with torch.no_grad():
        posterior = model.encode(images, ctf)
    return images, *model.split_latent(posterior.mu)
