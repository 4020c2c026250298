"""`audioae inspect -o`: the figure's format from its extension, never over a file that is not such
a figure, written atomically; --seconds refused with the words of what it accepts."""

from __future__ import annotations

import json

import pytest

from audioae.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def _tiny_figure():
    from audioae.plots import _figure

    fig = _figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    return fig


def test_inspect_refuses_to_replace_a_file_that_is_not_its_figure(tmp_path, capsys):
    # was: `-o mine.py` replaced a script with PNG bytes
    mine = tmp_path / "mine.py"
    mine.write_text("print('my work')\n")
    assert main(["inspect", "-o", str(mine)]) == 2
    err = capsys.readouterr().err
    assert f"-o {mine}: a figure is written in the format its extension names: .png, .pdf, .svg" in err
    assert ".py is not one of them" in err
    assert mine.read_text() == "print('my work')\n"
    # a new name without an extension is a folder, made (until 2026-12-07: "the name has no extension")
    assert main(["inspect", "-o", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "decomposer-small-dictionary.png").read_bytes().startswith(PNG)
    capsys.readouterr()
    # a figure's name, but not a figure of that format: text, or a JPEG under .png
    for name, content in (("notes.png", b"my notes\n"), ("photo.png", b"\xff\xd8\xff\xe0\x00\x10JFIF"),
                          ("fig.pdf", PNG + b"rest")):
        path = tmp_path / name
        path.write_bytes(content)
        assert main(["inspect", "-o", str(path)]) == 2
        fmt = name.rsplit(".", 1)[1].upper()
        assert (f"-o {path}: exists and is not a {fmt} file (not a figure this command could have written); "
                f"refusing to replace it: choose another path, or delete the file first") in capsys.readouterr().err
        assert path.read_bytes() == content
    # -o a folder: the default name inside it is checked too
    (tmp_path / "figs").mkdir()
    taken = tmp_path / "figs" / "decomposer-small-dictionary.png"
    taken.write_text("not a figure")
    assert main(["inspect", "-o", str(tmp_path / "figs")]) == 2
    assert "exists and is not a PNG file" in capsys.readouterr().err
    assert taken.read_text() == "not a figure"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(  # nothing written beside them
        ["mine.py", "notes.png", "photo.png", "fig.pdf", "figs", "decomposer-small-dictionary.png",
         "fig", "decomposer-small-dictionary.png"])  # fig/: the folder -o fig made, and its figure


def test_the_dictionary_json_gives_each_columns_unit_one_line_each(tmp_path, capsys):
    """The figure and the JSON sorted atoms by peak frequency without unit ids: "unit 253" from
    decompose could not be found there."""
    from audioae.pretrained import DEFAULT_DECOMPOSER, load

    assert main(["inspect", "-o", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    atoms = json.loads(out)["atoms"]
    peak = load(DEFAULT_DECOMPOSER, default=DEFAULT_DECOMPOSER).atom_frequencies().detach().numpy()
    assert sorted(a["unit"] for a in atoms) == list(range(len(peak)))  # every unit once
    assert [a["peak_hz"] for a in atoms] == sorted(a["peak_hz"] for a in atoms)  # the figure's columns
    assert all(a["peak_hz"] == round(float(peak[a["unit"]]), 1) for a in atoms)
    line = next(t for t in out.splitlines() if '"unit": 253,' in t)
    assert line.strip().rstrip(",") == json.dumps(next(a for a in atoms if a["unit"] == 253))  # one line: grep finds it


def test_inspect_writes_the_format_its_extension_names(tmp_path, capsys):
    # was: `-o pic.jpg` wrote PNG bytes under .jpg
    for name, magic in (("pic.jpg", b"\xff\xd8\xff"), ("FIG.PDF", b"%PDF-")):
        out = tmp_path / name
        assert main(["inspect", "-o", str(out)]) == 0
        assert json.loads(capsys.readouterr().out)["figure"] == str(out)
        assert out.read_bytes().startswith(magic)
    empty = tmp_path / "empty.png"  # e.g. made by mktemp: nothing to lose
    empty.touch()
    assert main(["inspect", "-o", str(tmp_path / "pic.jpg")]) == 0  # its own figure: replaced
    assert main(["inspect", "-o", str(empty)]) == 0
    assert (tmp_path / "pic.jpg").read_bytes().startswith(b"\xff\xd8\xff")
    assert empty.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FIG.PDF", "empty.png", "pic.jpg"]  # no temp files left


def test_every_offered_format_is_written_and_known_again(tmp_path):
    from audioae.plots import _save, check_figure_path, figure_formats

    formats = figure_formats()
    assert formats[0] == "png" and {"pdf", "svg"} <= set(formats)
    assert not {"pgf", "raw", "rgba"} & set(formats)  # LaTeX code and bare pixels are no figure files
    written = {}
    for fmt in formats:
        path = tmp_path / f"fig.{fmt}"
        _save(_tiny_figure(), path)
        assert check_figure_path(path) == fmt  # a rerun may replace it
        written[fmt] = path.read_bytes()
    png = tmp_path / "fig.png"
    for fmt in ("jpg", "pdf", "svg"):  # another format under .png is not replaced
        png.write_bytes(written[fmt])
        with pytest.raises(ValueError, match="exists and is not a PNG file"):
            _save(_tiny_figure(), png)
        assert png.read_bytes() == written[fmt]
    with pytest.raises(ValueError, match=r"\.rgba is not one of them"):
        _save(_tiny_figure(), tmp_path / "fig.rgba")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"fig.{f}" for f in formats)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf"])
def test_inspect_seconds_says_what_it_accepts(value, capsys):
    # was: "--seconds 0" said "must be more than 0", "--seconds -3" said "must be 0 or more seconds"
    with pytest.raises(SystemExit) as stop:
        main(["inspect", "--audio", "x.wav", "--seconds", value])
    assert stop.value.code == 2
    assert f"argument --seconds: must be more than 0 seconds, got {value}" in capsys.readouterr().err


def test_a_trailing_slash_names_a_new_folder_for_the_figure(tmp_path, capsys):
    out = tmp_path / "figs"  # not there yet: was "the name has no extension"
    assert main(["inspect", "-o", f"{out}/"]) == 0
    assert [p.name for p in out.iterdir()] == ["decomposer-small-dictionary.png"]


def test_inspect_audio_says_it_shows_the_mean_of_the_channels(tmp_path, capsys):
    # was: a stereo recording was mixed to mono unsaid
    import numpy as np

    from audioae.audio import write_audio

    t = np.arange(8000) / 16000
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.05 * np.random.default_rng(0).standard_normal(8000)])
    src = tmp_path / "two.wav"
    write_audio(src, stereo.astype(np.float32), 16000)
    assert main(["inspect", "--audio", str(src), "-o", str(tmp_path / "v.png")]) == 0
    out, err = capsys.readouterr()
    assert f"note: {src} has 2 channels; the figure and the numbers show their mean (mono)" in err  # via the CLI
    assert json.loads(out)["audio_channels"] == 2
    write_audio(src, stereo[:1].astype(np.float32), 16000)
    assert main(["inspect", "--audio", str(src), "-o", str(tmp_path / "v.png")]) == 0
    out, err = capsys.readouterr()
    assert "channels" not in err and json.loads(out)["audio_channels"] == 1


