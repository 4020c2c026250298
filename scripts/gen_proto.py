"""Regenerate the Python code for the wire contract: ``python scripts/gen_proto.py``.

Writes ``audioae/v1/audioae_pb2.py``, ``audioae_pb2.pyi`` and ``audioae_pb2_grpc.py`` from
``proto/audioae/v1/audioae.proto`` with grpcio-tools' bundled protoc. The generated files are
committed; ``tests/test_server_proto.py`` regenerates them into a temporary folder and fails when
they differ (ignoring the version stamps protoc writes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "audioae/v1/audioae.proto"
GENERATED = ("audioae_pb2.py", "audioae_pb2.pyi", "audioae_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Run protoc with ``proto/`` as the include root; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    out_root.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(ROOT / "proto" / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out_root / "audioae" / "v1" / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = p.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
