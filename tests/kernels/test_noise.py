"""kernels/noise.py: the in-kernel noise of ddpm_step, ddim_step and q_sample is a pure function
of (seed, seed_offset, global row, column), checked against a NumPy Philox written from the
contract in the module docstring."""
import numpy as np
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU

import pytest  # noqa: E402

pytest.importorskip("triton")

from pdiff_fast.kernels import ddim_step as ddim_mod  # noqa: E402
from pdiff_fast.kernels import ddpm_step as ddpm_mod  # noqa: E402
from pdiff_fast.kernels import q_sample as q_mod  # noqa: E402
from pdiff_fast.ops.ddim_step import ddim_step_torch  # noqa: E402
from pdiff_fast.ops.ddpm_step import ddpm_step_torch  # noqa: E402

from elementwise_cases import device  # noqa: E402

M32 = 0xFFFFFFFF


def reference_noise(seed: int, seed_offset: int, rows, M: int) -> np.ndarray:
    """(len(rows), M) float32: column c of global row g is normal c % 4 of Philox-4x32-10 with
    key (seed ^ (seed_offset * 0x9E3779B9 mod 2**32) << 32) and counter g * cdiv(M, 4) + c // 4."""
    m4 = -(-M // 4)
    g = np.asarray(rows, dtype=np.uint64)[:, None]
    counter = g * np.uint64(m4) + np.arange(m4, dtype=np.uint64)[None, :]
    c0, c1 = counter & np.uint64(M32), counter >> np.uint64(32)
    c2 = c3 = np.zeros_like(c0)
    key = seed ^ (((seed_offset * 0x9E3779B9) & M32) << 32)
    k0, k1 = np.uint64(key & M32), np.uint64(key >> 32)
    for _ in range(10):
        p0, p1 = np.uint64(0xCD9E8D57) * c2, np.uint64(0xD2511F53) * c0  # exact: < 2**64
        c0, c2 = (p0 >> np.uint64(32)) ^ c1 ^ k0, (p1 >> np.uint64(32)) ^ c3 ^ k1
        c1, c3 = p0 & np.uint64(M32), p1 & np.uint64(M32)
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & np.uint64(M32), (k1 + np.uint64(0xBB67AE85)) & np.uint64(M32)

    def uniform(c):
        x = c.astype(np.uint32).view(np.int32).astype(np.int64)
        return (np.where(x < 0, -x - 1, x) * 4.6566127342e-10).astype(np.float32)

    def normals(u1, u2):
        r = np.sqrt(np.float32(-2.0) * np.log(np.maximum(np.float32(1e-7), u1)))
        th = np.float32(6.283185307179586) * u2
        return r * np.cos(th), r * np.sin(th)

    n1, n2 = normals(uniform(c0), uniform(c1))
    n3, n4 = normals(uniform(c2), uniform(c3))
    return np.stack([n1, n2, n3, n4], axis=-1).reshape(len(rows), 4 * m4)[:, :M]


def q_noise(shape, **kw):
    """The noise q_sample draws (it returns it)."""
    coefs = torch.rand(2, 10, device=device)
    x0 = torch.zeros(shape, device=device)
    t = torch.zeros(shape[0], dtype=torch.int64, device=device)
    return q_mod.q_sample(x0, t, coefs, **kw)[1]


@pytest.mark.parametrize("shape, seed, seed_offset, row_offset", [
    ((3, 13), 7, 0, 0),
    ((5, 4), 2**40 + 3, 999, 12),
    ((2, 2051), 1, 2**32 - 1, 3),  # several column tiles per row
    ((4, 3, 5), 123, 5, (2**32 // 4) - 2),  # the counter crosses 2**32 inside the tile
])
def test_matches_reference_philox(shape, seed, seed_offset, row_offset):
    z = q_noise(shape, seed=seed, seed_offset=seed_offset, row_offset=row_offset)
    B, M = shape[0], int(np.prod(shape[1:]))
    ref = reference_noise(seed, seed_offset, range(row_offset, row_offset + B), M)
    np.testing.assert_allclose(z.reshape(B, M).cpu().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_same_arguments_same_bits_and_chunking_does_not_matter():
    whole = q_noise((9, 37), seed=5, seed_offset=3, row_offset=100)
    assert torch.equal(whole, q_noise((9, 37), seed=5, seed_offset=3, row_offset=100))
    chunks = [(0, 1), (1, 5), (5, 9)]  # different row tiles: 1, 4 and 4 rows
    parts = [q_noise((b - a, 37), seed=5, seed_offset=3, row_offset=100 + a) for a, b in chunks]
    assert torch.equal(torch.cat(parts), whole)
    # tensor forms of seed and row_offset (what a CUDA graph reads) give the same bits
    seed_t = torch.tensor([5], dtype=torch.int64, device=device)
    row_t = torch.tensor([104], dtype=torch.int64, device=device)
    assert torch.equal(q_noise((5, 37), seed=seed_t, seed_offset=3, row_offset=row_t), whole[4:])


def test_seed_offset_is_mixed_not_added():
    a = q_noise((3, 64), seed=0, seed_offset=1)
    assert not torch.equal(a, q_noise((3, 64), seed=1, seed_offset=0))
    assert not torch.equal(a, q_noise((3, 64), seed=0, seed_offset=2))
    assert not torch.equal(a, q_noise((3, 64), seed=0, seed_offset=1, row_offset=1))


def test_standard_normal():
    z = q_noise((8, 1000), seed=2024, seed_offset=17, row_offset=5)
    assert abs(z.mean().item()) < 0.03
    assert abs(z.std().item() - 1.0) < 0.03
    assert abs((z[:, 1:] * z[:, :-1]).mean().item()) < 0.03  # neighbours, also within a Philox call
    assert abs((z[1:] * z[:-1]).mean().item()) < 0.03


def test_the_three_ops_draw_the_same_noise():
    shape, kw = (6, 3, 7), dict(seed=31, seed_offset=4, row_offset=9)
    z = q_noise(shape, **kw)
    gen = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(shape, generator=gen).to(device), torch.randn(shape, generator=gen).to(device)
    coefs = torch.rand(5, 10, device=device) * 0.5
    t = torch.arange(1, 7, device=device)
    x_prev, _ = ddpm_mod.ddpm_step(x_t, eps, t, None, coefs, True, **kw)
    torch.testing.assert_close(x_prev, ddpm_step_torch(x_t, eps, t, z, coefs, True)[0], rtol=1e-5, atol=1e-5)
    x_prev, _ = ddim_mod.ddim_step(x_t, eps, 0.5, 0.7, None, 0.8, False, **kw)
    torch.testing.assert_close(x_prev, ddim_step_torch(x_t, eps, 0.5, 0.7, z, 0.8, False)[0],
                               rtol=1e-5, atol=1e-5)


def test_bad_noise_arguments():
    for kw in (dict(seed=-1), dict(seed=2**63), dict(seed=0, seed_offset=-1), dict(seed=0, seed_offset=2**32),
               dict(seed=0, row_offset=-1), dict(seed=torch.zeros(1, dtype=torch.int32, device=device)),
               dict(seed=0, row_offset=torch.zeros(2, dtype=torch.int64, device=device))):
        with pytest.raises(ValueError):
            q_noise((2, 8), **kw)