def _tone(path, frames: int, sr: int = 16000) -> None:
    import numpy as np

    from audioae.audio import write_audio

    write_audio(path, (0.3 * np.sin(2 * np.pi * 440 * np.arange(frames) / sr)).astype(np.float32)[None], sr)


@pytest.mark.parametrize("args, shown", [
    (["--start", "2.99999"], "(2.99999-3 s of its 3.00 s) lasts 0.0 ms (0 samples)"),  # was torch's "cannot reshape"
    (["--start", "1.0", "--seconds", "0.00001"], "(1-1.00001 s of its 3.00 s) lasts 0.0 ms (0 samples)"),
    (["--start", "2.99"], "(2.99-3 s of its 3.00 s) lasts 10.0 ms (160 samples)"),  # was numbers of zero padding
])
def test_inspect_refuses_a_part_shorter_than_the_analysis_window(tmp_path, capsys, args, shown):
    src, fig = tmp_path / "three.wav", tmp_path / "v.png"
    _tone(src, 48000)
    assert main(["inspect", "--audio", str(src), "-o", str(fig), *args]) == 2
    err = capsys.readouterr().err
    assert (f"audioae inspect: error: the part of {src} shown {shown}, shorter than the model's 24 ms analysis "
            f"window (384 samples at 16000 Hz): choose an earlier --start or a longer --seconds") in err
    assert not fig.exists()


