"""Prometheus metrics (prometheus_client), on a registry of their own so that several servers can
live in one process (tests) without colliding."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

from .config import grpc_host

log = logging.getLogger(__name__)

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "audioae_requests", "Finished RPCs by method and status code", ["method", "code"], registry=r
        )
        self.queue_seconds = Histogram(
            "audioae_queue_seconds", "Time a request waited for the device", buckets=_SECONDS, registry=r
        )
        self.compute_seconds = Histogram(
            "audioae_compute_seconds",
            "Device time per batch or call, by kind",
            ["kind"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "audioae_batch_size",
            "Requests run together in one batch",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
            registry=r,
        )
        self.audio_seconds = Counter(
            "audioae_audio_seconds", "Seconds of audio processed, by method", ["method"], registry=r
        )
        self.queue_depth = Gauge("audioae_queue_depth", "Requests waiting for the device", registry=r)
        self.inflight = Gauge("audioae_inflight_calls", "Calls being served", registry=r)
        self.dropped = Counter(
            "audioae_dropped_jobs",
            "Jobs skipped while queued, or long denoise jobs stopped while running, because their call was "
            "cancelled or timed out",
            registry=r,
        )
        self.codec_deaths = Counter(
            "audioae_codec_process_deaths",
            "Codec processes (decoding uploads, encoding answers) found dead or stopped, by what followed: "
            "the call retried alone and answered ('retried'), crashed its own process too ('refused'), or "
            "took longer than --codec-timeout ('timed_out')",
            ["outcome"],
            registry=r,
        )
        self._http = None

    def serve_http(self, host: str, port: int) -> int:
        """Start ``/metrics`` on ``host:port`` (0: any free port); returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        bound = self._http.server_port
        log.info("metrics on http://%s:%d/metrics", grpc_host(host), bound)
        return bound

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def text(self) -> str:
        return generate_latest(self.registry).decode()
