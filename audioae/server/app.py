"""The server's life: bind (health NOT_SERVING) -> load and warm up the models (SERVING) ->
serve -> on SIGTERM drain (NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish) -> exit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from audioae.config import quoted
from audioae.device import pick_device
from audioae.enhance import Stopped, denoise_batch
from audioae.v1 import audioae_pb2, audioae_pb2_grpc

from .auth import TokenAuth, exposure_warnings, read_tokens
from .batcher import Batcher
from .codecs import Codecs
from .config import ServerConfig, bare_host, grpc_host
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
# After a drain's end (or a second signal), how long calls still running get to stop at their next
# piece and send UNAVAILABLE with the server's reason before gRPC cancels them.
CUT_OFF_SECONDS = 1.0
SIGNAL_POLL_SECONDS = 0.1  # how often a drain or a start-up looks for a stop signal


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
        # Admission control (audioae/server/lifecycle.py): unary calls in progress, counted from entry to
        # exit whatever they wait for: up to --max-queue waiting for the device, as many again
        # being decoded, waiting for a codec process or having their answers encoded.
        self.max_calls = 2 * config.max_queue
        self.gate = Gate(max_calls=self.max_calls)
        self.batcher = Batcher(self.metrics, config.max_queue, config.max_delay_ms, config.max_batch_seconds)
        self.health = HealthService()
        self.store: ModelStore | None = None
        self._stopped = False  # stop() came: load() must not report SERVING
        self._state = threading.Lock()
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
                # after a stream's earlier audio is answered (docs/serving.md#limits, audioae/server/parsing.py).
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
                self.metrics_port = self.metrics.serve_http(bare_host(c.host), c.metrics_port)
            except OSError as exc:
                raise RuntimeError(f"cannot serve metrics on {grpc_host(c.host)}:{c.metrics_port} "
                                   f"({exc.strerror or exc})") from exc
        address = f"{grpc_host(c.host)}:{c.port}"
        try:
            self.port = self._bind(address)
        except RuntimeError:  # grpcio raises "Failed to bind ... set GRPC_VERBOSITY=debug" (older: returns 0)
            self.port = 0
        if not self.port:
            self.metrics.stop_http()
            raise RuntimeError(f"cannot listen on {address} (in use, or not an address of this machine)")
        self.server.start()
        log.debug("listening on %s:%d (%s)", grpc_host(c.host), self.port, "TLS" if c.tls_cert else "plaintext")
        return self.port

    def _bind(self, address: str) -> int:
        c = self.config
        if c.tls_cert:
            creds = grpc.ssl_server_credentials([(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())])
            return self.server.add_secure_port(address, creds)
        return self.server.add_insecure_port(address)

    def load(self) -> bool:
        """Load and warm up the models, then report SERVING; False (and not SERVING) when
        :meth:`stop` came first (a stop signal while the models loaded)."""
        try:
            store = ModelStore(self.config.models, self.device, stop=lambda: self._stopped)
            store.warm_up(batch_fn=denoise_batch)
        except Stopped:
            return False
        self.codecs.start()  # none after stop() closed them
        with self._state:  # SERVING after a stop would be a lie: stop() and this one at a time
            if self._stopped:
                return False
            self.store = store
            self.servicer.store = store
            self.batcher.start()
            self.gate.set_serving()
            for name in ("", SERVICE):
                self.health.set(name, SERVING)
        log.debug("serving %s on %s", ", ".join(store.models), self.device)
        return True

    def drain(self, timeout: float | None = None, now: threading.Event | None = None) -> bool:
        """NOT_SERVING; new calls UNAVAILABLE; wait for in-flight calls (up to ``timeout``,
        default ``drain_seconds``, or until ``now`` is set: a second stop signal); then end those
        still running with UNAVAILABLE and the server's reason, and stop. Returns False if calls
        were still running."""
        timeout = self.config.drain_seconds if timeout is None else timeout
        self.health.enter_graceful_shutdown()
        self.gate.start_draining(within=timeout)
        end = time.monotonic() + timeout
        idle = False
        while not idle and not (now is not None and now.is_set()):
            left = end - time.monotonic()
            if left <= 0:
                break
            idle = self.gate.wait_idle(min(left, SIGNAL_POLL_SECONDS))
        if not idle:
            if now is not None and now.is_set():
                log.warning("drain: a second stop signal: ending %d calls still running now", self.gate.inflight)
                reason = ("the server is shutting down at once (a second stop signal came during its drain); "
                          "retry on another replica")
            else:
                log.warning("drain: %d calls still running after %g s; ending them", self.gate.inflight, timeout)
                reason = (f"the server is shutting down and its drain time ({timeout:g} s) ran out; "
                          f"retry on another replica")
            self._cut_off(reason)
        elif self.gate.ended_streams:  # they answered what they had, but their clients had more to send
            log.warning("drain: %d calls still running after %g s: streams, ended with the audio they had "
                        "been sent answered", self.gate.ended_streams, timeout)
        # The device worker is a daemon: after a cut-off it need not hold the exit.
        self.batcher.stop(timeout=CUT_OFF_SECONDS if idle else 0.1)
        self.server.stop(grace=1.0 if idle else 0.2).wait()
        self.metrics.stop_http()
        self.codecs.close()
        return idle and not self.gate.ended_streams

    def _cut_off(self, reason: str) -> None:
        """End every call still in flight with UNAVAILABLE and ``reason``: queued device work is
        dropped, running work asked to stop at its next piece, codec processes stopped (not retried,
        not counted as crashes), streams ended; then wait up to CUT_OFF_SECONDS for the calls to
        send that status (gRPC's own stop would end them with a bare "Cancelling all calls")."""
        self.gate.cut_off(reason)
        self.batcher.cut_off(reason)
        self.codecs.close(reason)
        if not self.gate.wait_idle(CUT_OFF_SECONDS):
            log.warning("drain: %d calls did not end within %g s of being told to; cancelling them",
                        self.gate.inflight, CUT_OFF_SECONDS)

    @property
    def serving(self) -> bool:
        """:meth:`load` reported SERVING (it sets the store in the same step, and nothing unsets it)."""
        return self.store is not None

    def stop_starting(self) -> bool:
        """Stop at once unless :meth:`load` has reported SERVING already (then False: drain)."""
        with self._state:
            if self.serving:
                return False
            self._stopped = True
        self.stop()
        return True

    def stop(self) -> None:
        """Stop at once (tests, a stop signal during start-up): no drain, never SERVING after it."""
        with self._state:
            self._stopped = True
        self.health.enter_graceful_shutdown()
        self.gate.start_draining()
        self.batcher.stop(timeout=1.0)
        self.server.stop(grace=None).wait()
        self.metrics.stop_http()
        self.codecs.close()


def serve(config: ServerConfig, announce: Callable[[str], None] = log.warning) -> int:
    """Run a server until SIGTERM or SIGINT, then drain; a second signal ends the drain at once.
    A signal while the models load stops at once, never SERVING. Returns the exit status
    (0: clean)."""
    ModelStore.check_specs(config.models)  # a bad path said before the port is bound, not after
    srv = AudioServer(config)
    port = srv.start()
    announce(
        f"listening on {grpc_host(config.host)}:{port}"
        + (f"; metrics on :{srv.metrics_port}" if srv.metrics_port else "")
    )
    stop, now = threading.Event(), threading.Event()

    def on_signal(signum, _frame) -> None:  # only events here: the main thread says what happens
        if stop.is_set():
            now.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    # The models load on a thread of their own, so that a signal meanwhile is acted on at once,
    # not after they load (SERVING reported, then a drain).
    failed: list[BaseException] = []

    def load() -> None:
        try:
            srv.load()
        except BaseException as exc:  # re-raised on the main thread
            failed.append(exc)

    loader = threading.Thread(target=load, name="audioae-load", daemon=True)
    loader.start()
    while loader.is_alive() and not stop.wait(SIGNAL_POLL_SECONDS):
        pass
    if failed:
        srv.stop()
        raise failed[0]
    if stop.is_set() and srv.stop_starting():
        # The loading thread stops at its next model; a daemon, it ends with the process if one
        # model takes longer than this.
        loader.join(CUT_OFF_SECONDS)
        announce("stopped while loading the models: never served")
        return 0
    announce(
        f"ready: serving {', '.join(srv.store.models)} on {srv.device} "
        f"(default denoiser {srv.store.default_denoiser or '-'})"
    )
    while not stop.wait(0.5):
        pass
    announce("draining: finishing in-flight calls (a second signal stops at once)")
    clean = srv.drain(now=now)
    if now.is_set() and not clean:
        announce("stopped at once by a second signal, with calls still running")
    else:
        announce("stopped" if clean else "stopped with calls still running")
    return 0 if clean else 1
