"""The server's life: bind (health NOT_SERVING) -> load and warm up the models (SERVING) ->
serve -> on SIGTERM drain (NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish) -> exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from audioae.config import quoted
from audioae.enhance import denoise_batch, pick_device
from audioae.v1 import audioae_pb2, audioae_pb2_grpc

from .auth import TokenAuth, exposure_warnings, read_tokens
from .batcher import Batcher
from .codecs import Codecs
from .config import ServerConfig
from .lifecycle import Gate
from .metrics import Metrics
from .parsing import LenientParsing
from .servicer import AudioAEServicer
from .store import ModelStore

log = logging.getLogger(__name__)
SERVICE = audioae_pb2.DESCRIPTOR.services_by_name["AudioAE"].full_name  # "audioae.v1.AudioAE"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
# Threads beyond the admitted calls and streams: they answer health checks and refuse calls past
# the gate's limit (a refusal holds one only while its request arrives and is parsed).
SPARE_THREADS = 16
# Calls gRPC lets wait for a thread beyond the pool before it refuses more itself (below).
QUEUED_RPCS = 256


def _check_tls(cert: str, key: str) -> None:
    """Refuse a certificate chain and key that TLS cannot use, naming them; gRPC alone says
    only that it cannot add the port."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # an OSError too: caught first
        raise RuntimeError(f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate chain and its "
                           f"private key ({exc})") from None
    except OSError as exc:
        raise RuntimeError(f"--tls-cert {cert} / --tls-key {key}: {exc.strerror or exc}") from None


class HealthService(health.HealthServicer):
    """grpcio-health-checking's service, with ``List`` (grpc.health.v1's snapshot of every
    service) answered from what ``set`` was told: the library's servicer leaves it unimplemented,
    and each call, which newer health clients make, logged a traceback."""

    def __init__(self):
        super().__init__()
        self._names: list[str] = []

    def set(self, service: str, status) -> None:
        if service not in self._names:
            self._names.append(service)
        super().set(service, status)

    def Check(self, request, context):
        # The library answers an unknown service with a bare NOT_FOUND (the protocol's code): a
        # probe of a misspelt name ("audioae.v1.Audioae") read as if the server were missing.
        if request.service not in self._names:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(f"no health status for service {quoted(request.service)}; this server reports "
                                f"{', '.join(quoted(n) for n in self._names) or 'none yet'}")
            return health_pb2.HealthCheckResponse()
        return super().Check(request, context)

    def List(self, request, context):
        # Each service's status as Check gives it, one at a time: not one snapshot under one lock,
        # which the protocol does not promise either ("a non-atomic snapshot").
        return health_pb2.HealthListResponse(statuses={
            name: self.Check(health_pb2.HealthCheckRequest(service=name), context)
            for name in list(self._names)})


