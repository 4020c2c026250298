"""What ``audioae inspect`` draws and the numbers it reports beside the figure: a sparse_dict
model's dictionary (:func:`inspect_dictionary`), or what a denoiser does to a part of a recording
(:func:`inspect_denoising`: which part, how much context the model runs over, the figure). The CLI
parses its flags, calls these (``flags=True``: messages name its flags, ``--start``, where a
library caller's name the keywords, ``start``) and prints what they return.

Named ``inspection``, not ``inspect``: a module named as the standard library's ``inspect``
shadows it for any script run with ``audioae/`` on ``sys.path``.

Light at import (no torch, no matplotlib): the CLI reads :data:`INSPECT_SECONDS` for ``--help``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

INSPECT_SECONDS = 600.0  # of a recording inspect --audio shows by default, and the most the model runs over


def _log_note(text: str) -> None:
    """:func:`inspect_denoising`'s notes where the caller passes no ``note``: at WARNING, so that a
    library caller sees them (logging's default), as the CLI prints them: they change how the
    numbers read (the mean of 2 channels, a model run over part of the file)."""
    log.warning("%s", text)


def _names(flags: bool) -> dict[str, str]:
    """How messages name the part's options: the CLI's flags, or the keywords."""
    return {"start": "--start", "seconds": "--seconds"} if flags else {"start": "start", "seconds": "seconds"}


def inspect_dictionary(model, path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Draw every atom of ``model`` (a sparse_dict model loaded from ``path``) to the figure
    ``out``; the model, its description, the figure and the dictionary's numbers, JSON-ready,
    ``atoms`` last: each atom's unit and peak frequency, in the figure's column order."""
    from .plots import atoms_by_peak, dictionary_stats, plot_dictionary

    plot_dictionary(model, out)
    return {"model": str(path), **model.describe(), "figure": str(out), **dictionary_stats(model),
            "atoms": atoms_by_peak(model)}


def dictionary_text(result: dict) -> str:
    """:func:`inspect_dictionary`'s answer as ``audioae inspect`` prints it: indented JSON, one line
    per atom (``{"unit": 253, "peak_hz": 1015.6}``), not six: 320 atoms stay grep-able."""
    rest = {k: v for k, v in result.items() if k != "atoms"}
    text = json.dumps(rest, indent=2)
    if "atoms" not in result:
        return text
    atoms = ",\n".join(f"    {json.dumps(atom)}" for atom in result["atoms"])
    return f'{text[:-2]},\n  "atoms": [\n{atoms}\n  ]\n}}'


def check_long_enough(model, audio: str, samples: int, frames: int, sr: int, start: float, seconds: float,
                      flags: bool = False) -> None:
    """Refuse a part (``samples`` of the recording's ``frames`` at ``sr``) shorter than one
    analysis window, as decompose does: its spectrograms, gains and code describe the STFT's
    zero padding, not the recording (a part under one sample would fail inside torch, "cannot
    reshape tensor of 0 elements"). ``flags``: name the CLI's ``--start`` / ``--seconds``, not
    the keywords. Raises ValueError."""
    from .spectral import window_samples

    n_fft, msr = model.config.n_fft, model.config.sample_rate
    least = window_samples(n_fft, msr, sr)
    if samples >= least:
        return
    window = f"the model's {1000 * n_fft / msr:.0f} ms analysis window ({least} samples at {sr} Hz)"
    lasts = f"{1000 * samples / sr:.1f} ms ({samples} sample{'s' * (samples != 1)})"
    if samples == frames:  # the whole recording
        raise ValueError(f"{audio} lasts {lasts}, shorter than {window}: too short to inspect")
    end = min(start + seconds, frames / sr)
    name = _names(flags)
    raise ValueError(f"the part of {audio} shown ({start:g}-{end:g} s of its {frames / sr:.2f} s) lasts {lasts}, "
                     f"shorter than {window}: choose an earlier {name['start']} or a longer {name['seconds']}")


def model_context(model, begin: int, end: int, frames: int, sr: int) -> tuple[int, int]:
    """Samples before and after the part shown (samples ``begin .. end`` of ``frames`` at ``sr``)
    that the model runs over too, so that the part's numbers are what ``audioae denoise`` did to
    it: all of those before (a causal model's state depends on all it heard: started a few
    seconds early, its gain in a band still differed by several dB); after it, one analysis
    window (what a causal model's last frames see), or as much as fits for a model that sees the
    whole input. Within the :data:`INSPECT_SECONDS` the model may run over (memory); past that,
    :func:`context_note` says so."""
    from .spectral import window_samples

    budget = max(0, round(INSPECT_SECONDS * sr) - (end - begin))
    window = window_samples(model.config.n_fft, model.config.sample_rate, sr)
    # Before the part first, for every model (a non-causal one's level tracker is causal too), then
    # what is left after it: all of it took the budget from a non-causal model's left context.
    before = max(0, min(begin, budget - min(frames - end, window)))  # (no budget left: none)
    after = min(frames - end, window if model.causal else budget, budget - before)
    return before, after


def context_note(model, begin: int, end: int, before: int, after: int, frames: int, sr: int) -> str | None:
    """What to tell people when the model's run over the part (:func:`model_context`) is not
    what ``audioae denoise`` does to the whole file, or None."""
    from .enhance import OFFLINE_MAX_SECONDS

    if before < begin or (not model.causal and end + after < frames):
        return (f"the model runs over {(begin - before) / sr:.2f}-{(end + after) / sr:.2f} s, not the whole "
                f"file (inspect runs it over at most {INSPECT_SECONDS:.0f} s): its numbers for this part may differ "
                f"from what audioae denoise does to the whole file")
    if not model.causal and frames / sr > OFFLINE_MAX_SECONDS:
        return (f"audioae denoise runs this model over {OFFLINE_MAX_SECONDS:.0f} s windows of a longer "
                f"file, cross-faded; inspect runs it over the file at once: its numbers for this part may differ "
                f"a little")
    return None


def inspect_denoising(model, path: str | os.PathLike, audio: str, out: str | os.PathLike, start: float = 0.0,
                      seconds: float = INSPECT_SECONDS, note: Callable[[str], None] = _log_note,
                      flags: bool = False) -> dict:
    """Draw what ``model`` (a spectrogram model loaded from ``path``) does to ``seconds`` of the
    recording ``audio`` from ``start`` to the figure ``out``; its numbers, JSON-ready. ``note``
    gets what people should know, as it comes (the part shown, channels mixed, a model run over
    less than the whole file): the CLI prints it on stderr; unset, it is logged at WARNING
    (logger ``audioae.inspection``). ``flags``: messages name the CLI's ``--start`` and
    ``--seconds``, not the keywords. Raises ValueError for a part the recording does not hold or
    one shorter than an analysis window."""
    from .audio import read_audio
    from .plots import denoising_stats, denoising_view, plot_denoising

    wav, sr, _info = read_audio(audio)
    frames = wav.shape[-1]
    total = frames / sr
    name = _names(flags)
    if start >= total:
        raise ValueError(f"{name['start']} {start:g} s: {audio} lasts {total:.2f} s")
    begin, end = round(start * sr), min(round((start + seconds) * sr), frames)
    check_long_enough(model, audio, end - begin, frames, sr, start, seconds, flags)
    shown = (end - begin) / sr
    before, after = model_context(model, begin, end, frames, sr)
    if (said := context_note(model, begin, end, before, after, frames, sr)) is not None:
        note(said)
    wav = wav[:, begin - before : end + after]  # [C, T'] the part shown, in what the model runs over
    if shown < total:
        note(f"showing {start:.2f}-{start + shown:.2f} s of {total:.2f} s; {name['start']} and {name['seconds']} "
             f"pick another part")
    channels = wav.shape[0]
    mixed = f", the mean of its {channels} channels" if channels > 1 else ""
    if channels > 1:
        note(f"{audio} has {channels} channels; the figure and the numbers show their mean (mono)")
    view = denoising_view(model.eval(), wav, sr, shown_from=before, shown_to=before + end - begin,
                          file_start_s=(begin - before) / sr)
    plot_denoising(view, out, title=f"{audio} {start:.2f}-{start + shown:.2f} s ({sr} Hz{mixed}, shown at the "
                                    f"model's {model.config.sample_rate} Hz)", model=str(path))
    return {"model": str(path), "audio": audio, "figure": str(out), "start_s": round(start, 3),
            "seconds": round(shown, 3), "audio_seconds": round(total, 3), "audio_channels": channels,
            **denoising_stats(view)}

