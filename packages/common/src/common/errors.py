"""User-facing error types.

Every error that means "the input is wrong" (not "the code has a bug") derives from TrainyardError, so a
command line can print it as one clear paragraph and exit non-zero instead of showing a traceback
(see `common.cli.run_cli`).
"""

from __future__ import annotations


class TrainyardError(Exception):
    """Base of every user-facing error (bad input, not a bug)."""


class ConfigError(TrainyardError):
    """Unknown config key, value that cannot be coerced to its declared type, or missing config file."""


class DataError(TrainyardError):
    """Bad dataset; the message names the file and the sample."""


class CheckpointError(TrainyardError):
    """Missing, truncated, corrupted, or incompatible checkpoint."""


class DeviceError(TrainyardError):
    """A device or precision this machine cannot run."""


class NonFiniteError(TrainyardError):
    """A NaN/inf loss or gradient stopped the run."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "NonFiniteError",
    "TrainyardError",
]
