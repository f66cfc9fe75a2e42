"""Throughput of autoencoder training steps (reference v1: AdamW lr 1e-3, wd 2e-6, full batch,
MSE, input and latent noise): pdiff_fast's `fit_autoencoder` under its automatic backend and under
use_backend("torch"), the same loop on torch.compile(autoencoder), and the reference loop
(benchmarks/reference_loop.py). One timed call = `train_steps` optimiser steps on K vectors.

    pytest benchmarks/test_autoencoder.py [--full]
"""
import copy

import pytest

from pdiff_fast.train import fit_autoencoder

from . import common
from . import reference_loop as ref


def _case(benchmark, s, sizes, peer, k, steps, group):
    data = s.params(k)  # (K, D)
    if peer == "reference":
        model = s.ref_autoencoder()

        def fn():
            ref.train_autoencoder(model, data, steps)
    else:
        ae = copy.deepcopy(s.ae)
        model = common.compile_or_skip(ae) if peer == "compile" else ae

        def fn():
            fit_autoencoder(model, data, steps=steps, progress=False)
    info = {"K": k, "steps_run": steps, "timed": f"{steps} AdamW steps on a batch of K={k} vectors of D={s.D}",
            **s.work("ae_train", k, steps)}
    common.time_case(benchmark, fn, s=s, sizes=sizes, peer=peer, stage="ae_train", group=group, info=info)


def test_ae_train_step(benchmark, setup_for, sizes, cfg_name, peer):
    s = setup_for(cfg_name)
    k = sizes.ae_batch[cfg_name]
    _case(benchmark, s, sizes, peer, k, sizes.train_steps, f"ae_train/{cfg_name}/K={k}")


@pytest.mark.quick
@pytest.mark.parametrize("peer", ["auto", "torch", "reference"])
def test_ae_train_step_quick(benchmark, setup_for, sizes, peer):
    _case(benchmark, setup_for("resnet18"), sizes, peer, 2, 1, "ae_train/resnet18/K=2 (quick)")
