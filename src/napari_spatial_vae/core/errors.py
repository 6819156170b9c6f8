"""Errors the core raises for bad user input; each message is one line a user can act on."""


class SpatialVAEError(Exception):
    """Base class: the CLI prints ``str(err)`` as one line, without a traceback."""


class ConfigError(SpatialVAEError, ValueError):
    """An invalid setting (config field, CLI flag or widget value)."""


class DataError(SpatialVAEError, ValueError):
    """Images the model cannot train on (wrong shape, NaN/inf pixels, empty stack)."""


class CheckpointError(SpatialVAEError, ValueError):
    """A run folder that is missing, incomplete, or was written for another model."""
