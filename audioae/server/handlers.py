"""Rebuilding a gRPC method handler with one part swapped, for the interceptors (auth, parsing),
and a caller's strings made safe for a log line."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable

import grpc

from audioae.config import quoted


def rebuilt(handler: grpc.RpcMethodHandler, *, behavior: Callable | None = None,
            request_deserializer: Callable | None = None) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape (unary or streaming, each way) with ``behavior`` and/or
    ``request_deserializer`` replaced, built with grpc's public constructors."""
    kw = {"request_deserializer": request_deserializer or handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior or handler.stream_stream, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior or handler.stream_unary, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior or handler.unary_stream, **kw)
    return grpc.unary_unary_rpc_method_handler(behavior or handler.unary_unary, **kw)


# A caller's string in a log line: as it is when it is a plain name, else quoted (repr: a newline
# in a model name must not forge a second log line) and clipped (an 8 MB name, an 8 MB line).
_PLAIN = re.compile(r"[\w.:/@%+=\[\]-]{1,64}")
LOGGED_CHARS = 64


def logged(text: str) -> str:
    """``text`` for a log line: itself when it is a plain name (``tiny``, ``ipv6:[::1]:5``), else
    :func:`audioae.config.quoted` to :data:`LOGGED_CHARS` characters."""
    return text if _PLAIN.fullmatch(text) else quoted(text, LOGGED_CHARS)


def peer_of(context: grpc.ServicerContext) -> str:
    """The caller's address as gRPC names it, its brackets unescaped (``ipv6:%5B::1%5D:5``), for a
    log line (:func:`logged`)."""
    return logged(urllib.parse.unquote(context.peer()))
