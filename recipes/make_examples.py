"""Build the shipped example recordings (audioae/pretrained/examples/) from the corpus's
validation split: held-out voices mixed with held-out noise at fixed seeds. Never from the
reserved evaluation packages. Beside them, in audioae/pretrained/examples-clean/, each one's clean
speech at the same gain, rate and channels: the references `audioae eval` needs.

    python recipes/make_examples.py [--out DIR]   # default: the package's folders, replaced

``--out DIR`` writes the examples into DIR and their clean speech into DIR-clean instead (to
compare with the shipped ones: a rebuild on a fresh machine on 2026-12-06 matched them but for
13 samples of the babble example and 6 of its clean speech, 1 LSB each).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from audioae.audio import resample, write_audio
from audioae.data.mixing import corpus_missing, list_audio, load_folder
from audioae.models.corruption import mix_at_snr

OUT = Path(__file__).resolve().parents[1] / "audioae" / "pretrained" / "examples"
CLEAN_OUT = OUT.with_name("examples-clean")  # not inside OUT: `audioae denoise OUT` would take them too
CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "val"
EXAMPLES = [
    # (speech subfolder, noise subfolder, snr dB, output name, sample rate, channels)
    ("fillets_nl", "synthetic_pink", 0.0, "voice-pink-0dB.wav", 16000, 1),
    ("asterisk_fr_armelle", "babble", 5.0, "voice-babble-5dB.flac", 16000, 1),
    ("fillets_cs", "alienblaster", 5.0, "voice-effects-5dB-stereo-44k.wav", 44100, 2),
]


def _speech(folder: Path, rng: np.random.Generator, seconds: float) -> np.ndarray:
    clips = load_folder(folder, 16000)
    out = np.concatenate([clips[i] for i in rng.permutation(len(clips))[:8]])
    return out[: int(seconds * 16000)]


def main(argv: list[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help=f"where the examples go (default {OUT}, replaced)")
    args = p.parse_args(argv)  # before anything is written: --help wrote the package's examples
    missing = corpus_missing(*(CORPUS / kind / sub for speech, noise, *_ in EXAMPLES
                               for kind, sub in (("speech", speech), ("noise", noise))))
    if missing:  # before the examples folder is made, not a FileNotFoundError traceback after
        p.error(missing)
    out, clean_out = args.out, CLEAN_OUT if args.out == OUT else args.out.with_name(args.out.name + "-clean")
    rng = np.random.default_rng(2026)
    out.mkdir(parents=True, exist_ok=True)
    for speech_dir, noise_dir, snr, name, sr, channels in EXAMPLES:
        clean = _speech(CORPUS / "speech" / speech_dir, rng, 6.0)
        noise_files = list_audio(CORPUS / "noise" / noise_dir)
        noise = np.concatenate(load_folder(noise_files[0].parent, 16000))
        noise = np.tile(noise, int(np.ceil(len(clean) / len(noise))) + 1)[: len(clean)]
        chans = []
        for c in range(channels):
            shift = c * 800  # the second channel hears the noise a little later
            mixed = mix_at_snr(torch.from_numpy(clean)[None], torch.from_numpy(np.roll(noise, shift))[None],
                               torch.tensor([snr]))[0]
            chans.append(mixed)
        wav = torch.stack(chans)  # [C, T] at 16 kHz
        peak = wav.abs().max()
        wav = 0.5 * wav / peak
        wav = resample(wav, 16000, sr).numpy()
        write_audio(out / name, wav, sr, subtype="PCM_16")
        ref = 0.5 * torch.from_numpy(clean)[None].expand(channels, -1) / peak  # [C, T]: the same gain
        ref = resample(ref, 16000, sr).numpy()
        # FLAC of 24 bits: a fraction of float WAV's size, and eval pairs .wav with .flac by name
        write_audio(clean_out / Path(name).with_suffix(".flac"), ref, sr, subtype="PCM_24")
        print(out / name, wav.shape, sr)


if __name__ == "__main__":
    main()
