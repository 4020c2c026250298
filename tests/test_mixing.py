"""The on-the-fly mixer: length-weighted draws, family weights (noise and speech), and batches from
threads or worker processes equal to those mixed inline."""

import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from audioae.data import synthetic
from audioae.data.mixing import MixConfig, Mixer, Source, folder_source, mixed_batches
from audioae.models import build_model
from audioae.train import _sources as train_sources
from audioae.train import _validation_sources, corrupt_batch, load_run_config


def _sources() -> tuple[Source, Source]:
    rng = np.random.default_rng(0)
    speech = Source([rng.standard_normal(int(rng.uniform(0.2, 3.0) * 8000)).astype(np.float32) for _ in range(40)])
    noise = Source([rng.standard_normal(8000 * 4).astype(np.float32) for _ in range(5)])
    return speech, noise


def _mixers(n: int) -> list[Mixer]:
    speech, noise = _sources()
    cfg = MixConfig(segment_seconds=0.5)
    return [Mixer(speech, noise, 8000, cfg, seed=11 + 7 * k) for k in range(n)]


def test_clips_are_drawn_in_proportion_to_their_length():
    clips = [np.full(100, 0.0, np.float32), np.full(300, 1.0, np.float32)]
    src = Source(clips)
    rng = np.random.default_rng(0)
    draws = np.array([src._draw(rng)[0] for _ in range(4000)])
    assert abs(draws.mean() - 0.75) < 0.03  # the 300-sample clip: 3/4 of the draws


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_threaded_and_process_batches_equal_the_inline_sequence():
    # Round-robin over per-thread queues: the order depends on the seeds, not on thread timing.
    with mixed_batches(_mixers(3), 4, "inline") as plain:
        want = [next(plain) for _ in range(9)]
    for mode in ("threads", "processes"):
        with mixed_batches(_mixers(3), 4, mode) as batches:
            got = [next(batches) for _ in range(9)]
        for w, g in zip(want, got, strict=True):
            for a, b in zip(w, g, strict=True):
                assert torch.equal(a, b), mode
    assert not torch.equal(want[0][0], want[1][0])  # the mixers really differ


class _Broken(Mixer):
    def batch(self, batch_size):
        raise OSError("disk went away")


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_failing_mixer_raises_in_the_consumer(mode):
    mixers = _mixers(2)
    speech, noise = _sources()
    mixers[1] = _Broken(speech, noise, 8000, MixConfig(segment_seconds=0.5))
    with mixed_batches(mixers, 4, mode) as batches:
        next(batches)  # mixer 0 works
        with pytest.raises(OSError, match="disk went away"):
            next(batches)


def test_mixer_processes_fall_back_to_threads_when_shared_memory_is_small(monkeypatch, caplog):
    # A container's default /dev/shm (64 MB) cannot hand over GPU-sized batches; this machine's
    # can, so its free space is shrunk here. The batches stay the same, from threads.
    import shutil

    from audioae.data import mixing

    real = shutil.disk_usage
    monkeypatch.setattr(mixing.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=1 << 16) if path == "/dev/shm" else real(path))
    with mixed_batches(_mixers(2), 4, "inline") as plain:
        want = [next(plain) for _ in range(4)]
    with caplog.at_level("WARNING"), mixed_batches(_mixers(2), 4, "processes") as batches:
        got = [next(batches) for _ in range(4)]
        assert any(t.name.startswith("mixer-") for t in threading.enumerate())  # threads, not processes
    assert "mixing on threads instead" in caplog.text
    assert all(torch.equal(a, b) for w, g in zip(want, got, strict=True) for a, b in zip(w, g, strict=True))


def test_unknown_loader_mode_is_refused():
    with pytest.raises(ValueError, match="inline"), mixed_batches(_mixers(1), 4, "fibers"):
        pass


