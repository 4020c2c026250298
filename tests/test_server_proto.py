"""The committed code in audioae/v1 is what protoc generates from proto/ today."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("audioae_pb2.py", "audioae_pb2.pyi", "audioae_pb2_grpc.py")
# Lines that carry the generator's own version, which may differ between grpcio-tools releases
# without any change in the contract.
VERSION_LINES = re.compile(
    r"^(# Protobuf Python Version:.*|GRPC_GENERATED_VERSION = .*|\s+\d+,\s*$|\s+'',\s*$)", re.MULTILINE
)


def _normalized(text: str) -> str:
    return VERSION_LINES.sub("<version>", text)


def test_generated_code_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    for name in GENERATED:
        committed = (ROOT / "audioae" / "v1" / name).read_text()
        fresh = (tmp_path / "audioae" / "v1" / name).read_text()
        assert _normalized(committed) == _normalized(fresh), (
            f"audioae/v1/{name} is stale: run `python scripts/gen_proto.py` after editing "
            "proto/audioae/v1/audioae.proto"
        )


def test_service_has_the_contracted_rpcs():
    from audioae.v1 import audioae_pb2

    service = audioae_pb2.DESCRIPTOR.services_by_name["AudioAE"]
    assert service.full_name == "audioae.v1.AudioAE"
    rpcs = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert rpcs == {
        "Denoise": (False, False),
        "StreamDenoise": (True, True),
        "Decompose": (False, False),
        "Encode": (False, False),
        "Decode": (False, False),
        "ListModels": (False, False),
    }
