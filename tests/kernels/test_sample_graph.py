"""kernels/sample_graph.py: a DDPM loop captured as a CUDA graph equals the eager loop.

Needs CUDA and compiled Triton kernels (the interpreter cannot be captured, so it skips when
TRITON_INTERPRET=1 is set). Otherwise only the argument checks run.
"""
import os

import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU

import pytest  # noqa: E402

from pdiff_fast.kernels.sample_graph import GraphedSampler  # noqa: E402

cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1",
    reason="CUDA graphs need a CUDA device and compiled (not interpreted) Triton kernels",
)
T = 1000


def test_rejects_cpu_tensors():
    with pytest.raises(ValueError):
        GraphedSampler(lambda x: x, torch.zeros(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the seed checks come after the CUDA check")
def test_rejects_bad_seed_and_row_offset_tensors():
    x = torch.zeros(2, 3, device="cuda")
    for kw in (dict(seed=torch.zeros(1, dtype=torch.int64)),
               dict(row_offset=torch.zeros(2, dtype=torch.int64, device="cuda")),
               dict(seed=torch.zeros(1, dtype=torch.int32, device="cuda"))):
        with pytest.raises(ValueError):
            GraphedSampler(lambda v: v, x, **kw)


@pytest.mark.gpu
@cuda
def test_graph_replay_matches_eager_loop(ddpm_schedule):
    pytest.importorskip("triton")
    from pdiff_fast.kernels.ddpm_step import ddpm_step

    dev = torch.device("cuda")
    coefs = ddpm_schedule("fixedsmall").tables(dev)[1]  # (5, T) step table (tests/conftest.py)
    B, M, n_steps = 8, 257, 20
    weight = torch.randn(M, M, device=dev) / M**0.5  # a stand-in denoiser: eps = tanh(x @ W)
    steps = [torch.full((B,), T - 1 - i * 50, dtype=torch.int64, device=dev) for i in range(n_steps)]
    seed = torch.zeros(1, dtype=torch.int64, device=dev)
    row_offset = torch.zeros(1, dtype=torch.int64, device=dev)

    def run(x):
        for i, t in enumerate(steps):
            eps = torch.tanh(x @ weight)
            x, _ = ddpm_step(x, eps, t, None, coefs, True, seed=seed, seed_offset=i, row_offset=row_offset)
        return x

    sampler = GraphedSampler(run, torch.randn(B, M, device=dev), seed=seed, row_offset=row_offset)
    x_init = torch.randn(B, M, device=dev)
    graphed = sampler.sample(x_init, seed=1234, row_offset=40)

    def eager(x, s, r):
        for i, t in enumerate(steps):
            x, _ = ddpm_step(x, torch.tanh(x @ weight), t, None, coefs, True, seed=s, seed_offset=i, row_offset=r)
        return x

    torch.testing.assert_close(graphed, eager(x_init.clone(), 1234, 40), rtol=1e-5, atol=1e-5)
    assert graphed.data_ptr() != sampler.static_out.data_ptr()
    assert not torch.equal(sampler.sample(x_init, seed=1235, row_offset=40), graphed)  # another seed
    assert not torch.equal(sampler.sample(x_init, seed=1234, row_offset=41), graphed)  # other rows
    assert torch.equal(sampler.sample(x_init, seed=1234, row_offset=40), graphed)  # replay is exact


@pytest.mark.gpu
@cuda
def test_warmup_callable_runs_instead_of_the_whole_loop():
    calls = []

    def run(x):
        calls.append("run")
        return x * 2

    def warm(x):
        calls.append("warmup")
        return x * 2

    sampler = GraphedSampler(run, torch.zeros(4, device="cuda"), warmup=warm)
    assert calls == ["warmup", "run"]  # run itself only once: the capture
    assert torch.equal(sampler.sample(torch.ones(4, device="cuda")), torch.full((4,), 2.0, device="cuda"))