def test_second_noise_joins_the_first_0_to_10_db_below_it():
    # Constant clips: clean speech 1, noises 1 or 2. A second noise, scaled to the first's level
    # times 10^(-d/20) with d in [0, 10] dB, makes the noise first * (1 + b), b in [0.316, 1].
    speech = Source([np.ones(4000, np.float32)])
    noise = Source([np.full(4000, 1.0, np.float32), np.full(4000, 2.0, np.float32)])
    cfg = MixConfig(segment_seconds=0.25, second_noise_prob=0.5, gain_db_low=0.0, gain_db_high=0.0)
    mixer = Mixer(speech, noise, 8000, cfg, seed=3)
    below = []
    for _ in range(300):
        clean, n, _ = mixer.example()
        assert np.allclose(clean, 1.0) and np.allclose(n, n[0])
        level = float(n[0])
        if np.isclose(level, 1.0) or np.isclose(level, 2.0):
            continue
        first = 1.0 if level <= 2.0 else 2.0
        below.append(level / first - 1.0)
    assert 110 < len(below) < 190  # about half the examples
    assert min(below) >= 10 ** (-10 / 20) - 1e-5 and max(below) <= 1.0 + 1e-5
    assert min(below) < 0.4 and max(below) > 0.9  # the whole 0-10 dB range is used


def test_no_second_noise_by_default():
    speech, noise = _sources()
    plain = Mixer(speech, noise, 8000, MixConfig(segment_seconds=0.5), seed=5)
    zero = Mixer(speech, noise, 8000, MixConfig(segment_seconds=0.5, second_noise_prob=0.0), seed=5)
    for _ in range(5):
        for a, b in zip(plain.example(), zero.example(), strict=True):
            assert np.array_equal(a, b)


def _noise_tree(root, seconds=(1.0, 1.0, 2.0)):
    """babble/ holds one 1 s clip of value 0.5; hum/ a 1 s clip and a 2 s one of value -0.5."""
    (root / "babble").mkdir(parents=True)
    (root / "hum").mkdir()
    sf.write(root / "babble" / "b.wav", np.full(int(seconds[0] * 8000), 0.5, np.float32), 8000)
    sf.write(root / "hum" / "h1.wav", np.full(int(seconds[1] * 8000), -0.5, np.float32), 8000)
    sf.write(root / "hum" / "h2.flac", np.full(int(seconds[2] * 8000), -0.5, np.float32), 8000)
    return root


def _babble_share(src: Source, n: int = 6000) -> float:
    rng = np.random.default_rng(1)
    return float(np.mean([src._draw(rng)[0] > 0 for _ in range(n)]))


def test_family_weights_scale_a_subfolders_share_of_the_draws(tmp_path):
    root = _noise_tree(tmp_path / "noise")
    assert abs(_babble_share(folder_source(root, 8000)) - 0.25) < 0.03  # 1 s of 4 s
    assert abs(_babble_share(folder_source(root, 8000, {"babble": 3.0})) - 0.5) < 0.03  # 3 of 6
    assert _babble_share(folder_source(root, 8000, {"babble": 0.0})) == 0.0


def test_family_weights_name_an_existing_subfolder_and_are_not_negative(tmp_path):
    root = _noise_tree(tmp_path / "noise")
    with pytest.raises(ValueError, match=r"no family \(subfolder\) \['babel'\]; there are \['babble', 'hum'\]"):
        folder_source(root, 8000, {"babel": 2.0})
    for bad in (-1.0, float("inf"), float("nan")):  # inf was taken: NaN draw probabilities
        with pytest.raises(ValueError, match="finite numbers >= 0"):
            folder_source(root, 8000, {"hum": bad})
    with pytest.raises(ValueError, match="every clip has weight 0"):
        folder_source(root, 8000, {"hum": 0, "babble": 0})


def test_noise_weights_apply_to_training_noise_and_never_to_validation(tmp_path):
    root = _noise_tree(tmp_path / "noise")
    run = load_run_config(None, [f'data.noise_dir="{root}"', f'data.val_noise_dir="{root}"',
                                 f'data.clean_dir="{root}"', "data.noise_weights={babble = 3.0}"])
    assert run.data.noise_weights == {"babble": 3.0}
    train_speech, train_noise = train_sources(run.data, 8000, val=False)
    _, val_noise = train_sources(run.data, 8000, val=True)
    assert abs(_babble_share(train_noise) - 0.5) < 0.03
    assert abs(_babble_share(val_noise) - 0.25) < 0.03
    assert abs(_babble_share(train_speech) - 0.25) < 0.03  # noise weights leave speech alone


