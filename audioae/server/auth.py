"""Bearer-token authentication as a server interceptor.

With tokens configured, every call but the health check must carry ``authorization: Bearer
<token>`` metadata matching one of them (several lines in the token file allow rotation);
otherwise it ends with UNAUTHENTICATED before reaching the servicer. Health stays open so that
load balancers and orchestrators can probe without a secret; reflection needs the token.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat

import grpc

from audioae.wire import is_loopback, read_tokens

from .handlers import logged, peer_of, rebuilt
from .metrics import Metrics

log = logging.getLogger(__name__)
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
__all__ = ["TokenAuth", "exposure_warnings", "read_tokens"]  # read_tokens: shared with the client


def exposure_warnings(host: str, token_file: str | None, tls: bool) -> list[str]:
    """What an operator should hear before serving on ``host``: a service open to the network
    without a token, tokens that cross it in plaintext, a token file other users can read."""
    out = []
    if token_file is None:
        if not is_loopback(host):
            out.append(f"serving on {host} without --token-file: anyone who reaches the port can use the models")
        return out
    if not tls and not is_loopback(host):  # gRPC sends the metadata as it is: anyone on the path can reuse it
        out.append(f"serving on {host} with bearer tokens but without TLS: each call carries its token in "
                   "plaintext; add --tls-cert and --tls-key")
    mode = stat.S_IMODE(os.stat(token_file).st_mode)
    can = " and ".join(verb for bits, verb in ((0o044, "read"), (0o022, "change")) if mode & bits)
    if can:  # as ssh says of a private key; one who can change it can let anyone in
        out.append(f"--token-file {token_file}: other users of this machine can {can} it (mode {mode:o}); "
                   f"chmod 600 it")
    return out


def _aborting_handler(handler: grpc.RpcMethodHandler, method: str, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with UNAUTHENTICATED, and
    logs who was refused (the peer is known only here, in the call's context)."""

    def deny(_request, context):
        log.info("refused %s from %s: %s", logged(method), peer_of(context), message)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return rebuilt(handler, behavior=deny)


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, tokens: list[str], metrics: Metrics):
        self._tokens = [t.encode() for t in tokens]
        self._metrics = metrics

    def _valid(self, metadata) -> tuple[bool, str]:
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return False, "missing bearer token: send metadata 'authorization: Bearer <token>'"
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False, "malformed authorization metadata: expected 'Bearer <token>'"
        # Compare against every token in constant time, so timing says nothing about which failed.
        ok = False
        for t in self._tokens:
            ok |= hmac.compare_digest(t, token.strip().encode())
        return ok, "" if ok else "invalid bearer token"

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        ok, why = self._valid(handler_call_details.invocation_metadata)
        handler = continuation(handler_call_details)
        if ok or handler is None:
            return handler
        self._metrics.requests.labels(method.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()
        return _aborting_handler(handler, method, why)
