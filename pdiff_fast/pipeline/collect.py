"""Checkpoint collection: the training data of p-diff.

v1 (reference `core/tasks/classification.py`): train the whole model for `epochs`, then freeze
everything but the subset and keep training it, saving one vector per epoch, K times.
v2 (reference `develop`): fine-tune only the subset for one epoch and save K vectors spread
evenly over it.

Trajectories: the base model is trained once; then `trajectories` (T) independent subset runs
start from it, run j with a fresh copy of the base model, a fresh optimizer and its own data
order (generator seed `seed + 1 + j`), and share the K checkpoints: run j takes
K // T + (1 if j < K % T else 0) of them (v1: that many epochs; v2: that many spread over its one
epoch, every run at the batch size the largest share needs). T = 1 is the single run of before,
bit for bit. Each checkpoint's provenance is kept: `Population.trajectory` (j) and
`Population.step` (v1: the epoch, v2: the subset-training step, counted within its run, from 0).

Under torchrun (pdiff_fast.distributed) rank 0 trains the base model and broadcasts it; the ranks
split the trajectories (whole runs, `distributed.shard(T)`) and gather the checkpoints in
trajectory order, so the population depends on the config only, never on the world size (bitwise
on CPU), and every rank returns it. Progress bars show on rank 0 only.

Norm layers stay in eval mode while the subset trains, so their running statistics remain the
base model's: every checkpoint (and every generated model) is evaluated with the same ones.

v2's learning rate for subsets beyond normalization layers (`v2_subset_lr`): a subset made only of
norm layers' affine parameters (the paper's "last-K-norm-layers") trains at `subset_lr` as given.
A subset holding any other parameter (conv / linear / attention weights, e.g. `subset: "all"`)
trains at

    min(subset_lr, lr of the base model's last epoch) * bs / batch_size

i.e. no faster than the base run's cosine schedule ended (lr (1 + cos(pi (epochs-1)/epochs)) / 2;
no cap when epochs = 0), scaled by the linear scaling rule when v2 shrank the batch to bs =
n_train // K < batch_size (the SGD noise per sample, lr / batch, stays that of the base run's last
epoch). Why: with subset_lr 0.01 at the shrunk batch (MNIST-1D: 20) every step kicks all weights
at 4x the base run's final lr and 6.4x its batch's noise, and frozen BatchNorm (eval mode) makes
the conv weights before it (small norms: weight decay under BN's scale invariance) sensitive; the
model falls from ~97% to ~81% within 20 steps and stays at 88-94%. Warm-up does not help (a 50-step
warm-up: floor 69.5%); the drop is the sustained noise, not a first jump. Measured per tensor
(MNIST-1D CNN, lr 0.01, bs 20, floor of K=200): conv1 alone (192 values) 92.1%, conv2 77.3%,
conv3 93.3%, the linear head 97.1%, the last two BN layers 96.5%: any weight tensor, not the
subset's size, calls for the rule, and norm-only subsets do not need it, so the default
(last-2-norm-layers) population is bitwise that of before, by construction.

Checkpoint test accuracy of v2 with subset "all", K = 200, seed 0, CPU (min / median / max, %;
"spread": the checkpoints' std per value, averaged over the D values):
  MNIST-1D CNN1d (D = 32,842; epochs 10, lr 0.1, subset_lr 0.01, bs 20), base 97.5%:
    before 67.2 / 90.1 / 97.1 (spread 4.6e-3); the linear scaling rule alone (lr 0.0016)
    93.1 / 96.2 / 97.6 (3.8e-4); this rule (lr 0.00038) 96.1 / 97.0 / 97.7 (1.1e-4), ~12 s.
    (A base at 97.3%, trained with 2 threads, as in the issue: before 73.6 / 91.4 / 97.1, linear
    alone 93.6 / 96.2 / 97.5, this rule 96.4 / 97.0 / 97.7. The default last-2-norm-layers
    population, for comparison: 96.3 / 97.1 / 97.6.)
  digits MLP (D = 9,226; epochs 10, lr 0.1, subset_lr 0.01, bs 7), base 96.7% (359 test images):
    before 88.3 / 94.2 / 98.1 (5.9e-3); linear alone (lr 0.00055) 95.8 / 96.7 / 96.7 (1.5e-4);
    this rule (lr 0.00013) 96.7 / 96.7 / 96.7 (3.8e-5), under a second.
The price is diversity: whole-network checkpoints now stay close to the base model (the MLP's
all score the base's accuracy). subset_lr still sets the rate below the cap (smaller: tighter
checkpoints); more spread than the cap allows comes from trajectories > 1 (independent runs).
v1 (whole epochs at batch_size) is unchanged.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..data import TensorData
from ..params import NORM_TYPES, ParamSpec, _set_norm_eval, _sgd, _subset_params  # noqa: F401


@dataclass
class Population:
    """K flattened checkpoints of a subset, plus what is needed to rebuild and judge them."""

    params: torch.Tensor  # (K, D) float32
    accuracy: torch.Tensor  # (K,) test accuracy in percent
    spec: ParamSpec
    base_state: dict[str, torch.Tensor]  # the base model's full state dict
    meta: dict = field(default_factory=dict)  # recipe, dataset, model name and arguments, trajectories
    # provenance, int64 (K,): the subset-training run each checkpoint comes from, and its step in
    # that run (v1: epoch, v2: subset-training step). None: one run, checkpoints 0..K-1.
    trajectory: torch.Tensor | None = None
    step: torch.Tensor | None = None
    # (K,) accuracy in percent on the validation split carved out of the training data (recipe "span",
    # pdiff_fast.prompted); None: not labelled
    val_accuracy: torch.Tensor | None = None

    def __post_init__(self):
        if self.params.dim() != 2 or self.params.shape[1] != self.spec.dim:
            raise ValueError(f"population params must be (K, {self.spec.dim}), got {tuple(self.params.shape)}")
        n = self.params.shape[0]
        if self.accuracy.shape != (n,):
            raise ValueError("population: one accuracy per checkpoint is needed")
        if self.trajectory is None:
            self.trajectory = torch.zeros(n, dtype=torch.int64)
        if self.step is None:
            self.step = torch.arange(n, dtype=torch.int64)
        for name in ("trajectory", "step"):
            t = getattr(self, name)
            if t.shape != (n,) or t.dtype != torch.int64:
                raise ValueError(f"population: {name} must be int64 of shape ({n},), "
                                 f"got {t.dtype} {tuple(t.shape)}")
        if self.val_accuracy is not None and self.val_accuracy.shape != (n,):
            raise ValueError("population: one validation accuracy per checkpoint is needed")

    def save(self, path) -> None:
        from ..io import save_tensors

        tensors = {"params": self.params, "accuracy": self.accuracy,
                   "trajectory": self.trajectory, "step": self.step}
        if self.val_accuracy is not None:
            tensors["val_accuracy"] = self.val_accuracy
        tensors.update({f"base.{k}": v for k, v in self.base_state.items()})
        save_tensors(path, tensors, {"spec": self.spec.to_dict(), **self.meta})

    @classmethod
    def load(cls, path) -> "Population":
        from ..io import load_tensors

        t, meta = load_tensors(path)
        if "params" not in t or "accuracy" not in t or "spec" not in meta:
            raise ValueError(f"{path}: not a pdiff_fast population file (missing params, accuracy or spec)")
        spec = ParamSpec.from_dict(meta.pop("spec"))
        base = {k[5:]: v for k, v in t.items() if k.startswith("base.")}
        # Files written before provenance was recorded hold one run: __post_init__ fills
        # trajectory = 0 and step = arange(K) (exact for v1; for v2 the checkpoint's index, not
        # the subset-training step it was taken at).
        return cls(t["params"], t["accuracy"], spec, base, meta, t.get("trajectory"), t.get("step"),
                   t.get("val_accuracy"))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    was_training = model.training
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(y), batch_size))
    model.train(was_training)
    return 100.0 * correct / len(y)


accuracy = torch.no_grad()(accuracy)  # not the decorator, the same: mutmut leaves decorated functions unmutated


def _epoch(model, opt, data: TensorData, batch_size: int, gen: torch.Generator, on_step=None, freeze_norm=False):
    model.train()
    if freeze_norm:
        _set_norm_eval(model)
    perm = torch.randperm(len(data.y_train), generator=gen)
    for step, i in enumerate(range(0, len(perm), batch_size)):
        idx = perm[i:i + batch_size]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} (lower the learning rate)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step)


def train_base(model: nn.Module, data: TensorData, epochs: int, lr: float = 0.1, batch_size: int = 128,
               seed: int = 0, progress: bool = True) -> nn.Module:
    """Ordinary training of the whole model (SGD, momentum 0.9, wd 5e-4, cosine decay)."""
    gen = torch.Generator().manual_seed(seed)
    opt = _sgd(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    for _ in tqdm(range(epochs), desc="train base model", disable=not progress):
        _epoch(model, opt, data, batch_size, gen)
        sched.step()
    model.eval()
    return model


def _shares(k: int, trajectories: int) -> list[int]:
    """Checkpoints per trajectory: k // T each, one more for the first k % T."""
    if k < 1:
        raise ValueError("collect: k must be at least 1")
    if isinstance(trajectories, bool) or not isinstance(trajectories, int) or trajectories < 1:
        raise ValueError(f"collect: trajectories must be a positive int, got {trajectories!r}")
    if k < trajectories:
        raise ValueError(f"collect: k = {k} checkpoints cannot be shared by trajectories = {trajectories} "
                         f"runs (each needs at least one: k >= trajectories)")
    return [k // trajectories + (1 if j < k % trajectories else 0) for j in range(trajectories)]


def _progress(progress: bool) -> bool:
    return progress and distributed.is_main()


def _train_base_state(model, data, spec, epochs, lr, batch_size, seed, progress) -> dict[str, torch.Tensor]:
    """Train the whole model once (under torchrun: on rank 0, then its state is broadcast and
    loaded on every rank, so `model` ends the same everywhere) and return a copy of its state."""
    spec.check(model)
    if not distributed.active():
        train_base(model, data, epochs, lr, batch_size, seed, progress)
        return {n: t.detach().clone() for n, t in model.state_dict().items()}
    state, error = None, None
    if distributed.is_main():
        try:
            train_base(model, data, epochs, lr, batch_size, seed, progress)
            state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        except Exception as e:  # the other ranks wait on the broadcast: tell them, then raise
            error = f"{type(e).__name__}: {e}"
            distributed.broadcast_json(error)
            raise
    error = distributed.broadcast_json(error)
    if error is not None:
        raise RuntimeError(f"collect: rank 0 failed to train the base model ({error})")
    state = distributed.broadcast_tensors(state)
    if not distributed.is_main():
        model.load_state_dict(state)
        model.eval()
    return {n: t.detach().clone() for n, t in state.items()}


def _collect(model: nn.Module, data: TensorData, spec: ParamSpec, shares: list[int], run, lr: float,
             subset_lr: float | None, seed: int, desc: str, progress: bool, val=None):
    """This rank's trajectories (distributed.shard), each from a fresh copy of the base `model`
    with a fresh optimizer and generator seed + 1 + j; `run(model, opt, gen, n, save)` trains one
    and calls save(step) n times. Returns (params, accuracy, trajectory, step, val accuracy), gathered
    in trajectory order on every rank; val: (x, y) of a validation split to label each checkpoint
    with (else the last is None)."""
    start, stop = distributed.shard(len(shares))
    device = next(iter(model.parameters())).device
    rows, accs, traj, steps, val_accs = [], [], [], [], []
    bar = tqdm(total=sum(shares[start:stop]), desc=desc, disable=not _progress(progress))
    for j in range(start, stop):
        run_model = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(seed + 1 + j)
        opt = _sgd(_subset_params(run_model, spec), subset_lr if subset_lr is not None else lr * 0.1)

        def save(step, j=j, run_model=run_model):
            rows.append(spec.flatten([run_model])[0])
            accs.append(accuracy(run_model, data.x_test, data.y_test))
            if val is not None:
                val_accs.append(accuracy(run_model, *val))
            traj.append(j)
            steps.append(step)
            bar.update(1)

        run(run_model, opt, gen, shares[j], save)
        del run_model, opt
    bar.close()
    params = torch.stack(rows) if rows else torch.empty(0, spec.dim, dtype=torch.float32, device=device)
    acc = torch.tensor(accs, dtype=torch.float32)
    val_acc = torch.tensor(val_accs, dtype=torch.float32)
    provenance = torch.tensor([traj, steps], dtype=torch.int64).reshape(2, -1).T.contiguous()
    params, acc, val_acc, provenance = (distributed.gather_rows(t) for t in (params, acc, val_acc, provenance))
    return (params, acc, provenance[:, 0].contiguous(), provenance[:, 1].contiguous(),
            val_acc if val is not None else None)


def collect_v1(model: nn.Module, data: TensorData, spec: ParamSpec, *, epochs: int = 30, k: int = 200,
               lr: float = 0.1, subset_lr: float | None = None, batch_size: int = 128, seed: int = 0,
               trajectories: int = 1, progress: bool = True) -> Population:
    """Train the whole model, then train only the subset, one checkpoint per epoch: `trajectories`
    independent runs share the `k` checkpoints (epochs). `model` is left in the base state."""
    shares = _shares(k, trajectories)
    base_state = _train_base_state(model, data, spec, epochs, lr, batch_size, seed, _progress(progress))

    def run(run_model, opt, gen, n, save):
        for epoch in range(n):
            _epoch(run_model, opt, data, batch_size, gen, freeze_norm=True)
            save(epoch)

    params, acc, traj, step, _ = _collect(model, data, spec, shares, run, lr, subset_lr, seed,
                                          "collect v1 checkpoints", progress)
    meta = {"recipe": "v1", "epochs": epochs, "k": k, "lr": lr, "batch_size": batch_size, "seed": seed,
            "trajectories": trajectories}
    return Population(params, acc, spec, base_state, meta, traj, step)


def _only_norm_affine(model: nn.Module, spec: ParamSpec) -> bool:
    """Every parameter of the subset belongs to a normalization layer (its weight / bias)."""
    modules = dict(model.named_modules())
    return all(isinstance(modules.get(name.rsplit(".", 1)[0] if "." in name else ""), NORM_TYPES)
               for name in spec.names)


def v2_subset_lr(model: nn.Module, spec: ParamSpec, subset_lr: float | None, lr: float, epochs: int,
                 batch_size: int, bs: int) -> float | None:
    """The lr v2's subset epoch trains at (module docstring): `subset_lr` itself (None: lr / 10) for
    a subset of norm layers' parameters only; otherwise min(subset_lr, the base run's last-epoch
    lr) * bs / batch_size, with bs the batch v2 runs at (<= batch_size)."""
    if _only_norm_affine(model, spec):
        return subset_lr  # untouched: the recipe of before, bit for bit
    rate = subset_lr if subset_lr is not None else lr * 0.1
    if epochs >= 1:  # CosineAnnealingLR(T_max=epochs): the last epoch ran at this lr
        rate = min(rate, lr * (1 + math.cos(math.pi * (epochs - 1) / epochs)) / 2)
    return rate * bs / batch_size


def collect_v2(model: nn.Module, data: TensorData, spec: ParamSpec, *, epochs: int = 30, k: int = 200,
               lr: float = 0.1, subset_lr: float | None = None, batch_size: int = 128, seed: int = 0,
               trajectories: int = 1, progress: bool = True) -> Population:
    """Train the whole model, then fine-tune the subset for one epoch, saving vectors spread over
    it: `trajectories` independent runs share the `k` checkpoints, all at the batch size the
    largest share needs (at least that many steps in the epoch), at the lr `v2_subset_lr` gives
    (a subset beyond norm layers: lowered, see the module docstring; meta["subset_lr"] records it).
    `model` is left in the base state."""
    shares = _shares(k, trajectories)
    n_train = len(data.y_train)
    bs = min(batch_size, max(1, n_train // shares[0]))  # at least max(shares) steps in the epoch
    n_steps = -(-n_train // bs)
    save_at = {n: set(torch.linspace(0, n_steps - 1, n).round().long().tolist()) for n in set(shares)}
    if any(len(save_at[n]) < n for n in save_at):
        raise ValueError(f"collect v2: one epoch of {n_train} samples cannot hold {shares[0]} checkpoints")
    run_lr = v2_subset_lr(model, spec, subset_lr, lr, epochs, batch_size, bs)
    base_state = _train_base_state(model, data, spec, epochs, lr, batch_size, seed, _progress(progress))

    def run(run_model, opt, gen, n, save):
        def on_step(step):
            if step in save_at[n]:
                save(step)
                _set_norm_eval(run_model)  # accuracy() restored train mode

        _epoch(run_model, opt, data, bs, gen, on_step=on_step, freeze_norm=True)

    params, acc, traj, step, _ = _collect(model, data, spec, shares, run, lr, run_lr, seed,
                                          "collect v2 checkpoints", progress)
    meta = {"recipe": "v2", "epochs": epochs, "k": k, "lr": lr, "batch_size": bs, "seed": seed,
            "trajectories": trajectories, "subset_lr": run_lr if run_lr is not None else lr * 0.1}
    return Population(params, acc, spec, base_state, meta, traj, step)


RECIPES = {"v1": collect_v1, "v2": collect_v2}  # with "span" (built on this module): pipeline.span.RECIPES


def rebuild_base(model: nn.Module, population: Population) -> nn.Module:
    """Load the population's base state into a freshly built model of the same architecture."""
    model = copy.deepcopy(model)
    missing, unexpected = model.load_state_dict(population.base_state, strict=False)
    if missing or unexpected:
        raise ValueError(f"base state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    population.spec.check(model)
    return model.eval()