def test_inspect_refuses_a_recording_shorter_than_the_analysis_window_and_takes_one_as_long(tmp_path, capsys):
    fig = tmp_path / "v.png"
    for frames, sr, least in ((1, 16000, 384), (383, 16000, 384), (1058, 44100, 1059)):
        src = tmp_path / f"short{frames}.wav"  # 1 sample: was "seconds": 0.0, with per-band gains
        _tone(src, frames, sr)
        assert main(["inspect", "--audio", str(src), "-o", str(fig)]) == 2
        err = capsys.readouterr().err
        assert f"error: {src} lasts {1000 * frames / sr:.1f} ms ({frames} sample" in err
        assert (f"shorter than the model's 24 ms analysis window ({least} samples at {sr} Hz): too short to "
                "inspect") in err
        assert not fig.exists()
    for frames, sr in ((384, 16000), (1059, 44100)):  # exactly one window: shown
        src = tmp_path / f"window{sr}.wav"
        _tone(src, frames, sr)
        assert main(["inspect", "--audio", str(src), "-o", str(fig)]) == 0
        assert json.loads(capsys.readouterr().out)["seconds"] == round(frames / sr, 3)
        assert fig.read_bytes().startswith(PNG)


@pytest.mark.parametrize("args, text", [
    (["", "--audio", "a.wav"], "MODEL: the model name is empty (an unset shell variable?); name a shipped model "
                               "(decomposer-small, denoiser-small) or a .safetensors path"),
    ([""], "MODEL: the model name is empty (an unset shell variable?)"),  # was: decomposer-small's dictionary
    (["--model", ""], "--model: the model name is empty (an unset shell variable?)"),
    (["--audio", "a.wav", "-o", ""], "-o: the output path is empty (an unset shell variable?); name the figure "
                                     "file (or a folder for it), or omit -o for the default name here"),
    (["-o", ""], "-o: the output path is empty"),  # was: decomposer-small-dictionary.png here, unsaid
])
def test_inspect_refuses_an_empty_model_or_output(tmp_path, monkeypatch, capsys, args, text):
    monkeypatch.chdir(tmp_path)
    _tone(tmp_path / "a.wav", 16000)
    assert main(["inspect", *args]) == 2
    assert f"audioae inspect: error: {text}" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]  # no figure drawn with the defaults


def _noisy_speech(path, seconds: float, sr: int = 16000, seed: int = 0):
    import numpy as np

    from audioae.audio import write_audio
    from audioae.data.synthetic import noise, speech_like

    rng = np.random.default_rng(seed)
    clean = speech_like(rng, seconds, sr)
    x = (0.1 * (clean + noise(rng, seconds, sr, "pink"))).astype(np.float32)  # about 0 dB SNR
    write_audio(path, x[None], sr)
    return x


def _drawn_figures(monkeypatch) -> list:
    """The figures inspect draws, kept after they are written (to read their axes)."""
    import audioae.plots as plots

    drawn, save = [], plots._save

    def keep(fig, path):
        drawn.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return drawn


def _panels(fig) -> tuple[list, list]:
    """(the figure's panels, its colour bars)."""
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    return [ax for ax in fig.axes if ax not in bars], bars


