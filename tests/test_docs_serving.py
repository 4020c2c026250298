"""The Python examples of docs/serving.md run as written against a real server on 127.0.0.1
serving the shipped models (only the address's port is the test server's). Until 2026-12-07 the
client example used ``wav``, ``chunks`` and ``features`` it never defined, and the grpcio one
``grpc`` it never imported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audioae.server import AudioServer, ServerConfig

DOC = Path(__file__).parents[1] / "docs" / "serving.md"
ADDRESS = "127.0.0.1:50051"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def address():
    srv = AudioServer(ServerConfig(port=0, torch_threads=1, max_delay_ms=5, drain_seconds=5))  # the shipped models
    srv.start()
    srv.load()
    try:
        yield f"127.0.0.1:{srv.port}"
    finally:
        srv.stop()


@pytest.mark.parametrize("number", range(len(_examples())))
def test_the_docs_python_examples_run_as_written(number, address, tmp_path, monkeypatch):
    code = _examples()[number]
    assert ADDRESS in code  # the one thing replaced
    monkeypatch.chdir(tmp_path)  # the files they write
    exec(compile(code.replace(ADDRESS, address), f"docs/serving.md example {number + 1}", "exec"),
         {"__name__": "__doc_example__"})
