"""User-facing error family.

Every expected failure (bad data, bad checkpoint, tampered bundle, missing backend) raises a
``GenrecError`` subclass. The CLI turns it into one line on stderr and a non-zero exit, so a
user never sees a traceback for something they can fix. Bugs stay ordinary exceptions.
"""

from __future__ import annotations


class GenrecError(Exception):
    """Base of every error a user can act on; ``exit_code`` is the CLI's exit status."""

    exit_code = 1


class DataError(GenrecError):
    """Input data (interaction files, request JSONL) is malformed; the message names file and line."""


class CheckpointError(GenrecError):
    """A checkpoint is unreadable, not ours, or would need unsafe unpickling."""


class BundleError(GenrecError):
    """A bundle is incomplete, tampered with, or violates the IO contract."""


class ExportError(GenrecError):
    """An export check failed; the message names the graph, the check and the numbers."""


class ParityError(GenrecError):
    """Two backends disagree beyond the thresholds."""


class MissingBackend(GenrecError):
    """A backend's runtime (onnxruntime, torch_npu, CANN's acl) is not installed or not sourced."""


class ConfigError(GenrecError):
    """A model or run configuration is invalid (unknown key, impossible size)."""


class RequestError(DataError):
    """One request of a batch cannot be answered; ``index`` is its 0-based position in the
    sequence the caller passed, so a streaming caller can name its input line or skip it."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index
