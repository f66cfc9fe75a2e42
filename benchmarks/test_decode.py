"""Throughput of turning N sampled latents into N parameter sets: decode, then unflatten.
pdiff_fast decodes in generate()'s chunks and unflattens once into stacked per-tensor batches
(`ParamSpec.unflatten_stacked`, ready for a vmapped evaluation), under its automatic backend
and under use_backend("torch"); torch.compile(autoencoder.decode) runs the same; the reference
decodes one batch and writes each vector into the network one model at a time
(`partial_reverse_tomodel`). Evaluating the models is timed in test_population.py.

    pytest benchmarks/test_decode.py [--full]
"""
import pytest

from . import common
from . import reference_loop as ref


def _case(benchmark, s, sizes, peer, n, group):
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
    _case(benchmark, setup_for(cfg_name), sizes, peer, n, f"decode_unflatten/{cfg_name}/N={n}")


@pytest.mark.quick
@pytest.mark.parametrize("peer", ["auto", "torch", "reference"])
def test_decode_unflatten_quick(benchmark, setup_for, sizes, peer):
    _case(benchmark, setup_for("resnet18"), sizes, peer, 1, "decode_unflatten/resnet18/N=1 (quick)")
