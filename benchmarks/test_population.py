"""Population evaluation: pdiff_fast's batched evaluate_population against the
one-model-at-a-time loop (evaluate_one_by_one), side by side in one group.

    pytest benchmarks/test_population.py
    pytest benchmarks/test_population.py -m quick --benchmark-disable   # smoke run

Workload (MNIST-1D-like): N = 200 parameter sets of a random-weight 1D CNN
(Conv1d(1,16,5)-BN-ReLU-Conv1d(16,32,3)-BN-ReLU-AvgPool-Flatten-Linear(32,10)), the sets spread
around the base model, 1000 test inputs (1, 40), batch 1024. Subsets:
  last2bn  its last two BatchNorm layers (D = 96): everything from the first BN on, the second
           conv included (~95% of the FLOPs), is per model, so batching saves little
  last1bn  its last BatchNorm layer (D = 64): both convs are the shared prefix, run once
Both peers give identical predictions (checked on the N = 10 case before timing).

Both peers run after population.warm_allocator(), in the same allocator state: glibc otherwise
page-faults every multi-MB activation in again, which on a VM costs more than the convolutions
and would flatter whichever peer allocates less.

Work (the floor): FLOPs of the shared prefix once plus N times those of the per-model rest
(counted with torch's FlopCounterMode); fewest bytes, read the inputs and the N vectors once and
write the N * 1000 predictions (int64).

Launches and host syncs per 1000 models (as if on CUDA, counted on the CPU), before and after
the CUDA tiles: `python -m benchmarks.population_counts` writes
benchmarks/results/population_counts_cpu.md; test_population_counts below checks the same
counts on a small population and prints them.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pdiff_fast.params import ParamSpec
from pdiff_fast.evaluation.population import evaluate_one_by_one, evaluate_population, warm_allocator

from . import common, population_counts

N_TEST, BATCH = 1000, 1024


def population(n_models: int, subset: str = "last-2-norm-layers", seed: int = 0):
    """(base model, spec, flat (N, D), x (1000, 1, 40), y (1000,)) with random weights."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = common.mnist1d_cnn()
    for m in base.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    base.eval()
    spec = ParamSpec.from_model(base, subset)
    flat = spec.flatten([base]) + 0.1 * torch.randn(n_models, spec.dim, generator=g)  # (N, D)
    x = torch.randn(N_TEST, 1, 40, generator=g)
    y = torch.randint(0, 10, (N_TEST,), generator=g)
    return base, spec, flat, x, y


@torch.no_grad()
def work(base: nn.Sequential, spec: ParamSpec, x: torch.Tensor, n_models: int) -> dict:
    """FLOPs and fewest bytes of evaluating n_models parameter sets on x: the children before the
    first one holding a generated parameter run once, the rest once per model."""
    generated = {seg.name for seg in spec.segments}
    first = min(i for i, child in enumerate(base)
                if any(f"{i}.{name}" in generated for name, _ in child.named_parameters()))
    with FlopCounterMode(display=False) as prefix:
        h = base[:first](x)
    with FlopCounterMode(display=False) as rest:
        base[first:](h)
    return {"flops": prefix.get_total_flops() + n_models * rest.get_total_flops(),
            "bytes_min": 4 * (x.numel() + n_models * spec.dim) + 8 * n_models * x.shape[0]}


PEERS = {
    "auto": lambda *a: evaluate_population(*a, batch_size=BATCH),
    "reference": lambda *a: evaluate_one_by_one(*a, batch_size=BATCH),
}


SUBSETS = {"last2bn": "last-2-norm-layers", "last1bn": "last-1-norm-layers"}


def _to(args, device):
    base, spec, flat, x, y = args
    return base.to(device), spec, flat.to(device), x.to(device), y.to(device)


@pytest.mark.parametrize("peer", list(PEERS))
@pytest.mark.parametrize("where", ["cpu", "cuda"])
@pytest.mark.parametrize("subset,n_models", [pytest.param("last2bn", 10, marks=pytest.mark.quick),
                                             ("last2bn", 200), ("last1bn", 200),
                                             ("last2bn", 1000), ("last1bn", 1000)])
def test_population_eval(benchmark, peer, where, subset, n_models):
    device = where
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if device == "cpu" and n_models > 200:
        pytest.skip("N = 1000 is timed on CUDA only (minutes on a CPU for the loop)")
    warm_allocator()
    args = _to(population(n_models, SUBSETS[subset]), device)
    if n_models <= 10:  # the cheap case also checks the two peers agree
        a, b = (fn(*args) for fn in PEERS.values())
        assert torch.equal(a.predictions, b.predictions)
    fn = PEERS[peer]

    def call():
        out = fn(*args)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    call()  # warm-up: oneDNN primitives / CUDA kernels, allocator
    common.label(benchmark, group=f"population/cnn1d-{subset}/N{n_models}/{device}", stage="population",
                 peer=peer, device=torch.device(device),
                 info={"N": n_models, "D": args[1].dim, "n_test": N_TEST, **work(*args[:2], args[3], n_models)})
    result = benchmark.pedantic(call, rounds=3 if n_models <= 10 or device == "cuda" else 2, iterations=1)
    assert result.finite.all()


@pytest.mark.quick
def test_population_counts():
    """The evaluator on CUDA tiles, counted on CPU tensors (benchmarks/population_counts.py): one
    tile for the whole population, and a fixed handful of host syncs whatever the tiles (the
    evaluator before issue 23 part 4 had three per tile, 6010 per 1000 models)."""
    args = population_counts.workload(50, widths=(1, 1))  # the benchmark's ops on thin layers
    runs = {}
    for name, tile in (("device-sized tile", population_counts.cuda_tile_pairs()),
                       ("1 GiB budget", population_counts.cuda_tile_pairs(memory_budget_bytes=1 << 30))):
        r = population_counts.count_run(population_counts.population, args, tile_pairs=tile)
        runs[name] = r
        print(f"\npopulation counts, N = 50 on CUDA tiles ({name}, {tile} pairs): {r['tiles']} tiles, "
              f"{r['launches']} launches, {r['syncs']} syncs {r['sync_kinds']}")
    assert runs["device-sized tile"]["tiles"] == 1 and runs["1 GiB budget"]["tiles"] == 2
    assert runs["device-sized tile"]["syncs"] == runs["1 GiB budget"]["syncs"] <= 12
