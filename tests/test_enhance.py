"""audioae.enhance: the windowed path that non-causal models take on long inputs, and the
resampling guard against rates that share almost no factor with the model's."""

import math
import re

import numpy as np
import pytest
import torch

from audioae.audio import (
    MAX_OFFLINE_RESAMPLE_FILTER_BYTES,
    MAX_RESAMPLE_FILTER_BYTES,
    AudioError,
    check_resample,
    resample,
    resample_filter_bytes,
    write_audio,
)
from audioae.enhance import Stopped, StreamingDenoiser, StreamingResampler, _denoise_offline, denoise
from audioae.models import build_model

STANDARD_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400,
                  192000, 352800, 384000)


def _bidirectional():
    torch.manual_seed(0)
    return build_model("recurrent", {"sample_rate": 8000, "n_fft": 128, "hop_length": 32, "hidden": 16,
                                     "code_dim": 8, "bidirectional": True}).eval()


def test_long_input_of_a_non_causal_model_goes_through_crossfaded_windows():
    model, sr = _bidirectional(), 8000
    x = np.random.default_rng(0).standard_normal((2, 3 * sr + 123)).astype(np.float32) * 0.1  # [C, T]
    win = sr  # max_offline_seconds=2 channel-seconds over 2 channels: windows of 1 s, 1/8 overlap
    overlap, hop = win // 8, win - win // 8
    y = denoise(model, x, sr, max_offline_seconds=2.0)
    assert y.shape == x.shape
    # Before the first overlap only the first window counts: its own offline output.
    first = _denoise_offline(model, torch.from_numpy(x[:, :win]), sr, 1.0).numpy()
    np.testing.assert_allclose(y[:, :hop], first[:, :hop], atol=1e-6)
    # In the overlap the two windows' outputs are cross-faded with weights that sum to one.
    second = _denoise_offline(model, torch.from_numpy(x[:, hop : hop + win]), sr, 1.0).numpy()
    ramp = np.linspace(0, 1, overlap + 2)[1:-1]
    mixed = first[:, hop:win] * ramp[::-1] + second[:, :overlap] * ramp
    np.testing.assert_allclose(y[:, hop:win], mixed, atol=1e-5)
    # Strength 0 gives the input back exactly where windows overlap too.
    np.testing.assert_allclose(denoise(model, x, sr, strength=0.0, max_offline_seconds=1.0), x, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])  # streamed pieces; cross-faded windows
def test_a_long_denoise_asks_stop_before_each_piece_and_ends_when_told(causal):
    """The server's stop(): its caller went away, so the rest of a long clip need not run."""
    torch.manual_seed(0)
    model = build_model("recurrent", {"sample_rate": 8000, "n_fft": 128, "hop_length": 32, "hidden": 16,
                                      "code_dim": 8, "bidirectional": not causal}).eval()
    x = np.random.default_rng(0).standard_normal((2, 9 * 8000 + 123)).astype(np.float32) * 0.1  # [C, T]
    asked = []  # 3 pieces of 4 s streamed, or 10 windows of 1 s

    def stop_at(n: int) -> bool:  # the n-th question says stop
        asked.append(1)
        return len(asked) >= n

    y = denoise(model, x, 8000, max_offline_seconds=2.0, stop=lambda: stop_at(math.inf))
    assert len(asked) > 2
    np.testing.assert_array_equal(y, denoise(model, x, 8000, max_offline_seconds=2.0))  # asking changes nothing
    asked.clear()
    with pytest.raises(Stopped, match="stopped after "):
        denoise(model, x, 8000, max_offline_seconds=2.0, stop=lambda: stop_at(2))
    assert len(asked) == 2


@pytest.mark.parametrize("sr", STANDARD_RATES)
def test_standard_rates_resample_to_and_from_16k(sr):
    check_resample(sr, 16000)  # the check alone: no filter is built
    check_resample(16000, sr)


def test_a_rate_sharing_no_factor_with_the_model_is_refused_before_any_filter_is_built():
    with pytest.raises(AudioError) as info:
        check_resample(44101, 16000, target="the model's ")
    msg = str(info.value)
    assert "44101 Hz cannot be resampled to the model's 16000 Hz efficiently" in msg
    assert "44101:16000" in msg and "2,824.9 MB" in msg  # torchaudio's bank back: 44101 x (16000 + 2 x 6) floats
    assert "standard rate such as 16000, 44100 or 48000 Hz" in msg
    assert resample_filter_bytes(44101, 16000) > MAX_RESAMPLE_FILTER_BYTES
    x = np.zeros((1, 4410), np.float32)
    for call in (lambda: resample(x, 44101, 16000), lambda: resample(x, 16000, 44101),
                 lambda: StreamingResampler(44101, 16000, 1)):
        with pytest.raises(AudioError, match="cannot be resampled"):
            call()