def test_speech_weights_apply_to_training_speech_and_never_to_validation(tmp_path):
    root = _noise_tree(tmp_path / "speech")  # two "voices": babble/ and hum/
    run = load_run_config(None, [f'data.clean_dir="{root}"', f'data.val_clean_dir="{root}"',
                                 f'data.noise_dir="{root}"', "data.speech_weights={hum = 0.5}"])
    train_speech, train_noise = train_sources(run.data, 8000, val=False)
    val_speech, _ = train_sources(run.data, 8000, val=True)
    assert abs(_babble_share(train_speech) - 0.4) < 0.03  # 1 s against 3 s at half weight
    assert abs(_babble_share(val_speech) - 0.25) < 0.03
    assert abs(_babble_share(train_noise) - 0.25) < 0.03
    bad = load_run_config(None, [f'data.clean_dir="{root}"', "data.speech_weights={espeak = 2.0}"])
    with pytest.raises(ValueError, match=r"no family \(subfolder\) \['espeak'\]"):
        train_sources(bad.data, 8000, val=False)


def test_without_val_folders_validation_reuses_the_loaded_clips_at_natural_shares(tmp_path):
    root = _noise_tree(tmp_path / "noise")
    run = load_run_config(None, [f'data.noise_dir="{root}"', f'data.clean_dir="{root}"',
                                 "data.noise_weights={babble = 3.0}"])
    train = train_sources(run.data, 8000, val=False)
    val_speech, val_noise = _validation_sources(run.data, 8000, train)
    assert all(a is b for a, b in zip(val_noise.clips, train[1].clips, strict=True))  # not decoded again
    assert abs(_babble_share(train[1]) - 0.5) < 0.03 and abs(_babble_share(val_noise) - 0.25) < 0.03
    # the same draws as loading the folder again without weights (what validation did before)
    reloaded = train_sources(run.data, 8000, val=True)[1]
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert all(np.array_equal(val_noise.crop(rng_a, 4000, 8000), reloaded.crop(rng_b, 4000, 8000)) for _ in range(20))
    other = tmp_path / "val-noise"
    _noise_tree(other, seconds=(2.0, 1.0, 1.0))
    run = load_run_config(None, [f'data.noise_dir="{root}"', f'data.val_noise_dir="{other}"'])
    _, val_noise = _validation_sources(run.data, 8000, train_sources(run.data, 8000, val=False))
    assert abs(_babble_share(val_noise) - 0.5) < 0.03  # the val folder's own clips: 2 s of 4 s


def test_short_and_silent_files_are_skipped_and_named(tmp_path, caplog):
    root = _noise_tree(tmp_path / "speech")
    sf.write(root / "hum" / "blip.wav", np.full(400, 0.5, np.float32), 8000)  # 50 ms
    sf.write(root / "hum" / "silence.wav", np.zeros(8000, np.float32), 8000)  # a blank take
    src = folder_source(root, 8000)
    assert len(src.clips) == 3
    assert "skipping 1 file(s) shorter than 0.25 s: hum/blip.wav" in caplog.text
    assert "skipping 1 file(s) silent (peak below -80 dBFS): hum/silence.wav" in caplog.text
    (root / "babble" / "b.wav").unlink()
    for f in (root / "hum").glob("h*"):
        f.unlink()
    with pytest.raises(ValueError, match="no usable audio files"):
        folder_source(root, 8000)


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_colored_noise_is_audible_and_falls_by_its_exponent(exponent):
    # was: the 1/f gain applied down to DC, so 10 s of pink noise held 56% of its energy below
    # 20 Hz and brown 99.8%: mixed "at 0 dB SNR" the audible noise was far quieter than named
    sr = 16000
    x = synthetic.colored_noise(np.random.default_rng(0), 10.0, sr, exponent)
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    assert power[f < synthetic.AUDIBLE_HZ].sum() < 1e-12 * power.sum()
    octave = [power[(f >= lo) & (f < 2 * lo)].mean() for lo in (100.0, 200.0, 400.0, 800.0, 1600.0)]
    slope = np.polyfit(np.log2([100.0, 200.0, 400.0, 800.0, 1600.0]), 10 * np.log10(octave), 1)[0]
    assert slope == pytest.approx(-3.0103 * exponent, abs=0.3)  # dB per octave of the mean bin power


def _impulse_at(at: int, height: float = 1.0) -> Source:
    """A source whose every crop is silence but for one sample of ``height`` at ``at``."""

    def generate(rng, seconds, sr):
        x = np.zeros(round(seconds * sr), np.float32)
        x[at] = height
        return x

    return Source(generator=generate)


def _tail_energy(x: np.ndarray, start: int, stop: int) -> float:
    return float(np.sum(x[start:stop].astype(np.float64) ** 2))


