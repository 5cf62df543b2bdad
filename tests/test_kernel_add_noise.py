"""add_noise: the Triton kernel (interpreted on CPU) against the fp64 reference, and its Philox
stream bit for bit against an independent numpy Philox4x32-10 (as Triton's own test_random.py does)."""

import numpy as np
import pytest
import scipy.stats
import torch
from kernel_tolerances import TOLERANCE, rel

from kernels import add_noise
from kernels.add_noise import add_noise_reference
from kernels.philox import randint4x, randint4x_reference

M32 = 0xFFFFFFFF


def numpy_philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Random123's Philox4x32-10 with exact uint64 products; counter (4, N) uint32 words, key (k0, k1)."""
    c = [w.astype(np.uint64) for w in counter]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        pa, pb = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [
            (pb >> np.uint64(32)) ^ c[1] ^ k0,
            pb & np.uint64(M32),
            (pa >> np.uint64(32)) ^ c[3] ^ k1,
            pa & np.uint64(M32),
        ]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & np.uint64(M32), (k1 + np.uint64(0xBB67AE85)) & np.uint64(M32)
    return np.stack(c).astype(np.uint32)


def numpy_stream(seed: int, counters: np.ndarray) -> np.ndarray:
    """The lanes Triton's randint4x(seed, int64 counter) should give: counter words (lo, hi, 0, 0), key (lo, hi of
    seed)."""
    counters = counters.astype(np.uint64)
    zero = np.zeros_like(counters)
    words = np.stack([counters & np.uint64(M32), counters >> np.uint64(32), zero, zero])
    return numpy_philox4x32_10(words, (seed & M32, seed >> 32))


def numpy_uniform(bits: np.ndarray) -> np.ndarray:
    signed = bits.astype(np.uint32).view(np.int32).astype(np.int64)
    return np.where(signed < 0, -signed - 1, signed).astype(np.float32) * np.float32(4.6566127342e-10)


def random_inputs(shape, dtype):
    B, C = shape[:2]
    x = torch.randn(shape).to(dtype)
    return x, torch.randn(C), torch.rand(C) + 0.3, torch.rand(B) + 0.5, 2 * torch.rand(B)


def test_numpy_philox_matches_random123_known_answers():
    kat = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in kat:
        got = numpy_philox4x32_10(np.array(counter, dtype=np.uint32)[:, None], key)[:, 0]
        assert [int(v) for v in got] == list(expected)


@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5, 2**63 - 1])
def test_philox_stream_bit_exact(triton_path, seed):
    counters = np.concatenate([np.arange(3000), np.random.randint(0, 2**62, size=1000), [2**32 - 1, 2**32, 2**63 - 1]])
    expected = numpy_stream(seed, counters).astype(np.int64)
    counter = torch.from_numpy(counters.astype(np.int64))
    assert np.array_equal(randint4x(seed, counter).numpy(), expected)
    assert np.array_equal(randint4x_reference(seed, counter).numpy(), expected)


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((2, 96, 7, 7), torch.float32),
        ((3, 3, 5, 9), torch.bfloat16),
        ((2, 4, 3, 5, 6), torch.float16),
        ((2, 3, 5, 9), torch.float32),
    ],
)
def test_forward_and_grad_match_fp64_reference(triton_path, poisoned, shape, dtype):
    x, mean, std, alpha, sigma = random_inputs(shape, dtype)
    seed, offset = int(torch.randint(0, 2**62, ())), int(torch.randint(0, 2**40, ()))
    x.requires_grad_()
    out, eps = add_noise(x, mean, std, alpha, sigma, seed, offset, mask_p=0.2, target_std=0.5, return_noise=True)
    dy = torch.randn(shape).to(dtype)
    out.backward(dy)
    assert out.dtype == dtype and eps.dtype == torch.float32
    assert not out.isnan().any() and not eps.isnan().any() and not x.grad.isnan().any()

    x64 = x.detach().double().requires_grad_()
    ref, ref_eps = add_noise_reference(
        x64, mean.double(), std.double(), alpha.double(), sigma.double(), seed, offset, 0.2, 0.5, return_noise=True
    )
    ref.backward(dy.double())
    assert rel(out, ref) < TOLERANCE[dtype]
    assert rel(eps, ref_eps) < 1e-5
    assert rel(x.grad, x64.grad) < TOLERANCE[dtype]


