"""Model-zoo training: pdiff_fast.tasks.zoo.train_models (every model at once under vmap, each on its
own task's batches) against a loop of zoo.train_one (one model, torch.optim.SGD, a plain loop).

    pytest benchmarks/test_zoo.py
    pytest benchmarks/test_zoo.py -m quick --benchmark-disable   # smoke run

Workload: M models of pdiff_fast.nn.models.MLP(64 -> 32 -> 2) (Flatten, Linear, LayerNorm, ReLU,
Linear; the whole network trained, D = 2210) on T synthetic tasks (Gaussian inputs, each task
labelled by its own random linear rule, 256 training samples each), `steps` SGD steps of batch
32. Both peers train on the same batches; the quick case also checks they agree. extra_info
carries models_per_s (models trained per second, the mean time of a round).

Work (the floor): FLOPs of one training step of one model (forward and backward, counted with
torch's FlopCounterMode) times steps times M; fewest bytes, read the starts and write the
trained rows once, and read each model's batches.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pdiff_fast.tasks import zoo
from pdiff_fast.nn.models import MLP
from pdiff_fast.params import ParamSpec
from pdiff_fast.evaluation.population import warm_allocator

from . import common

FEATURES, HIDDEN, CLASSES, PER_TASK, BATCH, LR = 64, 32, 2, 256, 32, 0.05


def workload(n_models: int, n_tasks: int, seed: int = 0):
    """(model, spec, starts (M, D), x (T, 256, 64), y (T, 256), counts (T,), task_of_row (M,))."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP(FEATURES, CLASSES, hidden=(HIDDEN,))
    spec = ParamSpec.from_model(model, "all")
    starts = spec.flatten([model]).expand(n_models, -1).clone()  # one shared init, as a zoo
    x = torch.randn(n_tasks, PER_TASK, FEATURES, generator=g)
    w = torch.randn(n_tasks, FEATURES, CLASSES, generator=g)
    y = torch.bmm(x, w).argmax(-1)
    counts = torch.full((n_tasks,), PER_TASK)
    task_of_row = torch.arange(n_models) % n_tasks
    return model, spec, starts, x, y, counts, task_of_row


def batched(model, spec, starts, x, y, counts, task_of_row, steps):
    return zoo.train_models(model, spec, starts, x, y, counts, task_of_row, steps=steps, lr=LR,
                            batch_size=BATCH, seed=0)[0]


def loop(model, spec, starts, x, y, counts, task_of_row, steps):
    rows = []
    for r in range(starts.shape[0]):
        t = int(task_of_row[r])
        rows.append(zoo.train_one(model, spec, starts[r], x[t, :int(counts[t])], y[t, :int(counts[t])],
                                  steps=steps, lr=LR, batch_size=BATCH, seed=0, row=r)[0])
    return torch.stack(rows)


PEERS = {"auto": batched, "reference": loop}


def work(model, spec, x, n_models: int, n_tasks: int, steps: int) -> dict:
    xb = x[0, :BATCH]
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(model(xb), torch.zeros(BATCH, dtype=torch.int64)).backward()
    model.zero_grad(set_to_none=True)
    return {"flops": fc.get_total_flops() * steps * n_models,
            "bytes_min": 2 * 4 * n_models * spec.dim + n_models * steps * BATCH * (4 * FEATURES + 8)}


@pytest.mark.parametrize("peer", list(PEERS))
@pytest.mark.parametrize("where", ["cpu", "cuda"])
@pytest.mark.parametrize("n_models,n_tasks,steps", [pytest.param(8, 2, 5, marks=pytest.mark.quick),
                                                    (64, 8, 20), (256, 8, 20)])
def test_zoo_training(benchmark, peer, where, n_models, n_tasks, steps):
    if where == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    device = torch.device(where)
    warm_allocator()
    model, spec, starts, x, y, counts, task_of_row = workload(n_models, n_tasks)
    model, starts, x, y = model.to(device), starts.to(device), x.to(device), y.to(device)
    args = (model, spec, starts, x, y, counts, task_of_row, steps)
    if n_models <= 8:  # the cheap case also checks the two peers agree
        a, b = (fn(*args) for fn in PEERS.values())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    fn = PEERS[peer]

    def call():
        out = fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    call()  # warm-up
    common.label(benchmark, group=f"zoo/mlp{FEATURES}-{HIDDEN}-{CLASSES}/M{n_models}-T{n_tasks}-S{steps}/{where}",
                 stage="zoo", peer=peer, device=device,
                 info={"M": n_models, "T": n_tasks, "steps": steps, "batch": BATCH, "D": spec.dim,
                       **work(model, spec, x, n_models, n_tasks, steps)})
    result = benchmark.pedantic(call, rounds=3, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["models_per_s"] = n_models / benchmark.stats.stats.mean
    assert result.shape == starts.shape and torch.isfinite(result).all()
