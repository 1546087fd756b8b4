"""Domain errors of the `model` package.

Every error is a `ValueError` subclass whose message names the offending value (a config field,
a tensor name, a file), so callers can show it as is. This module deliberately knows nothing about
HTTP or exit codes: `app/` and the CLI decide how to present these errors.
"""

from __future__ import annotations


class ModelError(ValueError):
    """Base class of every error raised by the `model` package."""


class ConfigError(ModelError):
    """A `BertConfig` (or a config.json) is invalid or describes an architecture we do not run."""


class CheckpointError(ModelError):
    """A checkpoint directory cannot be read, or its weights do not fit the config."""


class ModelInputError(ModelError):
    """Tensors passed to the model have the wrong shape, dtype or values (e.g. ids out of range)."""