@pytest.mark.parametrize("path", ["triton", "reference"])
def test_out_dtype_is_written_by_the_pass_rounded_once(path, monkeypatch, poisoned):
    """Stored fp16 latents to a bf16 network input in the pass itself: within bf16's bound of the fp64 result (one
    rounding, not fp16's then bf16's), the gradient in x's dtype; both paths."""
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", path)
    x, mean, std, alpha, sigma = random_inputs((2, 5, 7, 6), torch.float16)
    x.requires_grad_()
    out = add_noise(x, mean, std, alpha, sigma, 7, 0, mask_p=0.2, target_std=0.5, out_dtype=torch.bfloat16)
    dy = torch.randn(x.shape).bfloat16()
    out.backward(dy)
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.float16
    x64 = x.detach().double().requires_grad_()
    ref = add_noise_reference(x64, mean.double(), std.double(), alpha.double(), sigma.double(), 7, 0, 0.2, 0.5)
    ref.backward(dy.double())
    assert rel(out, ref) < TOLERANCE[torch.bfloat16] and rel(x.grad, x64.grad) < TOLERANCE[torch.bfloat16]
    reference = add_noise_reference(x.detach(), mean, std, alpha, sigma, 7, 0, 0.2, 0.5, out_dtype=torch.bfloat16)
    assert torch.equal(out, reference) if path == "reference" else rel(out, reference.double()) < 1e-2
    with pytest.raises(TypeError, match="out_dtype"):
        add_noise(x, mean, std, alpha, sigma, 7, out_dtype=torch.int8)


def unit_inputs(shape):
    """x = 1, no standardisation, no noise: the output is the keep-mask itself."""
    B, C = shape[:2]
    return torch.ones(shape), torch.zeros(C), torch.ones(C), torch.ones(B), torch.zeros(B)


def test_mask_is_bit_exact_against_numpy_and_regenerated_in_backward(triton_path):
    shape, seed, offset, p = (2, 3, 5, 9), 987654321987, 2**33 + 11, 0.35
    x, mean, std, alpha, sigma = unit_inputs(shape)
    x.requires_grad_()
    out, eps = add_noise(x, mean, std, alpha, sigma, seed, offset, mask_p=p, return_noise=True)
    out.backward(torch.ones(shape))

    lanes = numpy_stream(seed, np.arange(x.numel()) + offset)
    keep = (numpy_uniform(lanes[0]) >= np.float32(p)).reshape(shape)
    assert np.array_equal(out.detach().numpy(), keep.astype(np.float32))
    assert np.array_equal(x.grad.numpy(), keep.astype(np.float32))
    u1, u2 = numpy_uniform(lanes[1]).astype(np.float64), numpy_uniform(lanes[2]).astype(np.float64)
    normal = np.sqrt(-2 * np.log(np.maximum(u1, 1e-7))) * np.cos(2 * np.pi * u2)
    np.testing.assert_allclose(eps.numpy(), normal.reshape(shape), rtol=1e-5, atol=1e-5)


def test_reference_draws_the_same_mask_as_the_kernel(monkeypatch):
    shape = (2, 4, 6, 6)
    args = unit_inputs(shape)
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", "reference")
    ref, ref_eps = add_noise(*args, seed=5, offset=3, mask_p=0.5, return_noise=True)
    monkeypatch.setenv("LATENT_ENGINE_KERNELS", "triton")
    out, eps = add_noise(*args, seed=5, offset=3, mask_p=0.5, return_noise=True)
    assert torch.equal(out, ref)
    assert rel(eps, ref_eps.double()) < 1e-6


