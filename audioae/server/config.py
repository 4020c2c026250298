"""The server's settings: one frozen dataclass, filled from ``audioae serve``'s flags."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import check_thread_count

MB = 1024 * 1024
MAX_GRPC_BYTES = 2**31 - 1  # gRPC's message limits are int32, and protobuf's messages stop at 2 GB


def _named(field: str) -> str:
    """A setting as both spellings people meet: the field and ``audioae serve``'s flag."""
    flag = "threads" if field == "torch_threads" else field.replace("_", "-")
    return f"{field} (--{flag})"



def grpc_host(host: str) -> str:
    """``host`` as it goes before ":port" in a gRPC address, and in what the server prints: an
    IPv6 address in brackets (``::1`` -> ``[::1]``; a bare one read as "cannot listen on ::1:0")."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def bare_host(host: str) -> str:
    """``host`` without the brackets of ``[::1]``, as socket APIs (the metrics listener) take it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing the service is a deliberate choice
    port: int = 50051  # 0: any free port (tests)
    models: tuple[str, ...] = ()  # shipped names, checkpoint paths or NAME=PATH; empty: shipped defaults
    device: str = "auto"  # auto | cpu | cuda[:N]
    max_batch_seconds: float = 60.0  # channel-seconds of audio run together in one batch; 0 disables batching
    max_delay_ms: float = 10.0  # how long the first request of a batch waits for company
    max_request_mb: float = 64.0  # largest message accepted (RESOURCE_EXHAUSTED above)
    max_audio_seconds: float = 600.0  # longest clip accepted (streams: max_stream_seconds)
    max_queue: int = 64  # requests waiting for the device; one more gets RESOURCE_EXHAUSTED
    max_streams: int = 32  # concurrent StreamDenoise calls
    max_stream_seconds: float = 0.0  # longest stream (its memory does not grow with length); 0: no limit
    stream_idle_seconds: float = 60.0  # a stream without a message this long is ended; 0: never
    token_file: str | None = None  # bearer tokens, one per line; None: no auth
    tls_cert: str | None = None  # PEM certificate chain; with tls_key: TLS
    tls_key: str | None = None
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None: off, 0: any free port
    drain_seconds: float = 30.0  # how long SIGTERM waits for in-flight calls
    torch_threads: int = 0  # torch intra-op threads; 0: torch's default
    codec_workers: int = 2  # processes that decode uploads and encode answers (audioae/server/codecs.py); 0: in-process
    codec_timeout: float = 60.0  # seconds one decode or encode may take before its process is stopped

    def __post_init__(self):
        for name, value in vars(self).items():  # inf or nan: an int() of it fails mid-call, or a limit never holds
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{_named(name)} must be a finite number, got {value}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        for name in ("max_request_mb", "max_audio_seconds", "drain_seconds", "codec_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{_named(name)} must be positive, got {getattr(self, name)}")
        if self.max_message_bytes > MAX_GRPC_BYTES:  # not grpcio's OverflowError traceback at start
            raise ValueError(f"{_named('max_request_mb')} must be below 2048 (a gRPC message is at most "
                             f"2 GB), got {self.max_request_mb:g}")
        for name, zero in (("max_batch_seconds", "no batching"), ("max_delay_ms", "no wait"),
                           ("max_stream_seconds", "no limit"), ("stream_idle_seconds", "never"),
                           ("torch_threads", "torch's default"), ("codec_workers", "in the server's process")):
            if getattr(self, name) < 0:
                raise ValueError(f"{_named(name)} must be >= 0 (0: {zero}), got {getattr(self, name)}")
        check_thread_count(self.torch_threads, _named("torch_threads"))
        for name in ("max_queue", "max_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_named(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("port", "metrics_port"):  # gRPC would take 70000 as 70000 mod 65536 and bind 4464
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{_named(name)} must be within [0, 65535] (0: any free port), got {value}")

        if self.port and self.port == self.metrics_port:  # the metrics listener, first, took it
            raise ValueError(f"port (--port) and metrics_port (--metrics-port) are both {self.port}: gRPC and "
                             f"the metrics need a port each")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def max_read_bytes(self) -> int:
        # gRPC's own receive limit, above --max-request-mb: a message between the two is read and
        # refused by the servicer in words (audioae/server/parsing.py); one above it, by gRPC (audioae/server/app.py).
        return min(2 * self.max_message_bytes, MAX_GRPC_BYTES)

    @property
    def max_send_bytes(self) -> int:
        # Answers can be larger than questions (int16 in, components out): allow 4x, up to 2 GB.
        return min(4 * self.max_message_bytes, MAX_GRPC_BYTES)
