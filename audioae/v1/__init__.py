"""Python code generated from ``proto/audioae/v1/audioae.proto`` (package ``audioae.v1``).

Do not edit the ``*_pb2*`` files: change the .proto and run ``python scripts/gen_proto.py``.
"""