def test_reverb_prob_puts_the_clean_target_and_so_the_noisy_input_in_a_room_and_leaves_the_noise_dry():
    """MixConfig.reverb_prob (README's data.reverb_prob): the share of clean examples given a
    synthetic room. With 1 every clean target is the dry signal convolved with a decaying room
    response (same length, nothing before the sound, energy spread over the next tens of ms and
    falling); the noise stays dry, so the noisy input (clean + scaled noise) carries the same
    reverberant speech as the target. With 0 the target is the dry crop itself."""
    sr, at, hit = 8000, 400, 3000  # the speech impulse at 50 ms, the noise's at 375 ms
    cfg = dict(segment_seconds=0.5, gain_db_low=0.0, gain_db_high=0.0)  # peak 1: the impulse stays 1 when dry
    ms = sr // 1000

    dry = Mixer(_impulse_at(at), _impulse_at(hit, 0.5), sr, MixConfig(**cfg, reverb_prob=0.0), seed=2)
    for _ in range(5):
        clean, noise, _ = dry.example()
        assert len(clean) == 4000 and np.flatnonzero(clean).tolist() == [at] and clean[at] == 1.0
        assert np.flatnonzero(noise).tolist() == [hit]

    room = Mixer(_impulse_at(at), _impulse_at(hit, 0.5), sr, MixConfig(**cfg, reverb_prob=1.0), seed=2)
    targets = []
    for _ in range(20):
        clean, noise, _ = room.example()
        total = _tail_energy(clean, 0, len(clean))
        assert len(clean) == len(noise) == 4000  # the length is kept
        assert np.abs(clean[:at]).max() < 1e-6  # a room adds nothing before the sound
        assert np.count_nonzero(np.abs(clean) > 1e-3) > 50 * ms  # one sample smeared over tens of ms
        assert _tail_energy(clean, at + 10 * ms, at + 100 * ms) > 0.15 * total  # 10-100 ms after: a real tail
        first, second = _tail_energy(clean, at, at + 100 * ms), _tail_energy(clean, at + 100 * ms, at + 200 * ms)
        assert first > 2 * second  # and it decays
        assert np.flatnonzero(noise).tolist() == [hit]  # the noise is not put in the room
        targets.append(clean)
    assert not np.array_equal(targets[0], targets[1])  # a room of its own per example

    clean, noise, snr = room.batch(4)
    model = build_model("recurrent", {"hidden": 8, "code_dim": 4, "corruption": "mix"})
    noisy, _ = corrupt_batch(model, clean, noise, snr)
    residual = (noisy - clean).numpy()  # what the input holds beyond the target: the scaled dry noise alone
    for row in residual:
        assert np.flatnonzero(np.abs(row) > 1e-6).tolist() == [hit]


def test_reverb_prob_is_the_share_of_examples_given_a_room():
    sr, at = 8000, 100
    mixer = Mixer(_impulse_at(at), _impulse_at(0), sr,
                  MixConfig(segment_seconds=0.1, gain_db_low=0.0, gain_db_high=0.0, reverb_prob=0.5), seed=7)
    rooms = sum(np.count_nonzero(mixer.example()[0]) > 1 for _ in range(300))
    assert 110 < rooms < 190  # about half (150 +- 8.7 by chance)


def test_a_file_given_as_a_corpus_folder_is_called_a_file(tmp_path):
    """Was "no such folder" for a path that exists (a file named where a folder belongs)."""
    clip = tmp_path / "one.wav"
    sf.write(clip, np.full(8000, 0.5, np.float32), 8000)
    with pytest.raises(NotADirectoryError, match=r"one\.wav: a file, not a folder; name the folder that holds"):
        folder_source(clip, 8000)


def test_links_whose_target_is_gone_are_skipped_and_counted_once(tmp_path, caplog):
    """Were skipped without a word: a corpus moved elsewhere trained on what was left."""
    root = _noise_tree(tmp_path / "noise")
    for k in range(3):
        (root / "hum" / f"gone{k}.wav").symlink_to(tmp_path / f"moved{k}.wav")
    src = folder_source(root, 8000)
    assert len(src.clips) == 3
    said = [r.getMessage() for r in caplog.records if "target is gone" in r.getMessage()]
    assert said == [f"{root}: skipping 3 link(s) whose target is gone, e.g. hum/gone0.wav -> {tmp_path / 'moved0.wav'}"]