def test_inspect_start_labels_the_files_time(tmp_path, monkeypatch, capsys):
    # was: the title said 1.00-2.50 s while every panel's time axis ran 0.0-1.5
    src = tmp_path / "n.wav"
    _noisy_speech(src, 3.0)
    drawn = _drawn_figures(monkeypatch)
    assert main(["inspect", "--audio", str(src), "--start", "1.0", "--seconds", "1.5", "-o",
                 str(tmp_path / "v.png")]) == 0
    capsys.readouterr()
    (fig,) = drawn
    panels, _ = _panels(fig)
    assert len(panels) == 4
    for ax in panels:
        lo, hi = ax.get_xlim()
        assert lo == pytest.approx(1.0, abs=0.02) and hi == pytest.approx(2.5, abs=0.02)


def test_every_panel_of_the_denoiser_figure_has_a_labelled_colour_bar(tmp_path, monkeypatch, capsys):
    # was: no colour bar for the spectrograms, an unlabelled one for the code, "dB" only in a title
    src = tmp_path / "n.wav"
    _noisy_speech(src, 2.0)
    drawn = _drawn_figures(monkeypatch)
    assert main(["inspect", "--audio", str(src), "-o", str(tmp_path / "v.png")]) == 0
    capsys.readouterr()
    panels, bars = _panels(drawn[0])
    assert [bar.get_ylabel() for bar in bars] == ["dB (|STFT| magnitude)"] * 2 + ["dB", "unit value"]


def test_bands_above_the_files_nyquist_are_null_and_covered_in_the_figure(tmp_path, monkeypatch, capsys):
    # was: an 8 kHz file read "4000-8000 Hz": -14.39, and the figure painted the upsampler's images there
    src = tmp_path / "n.wav"
    _noisy_speech(src, 2.0, sr=8000)
    drawn = _drawn_figures(monkeypatch)
    assert main(["inspect", "--audio", str(src), "-o", str(tmp_path / "v.png")]) == 0
    bands = json.loads(capsys.readouterr().out)["gain_db_per_band"]
    assert bands["4000-8000 Hz"] is None and bands["2000-4000 Hz"] is not None
    panels, _ = _panels(drawn[0])
    for ax in panels[:3]:  # the spectrograms and the gain; the code has no frequency axis
        assert [t.get_text() for t in ax.texts] == ["above the file's 4 kHz Nyquist: not recorded"]
    src16 = tmp_path / "n16.wav"
    _noisy_speech(src16, 2.0)
    assert main(["inspect", "--audio", str(src16), "-o", str(tmp_path / "v.png")]) == 0
    assert json.loads(capsys.readouterr().out)["gain_db_per_band"]["4000-8000 Hz"] is not None
    assert not any(ax.texts for ax in _panels(drawn[1])[0])


def _band_gain_db(x, y, sr: int, lo: float, hi: float) -> float:
    import numpy as np

    f = np.fft.rfftfreq(len(x), 1 / sr)
    band = (f >= lo) & (f < hi)
    return float(10 * np.log10((np.abs(np.fft.rfft(y)[band]) ** 2).sum() / (np.abs(np.fft.rfft(x)[band]) ** 2).sum()))


def test_inspect_start_gives_the_numbers_a_whole_file_denoise_gives_that_part(tmp_path, capsys):
    # was: the part was denoised on its own, the causal model starting cold at --start: on a babble
    # file, -0.66 dB where denoise gave that part -0.94, and -6.05 dB in 4-8 kHz where it gave -9.49
    from audioae.enhance import denoise
    from audioae.pretrained import load

    sr, src = 16000, tmp_path / "n.wav"
    x = _noisy_speech(src, 6.0)
    y = denoise(load("denoiser-small").eval(), x, sr)
    assert main(["inspect", "--audio", str(src), "--start", "3.0", "--seconds", "2.0", "-o",
                 str(tmp_path / "v.png")]) == 0
    rep = json.loads(capsys.readouterr().out)
    part = slice(3 * sr, 5 * sr)
    # started cold at 3 s: -11.51, -10.85 and -33.9 dB where the denoised file's FFT says -11.08,
    # -10.23 and -36.14 (the STFT's numbers and the FFT's differ a little, more at -36 dB)
    assert rep["gain_db"] == pytest.approx(_band_gain_db(x[part], y[part], sr, 0, 8000), abs=0.15)
    for lo, hi, within in ((1000, 2000, 0.3), (4000, 8000, 0.5)):
        assert rep["gain_db_per_band"][f"{lo}-{hi} Hz"] == pytest.approx(
            _band_gain_db(x[part], y[part], sr, lo, hi), abs=within)


