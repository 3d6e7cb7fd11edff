"""Errors that map to an HTTP status and the protocol's ``{"error": "..."}`` body."""

from __future__ import annotations


class ServingError(Exception):
    """An error answered to the client; ``status`` is the HTTP status code."""

    status = 500

    # The metrics outcome when the status code alone does not say it (see Overloaded).
    outcome: str | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServingError):
    status = 400


class Unauthorized(ServingError):
    """No API key, or not a current one (``--api-keys``)."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="modelfleet"'})


class NotFound(ServingError):
    status = 404


class MethodNotAllowed(ServingError):
    status = 405


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedMediaType(ServingError):
    status = 415


class ModelFailed(ServingError):
    """The model raised during the forward pass."""

    status = 500


class Unavailable(ServingError):
    """Not ready (loading or draining)."""

    status = 503


class Overloaded(ServingError):
    """The queue is full; answered at once with ``Retry-After``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 503,
        retry_after_s: int = 1,
        outcome: str = "overloaded",
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.status = status
        # The metrics outcome: a full queue is "overloaded" whether answered 503 or 429.
        self.outcome = outcome


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it reached the model."""

    status = 504


class LoadError(Exception):
    """The model could not be loaded; the process exits non-zero with this reason."""
