"""Request bytes protobuf cannot parse are the caller's error.

grpcio answers them itself with INTERNAL ("Exception deserializing request!"), which reads as a
server fault and never reaches the servicer's metrics. This interceptor swaps the service's
deserializers for ones that hand the servicer an :class:`Unparsed` in place of the message; the
servicer then refuses the call with INVALID_ARGUMENT, counted like any other refusal.
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


def _lenient(deserialize: Callable[[bytes], object]) -> Callable[[bytes], object]:
    owner = getattr(deserialize, "__self__", None)  # FromString is bound to its message class
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, whichever implementation raises it
            return Unparsed(name, len(data), exc)

    return parse


class LenientParsing(grpc.ServerInterceptor):
    """For the methods under ``prefix`` ("/audioae.v1.AudioAE/"): unparsable requests reach the
    servicer as :class:`Unparsed`. Other services (health, reflection) keep grpcio's handling."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        ours = handler_call_details.method.startswith(self.prefix)
        if handler is None or handler.request_deserializer is None or not ours:
            return handler
        return rebuilt(handler, request_deserializer=_lenient(handler.request_deserializer))
