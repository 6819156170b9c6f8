"""spatial-VAE generators: the coordinate MLP (spatial) and the paper's vanilla one."""

from __future__ import annotations

import torch
from torch import nn

from napari_spatial_vae.core.mlp import ACTIVATION_MODULES, make_mlp


@torch.no_grad()
def _turn_z_columns(layer: nn.Linear, rotation: torch.Tensor) -> None:
    """A layer reading old-axis z reads new-axis z: ``W z = W R z'``."""
    layer.weight.copy_(layer.weight @ rotation.to(layer.weight))


class SpatialGenerator(nn.Module):
    """``g([x, z]) -> p(y_x)``: an MLP applied to every (transformed) pixel coordinate.

    The first layer is split into a coordinate part and a ``z`` part, so ``W_z z`` is computed
    once per image instead of once per pixel (same function as concatenating ``[x, z]``).

    Performance notes (the maths is that of ``Linear -> activation`` throughout):

    * The first layer is one batched GEMM ``[x, y, 1] @ [W_x^T; b + W_z z]`` per image, so
      the ``(B, N, H)`` pre-activation is written once, with bias and ``z`` folded in. It
      always runs in fp32 (coordinates quantised to bf16 would move pixels by up to a tenth
      of a pixel); under an autocast context its output is then cast to the autocast dtype.
    * Activations whose backward needs only their output (tanh, ReLU, leaky ReLU) run in
      place on the GEMM output, saving one ``(B, N, H)`` buffer per layer.
    """

    def __init__(
        self,
        z_dim: int,
        n_out: int,
        hidden: int,
        num_layers: int,
        activation: str,
        z_every_layer: bool = False,
    ):
        super().__init__()
        self.coord_layer = nn.Linear(2, hidden)
        self.z_layer = nn.Linear(z_dim, hidden, bias=False) if z_dim > 0 else None
        self.body = make_mlp(hidden, hidden, n_out, num_layers - 1, activation)
        self.first_activation = ACTIVATION_MODULES[activation]()
        # z also shifts every later hidden layer: one (B, H) bias per image and layer
        self.z_hidden = nn.ModuleList(
            nn.Linear(z_dim, hidden, bias=False)
            for _ in range(num_layers - 1 if z_every_layer and z_dim > 0 else 0)
        )

    def rotate_z(self, rotation: torch.Tensor) -> None:
        """Read z in turned axes (every layer z enters)."""
        for layer in [self.z_layer, *self.z_hidden]:
            if layer is not None:
                _turn_z_columns(layer, rotation)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Evaluate the generator.

        Parameters
        ----------
        coords
            ``(B, N, 2)`` transformed coordinates, or ``(N, 2)`` shared by the batch.
        z
            ``(B, Z)``, or None when ``z_dim = 0``.

        Returns
        -------
        torch.Tensor
            ``(B, N, n_out)``.
        """
        hidden = self._first_layer(coords, z)
        layers = list(self.body)
        z_biases = iter(self.z_hidden)
        for index, layer in enumerate(layers):
            if isinstance(layer, nn.Linear):
                z_bias = next(z_biases, None)
                if z_bias is not None and z is not None:
                    # the per-image bias b + W z folded into one batched GEMM, as in the
                    # first layer: no second (B, N, H) buffer for the sum
                    dtype = hidden.dtype
                    per_image = (layer.bias + z_bias(z.to(layer.weight.dtype)))[:, None, :]
                    hidden = torch.baddbmm(
                        per_image.to(dtype),
                        hidden,
                        layer.weight.t().to(dtype).expand(hidden.shape[0], -1, -1),
                    )
                else:
                    hidden = nn.functional.linear(hidden, layer.weight, layer.bias)
                following = layers[index + 1] if index + 1 < len(layers) else None
                if following is not None and _can_run_in_place(following):
                    hidden = _apply_in_place(following, hidden)
            elif not _can_run_in_place(layer):
                hidden = layer(hidden)
        return hidden

    def _first_layer(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Activated first layer, ``(B, N, H)``, computed in fp32."""
        device_type = coords.device.type
        low_precision = (
            torch.get_autocast_dtype(device_type)
            if torch.is_autocast_enabled(device_type)
            else None
        )
        with torch.autocast(device_type=device_type, enabled=False):
            weight = self.coord_layer.weight  # (H, 2)
            offset = self.coord_layer.bias[None, :]  # (1, H)
            if self.z_layer is not None and z is not None:
                offset = offset + self.z_layer(z.float())  # (B, H)
            elif coords.dim() == 2:
                raise ValueError("shared coordinates need z to know the batch size")
            batch = coords.shape[0] if coords.dim() == 3 else offset.shape[0]
            coords = coords.float().expand(batch, *coords.shape[-2:])
            ones = coords.new_ones(*coords.shape[:2], 1)
            augmented = torch.cat([coords, ones], dim=2)  # (B, N, 3)
            matrix = torch.cat(
                [weight.t().expand(batch, -1, -1), offset.expand(batch, -1)[:, None, :]], dim=1
            )  # (B, 3, H)
            hidden = torch.bmm(augmented, matrix)
            if _can_run_in_place(self.first_activation):
                hidden = _apply_in_place(self.first_activation, hidden)
            else:
                hidden = self.first_activation(hidden)
        return hidden if low_precision is None else hidden.to(low_precision)


def _can_run_in_place(activation: nn.Module) -> bool:
    """Activations whose backward reads only their output, so overwriting the input is safe."""
    if isinstance(activation, nn.LeakyReLU):
        return activation.negative_slope > 0.0
    return isinstance(activation, (nn.Tanh, nn.ReLU))


def _apply_in_place(activation: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    if isinstance(activation, nn.Tanh):
        return hidden.tanh_()
    if isinstance(activation, nn.ReLU):
        return hidden.relu_()
    assert isinstance(activation, nn.LeakyReLU)
    return nn.functional.leaky_relu_(hidden, activation.negative_slope)


class VanillaGenerator(nn.Module):
    """The paper's baseline decoder: an MLP from ``z`` straight to all modelled pixels."""

    def __init__(
        self, z_dim: int, n_pixels: int, n_out: int, hidden: int, num_layers: int, activation: str
    ):
        super().__init__()
        self.n_pixels, self.n_out = n_pixels, n_out
        self.net = make_mlp(z_dim, hidden, n_pixels * n_out, num_layers, activation)

    def rotate_z(self, rotation: torch.Tensor) -> None:
        """Read z in turned axes."""
        first = self.net[0]
        assert isinstance(first, nn.Linear)
        _turn_z_columns(first, rotation)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """``z (B, Z)`` -> ``(B, N, n_out)``; ``coords`` only fixes nothing but the signature."""
        assert z is not None
        return self.net(z).reshape(z.shape[0], self.n_out, self.n_pixels).transpose(1, 2)
