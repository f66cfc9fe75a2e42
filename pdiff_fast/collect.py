"""Checkpoint collection: the training data of p-diff.

v1 (reference `core/tasks/classification.py`): train the whole model for `epochs`, then freeze
everything but the subset and keep training it, saving one vector per epoch, K times.
v2 (reference `develop`): fine-tune only the subset for one epoch and save K vectors spread
evenly over it.

Norm layers stay in eval mode while the subset trains, so their running statistics remain the
base model's: every checkpoint (and every generated model) is evaluated with the same ones.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import TensorData
from .params import ParamSpec


@dataclass
class Population:
    """K flattened checkpoints of a subset, plus what is needed to rebuild and judge them."""

    params: torch.Tensor  # (K, D) float32
    accuracy: torch.Tensor  # (K,) test accuracy in percent
    spec: ParamSpec
    base_state: dict[str, torch.Tensor]  # the base model's full state dict
    meta: dict = field(default_factory=dict)  # recipe, dataset, model name and arguments

    def __post_init__(self):
        if self.params.dim() != 2 or self.params.shape[1] != self.spec.dim:
            raise ValueError(f"population params must be (K, {self.spec.dim}), got {tuple(self.params.shape)}")
        if self.accuracy.shape != (self.params.shape[0],):
            raise ValueError("population: one accuracy per checkpoint is needed")

    def save(self, path) -> None:
        from .io import save_tensors

        tensors = {"params": self.params, "accuracy": self.accuracy}
        tensors.update({f"base.{k}": v for k, v in self.base_state.items()})
        save_tensors(path, tensors, {"spec": self.spec.to_dict(), **self.meta})

    @classmethod
    def load(cls, path) -> "Population":
        from .io import load_tensors

        t, meta = load_tensors(path)
        if "params" not in t or "accuracy" not in t or "spec" not in meta:
            raise ValueError(f"{path}: not a pdiff_fast population file (missing params, accuracy or spec)")
        spec = ParamSpec.from_dict(meta.pop("spec"))
        base = {k[5:]: v for k, v in t.items() if k.startswith("base.")}
        return cls(t["params"], t["accuracy"], spec, base, meta)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    was_training = model.training
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(y), batch_size))
    model.train(was_training)
    return 100.0 * correct / len(y)


def _set_norm_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm,)):
            m.eval()


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


def _sgd(params, lr, momentum=0.9, weight_decay=5e-4):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


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


def _subset_params(model: nn.Module, spec: ParamSpec) -> list[nn.Parameter]:
    chosen = set(spec.names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return [p for name, p in model.named_parameters() if name in chosen]


def _train_base_state(model, data, spec, k, epochs, lr, batch_size, seed, progress) -> dict[str, torch.Tensor]:
    """Check the arguments, train the whole model, and return a copy of its state (the base)."""
    if k < 1:
        raise ValueError("collect: k must be at least 1")
    spec.check(model)
    train_base(model, data, epochs, lr, batch_size, seed, progress)
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def collect_v1(model: nn.Module, data: TensorData, spec: ParamSpec, *, epochs: int = 30, k: int = 200,
               lr: float = 0.1, subset_lr: float | None = None, batch_size: int = 128, seed: int = 0,
               progress: bool = True) -> Population:
    """Train the whole model, then train only the subset for `k` epochs, one checkpoint per epoch."""
    base_state = _train_base_state(model, data, spec, k, epochs, lr, batch_size, seed, progress)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = _sgd(_subset_params(model, spec), subset_lr if subset_lr is not None else lr * 0.1)
    rows, accs = [], []
    for _ in tqdm(range(k), desc="collect v1 checkpoints", disable=not progress):
        _epoch(model, opt, data, batch_size, gen, freeze_norm=True)
        rows.append(spec.flatten([model])[0])
        accs.append(accuracy(model, data.x_test, data.y_test))
    for p in model.parameters():
        p.requires_grad_(True)
    meta = {"recipe": "v1", "epochs": epochs, "k": k, "lr": lr, "batch_size": batch_size, "seed": seed}
    return Population(torch.stack(rows), torch.tensor(accs), spec, base_state, meta)


def collect_v2(model: nn.Module, data: TensorData, spec: ParamSpec, *, epochs: int = 30, k: int = 200,
               lr: float = 0.1, subset_lr: float | None = None, batch_size: int = 128, seed: int = 0,
               progress: bool = True) -> Population:
    """Train the whole model, then fine-tune the subset for one epoch, saving `k` vectors spread over it."""
    base_state = _train_base_state(model, data, spec, k, epochs, lr, batch_size, seed, progress)
    n_train = len(data.y_train)
    bs = min(batch_size, max(1, n_train // k))  # at least k steps in the epoch
    n_steps = -(-n_train // bs)
    save_at = set(torch.linspace(0, n_steps - 1, k).round().long().tolist())
    if len(save_at) < k:
        raise ValueError(f"collect v2: one epoch of {n_train} samples cannot hold {k} checkpoints")
    gen = torch.Generator().manual_seed(seed + 1)
    opt = _sgd(_subset_params(model, spec), subset_lr if subset_lr is not None else lr * 0.1)
    rows, accs = [], []
    bar = tqdm(total=k, desc="collect v2 checkpoints", disable=not progress)

    def on_step(step):
        if step in save_at:
            rows.append(spec.flatten([model])[0])
            accs.append(accuracy(model, data.x_test, data.y_test))
            _set_norm_eval(model)
            bar.update(1)

    _epoch(model, opt, data, bs, gen, on_step=on_step, freeze_norm=True)
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    meta = {"recipe": "v2", "epochs": epochs, "k": k, "lr": lr, "batch_size": bs, "seed": seed}
    return Population(torch.stack(rows), torch.tensor(accs), spec, base_state, meta)


RECIPES = {"v1": collect_v1, "v2": collect_v2}


def rebuild_base(model: nn.Module, population: Population) -> nn.Module:
    """Load the population's base state into a freshly built model of the same architecture."""
    model = copy.deepcopy(model)
    missing, unexpected = model.load_state_dict(population.base_state, strict=False)
    if missing or unexpected:
        raise ValueError(f"base state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    population.spec.check(model)
    return model.eval()