@pytest.mark.parametrize("sr", [5512, 47952])
def test_odd_rates_whose_filter_is_small_enough_are_denoised_offline_and_streamed_alike(sr):
    """5512 Hz and 47952 Hz (the NTSC pull-down of 48 kHz) need 5.6 and 12 MB filters; until
    2026-12-07 the reduced rates' product (over 1,000,000) refused them."""
    torch.manual_seed(0)
    causal = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    x = (0.1 * np.random.default_rng(0).standard_normal((1, sr // 2))).astype(np.float32)
    y = denoise(causal, x, sr)
    assert y.shape == x.shape and np.isfinite(y).all()
    s = StreamingDenoiser(causal, sr, 1)
    step = sr // 100
    streamed = np.concatenate([s.push(x[:, i : i + step]) for i in range(0, x.shape[-1], step)] + [s.finish()], -1)
    np.testing.assert_allclose(streamed, y, atol=1e-5)


def test_a_rate_whose_way_back_needs_the_larger_filter_is_refused_before_the_model_runs():
    """24895 Hz down to 16 kHz needs 63.99 MB, back up 64.01 MB (offline's bound), and 24790 Hz
    15.99 and 16.004 MB (a stream's): checked one way only, the model ran and then the way back
    was refused, in a message of "16 MB (at most 16 MB)"."""
    assert resample_filter_bytes(24895, 16000) <= MAX_OFFLINE_RESAMPLE_FILTER_BYTES < resample_filter_bytes(16000, 24895)
    assert resample_filter_bytes(24790, 16000) <= MAX_RESAMPLE_FILTER_BYTES < resample_filter_bytes(16000, 24790)
    torch.manual_seed(0)
    causal = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    calls = []
    causal.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(AudioError, match="4979:3200, which needs a 64,010,024-byte resampling filter "
                                         "\\(at most 64,000,000 bytes here\\)"):
        denoise(causal, np.zeros((1, 24895), np.float32), 24895)
    assert not calls  # refused before the network ran
    with pytest.raises(AudioError, match="2479:1600, which needs a 16,004,424-byte resampling filter "
                                         "\\(a stream takes at most 16,000,000 bytes"):
        StreamingDenoiser(causal, 24790, 1)  # as it is made, before any audio


def test_44056_hz_is_denoised_offline_but_refused_as_a_real_time_stream(tmp_path):
    """The NTSC pull-down of 44.1 kHz needs a 44 MB filter: offline 50x real time, but a stream's
    10 ms calls took 82 ms each (benchmarks/results/odd-rates.json). Until 2026-12-07 one bound
    refused it everywhere; now a file or a clip is denoised (its length and rate kept, through the
    whole-clip path and the long-file stream in blocks alike) and a real-time stream is refused,
    saying what takes it."""
    sr = 44056
    assert MAX_RESAMPLE_FILTER_BYTES < resample_filter_bytes(16000, sr) <= MAX_OFFLINE_RESAMPLE_FILTER_BYTES
    torch.manual_seed(0)
    causal = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    x = (0.1 * np.random.default_rng(0).standard_normal((1, sr // 2 + 7))).astype(np.float32)  # [C, T]
    y = denoise(causal, x, sr)
    assert y.shape == x.shape and np.isfinite(y).all() and np.abs(y).max() > 0
    long = denoise(causal, x, sr, max_offline_seconds=0.1)  # over it: streamed in pieces (realtime=False)
    np.testing.assert_allclose(long, y, atol=1e-5)
    check_resample(sr, 16000)  # offline: taken
    with pytest.raises(AudioError) as info:
        StreamingDenoiser(causal, sr, 1)  # the server's streams, a microphone's
    assert str(info.value) == (
        "a sample rate of 44056 Hz cannot be streamed at the model's 16000 Hz: the two rates reduce to 5507:2000, "
        "which needs a 44.4 MB resampling filter (a stream takes at most 16 MB: its small calls would not keep up "
        "with real time); denoise it as a file instead (offline, e.g. audioae denoise, which takes it), or resample "
        "the audio to a standard rate such as 16000, 44100 or 48000 Hz first")
    with pytest.raises(AudioError, match="cannot be streamed at 16000 Hz"):
        check_resample(sr, 16000, realtime=True)
    with pytest.raises(AudioError, match="cannot be streamed"):
        StreamingResampler(16000, sr, 1)


def test_the_kept_kernel_resamples_as_torchaudio_does_and_leaves_autograd_alone():
    import torchaudio.functional as AF

    x = torch.randn(2, 4410)
    for orig, new in ((44100, 16000), (16000, 48000), (11025, 16000), (47952, 16000)):
        with torch.inference_mode():  # as the server first asks for a pair
            got = resample(x, orig, new)
        assert torch.equal(got, AF.resample(x, orig, new)), (orig, new)
    y = x.clone().requires_grad_()
    resample(y, 44100, 16000).square().sum().backward()  # was: "Inference tensors cannot be saved for backward"
    assert y.grad is not None and torch.isfinite(y.grad).all()
    assert resample(x.double(), 44100, 16000).dtype == torch.float32  # resample's contract: float32 out


def test_denoise_and_streaming_refuse_a_rate_the_model_cannot_resample_to():
    torch.manual_seed(0)
    causal = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    x = np.zeros((1, 44101), np.float32)
    with pytest.raises(AudioError, match="cannot be resampled to the model's 16000 Hz"):
        denoise(causal, x, 44101)
    with pytest.raises(AudioError, match="cannot be resampled to the model's 16000 Hz"):
        StreamingDenoiser(causal, 44101, 1)
    with pytest.raises(AudioError, match="cannot be resampled to the model's 8000 Hz"):
        denoise(_bidirectional(), x, 44101, max_offline_seconds=0.5)  # the windowed path too
    assert denoise(causal, x[:, :22050], 22050).shape == (1, 22050)  # a standard rate still works


def test_denoise_without_a_rate_is_told_of_its_argument_not_a_request_field():
    """denoise(m, wav, 0) said "<pcm>: the sample rate is unset (0); ... (in a request:
    Pcm.sample_rate)", the server's words for a field a library caller never saw."""
    torch.manual_seed(0)
    causal = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    x = np.zeros(1600, np.float32)
    with pytest.raises(AudioError) as caught:
        denoise(causal, x, 0)
    assert str(caught.value) == "wav: sr is 0; pass the audio's sample rate in Hz, 1000..384000"
    with pytest.raises(AudioError, match=re.escape("wav: sample rate 500 Hz is outside 1000..384000 Hz")):
        denoise(causal, x, 500)


def test_a_stream_refuses_bad_chunks_and_settings_and_stays_usable_after_a_refused_chunk():
    torch.manual_seed(0)
    causal = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    x = np.random.default_rng(0).standard_normal(3200).astype(np.float32) * 0.1
    s = StreamingDenoiser(causal, 16000)
    first = s.push(x[:1600])
    with pytest.raises(ValueError, match=re.escape("this stream has 1 channel(s), the chunk has 2")):
        s.push(np.zeros((2, 160), np.float32))
    with pytest.raises(AudioError, match="chunk after 1600 samples: the audio contains NaN"):
        s.push(np.full(160, np.nan, np.float32))
    rest = np.concatenate([s.push(x[1600:]), s.finish()], -1)  # [T]: 1-D chunks, 1-D answers
    np.testing.assert_allclose(np.concatenate([first, rest]), denoise(causal, x, 16000), atol=1e-5)
    for call in (lambda: s.push(x[:160]), s.finish):
        with pytest.raises(RuntimeError, match="this stream has finished"):
            call()
    with pytest.raises(AudioError, match=re.escape("stream: the sample rate is unset (0); set it to the audio's rate")):
        StreamingDenoiser(causal, 0)  # was "sample rate 0 Hz is outside 1000..384000 Hz"
    with pytest.raises(AudioError, match="a sample rate is a whole number of Hz, got 44100.5"):
        StreamingDenoiser(causal, 44100.5)  # math.gcd's TypeError before
    with pytest.raises(AudioError, match="a sample rate is a whole number of Hz, got 22050.5"):
        denoise(causal, x, 22050.5)
    assert denoise(causal, x, 16000.0).shape == x.shape
    with pytest.raises(ValueError, match=re.escape("the channel count is unset (0); set it to the audio's channels")):
        StreamingDenoiser(causal, 16000, 0)  # was "channels must be within 1..64, got 0"
    with pytest.raises(ValueError, match=re.escape("channels must be within 1..64, got -1")):
        StreamingDenoiser(causal, 16000, -1)


def test_inspect_shows_what_a_denoiser_does_to_a_recording(tmp_path, capsys):
    import json

    import matplotlib.image

    from audioae.audio import write_audio
    from audioae.checkpoint import save_checkpoint
    from audioae.cli import main
    from audioae.data.synthetic import noise, speech_like

    torch.manual_seed(0)
    cfg = {"hidden": 32, "code_dim": 12, "output": "deepfilter", "df_order": 3, "df_bins": 16}
    save_checkpoint(build_model("recurrent", cfg), tmp_path / "den.safetensors")
    rng = np.random.default_rng(0)
    x = speech_like(rng, 1.5, 22050) + 0.1 * noise(rng, 1.5, 22050, "pink")
    write_audio(tmp_path / "noisy.wav", np.stack([x, 0.5 * x]), 22050)  # stereo, not the model's rate
    png = tmp_path / "view.png"
    assert main(["inspect", str(tmp_path / "den.safetensors"), "--audio", str(tmp_path / "noisy.wav"), "-o", str(png)]) == 0
    info = json.loads(capsys.readouterr().out)
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 800 and image[..., :3].std() > 0.05  # four panels, not a blank canvas
    assert info["frames"] == 1 + int(1.5 * 16000) // 128  # the model's frames (n_fft 512, hop 128, centred)
    assert info["code_units"] == 12 and 0.0 <= info["code_active_share"] <= 1.0
    assert list(info["gain_db_per_band"]) == ["0-62 Hz", "62-125 Hz", "125-250 Hz", "250-500 Hz", "500-1000 Hz",
                                              "1000-2000 Hz", "2000-4000 Hz", "4000-8000 Hz",  # octaves at 16 kHz
                                              "8000-11025 Hz"]  # and the file's band above the model's
    assert info["gain_db_per_band"]["8000-11025 Hz"] <= 0.0  # kept at a gain, never raised
    assert np.isfinite(info["gain_db"])
    assert main(["inspect", str(tmp_path / "den.safetensors")]) == 2  # a denoiser needs --audio
    assert f"add --audio FILE to see what it does to a recording (its config and training record: audioae models " \
           f"{tmp_path / 'den.safetensors'})" in capsys.readouterr().err
    assert main(["inspect", "--audio", str(tmp_path / "noisy.wav"), "-o", str(png)]) == 0
    assert json.loads(capsys.readouterr().out)["model"].endswith("denoiser-small.safetensors")  # the default denoiser
    assert main(["inspect", "decomposer-small", "--audio", str(tmp_path / "noisy.wav")]) == 2
    assert "audioae decompose" in capsys.readouterr().err  # components, not a reconstruction, show a decomposer
    # --model, as every other command spells it, names the same model as the positional argument
    assert main(["inspect", "--model", str(tmp_path / "den.safetensors"), "--audio", str(tmp_path / "noisy.wav"),
                 "-o", str(png)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(tmp_path / "den.safetensors")
    assert main(["inspect", "decomposer-small", "--model", "denoiser-small", "--audio", str(tmp_path / "noisy.wav")]) == 2
    assert "two models named" in capsys.readouterr().err
    before = (tmp_path / "noisy.wav").read_bytes()  # -o naming the recording would replace it with a PNG
    assert main(["inspect", "--audio", str(tmp_path / "noisy.wav"), "-o", str(tmp_path / "noisy.wav")]) == 2
    assert "inspect draws a figure, not audio; name a .png file" in capsys.readouterr().err
    assert (tmp_path / "noisy.wav").read_bytes() == before
    (tmp_path / "figs").mkdir()  # a folder: the default name inside it
    assert main(["inspect", "--audio", str(tmp_path / "noisy.wav"), "-o", str(tmp_path / "figs")]) == 0
    assert json.loads(capsys.readouterr().out)["figure"] == str(tmp_path / "figs" / "noisy.denoiser-small.png")
    # a part of a long recording (10 minutes take about 1.6 GB; an hour would not fit a laptop)
    den = [str(tmp_path / "den.safetensors"), "--audio", str(tmp_path / "noisy.wav"), "-o", str(png)]
    assert main(["inspect", *den, "--start", "0.5", "--seconds", "0.5"]) == 0
    out = capsys.readouterr()
    part = json.loads(out.out)
    assert (part["start_s"], part["seconds"], part["audio_seconds"]) == (0.5, 0.5, 1.5)
    assert part["frames"] == 1 + 8000 // 128  # half a second at the model's 16 kHz
    assert "note: showing 0.50-1.00 s of 1.50 s" in out.err
    assert main(["inspect", *den, "--start", "2"]) == 2
    assert "--start 2 s: " in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's refusal (tests/test_inspect.py)
        main(["inspect", *den, "--seconds", "0"])
    assert "argument --seconds: must be more than 0 seconds, got 0" in capsys.readouterr().err
    assert main(["inspect", "decomposer-small", "--seconds", "5"]) == 2
    assert "they go with --audio FILE" in capsys.readouterr().err


def test_inspect_numbers_call_a_silent_band_undefined_not_removed():
    from audioae.plots import denoising_stats

    mag_in = np.zeros((257, 10), np.float32)  # [F, N]: silence below 4 kHz, a tone band above
    mag_in[200:] = 1.0
    mag_out = 0.5 * mag_in  # the model halves what is there: -6 dB
    stats = denoising_stats({"mag_in": mag_in, "mag_out": mag_out, "code": np.ones((4, 10)),
                             "hop_s": 0.008, "bin_hz": 16000 / 512})
    assert stats["gain_db_per_band"]["0-62 Hz"] is None  # no input energy: no gain to report
    assert stats["gain_db_per_band"]["4000-8000 Hz"] == -6.02
    assert stats["gain_db"] == -6.02
    silent = denoising_stats({"mag_in": 0 * mag_in, "mag_out": 0 * mag_in, "code": np.zeros((4, 10)),
                              "hop_s": 0.008, "bin_hz": 16000 / 512})
    assert silent["gain_db"] is None and set(silent["gain_db_per_band"].values()) == {None}


def test_integer_samples_and_time_first_arrays_are_refused():
    model = build_model("recurrent", {"hidden": 16, "code_dim": 8}).eval()
    x = (0.1 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32)  # [T]
    for bad, text in (((x * 32767).astype(np.int16), "got int16; for 16-bit PCM pass x.astype(np.float32) / 32768"),
                      ((x * 2**31).astype(np.int32), "got int32; for 32-bit PCM pass x.astype(np.float32) / 2147483648"),
                      ((x * 127 + 128).astype(np.uint8), "for 8-bit unsigned PCM pass (x.astype(np.float32) - 128) / 128"),
                      (torch.from_numpy((x * 32767).astype(np.int16)), "for 16-bit PCM pass x.float() / 32768"),
                      (np.stack([x, x], 1), "looks like [T, C]"),  # soundfile's layout: 4000 2-sample channels
                      (torch.from_numpy(x[None, None]), "[T] or [C, T] expected")):
        with pytest.raises(AudioError, match=re.escape(text)):
            denoise(model, bad, 16000)
        with pytest.raises(AudioError, match=re.escape(text)):
            StreamingDenoiser(model, 16000, 1).push(bad)
    assert denoise(model, x.astype(np.float64), 16000).shape == x.shape  # any float, any layout it can read
    assert denoise(model, torch.from_numpy(np.stack([x, x])), 16000).shape == (2, len(x))


def test_writing_what_a_container_cannot_hold_names_the_file_and_the_limit(tmp_path):
    """libsndfile says "Error opening <_io.BufferedWriter name=8>: Format not recognised." for a
    9-channel FLAC, naming the temporary file object rather than the output."""
    x = np.zeros((9, 800), np.float32)
    with pytest.raises(AudioError, match=re.escape(f"{tmp_path / 'a.flac'}: FLAC cannot hold 9 channels (at most 8)")):
        write_audio(tmp_path / "a.flac", x, 16000)
    with pytest.raises(AudioError, match=re.escape(f"{tmp_path / 'b.ogg'}: cannot write OGG audio at 44100 Hz (Opus only "
                                                   "supports sample rates of 8000")):
        write_audio(tmp_path / "b.ogg", x[:1], 44100, subtype="OPUS")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    write_audio(tmp_path / "c.flac", x[:8], 16000)  # 8 is fine


def test_device_names_are_checked_before_torch_sees_them():
    from audioae.enhance import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("gpu", "tpu", "mps", "cuda:x", "CPU"):  # was torch's list of 20 device types, or "not linked"
        with pytest.raises(ValueError, match=re.escape(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")):
            pick_device(name)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # one past the last device (any CUDA device, when there is none); the message was "--device cuda
    # asked for" also when the name came from --set train.device
    with pytest.raises(RuntimeError, match=re.escape(f"device 'cuda:{count}' was asked for, but torch sees")):
        pick_device(f"cuda:{count}")


def test_level_tracker_gives_the_same_gains_in_any_chunks_and_leaves_loud_frames_alone():
    from audioae.enhance import LevelLift, LevelTracker

    shipped = LevelLift()

    torch.manual_seed(0)
    model = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    rng = np.random.default_rng(0)
    sr = 16000
    # silence, then a quiet passage (-70 dBFS), a loud one (-20 dBFS), and 25 s of the quiet one again
    parts = [np.zeros(sr // 2), 10 ** (-70 / 20) * rng.standard_normal(2 * sr),
             10 ** (-20 / 20) * rng.standard_normal(sr), 10 ** (-70 / 20) * rng.standard_normal(25 * sr)]
    spec = model.stft(torch.from_numpy(np.concatenate(parts)).float()[None])  # [1, F, N]
    whole = LevelTracker(model).gains(spec)[0, 0]  # [N]
    chunked, tracker, i = [], LevelTracker(model), 0
    while i < spec.shape[-1]:
        n = int(rng.integers(0, 40))
        chunked.append(tracker.gains(spec[..., i : i + n])[0, 0])
        i += n
    torch.testing.assert_close(torch.cat(chunked), whole, rtol=1e-6, atol=0)
    hop_s = model.config.hop_length / sr
    frame = lambda seconds: int(seconds / hop_s)  # noqa: E731
    assert whole[: frame(0.4)].eq(10 ** (shipped.max_gain_db / 20)).all()  # silence: the most, harmless on zeros
    quiet = whole[frame(1.0) : frame(2.4)]  # -70 dBFS: lifted by about 25 dB
    assert quiet.min() > 10 ** ((shipped.target_db + 70 - 4) / 20) and quiet.max() < 10 ** ((shipped.target_db + 70 + 4) / 20)
    assert whole[frame(2.6) : frame(3.4)].eq(1.0).all()  # loud: exactly 1, the model's own features
    # After a loud moment the level falls by 1.45 dB a second (3 s in power): from -20 dBFS, the
    # quiet passage is lifted only from about 18 s on (-45 dB), and then more and more.
    after = whole[frame(3.5) :]
    assert after[: frame(15)].eq(1.0).all() and after[-1] > 1.5 and bool((after[1:] >= after[:-1]).all())


def test_at_trained_levels_denoise_feeds_the_model_its_own_features():
    torch.manual_seed(0)
    model = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    x = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)  # -20 dBFS from the start
    with torch.inference_mode():  # features -> network -> iSTFT with no lift at all
        spec, feats = model.analyze(torch.from_numpy(x)[None])  # [1, F, N], [1, F', N]
        plain = model.stft.inverse(model.estimate_spec(spec, model(feats)[0]), len(x))[0].numpy()
    np.testing.assert_allclose(denoise(model, x, 16000), plain, atol=1e-6)


def test_a_level_lift_of_0_db_is_no_lift_and_the_default_is_the_shipped_lift():
    """The lift is an argument (:class:`LevelLift`), not module state a caller patches. On the
    shipped model and a speech-like signal at -60 dBFS: ``max_gain_db=0`` feeds the network its
    own features (as a hand-built run with no tracker), offline and streamed; the default is the
    shipped lift (-45 dB, at most 40), what ``denoise`` gives without the argument, and differs."""
    from audioae import pretrained
    from audioae.data import synthetic
    from audioae.enhance import SHIPPED_LEVEL_LIFT, LevelLift, denoise_batch

    model = pretrained.load(pretrained.DEFAULT_DENOISER)
    sr = 16000
    rng = np.random.default_rng(7)
    speech = synthetic.speech_like(rng, 2.0, sr) + 0.3 * synthetic.colored_noise(rng, 2.0, sr, 1.0)
    x = (speech * 10 ** (-60 / 20) / np.sqrt(np.mean(speech**2))).astype(np.float32)  # [T] at -60 dBFS
    assert LevelLift() == SHIPPED_LEVEL_LIFT == LevelLift(target_db=-45.0, max_gain_db=40.0)
    off = LevelLift(max_gain_db=0.0)
    with torch.inference_mode():  # features -> network -> iSTFT, no tracker at all
        spec, feats = model.analyze(torch.from_numpy(x)[None])  # [1, F, N], [1, F', N]
        plain = model.stft.inverse(model.estimate_spec(spec, model(feats)[0]), len(x))[0].numpy()  # [T]
    unlifted = denoise(model, x, sr, level_lift=off)
    np.testing.assert_array_equal(unlifted, denoise_batch(model, [(x, sr, 1.0)], level_lift=off)[0])
    np.testing.assert_allclose(unlifted, plain, atol=1e-6)
    streamed = denoise(model, x, sr, level_lift=off, max_offline_seconds=0.5)  # through StreamingDenoiser
    np.testing.assert_allclose(streamed, plain, atol=1e-5)
    lifted = denoise(model, x, sr)
    np.testing.assert_array_equal(denoise(model, x, sr, level_lift=LevelLift()), lifted)
    np.testing.assert_array_equal(denoise(model, x, sr, level_lift=LevelLift(), max_offline_seconds=0.5),
                                  denoise(model, x, sr, max_offline_seconds=0.5))
    assert np.abs(lifted - unlifted).max() > 1e-2 * np.abs(x).max()  # at -60 dBFS the lift matters


def test_every_denoising_path_runs_the_network_without_autograd():
    torch.manual_seed(0)
    model = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    seen = []
    for module in model.modules():  # the GRUs too: streaming calls them, not model.forward
        module.register_forward_pre_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    x = (0.1 * np.random.default_rng(2).standard_normal(8000)).astype(np.float32)
    denoise(model, x, 16000)  # offline
    denoise(model, x, 16000, max_offline_seconds=0.1)  # long input: through the streamer
    s = StreamingDenoiser(model, 16000)
    s.push(x)
    s.finish()
    assert seen and all(seen), seen
    assert torch.is_inference_mode_enabled() is False  # and nothing is left switched on


def _causal():
    return build_model("recurrent", {"sample_rate": 8000, "n_fft": 128, "hop_length": 32, "hidden": 16,
                                     "code_dim": 8}).eval()


def test_denoise_batch_checks_each_clip_as_denoise_does():
    """Unchecked, int16 came back as noise 10,000 times too loud, [T, C] as T channels of C samples,
    strength -1 extrapolated and NaN came back as NaN; each is refused as denoise() refuses it."""
    from audioae.enhance import denoise_batch

    model, sr = _causal(), 8000
    x = (0.1 * np.random.default_rng(0).standard_normal(sr)).astype(np.float32)  # [T]
    for clip, strength, text in (((x * 32767).astype(np.int16)[None], 1.0, "float samples in [-1, 1] expected"),
                                 (np.stack([x, x], 1), 1.0, "looks like [T, C]"),
                                 (x[None], -1.0, "strength must be within"),
                                 (x[None], float("nan"), "strength must be within"),
                                 (np.full((1, sr), np.nan, np.float32), 1.0, "NaN"),
                                 (np.zeros((65, sr // 8), np.float32), 1.0, "channels must be within 1..64")):
        with pytest.raises((AudioError, ValueError), match=re.escape(text)):
            denoise_batch(model, [(x[None], sr, 1.0), (clip, sr, strength)])
    with pytest.raises(ValueError, match="at least one clip"):
        denoise_batch(model, [])
    (y,) = denoise_batch(model, [(x, sr, 1.0)])  # [T] in, [T] out, as denoise()
    np.testing.assert_allclose(y, denoise(model, x, sr), atol=1e-6)


def test_the_channel_limit_holds_on_short_input_too():
    # was: 65 channels of 1 s went through the offline path; 2 s (over 120 channel-seconds) was refused
    with pytest.raises(AudioError, match=re.escape("channels must be within 1..64, got 65")):
        denoise(_causal(), np.zeros((65, 8000), np.float32), 8000)


@pytest.mark.parametrize("orig, new", [(44100, 16000), (16000, 44100), (11025, 16000), (16000, 22050),
                                       (48000, 16000), (16000, 8000), (1000, 16000), (16000, 7350)])
def test_streaming_resampler_equals_torchaudio_in_any_chunk_and_answers_without_waiting_a_block_more(orig, new):
    import torchaudio.functional as AF

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 4999)).astype(np.float32))  # [C, T]
    ref = AF.resample(x, orig, new)
    for chunk in (1, 7, 441, 1000):
        r = StreamingResampler(orig, new, 2)
        y = torch.cat([r.push(x[:, i : i + chunk]) for i in range(0, x.shape[-1], chunk)] + [r.finish()], -1)
        assert y.shape == ref.shape and torch.allclose(y, ref, atol=1e-6), (chunk, (y - ref).abs().max())
    # It holds back no more than the kernel's reach (and one output sample's step); until
    # 2026-12-06 it answered whole blocks with one to spare (44.1 kHz streams waited 60-80 ms,
    # 11.025 kHz 200-240 ms, where 441-sample blocks are 10 and 40 ms).
    r = StreamingResampler(orig, new, 1)
    reach = math.ceil(6 * r.bi / (min(r.bi, r.bo) * 0.99))  # torchaudio's kernel half-width, in input samples
    for pushed in (reach + 1, 3 * r.bi + 5, 5000):
        r = StreamingResampler(orig, new, 1)
        answered = r.push(torch.zeros(1, pushed)).shape[-1]
        held = pushed - answered * r.bi / r.bo  # input samples whose output is still to come
        assert held <= reach + r.bi / r.bo, (pushed, held, reach)


def test_a_model_that_outputs_nan_is_refused_not_written_as_full_scale_dc(tmp_path):
    # was: export_model --set mask_power=nan (now refused by the config) gave NaN audio, which the
    # folder tool wrote as -1.0 everywhere and reported "1 denoised, 0 failed"
    from audioae.batch import FileDenoiser, FileTask
    from audioae.enhance import ModelOutputError

    torch.manual_seed(0)
    model = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    with pytest.raises(ValueError, match="mask_power must be a finite number, got nan"):
        build_model("recurrent", {"mask_power": float("nan")})
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))  # broken weights, as a bad export would leave
    x = np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32) * 0.1
    for call in (lambda: denoise(model, x, 16000), lambda: StreamingDenoiser(model, 16000, 1).push(x)):
        with pytest.raises(ModelOutputError, match="NaN or Inf samples for finite input"):
            call()
    write_audio(tmp_path / "in.wav", x, 16000)
    r = FileDenoiser(model).run(FileTask(str(tmp_path / "in.wav"), str(tmp_path / "out.wav"), "out.wav"))
    assert r.status == "error" and "NaN or Inf samples" in r.error and not (tmp_path / "out.wav").exists()


# ---- the band above the model's -------------------------------------------------------------------

def _causal_8k():
    torch.manual_seed(0)
    return build_model("recurrent", {"sample_rate": 8000, "n_fft": 128, "hop_length": 32, "hidden": 16,
                                     "code_dim": 8}).eval()


def _above(x: np.ndarray, sr: int, hz: float) -> float:
    """Energy of ``x [..., T]`` above ``hz``."""
    spec = np.abs(np.fft.rfft(x, axis=-1)) ** 2
    return float(spec[..., np.fft.rfftfreq(x.shape[-1], 1 / sr) > hz].sum())


def _fixed_mask(model, logit: float):
    """``model`` with its mask fixed at ``sigmoid(logit)`` for every bin and frame (its output layer's
    weights zeroed, its bias set): +40 keeps everything, -40 removes everything."""
    with torch.no_grad():
        model.to_out.weight.zero_()
        model.to_out.bias.fill_(logit)
    return model


def test_top_band_gain_follows_what_the_model_kept_of_the_top_quarter_of_its_band():
    from audioae.enhance import HIGH_BAND_GAIN_SCALE, top_band_gains

    spec = torch.randn(2, 65, 7, dtype=torch.complex64)  # [B, F, N]
    np.testing.assert_allclose(top_band_gains(spec, spec).numpy(), 1.0, rtol=1e-6)
    assert (top_band_gains(spec, 0 * spec) == 0).all()
    est = spec.clone()
    est[:, 48:] *= 0.5  # the top quarter (bins 48-64) at half amplitude; the rest does not count
    est[:, :48] = 0
    np.testing.assert_allclose(top_band_gains(spec, est).numpy(), 0.5 * HIGH_BAND_GAIN_SCALE, rtol=1e-5)
    silent = spec.clone()
    silent[:, 48:] = 0
    assert (top_band_gains(silent, silent) == 0).all()  # nothing there: no gain to give it, not NaN
    louder = spec * 2
    assert (top_band_gains(spec, louder) == 1).all()  # a gain, never a boost


def test_other_high_band_rules_are_parameters_of_the_call():
    """benchmarks/high_band.py compares rules by passing them (was: patching module globals)."""
    from audioae.enhance import HighBand, top_band_gains

    spec = torch.randn(2, 65, 7, dtype=torch.complex64)  # [B, F, N]
    est = spec.clone()
    est[:, 48:] *= 0.5
    np.testing.assert_allclose(HighBand(scale=0.8, power=2.0).gains(spec, est).numpy(), 0.8 * 0.25, rtol=1e-5)
    assert (HighBand(scale=0.5).gains(spec, spec * 2) == 0.5).all()  # the ratio within [0, 1], then scaled
    assert torch.equal(HighBand().gains(spec, est), top_band_gains(spec, est))
    assert not HighBand(keep=False).applies(48000, _causal_8k()) and HighBand().applies(48000, _causal_8k())


def test_gain_frames_turn_into_the_gains_as_a_smooth_signal_on_every_sample():
    from audioae.enhance import gain_frames
    from audioae.spectral import STFT

    stft = STFT(128, 32)
    n = 1 + 1000 // 32
    np.testing.assert_allclose(stft.inverse(gain_frames(torch.full((1, 1, n), 0.3), stft.spec.window), 1000).numpy(),
                               0.3, atol=1e-6)  # a constant gain is that constant, edges included
    steps = torch.where(torch.arange(n) < n // 2, 1.0, 0.0)[None, None]  # [1, 1, N]: 1, then 0
    g = stft.inverse(gain_frames(steps, stft.spec.window), 1000)[0].numpy()
    assert g.min() >= -1e-6 and g.max() <= 1 + 1e-6
    assert np.all(np.diff(g) <= 1e-6)  # a fade from one to zero, no overshoot


@pytest.mark.parametrize("sr", [11025, 44100, 48000])
def test_a_model_that_keeps_everything_gives_a_higher_rate_input_back_whole(sr):
    """Before 2026-12-07 everything above the model's Nyquist frequency (4 kHz here, 8 kHz for the
    shipped model) was lost on the way down and up: a clean 44.1 kHz recording came back band-limited."""
    from audioae import enhance

    model = _fixed_mask(_causal_8k(), 40.0)
    t = np.arange(sr // 2) / sr
    x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 5000 * t),
                  0.2 * np.random.default_rng(0).standard_normal(len(t))]).astype(np.float32)  # [C, T]
    y = denoise(model, x, sr)
    np.testing.assert_allclose(y, x, atol=2e-5)
    streamed = StreamingDenoiser(model, sr, 2)
    parts = [streamed.push(x[:, i : i + 997]) for i in range(0, x.shape[-1], 997)]
    np.testing.assert_allclose(np.concatenate([*parts, streamed.finish()], -1), y, atol=1e-5)
    narrow = denoise(model, x, sr, high_band=enhance.HighBand(keep=False))  # the earlier behaviour: above 4 kHz gone
    assert _above(narrow, sr, 4400) < 0.01 * _above(x, sr, 4400)  # the resampler's skirt is all that is left
    np.testing.assert_allclose(_above(y, sr, 4400), _above(x, sr, 4400), rtol=1e-3)


@pytest.mark.parametrize("sr", [11025, 48000])
def test_a_model_that_removes_everything_leaves_no_high_band_either(sr):
    """The band above the model's follows the model's top-band gain: all-stop there, all-stop above
    (frame by frame in between: test_gain_frames_turn_into_the_gains_as_a_smooth_signal_on_every_sample)."""
    model = _fixed_mask(_causal_8k(), -40.0)
    x = 0.1 * np.random.default_rng(1).standard_normal((2, sr // 2)).astype(np.float32)  # [C, T]: full band
    y = denoise(model, x, sr)
    assert np.abs(y).max() < 1e-6
    streamed = StreamingDenoiser(model, sr, 2)
    parts = [streamed.push(x[:, i : i + 441]) for i in range(0, x.shape[-1], 441)]
    np.testing.assert_allclose(np.concatenate([*parts, streamed.finish()], -1), y, atol=1e-6)


def test_inputs_at_or_below_the_models_rate_have_no_band_above_it_and_take_the_plain_path(monkeypatch):
    from audioae import enhance
    from audioae.enhance import has_high_band

    model = _causal_8k()
    assert not has_high_band(8000, model) and not has_high_band(4000, model) and has_high_band(8001, model)
    x = 0.1 * np.random.default_rng(2).standard_normal((1, 4000)).astype(np.float32)  # [C, T]
    plain = {sr: denoise(model, x, sr) for sr in (4000, 8000)}

    def no_high_band(*_):
        raise AssertionError("the high-band path ran for an input at or below the model's rate")

    # the high-band path, made to fail: these rates never reach it (was a comparison of the path with itself)
    monkeypatch.setattr(enhance, "top_band_gains", no_high_band)
    monkeypatch.setattr(enhance, "with_high_band", no_high_band)
    for sr, y in plain.items():
        np.testing.assert_array_equal(y, denoise(model, x, sr))  # the same path, to the bit
        s = StreamingDenoiser(model, sr, 1)
        s.push(x)
        s.finish()


@pytest.mark.parametrize(("model_sr", "sr"), [(16000, 44100), (16000, 48000), (8000, 11025), (16000, 22050)])
def test_the_gain_is_interpolated_at_the_file_rate_alike_whole_and_in_pieces(model_sr, sr):
    from audioae.enhance import gain_at_rate

    gain = torch.rand(2, 999, generator=torch.Generator().manual_seed(0))  # [C, L] at the model's rate
    n = 999 * sr // model_sr + 7  # a few samples past the gain's end: held at its last value
    whole = gain_at_rate(gain, 0, 0, n, model_sr, sr)
    pos = np.arange(n) * model_sr / sr
    expected = np.stack([np.interp(pos, np.arange(999), row) for row in gain.numpy()])
    np.testing.assert_allclose(whole.numpy(), expected, atol=1e-6)
    # In pieces, given only the gain from the start of each piece's first block on (as a stream keeps it).
    g = math.gcd(model_sr, sr)
    parts, first = [], 0
    for size in [1, 0, 5, sr // g - 1, 3 * sr // g + 2, 10**6]:
        size = min(size, n - first)
        start = first // (sr // g) * (model_sr // g)
        parts.append(gain_at_rate(gain[:, start:], start, first, size, model_sr, sr))
        first += size
    np.testing.assert_array_equal(torch.cat(parts, -1).numpy(), whole.numpy())


def test_the_gain_interpolation_refuses_to_read_before_what_it_holds():
    from audioae.enhance import gain_at_rate

    gain = torch.arange(3000.0)[None, 1000:]  # [1, 2000]: model samples 1000..2999
    # Blocks of 441 file samples span 160 model samples: file sample 3087 (block 7) sits at 1120.
    np.testing.assert_allclose(gain_at_rate(gain, 1000, 3087, 2, 16000, 44100).numpy(),
                               [[1120.0, 1120 + 160 / 441]], rtol=1e-6)
    with pytest.raises(ValueError, match="need the gain from model sample 800, and it holds 1000..2999"):
        gain_at_rate(gain, 1000, 2205, 3, 16000, 44100)  # block 5 starts at model sample 800: not held


@pytest.mark.parametrize("sr", [16000, 44100])
def test_the_traced_path_is_denoise_and_holds_what_it_computed(sr):
    """inspect --audio draws a DenoiseTrace: the quantities of denoise's own run, not a second path."""
    from audioae.audio import resample
    from audioae.enhance import denoise_traced, model_input

    torch.manual_seed(0)
    model = build_model("recurrent", {"sample_rate": 16000, "hidden": 16, "code_dim": 8}).eval()
    x = (1e-3 * np.random.default_rng(3).standard_normal((2, sr // 2))).astype(np.float32)  # -60 dBFS: lifted
    y, trace = denoise_traced(model, x, sr)
    np.testing.assert_array_equal(y, denoise(model, x, sr))
    with torch.inference_mode():
        spec, feats = model_input(model, resample(torch.from_numpy(x), sr, 16000))
        assert torch.equal(trace.spec, spec) and torch.equal(trace.features, feats)
        out, code = model(feats)  # a second run: equal to float rounding (the GRU's kernels)
        torch.testing.assert_close(trace.out, out, atol=1e-5, rtol=0)
        torch.testing.assert_close(trace.code, code, atol=1e-5, rtol=0)
        assert torch.equal(trace.est, model.estimate_spec(spec, trace.out))


def test_denoise_traced_is_denoise_with_a_trace_and_the_code_covers_the_clip_s_own_frames():
    """denoise_traced runs denoise's own entry (its checks, its offline path); the trace's code has
    the clip's own code frames, ceil(N / code_stride), as the model run on the clip alone gives."""
    from audioae.enhance import denoise_traced

    torch.manual_seed(0)
    model = build_model("conv1d", {"channels": [8, 8], "causal": True}).eval()
    sr = model.config.sample_rate
    x = (0.1 * np.random.default_rng(5).standard_normal(sr // 2 + 37)).astype(np.float32)
    y, trace = denoise_traced(model, x, sr)
    np.testing.assert_array_equal(y, denoise(model, x, sr))
    n = trace.spec.shape[-1]
    assert model.code_stride > 1 and n % model.code_stride
    assert trace.code.shape[-1] == -(-n // model.code_stride)
    with torch.inference_mode():
        assert torch.equal(trace.code, model(trace.features)[1])
    with pytest.raises(ValueError):  # denoise's checks: a strength out of range
        denoise_traced(model, x, sr, strength=2.0)


@pytest.mark.parametrize("kwargs", [{"max_gain_db": -6.0}, {"target_db": float("nan")}, {"max_gain_db": float("inf")}])
def test_a_level_lift_that_would_turn_frames_down_or_make_nan_is_refused(kwargs):
    """np.clip(gain, 0, -6) is -6: a negative max_gain_db turned every frame down, loud ones too."""
    from audioae.enhance import LevelLift

    with pytest.raises(ValueError, match="LevelLift needs a finite target_db and a finite max_gain_db >= 0"):
        LevelLift(**kwargs)


def _stream(model, sr: int, channels: int, chunks: list) -> list:
    s = StreamingDenoiser(model, sr, channels)
    return [s.push(c) for c in chunks] + [s.finish()]


def test_a_stream_answers_as_denoise_does_and_its_tensors_take_in_place_ops():
    """Until 2026-12-08 push() and finish() gave torch inference tensors for any input, ``[1, n]``
    for a 1-D chunk (denoise: ``[T]``), and ``y.clamp_()`` raised "Inplace update to inference tensor
    outside InferenceMode"."""
    model, sr = _causal(), 8000
    x = (0.1 * np.random.default_rng(0).standard_normal((2, 4000))).astype(np.float32)  # [C, T]
    for wav in (x[0], x):  # [T], [C, T]
        want = denoise(model, wav, sr)
        cuts = [0, 1, 160, 161, 161, 2000, wav.shape[-1]]  # an empty chunk among them
        chunks = [wav[..., a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        parts = _stream(model, sr, len(x) if wav.ndim == 2 else 1, chunks)
        for p in parts:  # numpy in, numpy out, in denoise()'s layout
            assert isinstance(p, np.ndarray) and p.dtype == np.float32 and p.ndim == wav.ndim, p.shape
        np.testing.assert_allclose(np.concatenate(parts, -1), want, atol=1e-5)
        parts[-1].clip(-0.5, 0.5, out=parts[-1])  # writable
        tparts = _stream(model, sr, len(x) if wav.ndim == 2 else 1, [torch.from_numpy(c) for c in chunks])
        for p in tparts:  # a tensor in, an ordinary CPU tensor out
            assert isinstance(p, torch.Tensor) and not p.is_inference() and p.dim() == wav.ndim, p.shape
            p.clamp_(-0.5, 0.5).mul_(2.0)  # was: "Inplace update to inference tensor outside InferenceMode"
        np.testing.assert_allclose(torch.cat(tparts, -1).numpy(), 2 * np.clip(want, -0.5, 0.5), atol=2e-5)
    listed = StreamingDenoiser(model, sr).push([0.0, 0.1, -0.1] * 100)  # a list: as an array
    assert isinstance(listed, np.ndarray) and listed.ndim == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model_device", ["cpu", "cuda"])
def test_a_cuda_chunk_streams_as_the_same_chunk_on_the_cpu(model_device):
    """Was: push() kept a CUDA chunk on its device, counted it, then torch.cat with the input
    kept on the CPU raised; finish() padded the output by the chunk's length."""
    sr = 8000
    x = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal((2, 3000))).astype(np.float32))  # [C, T]
    model = _causal()
    want = torch.cat(_stream(model, sr, 2, [x[:, :1000], x[:, 1000:]]), -1)  # [C, T]
    s = StreamingDenoiser(model.to(model_device), sr, 2)
    parts = [s.push(x[:, :1000].cuda()), s.push(x[:, 1000:].cuda()), s.finish()]
    for p in parts:  # an ordinary CPU tensor, as for a CPU chunk
        assert p.device.type == "cpu" and not p.is_inference()
    assert s.n_in == x.shape[-1]
    # the same model's output (on the GPU: its own float arithmetic, TF32 in cuDNN)
    torch.testing.assert_close(torch.cat(parts, -1), want, atol=1e-5 if model_device == "cpu" else 1e-3, rtol=0)


def test_a_chunk_that_raises_inside_push_is_not_counted(monkeypatch):
    """Was: push() counted a chunk (n_in, the input kept for blending) before running it, so one
    that raised on the way (a CUDA chunk against the CPU's input, out of memory) was counted and
    finish() padded the output by its length."""
    model, sr = _causal(), 8000
    x = (0.1 * np.random.default_rng(0).standard_normal(3000)).astype(np.float32)  # [T]
    want = np.concatenate(_stream(model, sr, 1, [x[:1000], x[1000:]]))
    s = StreamingDenoiser(model, sr)
    first = s.push(x[:1000])

    def refuse(*_):
        raise RuntimeError("CUDA out of memory")

    with monkeypatch.context() as m:  # before anything in the stream has moved
        m.setattr(s.down, "push", refuse)
        with pytest.raises(RuntimeError, match="out of memory"):
            s.push(x[1000:2000])
    assert (s.n_in, s.dry.shape[-1]) == (1000, 1000 - s.n_out)
    y = np.concatenate([first, s.push(x[1000:]), s.finish()])
    assert y.shape == x.shape  # was 4000 samples: the refused chunk's 1000 padded at the end
    np.testing.assert_allclose(y, want, atol=1e-6)
    # raised in the network itself: the count stays too
    s = StreamingDenoiser(model, sr)
    s.push(x[:1000])
    monkeypatch.setattr(s.model, "stream_step", refuse)
    with pytest.raises(RuntimeError, match="out of memory"):
        s.push(x[1000:2000])
    assert s.n_in == 1000


def test_estimate_clips_refuses_a_non_causal_model_clips_of_different_lengths():
    """The one place the network runs holds denoise_batch's rule: end padding would change a
    non-causal model's output. Clips of one length (validation's mixtures) need none."""
    from audioae.enhance import denoise_batch, estimate_clips, model_input

    model, sr = _bidirectional(), 8000
    rng = np.random.default_rng(0)
    clips = [torch.from_numpy((0.1 * rng.standard_normal((1, n))).astype(np.float32)) for n in (800, 1600, 1600)]
    (s1, f1), (s2, f2), (s3, f3) = (model_input(model, c) for c in clips)
    text = re.escape("only a causal model can batch clips of different lengths (end padding)")
    with torch.inference_mode():
        with pytest.raises(ValueError, match=text):
            estimate_clips(model, [s1, s2], [f1, f2])
        alone = estimate_clips(model, [s2], [f2])[0].est
        both = estimate_clips(model, [s2, s3], [f2, f3])
    torch.testing.assert_close(both[0].est, alone)
    with pytest.raises(ValueError, match=text):  # the same words from denoise_batch, before any work
        denoise_batch(model, [(c[0].numpy(), sr, 1.0) for c in clips[:2]])


@pytest.mark.parametrize("shape", [(32, 2), (64, 2), (1, 2), (40, 1), (2, 1), (160, 1)])
def test_a_time_first_chunk_of_few_frames_gets_the_layout_hint(shape):
    """Was: "this stream has 2 channel(s), the chunk has 32" for sounddevice's low-latency blocks
    (<= 64 frames), and a mono stream's (40, 1) "has 1 channel(s), the chunk has 40"; (480, 2) and
    (160, 1) had the hint from check_audio_array already (over 64 frames). The advice holds for
    (2, 1) too: [T=2, C=1], whose transpose is 2 samples of the mono stream."""
    channels = shape[1]
    s = StreamingDenoiser(_causal(), 8000, channels)
    hint = re.escape(f"got shape {shape}, which looks like [T, C] (soundfile.read's layout)") + ".*x\\.T"
    with pytest.raises(AudioError, match=hint):
        s.push(np.zeros(shape, np.float32))
    assert s.push(np.zeros(shape, np.float32).T).shape[0] == channels  # the stream is still usable
    with pytest.raises(ValueError, match=re.escape("this stream has 2 channel(s), the chunk has 3")):
        StreamingDenoiser(_causal(), 8000, 2).push(np.zeros((3, 40), np.float32))  # neither way round
    with pytest.raises(ValueError, match=re.escape("this stream has 2 channel(s), the chunk has 1")):
        StreamingDenoiser(_causal(), 8000, 2).push(np.zeros(2, np.float32))  # [T]: mono, not [T, C]


@pytest.mark.parametrize("channels", [2.0, True, "2", None, 1.5])
def test_a_channel_count_that_is_not_a_whole_number_is_refused_as_the_sample_rate_is(channels):
    # was: torch's TypeError from torch.zeros(2.0, 0); True passed as 1 channel
    with pytest.raises(AudioError, match=re.escape(f"a channel count is a whole number, got {channels!r} "
                                                   f"(a {type(channels).__name__})")):
        StreamingDenoiser(_causal(), 16000, channels)


def test_numpy_integer_channel_counts_are_taken():
    s = StreamingDenoiser(_causal(), 16000, np.int64(2))
    assert s.push(np.zeros((2, 160), np.float32)).shape[0] == 2 and type(s.channels) is int


def test_read_only_big_endian_and_reversed_arrays_are_taken_silently(recwarn):
    """np.frombuffer of bytes is read-only (torch warned "The given NumPy array is not writable"),
    a big-endian array was refused by torch, and so was a reversed view (negative strides)."""
    model, sr = _causal(), 8000
    x = (0.1 * np.random.default_rng(1).standard_normal(1600)).astype(np.float32)  # [T]
    want = denoise(model, x, sr)
    read_only = np.frombuffer(x.tobytes(), np.float32)
    assert not read_only.flags.writeable
    for wav in (read_only, x.astype(">f4"), x.astype(">f8"), x[::-1].copy()[::-1]):
        np.testing.assert_allclose(denoise(model, wav, sr), want, atol=1e-6)
        np.testing.assert_allclose(np.concatenate(_stream(model, sr, 1, [wav[:800], wav[800:]])), want, atol=1e-5)
    assert not [w for w in recwarn.list if "writable" in str(w.message)], [str(w.message) for w in recwarn.list]
    assert not read_only.flags.writeable and x.flags.writeable  # nothing changed in place
