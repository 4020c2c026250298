"""Input corruptions for denoising autoencoders: the network sees the corrupted input and is
trained to reconstruct the clean one.

All functions take an optional ``torch.Generator`` so that validation corruptions are fixed.
Noise is drawn where the generator lives, in the input's dtype: without a generator, or with one
on the input's device (``torch.Generator(device=x.device)``), on the input's device, so a GPU
batch's noise never crosses the bus; a CPU generator with a GPU input still gives the values it
gives on the CPU (a validation set corrupted the same on every machine), copied over.
``darken_patches`` builds its mask on the CPU (see there) and draws on the CPU without a generator.
"""

from __future__ import annotations

import torch

CORRUPTIONS = ("none", "gaussian", "patches", "mix")


def _draw(sample, shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``sample`` (torch.rand or torch.randn) of ``shape`` in ``like``'s dtype on ``like``'s device,
    drawn on the generator's device when one is given (a CPU one: drawn there, then copied)."""
    if not like.is_floating_point():  # noise cast to integers would be mostly zeros: no corruption at all
        raise TypeError(f"noise needs a floating-point input, got {like.dtype}")
    device = like.device if generator is None else generator.device
    return sample(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _uniform(shape, low: float, high: float, like: torch.Tensor, generator=None) -> torch.Tensor:
    return low + (high - low) * _draw(torch.rand, shape, like, generator)


def mix_at_snr(clean: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``clean + g * noise`` with ``g`` chosen so the mixture has ``snr_db`` per example.

    ``clean, noise [B, T]``, ``snr_db [B]``.
    """
    p_clean = clean.pow(2).mean(-1, keepdim=True).clamp_min(1e-10)  # [B, 1]
    p_noise = noise.pow(2).mean(-1, keepdim=True).clamp_min(1e-10)  # [B, 1]
    gain = torch.sqrt(p_clean / (p_noise * 10 ** (snr_db[:, None] / 10)))  # [B, 1]
    return clean + gain * noise


def add_gaussian(clean: torch.Tensor, snr_low: float, snr_high: float, generator=None) -> torch.Tensor:
    """White Gaussian noise at a random SNR per example; ``clean [B, ...]``."""
    noise = _draw(torch.randn, clean.shape, clean, generator)  # [B, ...]
    snr = _uniform((clean.shape[0],), snr_low, snr_high, clean, generator)
    flat = mix_at_snr(clean.reshape(clean.shape[0], -1), noise.reshape(clean.shape[0], -1), snr)
    return flat.reshape(clean.shape)


def add_gaussian_std(x: torch.Tensor, std: float, generator=None) -> torch.Tensor:
    """Gaussian noise of fixed standard deviation (the image course's corruption)."""
    return x + std * _draw(torch.randn, x.shape, x, generator)


def darken_patches(x: torch.Tensor, fraction: float, patch: tuple[int, int], generator=None) -> torch.Tensor:
    """Zero random ``patch`` rectangles of the last two axes so that, on average, ``fraction`` of
    them is dark, whatever the input and patch sizes (0: ``x`` unchanged, 1: all dark).

    Works for spectrograms ``[B, F, N]`` (time-frequency patches) and images ``[B, C, H, W]``
    (one mask for every channel). Per example, patches are added until the dark union reaches
    ``fraction``; the patch that crosses it is kept with the probability that makes the expected
    dark share exactly ``fraction`` (counting patches instead misses it once they overlap). Patch
    corners are drawn over every placement that overlaps the input, clipped at its edges, so every
    pixel is equally likely to be under each drawn patch. Dark is then only nearly uniform: a
    clipped patch darkens fewer pixels, so it uses less of the share (and is likelier to be kept
    when it crosses it), and edge pixels are dark a little more often (16x16 inputs, 4x4 patches,
    fraction 0.15, 100,000 inputs: dark 0.158 to 0.162 of the time at the corners, 0.155 along the
    edges on average, 0.145 to 0.146 at the centre, 0.150 overall).

    Corners are drawn where the generator lives, so a GPU batch's
    ``torch.Generator(device=x.device)`` works here as it does for the noises above; without a
    generator, from the CPU's global one (``torch.manual_seed`` seeds it). The mask itself is
    assembled on the CPU and copied over once: each patch's count of newly dark pixels decides
    whether another is drawn, a host decision, so building it on the GPU would cost one
    synchronisation per patch, and drawing there costs one per chunk of corners and one per
    example, which is why only a GPU generator sends the draws there.
    """
    if x.dim() < 3:  # [H, W] alone has no batch axis: each example needs its own mask
        raise ValueError(f"darken_patches needs a batch [B, ..., H, W] (spectrograms [B, F, N], images "
                         f"[B, C, H, W]), got shape {list(x.shape)}; for one image pass x[None]")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be within 0..1, got {fraction}")
    # a side of 0 drew no pixels: a division by zero, and a negative one drew forever
    if len(patch) != 2 or any(int(side) != side or side < 1 for side in patch):
        raise ValueError(f"patch must be (rows, cols), each a whole number of at least 1, got {tuple(patch)}")
    if fraction == 0:
        return x
    if fraction == 1:
        return torch.zeros_like(x)
    *lead, h, w = x.shape
    b = lead[0]
    ph, pw = min(patch[0], h), min(patch[1], w)
    target = fraction * h * w  # dark pixels wanted per example
    keep = torch.ones(b, h, w, dtype=x.real.dtype)  # host-side mask, see the docstring
    device = torch.device("cpu") if generator is None else generator.device
    # Corners drawn a chunk at a time: most examples need no second draw.
    chunk = max(8, 2 * round(target / (ph * pw)))

    def corners():
        while True:
            # Rows, then columns, from the same generator: the CPU draws (and so the CPU masks of a
            # seed) are those of the code before draws moved to the generator's device.
            rows = torch.randint(1 - ph, h, (chunk,), generator=generator, device=device)
            cols = torch.randint(1 - pw, w, (chunk,), generator=generator, device=device)
            yield from zip(*torch.stack([rows, cols]).tolist(), strict=True)  # one copy to the host

    for i in range(b):
        dark = 0
        for r, c in corners():
            cell = keep[i, max(r, 0) : r + ph, max(c, 0) : c + pw]  # [<=ph, <=pw], a view into keep
            new = int(cell.sum())
            if dark + new >= target:  # the crossing patch: kept with probability (target - dark) / new
                if float(torch.rand((), generator=generator, device=device)) * new < target - dark:
                    cell.zero_()
                break
            cell.zero_()
            dark += new
    shape = [b] + [1] * (len(lead) - 1) + [h, w]
    return x * keep.to(x.device).reshape(shape)
