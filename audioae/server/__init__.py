"""The audioae gRPC service: servicer, dynamic batcher, auth, limits, health, reflection,
Prometheus metrics and SIGTERM drain. Imports audioae's public API only.

Start it with ``audioae serve`` (or ``python -m audioae.server``); in code::

    from audioae.server import AudioServer, ServerConfig
    srv = AudioServer(ServerConfig(port=0, models=("tiny.safetensors",)))
    port = srv.start()      # listening; health NOT_SERVING
    srv.load()              # models loaded and warmed up; health SERVING
    ...
    srv.drain()             # NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish, stop
"""

from .app import AudioServer, serve
from .config import ServerConfig

__all__ = ["AudioServer", "ServerConfig", "serve"]
