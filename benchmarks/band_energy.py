"""How much of each band component's energy lies inside its label's band: ``audioae decompose
FILE --group band`` on a recording, then each component's FFT (``numpy.fft.rfft``, channels
summed) split at its band's edges.

    python benchmarks/band_energy.py [FILE]   # default: audioae/pretrained/examples/voice-pink-0dB.wav
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from audioae.audio import AudioError, read_audio
from audioae.decompose import decompose
from audioae.pretrained import DEFAULT_DECOMPOSER, HERE, load


def in_band_shares(labels: list[str], components: np.ndarray, sr: int) -> dict[str, float]:
    """``components [K, C, T]`` -> per labelled band ("band LO-HI Hz"), its energy share inside LO..HI."""
    shares = {}
    for label, comp in zip(labels, components, strict=True):
        edges = re.search(r"(\d+)-(\d+) Hz", label)
        if edges is None:
            continue
        power = np.abs(np.fft.rfft(comp.sum(0))) ** 2  # [F]
        freqs = np.fft.rfftfreq(comp.shape[-1], 1 / sr)
        lo, hi = map(float, edges.groups())
        shares[label] = float(power[(freqs >= lo) & (freqs < hi)].sum() / power.sum())
    return shares


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", default=str(HERE / "examples" / "voice-pink-0dB.wav"),
                   help="an audio file (default: the shipped voice-pink-0dB example)")
    args = p.parse_args()
    try:
        wav, sr, _ = read_audio(args.file)  # missing, a folder, unreadable, empty: said before any work
        model = load(DEFAULT_DECOMPOSER)
        dec = decompose(model, wav, sr, group="band")  # its checks of the audio (a rate it cannot take) come first
    except AudioError as exc:
        p.error(str(exc))
    for label, share in in_band_shares(dec.labels, dec.components, sr).items():
        print(f"{label:<24} {100 * share:5.1f}% in band")


if __name__ == "__main__":
    main()
