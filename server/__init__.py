"""The audioae gRPC service: servicer, dynamic batcher, auth, limits, health, reflection,
Prometheus metrics and SIGTERM drain. Imports audioae's public API only.

Start it with ``audioae serve`` (or ``python -m server``); in code::

    from server import AudioServer, ServerConfig
    srv = AudioServer(ServerConfig(port=0, models=("tiny.safetensors",)))
    port = srv.start()      # listening; health NOT_SERVING
    srv.load()              # models loaded and warmed up; health SERVING
    ...
    srv.drain()             # NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish, stop
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ServerConfig

if TYPE_CHECKING:
    from .app import AudioServer, serve

__all__ = ["AudioServer", "ServerConfig", "serve"]


def __getattr__(name: str):
    # server.app (and torch under it) only when asked for: a codec process imports server.codecs,
    # and with it this package, to run a function of it, and must stay numpy and soundfile only.
    if name in ("AudioServer", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
