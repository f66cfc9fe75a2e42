"""Recipe "span": checkpoints that span accuracy, each labelled on a validation split.

A prompted generator (pdiff_fast.prompted) learns the map from accuracy to parameters, so its
training data must hold bad, middling and good parameters alike. p-diff's recipes (v1, v2) keep
the subset near one optimum (MNIST-1D's default subset: 96-98% test accuracy); here each run
climbs to it from far away:

1. the base model is trained as in v2, on the training data minus a validation split
   (pdiff_fast.prompted.validation);
2. `trajectories` (T) runs each start from the base subset plus Gaussian noise of `span_noise`
   times each tensor's RMS, and train the subset for SPAN_EPOCHS epochs by SGD with the norm layers
   frozen, as v2, at SPAN_LR_FACTOR times v2's lr (their own data order, generator seed + 1 + j);
3. every step of a run is a candidate, labelled on the validation split; the run keeps its share
   of the K checkpoints chosen evenly in validation accuracy (`even_in_accuracy`). Accuracy climbs
   fastest at first, so checkpoints taken evenly in steps would crowd the top of the range and
   leave a prompt for 60% few examples. Measured (MNIST-1D, CNN1d, subset last-2-norm-layers,
   D = 384, span_noise 1, batch 18, base model 94.5% on validation in that experiment): at lr 0.01 validation goes
   38 -> 67 in 4 steps and 91 by step 32, so even a choice even in accuracy found few candidates
   below 80% (population median 82%, the generator answered every prompt below 72% with ~69%);
   at lr 0.001, 26 -> 58 (step 20) -> 74 (40) -> 80 (70) -> 87 (190): candidates all the way up.

All runs start from the same noisy subset (one draw, generator `seed`): the population is one
bundle of paths from there to the optimum, which a small generator learns far better than paths
from independent starts (measured: generated models 5.5x farther from the originals than those
lie from each other with independent starts, and no prompt honoured).

Every checkpoint records its test accuracy too (`Population.accuracy`), which only the report reads.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data import TensorData, carve_validation
from ..params import ParamSpec, _set_norm_eval, _subset_params
from .collect import RECIPES as _RECIPES
from .collect import (Population, _collect, _epoch, _progress, _shares, _train_base_state, accuracy,
                      v2_subset_lr)


SPAN_LR_FACTOR = 0.1  # the climb slowed down: candidates at every accuracy (module docstring)
SPAN_EPOCHS = 3  # epochs of subset training per run, so the slower climb still reaches the top


def even_in_accuracy(acc: list[float], n: int) -> list[int]:
    """Indices of n of the candidates whose accuracies `acc` lie closest to n targets evenly spaced from
    the lowest to the highest (each candidate used once; ties: the earlier one), in index order."""
    if not 1 <= n <= len(acc):
        raise ValueError(f"collect span: {n} checkpoints cannot be chosen from {len(acc)} steps")
    lo, hi = min(acc), max(acc)
    free, chosen = set(range(len(acc))), []
    for i in range(n):
        target = hi if n == 1 else lo + (hi - lo) * i / (n - 1)
        best = min(free, key=lambda j: (abs(acc[j] - target), j))
        free.remove(best)
        chosen.append(best)
    return sorted(chosen)


def _perturb(model: nn.Module, spec: ParamSpec, scale: float, gen: torch.Generator) -> None:
    """subset += scale * rms(tensor) * N(0, 1), tensor by tensor, from `gen`."""
    with torch.no_grad():
        for p in _subset_params(model, spec):
            rms = p.detach().float().pow(2).mean().sqrt()
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            p.add_((scale * rms * noise).to(p.device, p.dtype))


def collect_span(model: nn.Module, data: TensorData, spec: ParamSpec, *, epochs: int = 10, k: int = 200,
                 lr: float = 0.1, subset_lr: float | None = None, batch_size: int = 128, seed: int = 0,
                 trajectories: int = 4, progress: bool = True, val_fraction: float = 0.1,
                 span_noise: float = 1.0) -> Population:
    """The recipe of the module docstring. The batch is small enough for 4 candidate steps per checkpoint
    of the largest share in one epoch, the lr SPAN_LR_FACTOR times v2's (`v2_subset_lr`). `model` is
    left in the base state.
    Population.val_accuracy holds the labels; meta records the split's size."""
    if not span_noise >= 0:
        raise ValueError(f"span_noise must be >= 0, got {span_noise!r}")
    shares = _shares(k, trajectories)
    train, x_val, y_val = carve_validation(data, val_fraction, seed)
    n_train = len(train.y_train)
    bs = min(batch_size, max(1, n_train // (4 * shares[0])))
    v2_lr = v2_subset_lr(model, spec, subset_lr, lr, epochs, batch_size, bs)
    run_lr = SPAN_LR_FACTOR * (v2_lr if v2_lr is not None else lr * 0.1)
    base_state = _train_base_state(model, train, spec, epochs, lr, batch_size, seed, _progress(progress))

    def run(run_model, opt, gen, n, save):
        _perturb(run_model, spec, span_noise, torch.Generator().manual_seed(seed))  # one start for every run
        rows, accs = [], []

        def on_step(_):  # every step is a candidate; its index counts over the epochs
            rows.append(spec.flatten([run_model])[0].clone())
            accs.append(accuracy(run_model, *val))
            _set_norm_eval(run_model)  # accuracy() restored train mode

        for _ in range(SPAN_EPOCHS):
            _epoch(run_model, opt, train, bs, gen, on_step=on_step, freeze_norm=True)
        for step in even_in_accuracy(accs, n):
            spec.load_into(run_model, rows[step])
            save(step)

    device = next(iter(model.parameters())).device
    val = (x_val.to(device), y_val.to(device))
    params, acc, traj, step, val_acc = _collect(model, train, spec, shares, run, lr, run_lr, seed,
                                                "collect span checkpoints", progress, val=val)
    meta = {"recipe": "span", "epochs": epochs, "k": k, "lr": lr, "batch_size": bs, "seed": seed,
            "trajectories": trajectories, "subset_lr": run_lr, "subset_epochs": SPAN_EPOCHS,
            "span_noise": span_noise, "val_fraction": val_fraction, "n_val": len(y_val), "n_train": n_train}
    return Population(params, acc, spec, base_state, meta, traj, step, val_acc)


RECIPES = {**_RECIPES, "span": collect_span}  # every collection recipe, by the name a config gives
