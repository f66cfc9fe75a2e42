"""The autoencoder's two stages (pdiff_fast/autoencoder.py): training it, and decoding latents.

ae_train: autoencoder training steps (reference v1: AdamW lr 1e-3, wd 2e-6, full batch, MSE, input
and latent noise): pdiff_fast's `fit_autoencoder` under its automatic backend and under
use_backend("torch"), the same loop on torch.compile(autoencoder), and the reference loop
(benchmarks/reference_loop.py). One timed call = `train_steps` optimiser steps on K vectors.

decode_unflatten: turning N sampled latents into N parameter sets, decode then unflatten.
pdiff_fast decodes in generate()'s chunks and unflattens once into stacked per-tensor batches
(`ParamSpec.unflatten_stacked`, ready for a vmapped evaluation), under its automatic backend
and under use_backend("torch"); torch.compile(autoencoder.decode) runs the same; the reference
decodes one batch and writes each vector into the network one model at a time
(`partial_reverse_tomodel`). Evaluating the models is timed in test_population.py.

    pytest benchmarks/test_autoencoder.py [--full]     # or: pytest tests benchmarks -m autoencoder
"""
import copy

import pytest

from pdiff_fast.pipeline.train import fit_autoencoder

from . import common
from . import reference_loop as ref


def _train_case(benchmark, s, sizes, peer, k, steps, group):
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
    _train_case(benchmark, s, sizes, peer, k, sizes.train_steps, f"ae_train/{cfg_name}/K={k}")


@pytest.mark.quick
@pytest.mark.parametrize("peer", ["auto", "torch", "reference"])
def test_ae_train_step_quick(benchmark, setup_for, sizes, peer):
    _train_case(benchmark, setup_for("resnet18"), sizes, peer, 2, 1, "ae_train/resnet18/K=2 (quick)")


def _decode_case(benchmark, s, sizes, peer, n, group):
    z = s.latents(n)  # (N, C, L)
    if peer == "reference":
        model, flat_z = s.ref_autoencoder(), z.reshape(n, 1, -1)

        def fn():
            ref.decode_and_unflatten(model, flat_z, s.latent_shape, s.net, s.names)
    else:
        decode = s.compiled("decode") if peer == "compile" else s.ae.decode

        def fn():
            common.pdiff_decode_unflatten(decode, s, z)
    info = {"N": n, "tensors": len(s.spec), "timed": f"decode N={n} latents to D={s.D} and unflatten into "
                                                     f"{len(s.spec)} tensors per model", **s.work("decode", n)}
    common.time_case(benchmark, fn, s=s, sizes=sizes, peer=peer, stage="decode_unflatten", group=group, info=info)


def test_decode_unflatten(benchmark, setup_for, sizes, cfg_name, n, peer):
    _decode_case(benchmark, setup_for(cfg_name), sizes, peer, n, f"decode_unflatten/{cfg_name}/N={n}")


@pytest.mark.quick
@pytest.mark.parametrize("peer", ["auto", "torch", "reference"])
def test_decode_unflatten_quick(benchmark, setup_for, sizes, peer):
    _decode_case(benchmark, setup_for("resnet18"), sizes, peer, 1, "decode_unflatten/resnet18/N=1 (quick)")
