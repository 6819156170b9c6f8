"""The multilayer perceptrons the encoders and generators are built from."""

from __future__ import annotations

from torch import nn

# the module of each activation a config may name (config.ACTIVATIONS holds the names)
ACTIVATION_MODULES = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def make_mlp(n_in: int, hidden: int, n_out: int, num_layers: int, activation: str) -> nn.Sequential:
    """``num_layers`` hidden layers of width ``hidden``, then a linear output layer."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden), ACTIVATION_MODULES[activation]()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)