def test_the_band_above_the_model_is_null_at_the_resamplers_floor_and_measured_above_it(tmp_path, capsys):
    # was: a 48 kHz file with next to nothing above 8 kHz read "8000-24000 Hz": -4.45 (the input
    # minus its round trip through 16 kHz: the resampler's error) where its output was 14.5 dB up
    import numpy as np

    from audioae.audio import write_audio
    from audioae.enhance import denoise
    from audioae.pretrained import load

    sr = 48000
    rng = np.random.default_rng(0)
    spectrum = np.fft.rfft(rng.standard_normal(3 * sr))
    spectrum[np.fft.rfftfreq(3 * sr, 1 / sr) > 7000] = 0
    low = np.fft.irfft(spectrum, 3 * sr)
    low = 0.1 * low / np.abs(low).max()  # noise below 7 kHz only
    for name, x, expect_null in (("low.wav", low, True), ("full.wav", low + 0.01 * rng.standard_normal(3 * sr), False)):
        x = x.astype(np.float32)
        write_audio(tmp_path / name, x[None], sr)
        assert main(["inspect", "--audio", str(tmp_path / name), "-o", str(tmp_path / "v.png")]) == 0
        gain = json.loads(capsys.readouterr().out)["gain_db_per_band"]["8000-24000 Hz"]
        if expect_null:
            assert gain is None
        else:
            y = denoise(load("denoiser-small").eval(), x, sr)
            assert gain == pytest.approx(_band_gain_db(x, y, sr, 8000, 24001), abs=0.1)


def test_the_model_runs_from_the_files_start_within_inspects_ten_minutes():
    from audioae.inspection import INSPECT_SECONDS, context_note, model_context
    from audioae.models import build_model
    from audioae.pretrained import load

    notes: list[str | None] = []

    def context(model, begin: int, end: int, frames: int, sr: int) -> tuple[int, int]:
        before, after = model_context(model, begin, end, frames, sr)
        notes.append(context_note(model, begin, end, before, after, frames, sr))
        return before, after

    causal, whole = load("denoiser-small"), build_model("conv1d", {})  # whole: sees the whole input
    assert causal.causal and not whole.causal
    sr, minute = 16000, 60 * 16000
    window = causal.config.n_fft  # at the model's own rate
    assert context(causal, 5 * sr, 8 * sr, 20 * sr, sr) == (5 * sr, window)  # all before, a window after
    assert context(whole, 5 * sr, 8 * sr, 20 * sr, sr) == (5 * sr, 12 * sr)  # and all after
    assert notes == [None, None]
    # 5 minutes shown at 8-13 minutes of 20: 10 in all, so the model starts 3 minutes in
    assert INSPECT_SECONDS == 600
    assert context(causal, 8 * minute, 13 * minute, 20 * minute, sr) == (5 * minute - window, window)
    assert notes[-1].startswith("the model runs over 180.02-780.02 s, not the whole file")
    # a non-causal model keeps its context before the part too (the part after took it all: a cold start)
    win = whole.config.n_fft
    assert context(whole, 500 * sr, 510 * sr, 20 * minute, sr) == (500 * sr, 90 * sr)
    assert context(whole, 8 * minute, 13 * minute, 20 * minute, sr) == (5 * minute - win, win)
    assert context(whole, 5 * sr, 8 * sr, 200 * sr, sr) == (5 * sr, 192 * sr)  # over denoise's windows
    assert notes[-1].startswith("audioae denoise runs this model over 120 s windows")
    # the part takes the whole budget (the default --start 0 of a recording over 10 minutes): no context
    assert context(causal, 0, 10 * minute, 12 * minute, sr) == (0, 0)  # was (-window, window)
    assert context(causal, 1 * minute, 11 * minute, 12 * minute, sr) == (0, 0)



