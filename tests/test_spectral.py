import pytest
import torch

from audioae.spectral import STFT, StreamingSTFT, compress, decompress


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("length", [1, 2, 511, 1001, 12345])
def test_stft_reconstructs_perfectly_at_odd_lengths(sr, length):
    n_fft = 512 if sr <= 16000 else 2048
    stft = STFT(n_fft, n_fft // 4)
    x = torch.randn(2, length + sr // 10)  # [C, T]
    y = stft.inverse(stft(x), x.shape[-1])
    assert y.shape == x.shape
    assert (y - x).abs().max() < 1e-5


@pytest.mark.parametrize("chunk", [1, 97, 4000])
def test_streaming_stft_equals_offline(chunk):
    stft = STFT(256, 64)
    x = torch.randn(3, 5001)
    s = StreamingSTFT(256, 64, (3,))
    frames, out = [], []
    for i in range(0, x.shape[-1], chunk):
        f = s.push(x[:, i : i + chunk])
        frames.append(f)
        out.append(s.add_frames(f))
    f = s.finish()
    frames.append(f)
    out.append(s.add_frames(f))
    out.append(s.drain())
    assert torch.allclose(torch.cat(frames, -1), stft(x), atol=1e-4)
    y = torch.cat(out, -1)
    assert y.shape == x.shape
    assert (y - x).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["log", "power", "none"])
def test_compression_inverts(kind):
    mag = torch.rand(4, 33, 10) * 3
    assert torch.allclose(decompress(compress(mag, kind), kind), mag, atol=1e-4)


def test_bad_stft_parameters_are_rejected():
    with pytest.raises(ValueError, match="even n_fft"):
        STFT(511, 128)


def test_streaming_stft_takes_synthesis_rows_of_their_own_and_drains_silence_when_given_none():
    """The denoiser overlap-adds more rows than it analyses (its output and its gains); a stream
    given no frames at all still drains its input's length of silence."""
    stft, x = STFT(256, 64), torch.randn(2, 3001)
    s = StreamingSTFT(256, 64, (2,))
    frames = torch.cat([s.push(x), s.finish()], -1)  # [2, F, N]
    doubled = torch.cat([frames, 2 * frames])  # [4, F, N]
    y = torch.cat([s.add_frames(doubled), s.drain()], -1)  # [4, T]
    expected = stft.inverse(stft(x), 3001)  # [2, T]
    torch.testing.assert_close(y, torch.cat([expected, 2 * expected]), atol=1e-5, rtol=1e-5)
    idle = StreamingSTFT(256, 64, (2,))
    idle.push(torch.randn(2, 10))
    idle.finish()
    tail = idle.drain()
    assert tail.shape == (2, 10) and not tail.any()
