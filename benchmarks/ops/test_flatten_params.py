"""flatten / unflatten of N models' parameter subsets: the extension pdiff_fast._C (one pass
over a segment table) against a Python loop of torch.cat / copy_ (the torch reference),
side by side in one group per (op, subset, N).

    pytest benchmarks/ops/test_flatten_params.py      # or: pytest tests benchmarks -m flatten_params

Subsets of the MNIST-1D CNN of the population benchmark (common.mnist1d_cnn): its last two
BatchNorm layers (4 tensors, D = 96), and all 10 of its parameters (D = 2,090). Sources are the
models' live parameters. Work: no FLOPs; fewest bytes, every op reads the N * D values once and
writes them once (fp32).
"""
from __future__ import annotations

import pytest
import torch

from pdiff_fast.ops import flatten_params as fp
from pdiff_fast.params import ParamSpec

from .. import common

_C = pytest.importorskip("pdiff_fast._C", reason="the extension pdiff_fast._C is not built")


def models_and_spec(n_models: int, subset: str):
    torch.manual_seed(0)
    models = [common.mnist1d_cnn() for _ in range(n_models)]
    spec = ParamSpec.from_model(models[0], subset)
    return [spec.tensors_of(m) for m in models], spec


# op -> {peer: fn(sources, spec, flat)}. "auto" calls the extension's ops through the *_ext
# functions (what the automatic backend picks for these ops once _C is built), timed without the
# public functions' argument checks; "reference" calls the torch functions. Neither goes through
# backend.choose, so a use_backend(...) around them would change nothing.
OPS = {
    "flatten": {
        "auto": lambda src, spec, flat: fp.flatten_params_ext(src, spec.numels, torch.float32),
        "reference": lambda src, spec, flat: fp.flatten_params_torch(src, spec.numels, torch.float32),
    },
    "unflatten_into": {
        "auto": lambda src, spec, flat: fp.unflatten_into_ext(flat, src),
        "reference": lambda src, spec, flat: fp.unflatten_into_torch(flat, src),
    },
    "unflatten_params": {
        "auto": lambda src, spec, flat: fp.unflatten_params_ext(flat, spec.shapes, spec.dtypes),
        "reference": lambda src, spec, flat: fp.unflatten_params_torch(flat, spec.shapes, spec.dtypes),
    },
}


@pytest.mark.parametrize("peer", ["auto", "reference"])
@pytest.mark.parametrize("subset", ["last-2-norm-layers", "all"])
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("n_models", [pytest.param(7, marks=pytest.mark.quick), 200])
def test_flatten_params(benchmark, op, subset, peer, n_models):
    sources, spec = models_and_spec(n_models, subset)
    flat = fp.flatten_params_torch(sources, spec.numels)  # (N, D)
    fn = OPS[op][peer]
    fn(sources, spec, flat)  # warm-up
    short = "last2bn" if subset.startswith("last") else "all"
    common.label(benchmark, group=f"{op}/cnn1d-{short}/N{n_models}", stage=op, peer=peer,
                 device=torch.device("cpu"), info={"N": n_models, "D": spec.dim, "tensors_per_model": len(spec),
                                                   "flops": 0, "bytes_min": 2 * 4 * n_models * spec.dim})
    benchmark.pedantic(fn, args=(sources, spec, flat), rounds=20, iterations=5, warmup_rounds=1)
