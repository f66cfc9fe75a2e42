"""Throughput of sampling N latents by reverse diffusion (DDPM, 1000 steps; DDIM, 50 steps,
eta 0.05): pdiff_fast's `sample_latents` as generate() runs it (seeded micro-batches, in chunks) under
its automatic backend and under use_backend("torch"), generate(cuda_graph=True)'s captured
GraphedLatentSampler (DDPM on CUDA), the same loop on torch.compile(denoiser), and the reference loop
(host noise, host timesteps, `extract` gathers and a host copy of x_t at every step, one batch).

A timed call runs the first `steps_run` reverse steps of the schedule (extra_info says how many
of how many); the report divides by steps_run for the time per step and extrapolates nothing.
With --full every step of the schedule runs. Decoding is timed in test_autoencoder.py.

    pytest benchmarks/test_sample.py [--full]     # or: pytest tests benchmarks -m sample
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pdiff_fast.diffusion.sample import GraphedLatentSampler

from . import common
from . import reference_loop as ref


def _case(benchmark, s, sizes, peer, sampler, n, steps, group):
    scheduler, schedule = common.make_scheduler(sampler, steps)
    if peer == "reference":
        model, diffusion = s.ref_denoiser(), ref.Diffusion(s.device)
        shape = (n, 1, s.latent_numel)  # the reference samples (N, 1, C * L)
        timesteps = scheduler.timesteps()
        if sampler == "ddpm":
            def fn():
                diffusion.sample(model, shape, timesteps, s.device)
        else:
            def fn():
                diffusion.sample_ddim(model, shape, timesteps, schedule, common.DDIM_ETA, s.device)
    elif peer == "graph":
        if s.device.type != "cuda" or sampler != "ddpm":
            pytest.skip("CUDA-graph sampling: DDPM on CUDA only")
        graphed = GraphedLatentSampler(s.den, scheduler, n, s.latent_shape, s.device, s.sample_plan(n).grain)

        def fn():
            graphed.sample(seed=0)
    else:
        model = s.compiled("denoiser") if peer == "compile" else s.den

        def fn():
            common.pdiff_sample(model, scheduler, n, s, seed=0)
    info = {"N": n, "sampler": sampler, "steps_run": steps, "steps_schedule": len(schedule),
            "timed": f"first {steps} of {len(schedule)} {sampler.upper()} steps for N={n}; per step = time / {steps}; "
                     "not extrapolated",
            **s.work("sample", n, steps)}
    common.time_case(benchmark, fn, s=s, sizes=sizes, peer=peer, stage=f"sample_{sampler}", group=group, info=info)


@pytest.mark.parametrize("peer", [*common.PEERS, "graph"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sample(benchmark, setup_for, sizes, cfg_name, n, peer, sampler):
    s = setup_for(cfg_name)
    steps = sizes.ddpm_steps if sampler == "ddpm" else sizes.ddim_steps
    _case(benchmark, s, sizes, peer, sampler, n, steps, f"sample_{sampler}/{cfg_name}/N={n}")


@pytest.mark.quick
@pytest.mark.parametrize("peer", ["auto", "torch", "reference"])
def test_sample_quick(benchmark, setup_for, sizes, peer):
    _case(benchmark, setup_for("resnet18"), sizes, peer, "ddpm", 1, 2, "sample_ddpm/resnet18/N=1 (quick)")


@pytest.mark.quick
def test_launch_count(tmp_path, capsys):
    """Launches and host time per DDPM step at N = 1000 (benchmarks/launch_count.py), printed. In a
    subprocess: on a CPU it needs Triton's interpreter, which is switched on before triton's import."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, "-m", "benchmarks.launch_count", "--out", str(tmp_path)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(next(tmp_path.glob("launch_count_*.json")).read_text())
    after, before = r["plans"]["after"], r["plans"]["before"]
    assert after["chunks"] == 1 and after["launches"] < before["launches"]
    with capsys.disabled():
        print(f"\nlaunches and host time per DDPM step, N = {r['N']} ({r['device']}):\n{done.stdout}")
