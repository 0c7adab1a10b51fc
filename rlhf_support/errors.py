"""The series' errors: each says what to do; raised for bad input, never for bugs."""

from __future__ import annotations


class RLHFError(Exception):
    """An error with a message that says what to do; raised for bad input, never for bugs."""


class ConfigError(RLHFError, ValueError):
    """A configuration value or `RLHF_` override that cannot be used."""


class DatasetSchemaError(RLHFError, ValueError):
    """A dataset without the expected splits, columns or labels."""


class HubUnavailableError(RLHFError, OSError):
    """A model or dataset that must come from the Hugging Face hub, which cannot be reached."""


class CheckpointError(RLHFError, OSError):
    """A missing, half-written, corrupt or incompatible checkpoint."""


class TrainingDivergedError(RLHFError, FloatingPointError):
    """A NaN or infinite loss: training stopped before it could damage the last good checkpoint."""
