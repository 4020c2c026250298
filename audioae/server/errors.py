"""Errors the servicer turns into gRPC status codes, and the mapping from library errors."""

from __future__ import annotations

import logging

import grpc

from audioae.audio import AudioError
from audioae.device import is_out_of_memory
from audioae.models import UnknownModelError

log = logging.getLogger(__name__)


class Abort(Exception):
    """End the call with ``code`` and a message meant for a person."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# Of a status message, as gRPC sends it: percent-encoded in the grpc-message trailer, where a
# client refuses more than 16 kB ("received metadata size exceeds hard limit") and may refuse more
# than its 8 kB soft limit, turning any status into RESOURCE_EXHAUSTED "Stream removed".
MAX_STATUS_BYTES = 4096


def _wire_bytes(text: str) -> int:
    """Bytes of ``text`` in the grpc-message trailer: printable ASCII but "%" as is, every other
    byte of its UTF-8 as %XX."""
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode("utf-8", "replace"))


def clip_status(message: str, limit: int = MAX_STATUS_BYTES) -> str:
    """``message``, clipped to at most ``limit`` bytes as gRPC sends it."""
    if len(message) * 12 <= limit or _wire_bytes(message) <= limit:  # 12: a 4-byte character, encoded
        return message
    tail = f" ... (clipped: the message had {len(message):,} characters)"
    budget, used = limit - _wire_bytes(tail), 0
    for cut, ch in enumerate(message):
        used += _wire_bytes(ch)
        if used > budget:
            return message[:cut] + tail
    return message  # not reached: the whole message is over the limit


class ShuttingDown(Exception):
    """The server is stopping and ended this call (its drain time ran out, or a second signal
    came); the message says so. UNAVAILABLE: another replica can answer it."""


class CallEnded(Exception):
    """The call ended (its caller cancelled it, or its deadline passed) before this step of its
    work: the step is skipped. Nobody hears the status; the servicer counts and logs it as
    CANCELLED or DEADLINE_EXCEEDED, from the call's context (``servicer._ended``)."""


class QueueFull(Exception):
    """The device queue is at its bound."""


# What a unary call that ran out of memory can send less of, by RPC: "send shorter audio" was
# said to every call, Decode's (which takes a code, not audio) included. Decompose's memory grows
# with the components it keeps as well as with the audio (audioae.decompose.memory_estimate).
OOM_ADVICE = {
    "Denoise": "send shorter audio or fewer channels",
    "Decompose": "send shorter audio or fewer channels, ask for a smaller top_k, or group the units "
                 "(group=band or cluster)",
    "Encode": "send shorter audio, fewer channels, or a tensor of fewer items",
    "Decode": "send a shorter code (fewer frames), or fewer items",
}


def status_of(exc: BaseException, rpc: str = "") -> tuple[grpc.StatusCode, str]:
    """The status code and message for an exception raised while serving a call to ``rpc`` (its
    name: what running out of memory advises sending less of), the message clipped to what gRPC
    carries (:func:`clip_status`)."""
    code, message = _status_of(exc, rpc)
    return code, clip_status(message)


def _status_of(exc: BaseException, rpc: str = "") -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, Abort):
        return exc.code, exc.message
    if isinstance(exc, CallEnded):
        return grpc.StatusCode.CANCELLED, str(exc)
    if isinstance(exc, ShuttingDown):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, AudioError | ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if is_out_of_memory(exc):  # the device (or host) is full now; another moment, or less audio, may fit
        log.warning("out of memory while serving a call: %s", exc)
        return grpc.StatusCode.RESOURCE_EXHAUSTED, (f"the server ran out of memory for this request ({exc}); "
                                                    f"retry later, or {OOM_ADVICE.get(rpc, 'send shorter audio')}")
    log.exception("internal error while serving a call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
