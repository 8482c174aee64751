from __future__ import annotations


class TritonError(Exception):
    """Base for failures talking to Triton. Messages are safe to show clients."""


class TritonUnavailable(TritonError):
    """Triton cannot be reached, or the model is not loaded/ready."""


class TritonInferenceError(TritonError):
    """Triton accepted the request and then failed it; `detail` stays in our logs."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class DeadlineExceeded(TritonError):
    """The request's deadline passed before generation finished."""
