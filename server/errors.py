"""Errors the servicer turns into gRPC status codes, and the mapping from library errors."""

from __future__ import annotations

import logging

import grpc

from audioae.audio import AudioError
from audioae.models import UnknownModelError

log = logging.getLogger(__name__)


class Abort(Exception):
    """End the call with ``code`` and a message meant for a person."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class QueueFull(Exception):
    """The device queue is at its bound."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message for an exception raised while serving a call."""
    if isinstance(exc, Abort):
        return exc.code, exc.message
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, AudioError | ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    log.exception("internal error while serving a call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
