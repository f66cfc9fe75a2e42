"""Throughput of latent-diffusion training steps (eps prediction, MSE, EMA 0.9999 every step):
pdiff_fast's `fit_diffusion` on precomputed latents under its automatic backend and under
use_backend("torch"), the same loop on torch.compile(denoiser), and the reference loop, which
encodes the K parameter vectors again at every step and draws the timesteps on the host.
One timed call = `train_steps` optimiser steps on a batch of K latents.

    pytest benchmarks/test_denoiser.py [--full]
"""
import copy

import pytest

from pdiff_fast import EMA, DDPMScheduler
from pdiff_fast.pipeline.train import fit_diffusion

from . import common
from . import reference_loop as ref


def _case(benchmark, s, sizes, peer, k, steps, group):
    if peer == "reference":
        model, ae, params = s.ref_denoiser(), s.ref_autoencoder(), s.params(k)
        ema = copy.deepcopy(model).requires_grad_(False)
        diffusion = ref.Diffusion(s.device)

        def fn():
            ref.train_diffusion(diffusion, model, ema, ae, params, steps)
    else:
        model = EMA(copy.deepcopy(s.den))
        if peer == "compile":
            model.model = common.compile_or_skip(model.model)
        latents, scheduler = s.latents(k), DDPMScheduler()

        def fn():
            fit_diffusion(model, latents, scheduler, steps=steps, progress=False)
    info = {"K": k, "steps_run": steps,
            "timed": f"{steps} AdamW+EMA steps on a batch of K={k} latents of {s.latent_numel}"
                     + (" (the reference also encodes the K vectors at every step)" if peer == "reference" else ""),
            **s.work("den_train", k, steps)}
    common.time_case(benchmark, fn, s=s, sizes=sizes, peer=peer, stage="den_train", group=group, info=info)


def test_denoiser_train_step(benchmark, setup_for, sizes, cfg_name, peer):
    s = setup_for(cfg_name)
    k = sizes.den_batch[cfg_name]
    _case(benchmark, s, sizes, peer, k, sizes.train_steps, f"den_train/{cfg_name}/K={k}")


@pytest.mark.quick
@pytest.mark.parametrize("peer", ["auto", "torch", "reference"])
def test_denoiser_train_step_quick(benchmark, setup_for, sizes, peer):
    _case(benchmark, setup_for("resnet18"), sizes, peer, 4, 1, "den_train/resnet18/K=4 (quick)")