def _stereo_tone(path, seconds: float = 3.0, sr: int = 16000) -> None:
    import numpy as np

    from audioae.audio import write_audio

    t = np.arange(int(seconds * sr)) / sr
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(t))
    write_audio(path, np.stack([0.3 * np.sin(2 * np.pi * 440 * t), noise]).astype(np.float32), sr)


def test_inspect_denoising_gives_its_notes_to_note_and_logs_them_at_warning_without_one(tmp_path, capsys, caplog):
    # was: without note= they were logged at INFO, so a library caller never saw "the numbers show
    # the mean of 2 channels"; with note= they go there alone
    import logging

    from audioae.inspection import inspect_denoising
    from audioae.pretrained import load

    src, fig = tmp_path / "two.wav", tmp_path / "v.png"
    _stereo_tone(src)
    model = load("denoiser-small")
    notes: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="audioae.inspection"):
        said = inspect_denoising(model, "denoiser-small", str(src), fig, start=1.0, seconds=1.0, note=notes.append)
    assert said["audio_channels"] == 2 and said["seconds"] == 1.0
    assert notes == ["showing 1.00-2.00 s of 3.00 s; start and seconds pick another part",
                     f"{src} has 2 channels; the figure and the numbers show their mean (mono)"]
    assert capsys.readouterr().err == ""
    assert not [r for r in caplog.records if r.name == "audioae.inspection"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="audioae.inspection"):  # logging's default level
        inspect_denoising(model, "denoiser-small", str(src), fig, start=1.0, seconds=1.0)
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "audioae.inspection"]
    assert logged == [(logging.WARNING, text) for text in notes]


def test_inspect_denoising_names_its_keywords_and_the_cli_its_flags(tmp_path, capsys):
    # was: a library caller passing start= read "--start 5 s: ..." and "choose an earlier --start"
    from audioae.inspection import inspect_denoising
    from audioae.pretrained import load

    src, fig = tmp_path / "three.wav", tmp_path / "v.png"
    _tone(src, 48000)
    model = load("denoiser-small")
    with pytest.raises(ValueError) as late:
        inspect_denoising(model, "denoiser-small", str(src), fig, start=5.0, note=print)
    assert str(late.value) == f"start 5 s: {src} lasts 3.00 s"
    with pytest.raises(ValueError) as short:
        inspect_denoising(model, "denoiser-small", str(src), fig, start=2.99, note=print)
    assert str(short.value).endswith("window (384 samples at 16000 Hz): choose an earlier start or a longer seconds")
    assert "--" not in str(late.value) + str(short.value)
    assert not fig.exists()
    assert main(["inspect", "--audio", str(src), "-o", str(fig), "--start", "5"]) == 2
    assert f"audioae inspect: error: --start 5 s: {src} lasts 3.00 s" in capsys.readouterr().err
    assert main(["inspect", "--audio", str(src), "-o", str(fig), "--start", "1", "--seconds", "1"]) == 0
    assert "note: showing 1.00-2.00 s of 3.00 s; --start and --seconds pick another part" in capsys.readouterr().err


def test_inspect_help_loads_neither_torch_nor_matplotlib():
    """``audioae inspect --help`` reads INSPECT_SECONDS from audioae.inspection, which imports
    neither at import: a fresh process, so nothing another test imported counts."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from audioae.cli import main\n"
        "try:\n"
        "    main(['inspect', '--help'])\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "loaded = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not loaded, f'inspect --help imported {loaded}'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--seconds" in run.stdout


def test_importing_audioae_plots_leaves_matplotlibs_backend_alone():
    """It called matplotlib.use("Agg") at import, switching the backend of any program that
    imported it; the figures are drawn on their own Agg canvas."""
    import os
    import subprocess
    import sys

    code = "import audioae.plots, matplotlib; assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend()"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MPLBACKEND": "pdf"})
    assert run.returncode == 0, run.stderr[-2000:]