class AudioServer:
    """One gRPC server. ``start()`` binds and answers health (NOT_SERVING) at once; ``load()``
    loads and warms the models, then reports SERVING; ``drain()`` shuts down gracefully."""

    def __init__(self, config: ServerConfig):
        self.config = config
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        self.device = pick_device(config.device)
        self.metrics = Metrics()
        # Admission control (server/lifecycle.py): unary calls in progress, counted from entry to
        # exit whatever they wait for: up to --max-queue waiting for the device, as many again
        # being decoded, waiting for a codec process or having their answers encoded.
        self.max_calls = 2 * config.max_queue
        self.gate = Gate(max_calls=self.max_calls)
        self.batcher = Batcher(self.metrics, config.max_queue, config.max_delay_ms, config.max_batch_seconds)
        self.health = HealthService()
        self.store: ModelStore | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        # Registered before the models load so that the port answers at once; until load() gives
        # it a model store, the gate answers every call UNAVAILABLE.
        self.codecs = Codecs(config.codec_workers, config.codec_timeout,
                             on_death=lambda outcome: self.metrics.codec_deaths.labels(outcome).inc())
        self.servicer = AudioAEServicer(None, self.batcher, self.metrics, self.gate, config, self.codecs)
        tokens = read_tokens(config.token_file) if config.token_file else None
        for warning in exposure_warnings(config.host, config.token_file, tls=config.tls_cert is not None):
            log.warning("%s", warning)
        # Authentication first: a caller without a token learns nothing about its message.
        interceptors = [TokenAuth(tokens, self.metrics)] if tokens else []
        interceptors.append(LenientParsing(f"/{SERVICE}/", config.max_message_bytes))
        # Threads: every admitted call and every stream holds one until it ends; the spare ones answer
        # health and the gate's refusals, so health still answers when the server is at its limits.
        # Past the pool, calls wait for a thread in the executor's (unbounded) queue;
        # maximum_concurrent_rpcs bounds that. It counts every RPC, health included, and refuses
        # with gRPC's bare "Concurrent RPC limit exceeded!", so it sits well above what the gate
        # admits: only a flood of more than QUEUED_RPCS calls at once beyond the pool meets it
        # (until then each waits briefly for a spare thread to refuse it with the server's message).
        workers = self.max_calls + config.max_streams + SPARE_THREADS
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audioae-rpc"),
            interceptors=interceptors,
            options=[
                # 2x --max-request-mb: a message between the two is refused by the servicer in words,
                # after a stream's earlier audio is answered (docs/serving.md#limits, server/parsing.py).
                ("grpc.max_receive_message_length", config.max_read_bytes),
                ("grpc.max_send_message_length", config.max_send_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=workers + QUEUED_RPCS,
        )
        audioae_pb2_grpc.add_AudioAEServicer_to_server(self.servicer, self.server)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> int:
        """Bind and start answering (health NOT_SERVING, other calls UNAVAILABLE); returns the port."""
        c = self.config
        if c.tls_cert:
            _check_tls(c.tls_cert, c.tls_key)  # before binding: gRPC would only fail to add the port
        for name in ("", SERVICE):
            self.health.set(name, NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        if c.metrics_port is not None:  # first: a gRPC port, once bound, is not released before start()
            try:
                self.metrics_port = self.metrics.serve_http(c.host, c.metrics_port)
            except OSError as exc:
                raise RuntimeError(f"cannot serve metrics on {c.host}:{c.metrics_port} "
                                   f"({exc.strerror or exc})") from exc
        address = f"{c.host}:{c.port}"
        try:
            self.port = self._bind(address)
        except RuntimeError:  # grpcio raises "Failed to bind ... set GRPC_VERBOSITY=debug" (older: returns 0)
            self.port = 0
        if not self.port:
            self.metrics.stop_http()
            raise RuntimeError(f"cannot listen on {address} (in use, or not an address of this machine)")
        self.server.start()
        log.debug("listening on %s:%d (%s)", c.host, self.port, "TLS" if c.tls_cert else "plaintext")
        return self.port

    def _bind(self, address: str) -> int:
        c = self.config
        if c.tls_cert:
            creds = grpc.ssl_server_credentials([(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())])
            return self.server.add_secure_port(address, creds)
        return self.server.add_insecure_port(address)

    def load(self) -> None:
        """Load and warm up the models, then report SERVING."""
        self.store = ModelStore(self.config.models, self.device)
        self.store.warm_up(batch_fn=denoise_batch)
        self.codecs.start()
        self.servicer.store = self.store
        self.batcher.start()
        self.gate.set_serving()
        for name in ("", SERVICE):
            self.health.set(name, SERVING)
        log.debug("serving %s on %s", ", ".join(self.store.models), self.device)

    def drain(self, timeout: float | None = None) -> bool:
        """NOT_SERVING; new calls UNAVAILABLE; wait for in-flight calls (up to ``timeout``,
        default ``drain_seconds``); then stop. Returns False if calls were still running."""
        timeout = self.config.drain_seconds if timeout is None else timeout
        self.health.enter_graceful_shutdown()
        self.gate.start_draining(within=timeout)
        idle = self.gate.wait_idle(timeout)
        if not idle:
            log.warning(
                "drain: %d calls still running after %.0f s; stopping anyway", self.gate.inflight, timeout
            )
        elif self.gate.ended_streams:  # they answered what they had, but their clients had more to send
            log.warning("drain: %d calls still running after %.0f s: streams, ended with the audio they had "
                        "been sent answered", self.gate.ended_streams, timeout)
        self.batcher.stop()
        self.server.stop(grace=1.0).wait()
        self.metrics.stop_http()
        self.codecs.close()
        return idle and not self.gate.ended_streams

    def stop(self) -> None:
        """Stop at once (tests): no drain."""
        self.health.enter_graceful_shutdown()
        self.gate.start_draining()
        self.batcher.stop(timeout=1.0)
        self.server.stop(grace=None).wait()
        self.metrics.stop_http()
        self.codecs.close()


def serve(config: ServerConfig, announce: Callable[[str], None] = log.warning) -> int:
    """Run a server until SIGTERM or SIGINT, then drain. Returns the exit status (0: clean)."""
    srv = AudioServer(config)
    port = srv.start()
    announce(
        f"listening on {config.host}:{port}"
        + (f"; metrics on :{srv.metrics_port}" if srv.metrics_port else "")
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        srv.load()
    except BaseException:
        srv.stop()
        raise
    announce(
        f"ready: serving {', '.join(srv.store.models)} on {srv.device} "
        f"(default denoiser {srv.store.default_denoiser or '-'})"
    )
    while not stop.wait(0.5):
        pass
    announce("draining: finishing in-flight calls")
    clean = srv.drain()
    announce("stopped" if clean else "stopped with calls still running")
    return 0 if clean else 1
