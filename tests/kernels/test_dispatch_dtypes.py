"""The dispatchers of pdiff_fast.ops send fp64 (any dtype but fp32 / fp16 / bf16) to the torch
path even with the Triton backend forced: the kernels compute in fp32."""
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU

import pytest  # noqa: E402

pytest.importorskip("triton")

from pdiff_fast import ops  # noqa: E402
from pdiff_fast.backend import use_backend  # noqa: E402

from elementwise_cases import device  # noqa: E402


def f64(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)


def test_fp64_takes_the_torch_path():
    gen = torch.Generator().manual_seed(0)
    x, eps, noise = f64(4, 9, gen=gen), f64(4, 9, gen=gen), f64(4, 9, gen=gen)
    t = torch.tensor([0, 3, 5, 9], device=device)
    coefs5 = torch.rand(5, 10, dtype=torch.float64, generator=gen).to(device)
    coefs2 = torch.rand(2, 10, dtype=torch.float64, generator=gen).to(device)
    w, b = f64(5, 3, 3, gen=gen), f64(5, gen=gen)
    xc, add = f64(2, 3, 11, gen=gen), f64(2, 3, 11, gen=gen)

    def every_op():
        return [*ops.ddpm_step(x, eps, t, noise, coefs5),
                *ops.ddim_step(x, eps, 0.4, 0.6, noise, 0.5),
                *ops.q_sample(x, t, coefs2, noise),
                ops.eps_mse(x, eps),
                ops.act_norm_conv1d(xc, w, b, padding=1, pre_act=True, add=add)]

    with use_backend("torch"):
        expected = every_op()
    with use_backend("triton"):
        got = every_op()
    for g, e in zip(got, expected):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_ddim_draws_noise_on_both_paths():
    gen = torch.Generator().manual_seed(1)
    x, eps = f64(3, 8, gen=gen).float(), f64(3, 8, gen=gen).float()
    with use_backend("triton"):
        a, _ = ops.ddim_step(x, eps, 0.4, 0.6, None, 0.5, seed=3, seed_offset=2, row_offset=5)
        b, _ = ops.ddim_step(x, eps, 0.4, 0.6, None, 0.5, seed=3, seed_offset=2, row_offset=5)
        c, _ = ops.ddim_step(x, eps, 0.4, 0.6, None, 0.5, generator=torch.Generator().manual_seed(4))
        d, _ = ops.ddim_step(x, eps, 0.4, 0.6, None, 0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(c, d)
    with use_backend("torch"):
        e, _ = ops.ddim_step(x, eps, 0.4, 0.6, None, 0.5, generator=torch.Generator().manual_seed(4))
        f, _ = ops.ddim_step(x, eps, 0.4, 0.6, None, 0.5, generator=torch.Generator().manual_seed(4))
        g, _ = ops.ddim_step(x, eps, 0.4, 0.6, None, 0.0)
    assert torch.equal(e, f) and torch.isfinite(g).all()