@pytest.fixture(scope="module")
def large_draw():
    """One 131k-element Triton draw: (keep-mask, eps) with mask_p = 0.3."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENT_ENGINE_KERNELS", "triton")
        shape = (8, 16, 32, 32)
        keep, eps = add_noise(*unit_inputs(shape), seed=2024, mask_p=0.3, return_noise=True)
    return keep, eps


def test_noise_is_standard_normal(large_draw):
    _, eps = large_draw
    e = eps.double().flatten()
    n = e.numel()
    assert abs(e.mean().item()) < 5 / n**0.5
    assert abs(e.std().item() - 1) < 5 * (0.5 / n) ** 0.5
    assert scipy.stats.kstest(e.numpy(), "norm").pvalue > 1e-3


def test_mask_drops_mask_p_independently_of_noise(large_draw):
    keep, eps = large_draw
    n, p = keep.numel(), 0.3
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert abs((1 - keep.mean().item()) - p) < 5 * (p * (1 - p) / n) ** 0.5
    r = np.corrcoef(keep.flatten().numpy(), eps.flatten().numpy())[0, 1]
    assert abs(r) < 5 / n**0.5


def test_no_correlation_between_samples_channels_or_neighbours(large_draw):
    keep, eps = large_draw
    for t in (eps, keep):
        B, C = t.shape[:2]
        per_sample = np.corrcoef(t.reshape(B, -1).numpy())
        per_channel = np.corrcoef(t.transpose(0, 1).reshape(C, -1).numpy())
        for corr, n in ((per_sample, t[0].numel()), (per_channel, t[:, 0].numel())):
            off_diagonal = corr[~np.eye(len(corr), dtype=bool)]
            assert np.abs(off_diagonal).max() < 5 / n**0.5
        flat = t.flatten().numpy()
        assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5 / flat.size**0.5


def test_uniforms_pass_ks(triton_path):
    bits = randint4x(77, torch.arange(50_000, dtype=torch.int64) + 2**40)
    for lane in bits:
        u = numpy_uniform(lane.numpy())
        assert 0 <= u.min() and u.max() < 1
        assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3


def test_repeatable_and_keyed_by_seed_and_offset(triton_path):
    shape = (2, 3, 8, 8)
    args = random_inputs(shape, torch.float32)
    a = add_noise(*args, seed=11, offset=0, mask_p=0.2, return_noise=True)[1]
    assert torch.equal(a, add_noise(*args, seed=11, offset=0, mask_p=0.2, return_noise=True)[1])
    assert not torch.equal(a, add_noise(*args, seed=12, offset=0, mask_p=0.2, return_noise=True)[1])
    shifted = add_noise(*args, seed=11, offset=5, mask_p=0.2, return_noise=True)[1]
    assert not torch.equal(a, shifted)
    # counter = flat index + offset: offset 5 continues the same stream five elements later
    assert torch.equal(shifted.flatten()[:-5], a.flatten()[5:])


def test_layouts_give_the_same_result(triton_path):
    shape = (2, 5, 6, 7)
    x, *rest = random_inputs(shape, torch.float32)
    x.requires_grad_()
    expected = add_noise(x, *rest, seed=3, mask_p=0.2)
    (dx_expected,) = torch.autograd.grad(expected.sum(), x)

    cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    out = add_noise(cl, *rest, seed=3, mask_p=0.2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)
    out.backward(torch.ones_like(out).to(memory_format=torch.channels_last))
    assert torch.equal(cl.grad, dx_expected)

    transposed = x.detach().transpose(2, 3).contiguous().transpose(2, 3)  # strided, not mergeable
    assert torch.equal(add_noise(transposed, *rest, seed=3, mask_p=0.2), expected)
    sliced = torch.randn(4, 5, 6, 7)[::2]
    assert torch.equal(add_noise(sliced, *rest, seed=3), add_noise(sliced.contiguous(), *rest, seed=3))


def test_python_float_levels_broadcast(triton_path):
    shape = (3, 2, 4, 4)
    x, mean, std, _, _ = random_inputs(shape, torch.float32)
    a = add_noise(x, mean, std, 0.7, 1.5, seed=9, mask_p=0.1)
    b = add_noise(x, mean, std, torch.full((3,), 0.7), torch.tensor(1.5), seed=9, mask_p=0.1)
    assert torch.equal(a, b)


def test_reference_gradcheck():
    shape = (2, 3, 2, 3)
    x, mean, std, alpha, sigma = (t.double().requires_grad_() for t in random_inputs(shape, torch.float32))
    assert torch.autograd.gradcheck(
        lambda *t: add_noise_reference(*t, seed=4, offset=1, mask_p=0.3, target_std=0.5), (x, mean, std, alpha, sigma)
    )


@pytest.mark.parametrize(
    "change,error",
    [
        (lambda a: a.update(x=a["x"].double()), TypeError),
        (lambda a: a.update(x=a["x"].flatten(2)), ValueError),
        (lambda a: a.update(mean=torch.zeros(4)), ValueError),
        (lambda a: a.update(sigma=torch.zeros(3)), ValueError),
        (lambda a: a.update(std=torch.ones(3, dtype=torch.int64)), TypeError),
        (lambda a: a.update(mean=torch.zeros(3, device="meta")), ValueError),
        (lambda a: a.update(std=torch.tensor([1.0, 0.0, 1.0])), ValueError),
        (lambda a: a.update(mask_p=1.0), ValueError),
        (lambda a: a.update(mask_p=-0.1), ValueError),
        (lambda a: a.update(alpha=torch.ones(2, requires_grad=True)), ValueError),
        (lambda a: a.update(seed=-1), ValueError),
        (lambda a: a.update(seed=1.5), TypeError),
    ],
)
def test_bad_input_is_a_clear_error(triton_path, change, error):
    args = dict(
        x=torch.randn(2, 3, 4, 4),
        mean=torch.zeros(3),
        std=torch.ones(3),
        alpha=torch.ones(2),
        sigma=torch.ones(2),
        seed=0,
        mask_p=0.2,
    )
    change(args)
    with pytest.raises(error, match="add_noise"):
        add_noise(**args)


def test_std_is_rechecked_after_an_in_place_change(triton_path):
    x, mean, std, alpha, sigma = random_inputs((2, 3, 4, 4), torch.float32)
    add_noise(x, mean, std, alpha, sigma, seed=0)
    std[1] = 0.0
    with pytest.raises(ValueError, match="std has zero"):
        add_noise(x, mean, std, alpha, sigma, seed=0)
