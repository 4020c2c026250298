"""The on-the-fly mixer: length-weighted draws, and threaded batches equal to unthreaded ones."""

import numpy as np
import pytest
import torch

from audioae.data.mixing import MixConfig, Mixer, Source, mixed_batches


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


def test_threaded_batches_equal_the_unthreaded_sequence():
    # Round-robin over per-thread queues: the order depends on the seeds, not on thread timing.
    with mixed_batches(_mixers(3), 4, threads=False) as plain:
        want = [next(plain) for _ in range(9)]
    with mixed_batches(_mixers(3), 4, threads=True) as threaded:
        got = [next(threaded) for _ in range(9)]
    for w, g in zip(want, got, strict=True):
        for a, b in zip(w, g, strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(want[0][0], want[1][0])  # the mixers really differ


class _Broken(Mixer):
    def batch(self, batch_size):
        raise OSError("disk went away")


def test_a_failing_mixer_raises_in_the_consumer():
    mixers = _mixers(2)
    speech, noise = _sources()
    mixers[1] = _Broken(speech, noise, 8000, MixConfig(segment_seconds=0.5))
    with mixed_batches(mixers, 4, threads=True) as batches:
        next(batches)  # mixer 0 works
        with pytest.raises(OSError, match="disk went away"):
            next(batches)
