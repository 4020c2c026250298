"""Rebuilding a gRPC method handler with one part swapped, for the interceptors (auth, parsing)."""

from __future__ import annotations

from collections.abc import Callable

import grpc


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
