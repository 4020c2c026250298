"""Request bytes protobuf cannot parse, or more of them than ``--max-request-mb``, are the caller's error.

grpcio answers unparsable bytes itself with INTERNAL ("Exception deserializing request!"), which
reads as a server fault and never reaches the servicer's metrics. This interceptor swaps the
service's deserializers for ones that hand the servicer an :class:`Unparsed` in place of the
message; the servicer then refuses the call with INVALID_ARGUMENT, counted like any other refusal
(a stream after answering the audio sent before that message, as for an oversized one).

A message over the limit becomes an :class:`Oversized`, refused by the servicer with
RESOURCE_EXHAUSTED. gRPC's own check would end the call before the servicer saw anything: a stream
lost the answers to the audio before that message, and every caller read only "Received message
larger than max (N vs. M)". So gRPC's limit sits above this one (audioae/server/app.py says how far).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from .handlers import rebuilt


class Unparsed:
    """Stands in for a request message whose bytes protobuf could not parse."""

    def __init__(self, message_type: str, size: int, error: Exception):
        self.message_type, self.size, self.error = message_type, size, error

    def refusal(self) -> str:
        return (f"the request is not a valid {self.message_type} message: protobuf could not parse its "
                f"{self.size} bytes ({self.error}); build the client from proto/audioae/v1/audioae.proto")


# What a caller sends less of, by request type (the unparsed bytes do not say which form it took).
# The refusal comes before the message is parsed: it cannot know the input's format, so it names both savings.
_SHORTER_AUDIO = "shorter audio, in several calls; a WAV is smaller as FLAC, float32 PCM as int16 PCM"
_STREAM_CHUNKS = "the stream's audio in smaller chunks (any whole number of frames; 100 ms is typical)"
# For a stream's first message, which should have been a StreamConfig and may have been audio.
CONFIG_FIRST = f"a StreamConfig first (model, sample_rate, channels, format: a few bytes), then {_STREAM_CHUNKS}"
_LESS = {
    "DenoiseRequest": _SHORTER_AUDIO,
    "DecomposeRequest": _SHORTER_AUDIO,
    "EncodeRequest": "shorter audio, or a tensor of fewer items, in several calls",
    "DecodeRequest": "a code of fewer frames, in several calls",
    "StreamDenoiseRequest": _STREAM_CHUNKS,
}


class Oversized:
    """Stands in for a request message of more than ``limit`` bytes (``--max-request-mb``), unparsed."""

    def __init__(self, message_type: str, size: int, limit: int):
        self.message_type, self.size, self.limit = message_type, size, limit

    def refusal(self, what: str = "", less: str | None = None) -> str:
        """"the audioae.v1.DenoiseRequest message (``what``) is 1,792,004 bytes (1.7 MB), over this
        server's message limit of 1,048,576 bytes (1 MB, --max-request-mb): send ``less``" (by
        default what to send less of for its request type)."""
        less = less or _LESS.get(self.message_type.rsplit(".", 1)[-1])
        return (f"{what or f'the {self.message_type} message'} is {self.size:,} bytes ({self.size / 2**20:.1f} MB), "
                f"over this server's message limit of {self.limit:,} bytes ({self.limit / 2**20:g} MB, "
                f"--max-request-mb)" + (f": send {less}" if less else ""))


def _lenient(deserialize: Callable[[bytes], object], limit: int) -> Callable[[bytes], object]:
    owner = getattr(deserialize, "__self__", None)  # FromString is bound to its message class
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def parse(data: bytes) -> object:
        if len(data) > limit:  # not parsed: its bytes go as soon as this returns
            return Oversized(name, len(data), limit)
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, whichever implementation raises it
            return Unparsed(name, len(data), exc)

    return parse


class LenientParsing(grpc.ServerInterceptor):
    """For the methods under ``prefix`` ("/audioae.v1.AudioAE/"): unparsable requests reach the
    servicer as :class:`Unparsed`, those over ``limit`` bytes as :class:`Oversized`. Other services
    (health, reflection) keep grpcio's handling."""

    def __init__(self, prefix: str, limit: int):
        self.prefix = prefix
        self.limit = limit

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        ours = handler_call_details.method.startswith(self.prefix)
        if handler is None or handler.request_deserializer is None or not ours:
            return handler
        return rebuilt(handler, request_deserializer=_lenient(handler.request_deserializer, self.limit))
