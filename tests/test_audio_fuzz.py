"""What would kill the process rather than raise (libsndfile and its codecs are C; the server
decodes and encodes what any caller sends), run in child processes so that a crash fails a test
instead of ending pytest:

- corrupt bytes in every container the tools read: ``read_audio`` returns audio or raises
  ``AudioError``, nothing else (seeded mutations, so a failure reproduces);
- long Ogg Vorbis written by every writer: one write of a minute at 48 kHz overflowed libvorbis'
  stack (SIGSEGV).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import soundfile as sf

CONTAINERS = {  # name: soundfile.write keyword arguments
    "pcm.wav": {},
    "gsm.wav": {"subtype": "GSM610"},
    "float.flac": {"format": "FLAC"},
    "vorbis.ogg": {"format": "OGG"},
    "opus.ogg": {"format": "OGG", "subtype": "OPUS"},
    "mp3.mp3": {"format": "MP3"},
    "aiff.aiff": {"format": "AIFF"},
}

CHILD = textwrap.dedent("""
    import random, sys
    from audioae.audio import AudioError, read_audio

    seeds = [open(p, "rb").read() for p in sys.argv[2:]]
    rng = random.Random(int(sys.argv[1]))
    for _ in range(150):
        data = bytearray(rng.choice(seeds))
        kind = rng.random()
        for _ in range(rng.randint(1, 20)):
            i = rng.randrange(len(data))
            if kind < 0.5:  # flip bytes
                data[i] = rng.randrange(256)
            elif kind < 0.7:  # cut a run out
                del data[i:i + rng.randint(1, 64)]
            elif kind < 0.85:  # insert junk
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            else:  # extreme header-sized values
                data[i:i + 4] = rng.choice([b"\\xff\\xff\\xff\\x7f", b"\\x00\\x00\\x00\\x80", b"\\0\\0\\0\\0", b"\\xff" * 4])
        try:
            read_audio(bytes(data))
        except AudioError:
            pass
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}", flush=True)
            sys.exit(3)
""")


def test_mutated_files_give_audio_or_an_audio_error(tmp_path):
    x = (0.2 * np.random.default_rng(0).standard_normal((4000, 2))).astype(np.float32)
    paths = []
    for name, kw in CONTAINERS.items():
        path = tmp_path / name
        sr = 8000 if kw.get("subtype") == "GSM610" else 16000
        sf.write(path, x[:, 0] if kw.get("subtype") == "GSM610" else x, sr, **kw)
        paths.append(str(path))
    for seed in (1, 2):
        run = subprocess.run([sys.executable, "-c", CHILD, str(seed), *paths], capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, f"seed {seed}: exit {run.returncode} (negative: killed by that signal)\n" \
                                    f"{run.stdout}{run.stderr[-2000:]}"


WRITERS = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np

    from audioae.audio import encode_audio, read_audio, write_audio
    from audioae.batch.plan import FileTask
    from audioae.batch.process import _PartWriter

    out = Path(sys.argv[1])
    sr = 48000
    x = (0.1 * np.random.default_rng(0).standard_normal((2, 70 * sr))).astype(np.float32)  # [C, T]
    write_audio(out / "a.ogg", x, sr)
    assert read_audio(out / "a.ogg")[0].shape == x.shape
    assert read_audio(encode_audio(x, sr, format="OGG"))[0].shape == x.shape
    w = _PartWriter(FileTask("in.ogg", str(out / "b.ogg"), "b.ogg"), sr, 2, "OGG", "VORBIS")
    w.write(x)  # a non-causal model's whole file in one block
    w.commit()
    assert read_audio(out / "b.ogg")[0].shape == x.shape
    print("ok")
""")


def test_seventy_seconds_of_48k_ogg_vorbis_are_written_by_every_writer(tmp_path):
    run = subprocess.run([sys.executable, "-c", WRITERS, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", \
        f"exit {run.returncode} (-11: SIGSEGV, libvorbis' stack)\n{run.stderr[-2000:]}"
