"""Gaussian corruption noise is drawn on the input's device and in its dtype, and a seeded
generator still fixes it. No GPU here: the "meta" device stands in for one (a device that is not
the CPU, where torch can draw), and a dispatch mode records where every tensor is made."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from audioae.models.corruption import add_gaussian, add_gaussian_std, mix_at_snr


class _Made(TorchDispatchMode):
    """Records the device and dtype of every tensor an operation makes while active."""

    def __init__(self):
        super().__init__()
        self.tensors: list[tuple[str, str, torch.dtype]] = []  # (op, device type, dtype)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.tensors.append((str(func), t.device.type, t.dtype))
        return out


CORRUPT = {"add_gaussian": lambda x, g: add_gaussian(x, 0.0, 20.0, g),
           "add_gaussian_std": lambda x, g: add_gaussian_std(x, 0.1, g)}


@pytest.mark.parametrize("name", CORRUPT)
def test_noise_is_drawn_on_the_inputs_device_not_copied_from_the_cpu(name):
    clean = torch.zeros(3, 1000, device="meta")  # [B, T] on a device other than the CPU
    with _Made() as made:
        noisy = CORRUPT[name](clean, None)
    assert noisy.device.type == "meta"
    on_cpu = [op for op, device, _ in made.tensors if device == "cpu"]
    assert not on_cpu, f"drawn on the CPU, then copied: {on_cpu}"  # was aten.randn.generator on cpu, then a copy


@pytest.mark.parametrize("name", CORRUPT)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_noise_is_drawn_in_the_inputs_dtype(name, dtype):
    clean = 0.1 * torch.ones(2, 500, dtype=dtype)
    with _Made() as made:
        noisy = CORRUPT[name](clean, torch.Generator().manual_seed(0))
    drawn = {dt for op, _, dt in made.tensors if "rand" in op}
    assert drawn == {dtype}, drawn  # was float32, cast afterwards
    assert noisy.dtype == dtype


def test_float64_noise_has_float64_resolution():
    """Drawn in float32 and cast (as before), every noise sample was a float32 value."""
    noise = add_gaussian_std(torch.zeros(1, 4000, dtype=torch.float64), 1.0, torch.Generator().manual_seed(0))
    assert (noise != noise.float().double()).any()


@pytest.mark.parametrize("name", CORRUPT)
def test_a_seeded_generator_fixes_the_noise_and_cpu_float32_values_are_unchanged(name):
    clean = 0.1 * torch.sin(torch.arange(4 * 800, dtype=torch.float32)).reshape(4, 800)
    a = CORRUPT[name](clean, torch.Generator().manual_seed(7))
    b = CORRUPT[name](clean, torch.Generator(device="cpu").manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, CORRUPT[name](clean, torch.Generator().manual_seed(8)))
    # What the code before 2026-12 computed on the CPU (noise drawn on the CPU in float32, then
    # the SNRs): float32 CPU training and validation see the same corruptions as before.
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(clean.shape, generator=g)
    if name == "add_gaussian_std":
        before = clean + 0.1 * noise
    else:
        before = mix_at_snr(clean, noise, 0.0 + 20.0 * torch.rand((4,), generator=g))
    assert torch.equal(a, before)


def test_a_generator_on_the_inputs_device_is_used_there():
    """``torch.Generator(device=x.device)``: on a GPU, the generator of a GPU batch. Here the CPU's."""
    clean = torch.zeros(2, 300)
    gen = torch.Generator(device=clean.device).manual_seed(3)
    state = gen.get_state()
    first = add_gaussian_std(clean, 1.0, gen)
    assert not torch.equal(gen.get_state(), state)  # the noise came from this generator
    gen.set_state(state)
    assert torch.equal(add_gaussian_std(clean, 1.0, gen), first)


def test_integer_input_is_refused_rather_than_left_uncorrupted():
    with pytest.raises(TypeError, match="floating-point"):
        add_gaussian_std(torch.zeros(2, 8, dtype=torch.uint8), 0.1)


# darken_patches: corners are drawn where the generator lives; the mask is built on the CPU.

_PINNED_MASKS = [  # (shape, patch, fraction, seed, dark pixels per example, sha256 of the mask[:16])
    ((6, 1, 8, 8), (3, 3), 0.25, 5, [16, 12, 15, 15, 15, 22], "0b4d0562a7fea29c"),
    ((3, 65, 40), (16, 8), 0.3, 11, [774, 779, 765], "b906ee7d146d5891"),
    ((4, 2, 16, 16), (4, 4), 0.6, 0, [316, 296, 326, 302], "de2ce52c651a620a"),
]


@pytest.mark.parametrize(("shape", "patch", "fraction", "seed", "dark", "digest"), _PINNED_MASKS)
def test_darkened_masks_of_a_cpu_seed_are_those_of_the_code_before_2026_12(shape, patch, fraction, seed, dark, digest):
    """Values from the code that drew corners on the CPU only: moving the draws to the generator's
    device must leave CPU training and validation corruptions as they were."""
    import hashlib

    from audioae.models.corruption import darken_patches

    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) + 0.1  # no zero of its own
    mask = (darken_patches(x, fraction, patch, torch.Generator().manual_seed(seed)) == 0).flatten(1)  # [B, ...]
    assert [int(v) for v in mask.sum(1)] == dark
    assert hashlib.sha256(mask.numpy().tobytes()).hexdigest()[:16] == digest


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_darkened_patches_take_a_gpu_generator_with_a_gpu_batch():
    """A CUDA generator was refused ("Expected a 'cpu' device type for generator")."""
    from audioae.models.corruption import darken_patches

    x = torch.rand(8, 1, 16, 16, device="cuda") + 0.1
    gens = [torch.Generator(device="cuda").manual_seed(2) for _ in range(2)]
    a, b = (darken_patches(x, 0.25, (4, 4), g) for g in gens)
    assert a.device == x.device and torch.equal(a, b)
    assert 0.1 < float((a == 0).double().mean()) < 0.4
    assert torch.equal(a[a != 0], x[a != 0])


@pytest.mark.parametrize("patch", [(-2, 4), (0, 4), (4, 0), (2.5, 4), (4,)])
def test_a_patch_side_below_one_is_refused_in_words(patch):
    """(-2, 4) drew corners forever and (0, 4) ended in a ZeroDivisionError."""
    from audioae.models.corruption import darken_patches

    with pytest.raises(ValueError, match=r"patch must be \(rows, cols\).*at least 1"):
        darken_patches(torch.ones(3, 1, 16, 16), 0.15, patch, torch.Generator().manual_seed(0))
