"""What would kill the process rather than raise (libsndfile and its codecs are C; the server
decodes and encodes what any caller sends), run in child processes so that a crash fails a test
instead of ending pytest:

- corrupt bytes in every container the tools read: ``read_audio`` returns audio or raises
  ``AudioError``, nothing else (seeded mutations, so a failure reproduces);
- long Ogg Vorbis written by every writer: one write of a minute at 48 kHz overflowed libvorbis'
  stack (SIGSEGV);
- Ogg Vorbis above 200 kHz, which libvorbis cannot encode (SIGSEGV): a file whose header claims
  such a rate decodes, and its output would be Vorbis at that rate.
"""

from __future__ import annotations

import io
import os
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
    # 2 seeds (300 mutations) per test run; AUDIOAE_FUZZ_SEEDS=62 is the longer run docs/serving.md cites
    for seed in range(1, 1 + int(os.environ.get("AUDIOAE_FUZZ_SEEDS", "2"))):
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


def _ogg_crc(page: bytes) -> int:
    """The CRC-32 of an Ogg page (polynomial 0x04c11db7, no reflection), its CRC field zeroed."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def _vorbis_claiming(rate: int, path) -> None:
    """A valid Ogg Vorbis file whose identification header says ``rate`` Hz."""
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 48000, format="OGG")
    data = bytearray(buf.getvalue())
    at = data.index(b"\x01vorbis")
    data[at + 12 : at + 16] = rate.to_bytes(4, "little")  # vorbis_version (4) then channels (1), rate (4)
    end = data.index(b"OggS", 4)  # the first page holds the identification header
    data[22:26] = b"\0\0\0\0"
    data[22:26] = _ogg_crc(bytes(data[:end])).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_vorbis_above_200_khz_is_refused_per_file_not_a_crash(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _vorbis_claiming(250_000, src / "a.ogg")
    assert sf.info(src / "a.ogg").samplerate == 250_000  # it decodes
    sf.write(src / "b.wav", np.zeros(8000, np.float32), 16000)
    run = subprocess.run([sys.executable, "-m", "audioae.cli", "denoise", str(src), "-o", str(tmp_path / "out"),
                          "--no-progress"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, f"exit {run.returncode} (-11: SIGSEGV in libvorbis)\n{run.stderr[-2000:]}"
    assert "1 denoised" in run.stdout and "a.ogg: cannot write the output: Ogg Vorbis cannot hold 250000 Hz" in run.stderr
    writer = textwrap.dedent("""
        import sys
        import numpy as np
        from audioae.audio import AudioError, write_audio
        try:
            write_audio(sys.argv[1], np.zeros((1, 2000), np.float32), 250000)
        except AudioError as exc:
            print(exc)
    """)
    run = subprocess.run([sys.executable, "-c", writer, str(tmp_path / "x.ogg")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "at most 192000 Hz" in run.stdout, f"exit {run.returncode}\n{run.stderr[-2000:]}"


def test_libsndfile_words_that_mislead_are_said_plainly(tmp_path):
    """For bytes in memory libsndfile can say "not a regular file (possibly a pipe?)", and for a
    header whose rate is 0 "Internal error : SF_INFO struct incomplete."."""
    import struct

    import pytest

    from audioae.audio import AudioError, read_audio

    with pytest.raises(AudioError, match=r"not an audio format libsndfile recognises"):
        read_audio(np.random.default_rng(1).bytes(50))  # bytes libsndfile answers with the pipe message
    buf = io.BytesIO()
    sf.write(buf, np.zeros(100, np.int16), 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    data[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    with pytest.raises(AudioError, match=r"the header is incomplete: a sample rate, channel count or format of 0"):
        read_audio(bytes(data))
    (tmp_path / "rate0.wav").write_bytes(bytes(data))
    with pytest.raises(AudioError, match=r"rate0\.wav: cannot read audio \(the header is incomplete"):
        read_audio(tmp_path / "rate0.wav")


def test_write_audio_takes_mono_1d_and_refuses_what_a_read_would(tmp_path):
    import pytest

    from audioae.audio import AudioError, read_audio, write_audio

    x = (0.1 * np.random.default_rng(0).standard_normal(800)).astype(np.float32)
    write_audio(tmp_path / "mono.wav", x, 8000)  # [T], as denoise() returns it: was an IndexError
    assert read_audio(tmp_path / "mono.wav")[0].shape == (1, 800)
    for bad, text in ((np.stack([x, x], 1), r"looks like \[T, C\]"),
                      (np.where(np.arange(800) == 5, np.nan, x).astype(np.float32), "NaN"),  # was -32768 in PCM_16
                      (x[:0], "empty")):
        with pytest.raises(AudioError, match=text):
            write_audio(tmp_path / "bad.wav", bad, 8000, subtype="PCM_16")
    assert not (tmp_path / "bad.wav").exists()
