"""Fine-tuning from generated parameters: does training start better from p-diff's generated
subsets than from the original checkpoints, or from random values?

    starts = {"generated": gen, "original": orig, "random": random_starts(spec, orig, 10, seed=0)}
    result = finetune(base_model, spec, data, starts, epochs=(0, 1, 5))
    print(format_finetune_table(result)); plot_finetune(result, "finetune.png")

A start is an (n, D) tensor of subset values (laid out by `spec`); the rest of the network is
`base_model`'s. Each row is trained the way pdiff_fast.pipeline.collect trains a subset (freeze_norm):
only the subset's parameters move, BatchNorm layers stay in eval mode (running statistics
frozen), SGD with momentum 0.9 and weight decay 5e-4 (collect's `_sgd`), at a constant `lr`.
Every row of every start sees the same batches in the same order (one generator seeded with
`seed`, one permutation of the training set per epoch, as collect's `_epoch` draws them), so the
starts are compared on equal terms. Test accuracy is measured after each epoch count in
`epochs` (0: the start itself) with pdiff_fast.evaluation.population.evaluate_population.

How it runs: all rows are trained at once. The subset's tensors are stacked, (m, *shape) per
name, and the model runs under torch.func.vmap(functional_call) over them; the rest of the
network is unbatched, so the layers before the first subset tensor run once per batch for all
rows. The per-row losses are summed and back-propagated: rows are independent, so each row's
gradient is that of its own loss. The optimizer is collect's `_sgd` (torch.optim.SGD) over the
stacked tensors: its update (weight decay, momentum buffer, step) is elementwise, so on stacked
tensors it is exactly per-row SGD. A model that does not run under vmap (an op without a
batching rule) is trained row by row in a plain loop instead (a warning says so). Rows are
trained in chunks sized so that the activations kept for the backward pass stay within
memory_budget_bytes, and on CPU within a cache-sized tile (CPU_TILE_BYTES of forward
activations): one training step of 30 rows of the MNIST-1D CNN (last two BatchNorm layers,
batch 128, one thread, 2-core CPU) took 73 ms row by row, 84 ms under vmap in chunks of 4 to 8
rows and 98 ms in one chunk of 30. On CPU the work is compute-bound and batching gains nothing
(the plain loop is ~15% faster); batching is for GPUs, where one model's kernels are too small
to fill the device.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..data import TensorData
from .judge import summary
from ..params import ParamSpec, Standardizer, _set_norm_eval, _sgd, _subset_params
from .population import evaluate_population, warm_allocator

MEMORY_SAFETY = 2  # bytes kept per (row, sample): the forward's activations, and their gradients
CPU_TILE_BYTES = 32 << 20  # on CPU, the forward activations of one chunk of rows: cache-sized (docstring)


def _check_epochs(epochs) -> list[int]:
    epochs = list(epochs)
    if not epochs:
        raise ValueError("finetune: epochs is empty (give epoch counts, e.g. (0, 1, 5))")
    for e in epochs:
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"finetune: epochs must be non-negative ints, got {e!r} in {epochs}")
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"finetune: epochs must be sorted in increasing order without repeats, got {epochs}")
    return epochs


def _check_starts(spec: ParamSpec, starts: dict[str, torch.Tensor]) -> None:
    if not starts:
        raise ValueError("finetune: starts is empty (give at least one start set, e.g. {'generated': flat})")
    for name, flat in starts.items():
        if not isinstance(flat, torch.Tensor) or flat.dim() != 2 or flat.shape[1] != spec.dim:
            shape = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
            raise ValueError(f"finetune: start {name!r} must be an (n, {spec.dim}) tensor (D = the subset's "
                             f"width), got {shape}")
        if flat.shape[0] == 0:
            raise ValueError(f"finetune: start {name!r} holds no rows")


def _bytes_per_sample(model: nn.Module, probe: torch.Tensor) -> int:
    """Output bytes of every leaf module on one sample: what autograd keeps of one row's forward."""
    total = 0

    def record(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    return max(1, total // probe.shape[0])


def _losses(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
            use_vmap: bool) -> torch.Tensor:
    """(m,) cross-entropy of each row's model on the batch (x, y)."""
    def one(p):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    if use_vmap:
        return vmap(one, randomness="different")(params)
    m = next(iter(params.values())).shape[0]
    return torch.stack([one({k: v[i] for k, v in params.items()}) for i in range(m)])


def _vmap_works(model: nn.Module, spec: ParamSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether a forward and backward pass under vmap runs for this model (on two rows, two samples)."""
    params = {k: v.clone().requires_grad_() for k, v in spec.unflatten_stacked(flat[:2]).items()}
    try:
        _losses(model, params, x[:2], y[:2], True).sum().backward()
        return True
    except Exception:  # noqa: BLE001 -- any op without a batching rule: train row by row instead
        return False


def _rows_of(spec: ParamSpec, params: dict[str, torch.Tensor]) -> torch.Tensor:
    m = next(iter(params.values())).shape[0]
    return torch.cat([params[n].detach().reshape(m, -1).float() for n in spec.names], 1)


def _train(model: nn.Module, spec: ParamSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
           perms: list[torch.Tensor], epochs: list[int], lr: float, batch_size: int,
           use_vmap: bool) -> list[torch.Tensor]:
    """Train the rows of flat (m, D) together; their values after each epoch count in epochs."""
    params = {k: v.detach().clone().requires_grad_() for k, v in spec.unflatten_stacked(flat).items()}
    opt = _sgd(list(params.values()), lr)
    snapshots = [flat.float().clone()] if epochs[0] == 0 else []
    for epoch, perm in enumerate(perms, start=1):
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            _losses(model, params, x[idx], y[idx], use_vmap).sum().backward()
            opt.step()
        if epoch in epochs:
            snapshots.append(_rows_of(spec, params))
    return snapshots


def finetune_rows(base_model: nn.Module, spec: ParamSpec, data: TensorData, flat: torch.Tensor, *,
                  epochs=(0, 1, 5), lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                  memory_budget_bytes: int = 1 << 30) -> list[torch.Tensor]:
    """Train the subset values of every row of flat (n, D), all on the same batches (see
    `finetune`); returns their values after each epoch count in `epochs`, one (n, D) float32
    tensor per count (count 0: the rows themselves). base_model is not modified."""
    epochs = _check_epochs(epochs)
    if flat.dim() != 2 or flat.shape[1] != spec.dim or flat.shape[0] == 0:
        raise ValueError(f"finetune: rows must be (n, {spec.dim}) with n >= 1, got {tuple(flat.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"finetune: batch_size must be a positive int, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"finetune: lr must be positive, got {lr!r}")
    spec.check(base_model)
    device = next(base_model.parameters()).device
    flat = flat.detach().to(device, torch.float32)
    x, y = data.x_train.to(device), data.y_train.to(device)

    model = copy.deepcopy(base_model)
    _subset_params(model, spec)  # requires_grad on the subset only: the rest stays frozen
    model.train()
    _set_norm_eval(model)  # BatchNorm: running statistics frozen, as collect's freeze_norm
    gen = torch.Generator().manual_seed(seed)
    # one permutation per epoch, shared by every row and chunk: the batches of collect._epoch
    # run with a generator seeded with `seed`
    perms = [torch.randperm(len(y), generator=gen).to(device) for _ in range(epochs[-1])]
    use_vmap = epochs[-1] == 0 or _vmap_works(model, spec, flat, x, y)
    if not use_vmap:
        warnings.warn("finetune: the model does not run under torch.func.vmap; training the rows one by one")
    per_row = _bytes_per_sample(model, x[:2]) * min(batch_size, len(y))
    chunk = max(1, memory_budget_bytes // (MEMORY_SAFETY * per_row))  # rows trained together
    if device.type == "cpu":
        chunk = min(chunk, max(1, CPU_TILE_BYTES // per_row))
        warm_allocator()
    parts = [_train(model, spec, flat[r:r + chunk], x, y, perms, epochs, lr, batch_size, use_vmap)
             for r in range(0, flat.shape[0], chunk)]
    return [torch.cat([p[j] for p in parts]) for j in range(len(epochs))]


def finetune(base_model: nn.Module, spec: ParamSpec, data: TensorData, starts: dict[str, torch.Tensor], *,
             epochs=(0, 1, 5), lr: float = 0.01, batch_size: int = 128, seed: int = 0,
             memory_budget_bytes: int = 1 << 30) -> dict:
    """Train only the subset of every row of every start set (the rest: base_model's, frozen;
    BatchNorm in eval mode; SGD momentum 0.9, weight decay 5e-4, constant lr; the same batch
    order for all rows) and measure test accuracy after each epoch count in `epochs` (sorted,
    non-negative ints; 0 = the start itself). base_model is not modified.

    Returns a JSON-serialisable dict: {"epochs", "lr", "batch_size", "seed", "starts": {name:
    {"n", "accuracy": [[% after each epoch count] per row], "summary": {str(epoch): {"best",
    "mean", "median", "n"}}}}}. A row whose values became NaN / Inf (training diverged) has
    accuracy None; summaries are over the finite rows (n counts them; None when there are none).
    """
    epochs = _check_epochs(epochs)
    _check_starts(spec, starts)
    flat = torch.cat([s.detach().float().cpu() for s in starts.values()])
    snapshots = finetune_rows(base_model, spec, data, flat, epochs=epochs, lr=lr, batch_size=batch_size,
                              seed=seed, memory_budget_bytes=memory_budget_bytes)
    device = next(base_model.parameters()).device
    res = evaluate_population(base_model, spec, torch.cat(snapshots), data.x_test.to(device), data.y_test.to(device),
                              memory_budget_bytes=memory_budget_bytes, keep_predictions=False)
    acc = res.accuracy.reshape(len(epochs), flat.shape[0]).T  # (rows, epoch counts)
    out = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "starts": {}}
    r0 = 0
    for name, s in starts.items():
        a = acc[r0:r0 + s.shape[0]]
        r0 += s.shape[0]
        out["starts"][name] = {
            "n": s.shape[0],
            "accuracy": [[_finite_or_none(v) for v in row] for row in a.tolist()],
            "summary": {str(e): {k: _finite_or_none(v) for k, v in summary(a[:, j]).items()}
                        for j, e in enumerate(epochs)},
        }
    return out


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def random_starts(spec: ParamSpec, original: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n random subset vectors (n, D): each tensor of the subset (a ParamSpec segment) drawn
    Gaussian with the mean and std of that tensor's values over all original checkpoints
    (Standardizer.fit(spec, original), then its inverse of standard normal noise).

    Random = a random point at the originals' scale, with no knowledge of the trained values."""
    if original.dim() != 2 or original.shape[1] != spec.dim or original.shape[0] == 0:
        raise ValueError(f"random_starts: original must be (K, {spec.dim}) with K >= 1, got {tuple(original.shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"random_starts: n must be a positive int, got {n!r}")
    z = torch.randn(n, spec.dim, generator=torch.Generator().manual_seed(seed))
    return Standardizer.fit(spec, original.detach().cpu()).inverse(z).to(original.device)


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def format_finetune_table(result: dict) -> str:
    """Markdown: one row per start, mean / median / best test accuracy after each epoch count."""
    epochs = result["epochs"]
    head = ["start", "n"] + [f"{k} @{e}" for e in epochs for k in ("mean", "median", "best")]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, s in result["starts"].items():
        cells = [name, str(s["n"])]
        for e in epochs:
            su = s["summary"][str(e)]
            cells += [_fmt(su["mean"]), _fmt(su["median"]), _fmt(su["best"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(@e: after e epochs of subset training; lr {result['lr']}, " \
                              f"batch {result['batch_size']}, seed {result['seed']}; test accuracy in %)"


def plot_title(result: dict) -> str:
    """What the plot shows, from the numbers: each start's median accuracy after the last epoch count."""
    last = result["epochs"][-1]
    when = f"After {last} epoch{'s' if last != 1 else ''}" if last else "At the start"
    parts = []
    for name, s in result["starts"].items():
        median = s["summary"][str(last)]["median"]
        parts.append(f"{name} {'diverged' if median is None else f'{median:.1f}'}")
    return f"{when}: {', '.join(parts)} (median test accuracy)"


def plot_finetune(result: dict, path: str | os.PathLike) -> Path:
    """Median test accuracy against epochs, one line per start, with a band from its min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure as _save

    epochs = result["epochs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in result["starts"].items():
        cols = [[row[j] for row in s["accuracy"] if row[j] is not None] for j in range(len(epochs))]
        keep = [j for j, c in enumerate(cols) if c]
        xs = [epochs[j] for j in keep]
        med = [s["summary"][str(epochs[j])]["median"] for j in keep]
        (line,) = ax.plot(xs, med, marker="o", label=f"{name} (n={s['n']})")
        ax.fill_between(xs, [min(cols[j]) for j in keep], [max(cols[j]) for j in keep],
                        color=line.get_color(), alpha=0.2)
    ax.set_xticks(epochs)
    ax.set_xlabel("epochs of subset training")
    ax.set_ylabel("test accuracy (%): median, band min-max")
    ax.set_title(plot_title(result), fontsize=9)
    ax.legend()
    path = Path(path)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
