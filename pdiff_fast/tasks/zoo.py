"""A model zoo for dataset-conditioned weight generation: many small models of one architecture,
each trained on its own task's data, all at once, stored as one safetensors file with each row's
task recorded.

    flat = train_models(model, spec, starts, x, y, counts, task_of_row, steps=200)[-1]   # (m, D)
    zoo = Zoo(flat, task_of_row, run, accuracy, init, spec, ["task-a", "task-b"], meta={...})
    zoo.save("zoo.safetensors"); Zoo.load("zoo.safetensors").rows_of(1)

Training. Each row of `starts` (m, D) holds the values of spec's parameters; the rest of `model`
is fixed and shared by all rows. Row r trains on task task_of_row[r]: the tasks' training sets
are padded to one size N, x (T, N, *input_shape) and y (T, N), and counts (T,) gives each task's
real size. The batch of row r at step s is x[task_of_row[r], batch_indices(...)[r, s]]: indices
drawn with replacement in [0, counts[task]) by row r's own generator, seeded from (seed, row), so
a row trains on the same batches whatever else is trained with it, and padding is never read.
Each step is one SGD step per row: collect's `_sgd` (momentum 0.9, weight decay 5e-4) at a
constant lr, cross-entropy, BatchNorm layers in eval mode (running statistics frozen), as
collect's freeze_norm subset training. `train_one` is the reference: one model, a plain loop.

How it runs: as pdiff_fast.evaluation.finetuning. The spec's tensors are stacked, (m, *shape) per name, each
row's batch is gathered, (m, B, *input_shape), and the model runs under
torch.func.vmap(functional_call) over both (randomness="different": dropout masks differ per row,
so a model with active dropout does not match `train_one`). The per-row losses are summed and
back-propagated (rows are independent: each row's gradient is that of its own loss), and
torch.optim.SGD over the stacked tensors is exactly per-row SGD (its update is elementwise). Rows
are trained in chunks whose activations fit memory_budget_bytes (on CPU: finetune's cache-sized
tile). A model that does not run under vmap is trained row by row instead (a warning says so).
"""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..evaluation.finetuning import CPU_TILE_BYTES, MEMORY_SAFETY, _bytes_per_sample, _rows_of
from ..io import load_artifact, save_tensors
from ..params import ParamSpec, _set_norm_eval, _sgd, _subset_params
from ..evaluation.population import warm_allocator
from ..diffusion.sample import model_seed

INDEX_BLOCK_BYTES = 16 << 20  # batch indices drawn ahead, per chunk of rows: steps are drawn in blocks this size
ZOO_FORMAT = 1
_KEYS = ("params", "task", "run", "accuracy", "init")
_OPTIONAL = {"val_accuracy": torch.float32, "step": torch.int64}  # a prompted zoo's (Zoo)


# --- batches ---------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_vector(name: str, v, length: int | None = None) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    if v.dim() != 1 or v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer tensor, got {tuple(v.shape)} {v.dtype}")
    if length is not None and v.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries, got {v.shape[0]}")
    return v.long()


def _generators(seed: int, first_row: int, m: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(model_seed(seed, first_row + r)) for r in range(m)]


def _draw(gens: list[torch.Generator], counts: torch.Tensor, steps: int, batch_size: int) -> torch.Tensor:
    """(m, steps, batch_size) the next `steps` steps of each row's stream. Drawing s1 then s2 steps
    gives what drawing s1 + s2 at once does (torch's CPU generator fills an output in order)."""
    out = torch.empty(len(gens), steps, batch_size, dtype=torch.int64)
    for r, g in enumerate(gens):
        torch.randint(0, int(counts[r]), (steps, batch_size), generator=g, out=out[r])
    return out


def batch_indices(counts: torch.Tensor, steps: int, batch_size: int, seed: int, first_row: int = 0) -> torch.Tensor:
    """(m, steps, batch_size) int64: row r's training-sample indices, drawn with replacement in
    [0, counts[r]) by a CPU torch.Generator seeded with sample.model_seed(seed, first_row + r): a
    function of (seed, row) alone, so a row trains on the same batches whatever else is trained
    with it."""
    counts = _int_vector("batch_indices: counts", counts)
    if counts.numel() and int(counts.min()) < 1:
        raise ValueError(f"batch_indices: counts must be >= 1, got {counts.tolist()}")
    if not _is_int(steps) or steps < 0:
        raise ValueError(f"batch_indices: steps must be a non-negative int, got {steps!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_indices: batch_size must be a positive int, got {batch_size!r}")
    if not _is_int(first_row) or first_row < 0:
        raise ValueError(f"batch_indices: first_row must be a non-negative int, got {first_row!r}")
    return _draw(_generators(seed, first_row, counts.shape[0]), counts, steps, batch_size)


# --- training --------------------------------------------------------------------------------
def _check_record_at(record_at, steps: int) -> list[int]:
    if not _is_int(steps) or steps < 0:
        raise ValueError(f"zoo: steps must be a non-negative int, got {steps!r}")
    rec = [steps] if record_at is None else list(record_at)
    if not rec:
        raise ValueError("zoo: record_at is empty (give step counts, e.g. (0, steps))")
    for s in rec:
        if not _is_int(s) or not 0 <= s <= steps:
            raise ValueError(f"zoo: record_at must hold ints in [0, steps={steps}], got {s!r} in {rec}")
    if any(b <= a for a, b in zip(rec, rec[1:])):
        raise ValueError(f"zoo: record_at must be sorted in increasing order without repeats, got {rec}")
    return rec


def _check_recipe(lr, batch_size) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"zoo: lr must be a positive finite number, got {lr!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"zoo: batch_size must be a positive int, got {batch_size!r}")


def _prepared(model: nn.Module, spec: ParamSpec) -> nn.Module:
    """A copy of model: only spec's parameters require grad, train mode, BatchNorm in eval mode."""
    spec.check(model)
    m = copy.deepcopy(model)
    _subset_params(m, spec)
    m.train()
    _set_norm_eval(m)
    return m


def _losses(model: nn.Module, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor,
            use_vmap: bool) -> torch.Tensor:
    """(m,) cross-entropy of row r's model on its own batch (xb[r], yb[r])."""
    def one(p, xs, ys):
        return F.cross_entropy(functional_call(model, p, (xs,)), ys)

    if use_vmap:
        return vmap(one, in_dims=(0, 0, 0), randomness="different")(params, xb, yb)
    return torch.stack([one({k: v[i] for k, v in params.items()}, xb[i], yb[i]) for i in range(xb.shape[0])])


def _vmap_works(model: nn.Module, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> bool:
    """Whether a forward and backward pass under vmap runs for this model (two rows, two samples)."""
    probe = {k: v[:2].detach().clone().requires_grad_() for k, v in params.items()}
    try:
        _losses(model, probe, xb[:2, :2], yb[:2, :2], True).sum().backward()
        return True
    except Exception:  # noqa: BLE001 -- any op without a batching rule: train row by row instead
        return False


def _train_chunk(model, spec, flat, x, y, counts, tasks, steps, record, lr, batch_size, seed, first_row,
                 use_vmap) -> tuple[list[torch.Tensor], bool]:
    """Train the rows of flat (c, D) (tasks (c,) on x's device) together; their values at each record step."""
    params = {k: v.detach().clone().requires_grad_() for k, v in spec.unflatten_stacked(flat).items()}
    opt = _sgd(list(params.values()), lr)
    snaps = [_rows_of(spec, params)] if record[0] == 0 else []
    gens = _generators(seed, first_row, flat.shape[0])
    row_counts = counts[tasks.cpu()]
    block = max(1, INDEX_BLOCK_BYTES // (8 * batch_size * flat.shape[0]))
    rows = tasks[:, None]
    record_set = set(record)
    idx = None
    for s in range(steps):
        if s % block == 0:
            idx = _draw(gens, row_counts, min(block, steps - s), batch_size).to(x.device)
        b = idx[:, s % block]  # (c, B)
        xb, yb = x[rows, b], y[rows, b]
        if use_vmap is None:  # decided once, on the first chunk's first batch
            use_vmap = _vmap_works(model, params, xb, yb)
            if not use_vmap:
                warnings.warn("zoo: the model does not run under torch.func.vmap; training the rows one by one")
        opt.zero_grad(set_to_none=True)
        _losses(model, params, xb, yb, use_vmap).sum().backward()
        opt.step()
        if s + 1 in record_set:
            snaps.append(_rows_of(spec, params))
    return snaps, use_vmap


def _check_data(spec, starts, x, y, counts, task_of_row):
    if not isinstance(starts, torch.Tensor) or starts.dim() != 2 or starts.shape[1] != spec.dim \
            or starts.shape[0] == 0 or not starts.dtype.is_floating_point:
        shape = tuple(starts.shape) if isinstance(starts, torch.Tensor) else type(starts).__name__
        raise ValueError(f"zoo: starts must be a floating (m, {spec.dim}) tensor with m >= 1 "
                         f"(D = spec.dim), got {shape}")
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or not x.dtype.is_floating_point:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"zoo: x must be a floating (T, N, *input_shape) tensor, got {shape}")
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or tuple(y.shape) != tuple(x.shape[:2]) \
            or y.dtype.is_floating_point or y.dtype == torch.bool:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"zoo: y must be an integer (T, N) = {tuple(x.shape[:2])} tensor (x's first two "
                         f"dimensions), got {shape}")
    t, n = x.shape[:2]
    counts = _int_vector("zoo: counts", counts, t)
    if t == 0 or n == 0:
        raise ValueError(f"zoo: x holds no tasks or no samples: {tuple(x.shape)}")
    if int(counts.min()) < 1 or int(counts.max()) > n:
        raise ValueError(f"zoo: counts must be in [1, N={n}] (each task's real training-set size), "
                         f"got {counts.tolist()}")
    task_of_row = _int_vector("zoo: task_of_row", task_of_row, starts.shape[0])
    if int(task_of_row.min()) < 0 or int(task_of_row.max()) >= t:
        raise ValueError(f"zoo: task_of_row must index the T={t} tasks of x, got values in "
                         f"[{int(task_of_row.min())}, {int(task_of_row.max())}]")
    return counts, task_of_row


def train_models(model: nn.Module, spec: ParamSpec, starts: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 counts: torch.Tensor, task_of_row: torch.Tensor, *, steps: int, lr: float = 0.05,
                 batch_size: int = 32, seed: int = 0, record_at=None, first_row: int = 0,
                 memory_budget_bytes: int = 1 << 30) -> list[torch.Tensor]:
    """Train every row of starts (m, D), the values of spec's parameters (the rest of `model` is
    fixed and shared), on its own task: x (T, N, *input_shape) and y (T, N) hold each task's
    training set padded to N, counts (T,) the real sizes, task_of_row (m,) each row's task.

    Per step and row: one SGD step (collect._sgd: momentum 0.9, weight decay 5e-4, constant lr)
    on the cross-entropy of the batch x[task_of_row[r], batch_indices(...)[r, s]], row r's
    generator seeded from (seed, first_row + r). All rows at once under vmap(functional_call),
    in chunks of rows that fit memory_budget_bytes; a row's result does not depend on the others.
    record_at: sorted distinct step counts in [0, steps] (0: the start; default (steps,)).
    Returns one (m, D) float32 tensor per entry, on the model's device. BatchNorm layers are in
    eval mode (running statistics frozen); model is not modified."""
    record = _check_record_at(record_at, steps)
    _check_recipe(lr, batch_size)
    if not _is_int(first_row) or first_row < 0:
        raise ValueError(f"zoo: first_row must be a non-negative int, got {first_row!r}")
    if not _is_int(memory_budget_bytes) or memory_budget_bytes < 1:
        raise ValueError(f"zoo: memory_budget_bytes must be a positive int, got {memory_budget_bytes!r}")
    counts, task_of_row = _check_data(spec, starts, x, y, counts, task_of_row)
    net = _prepared(model, spec)
    device = next(net.parameters()).device
    flat = starts.detach().to(device, torch.float32)
    x, y = x.to(device), y.to(device).long()
    tasks = task_of_row.to(device)

    per_row = _bytes_per_sample(net, x[0, :2]) * batch_size + x[0, 0].numel() * x.element_size() * batch_size
    chunk = max(1, memory_budget_bytes // (MEMORY_SAFETY * per_row))
    if device.type == "cpu":
        chunk = min(chunk, max(1, CPU_TILE_BYTES // per_row))
        warm_allocator()
    use_vmap = True if steps == 0 else None
    parts = []
    for r in range(0, flat.shape[0], chunk):
        snaps, use_vmap = _train_chunk(net, spec, flat[r:r + chunk], x, y, counts, tasks[r:r + chunk], steps,
                                       record, lr, batch_size, seed, first_row + r, use_vmap)
        parts.append(snaps)
    return [torch.cat([p[j] for p in parts]) for j in range(len(record))]


def train_one(model: nn.Module, spec: ParamSpec, start: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
              steps: int, lr: float = 0.05, batch_size: int = 32, seed: int = 0, row: int = 0,
              record_at=None) -> list[torch.Tensor]:
    """The reference for one row: a deep copy of `model` with `start` (D,) loaded (spec.load_into),
    its own torch.optim.SGD (collect._sgd) over spec's parameters, a plain loop on x (n, ...),
    y (n,) with the batches batch_indices(tensor([n]), steps, batch_size, seed, first_row=row)[0].
    Returns (D,) float32 snapshots at record_at (default (steps,)); model is not modified."""
    record = _check_record_at(record_at, steps)
    _check_recipe(lr, batch_size)
    if not isinstance(start, torch.Tensor) or start.dim() != 1 or start.shape[0] != spec.dim:
        shape = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        raise ValueError(f"zoo: start must be a ({spec.dim},) vector, got {shape}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() < 2 or y.dim() != 1 \
            or x.shape[0] != y.shape[0] or x.shape[0] == 0 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"zoo: x must be (n, *input_shape) and y (n,) integer labels with n >= 1, got "
                         f"{getattr(x, 'shape', x)} and {getattr(y, 'shape', y)}")
    m = _prepared(model, spec)
    spec.load_into(m, start.detach())
    opt = _sgd([p for p in m.parameters() if p.requires_grad], lr)
    device = next(m.parameters()).device
    x, y = x.to(device), y.to(device).long()
    idx = batch_indices(torch.tensor([x.shape[0]]), steps, batch_size, seed, first_row=row)[0].to(device)
    snaps = [spec.flatten([m])[0]] if record[0] == 0 else []
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x[idx[s]]), y[idx[s]]).backward()
        opt.step()
        if s + 1 in record:
            snaps.append(spec.flatten([m])[0])
    return snaps


# --- the zoo ---------------------------------------------------------------------------------
@dataclass
class Zoo:
    """Many trained models of one architecture, one row per model, each row's task recorded."""
    params: torch.Tensor      # (R, D) float32
    task: torch.Tensor        # (R,) int64 index into `tasks`
    run: torch.Tensor         # (R,) int64 which run of that task (0..runs-1)
    accuracy: torch.Tensor    # (R,) float32 test accuracy in percent on the row's task
    init: torch.Tensor        # (D,) the shared start every row was trained from
    spec: ParamSpec
    tasks: list[str]          # task names
    meta: dict = field(default_factory=dict)  # JSON-able: recipe (steps, lr, batch_size, seed), model ...
    # a prompted zoo (pdiff_fast.prompted.tasks) also records, per row:
    val_accuracy: torch.Tensor | None = None  # (R,) float32 accuracy on the task's validation split, percent
    step: torch.Tensor | None = None  # (R,) int64 the SGD step of its run the row was taken at

    def __post_init__(self):
        if not isinstance(self.spec, ParamSpec):
            raise ValueError(f"Zoo: spec must be a ParamSpec, got {type(self.spec).__name__}")
        d = self.spec.dim
        want = {"params": torch.float32, "task": torch.int64, "run": torch.int64, "accuracy": torch.float32,
                "init": torch.float32}  # the shapes are checked below
        for name, dtype in want.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"Zoo: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != dtype:
                raise ValueError(f"Zoo: {name} must be {dtype}, got {t.dtype}")
        if self.params.dim() != 2 or self.params.shape[1] != d or self.params.shape[0] == 0:
            raise ValueError(f"Zoo: params must be (R, {d}) with R >= 1 (D = spec.dim), got {tuple(self.params.shape)}")
        r = self.params.shape[0]
        for name in ("task", "run", "accuracy"):
            if tuple(getattr(self, name).shape) != (r,):
                raise ValueError(f"Zoo: {name} must be ({r},), one entry per row of params, "
                                 f"got {tuple(getattr(self, name).shape)}")
        for name, dtype in _OPTIONAL.items():
            t = getattr(self, name)
            if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != (r,)):
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"Zoo: {name} must be None or a {dtype} ({r},) tensor, one entry per row, got {got}")
        if tuple(self.init.shape) != (d,):
            raise ValueError(f"Zoo: init must be ({d},) (D = spec.dim), got {tuple(self.init.shape)}")
        if not isinstance(self.tasks, (list, tuple)) or not self.tasks or \
                not all(isinstance(s, str) for s in self.tasks):
            raise ValueError(f"Zoo: tasks must be a non-empty list of task names (str), got {self.tasks!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"Zoo: task names must be distinct, got {self.tasks}")
        self.tasks = list(self.tasks)
        lo, hi = int(self.task.min()), int(self.task.max())
        if lo < 0 or hi >= len(self.tasks):
            raise ValueError(f"Zoo: task indices must be in [0, {len(self.tasks)}) (len(tasks)), got [{lo}, {hi}]")
        if int(self.run.min()) < 0:
            raise ValueError(f"Zoo: run must be >= 0, got min {int(self.run.min())}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"Zoo: meta must be a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Zoo: meta must be JSON-serialisable ({exc})") from exc

    def __len__(self) -> int:
        return self.params.shape[0]

    def save(self, path: str | os.PathLike) -> str:
        """Write the zoo to a .safetensors file atomically (pdiff_fast.io.save_tensors); returns its digest."""
        tensors = {f"zoo.{k}": getattr(self, k) for k in (*_KEYS, *_OPTIONAL) if getattr(self, k) is not None}
        meta = {"kind": "zoo", "format": ZOO_FORMAT, "spec": self.spec.to_dict(), "tasks": self.tasks,
                "meta": self.meta}
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Zoo":
        """Read a file written by Zoo.save; ValueError if the file is not a zoo (or is damaged)."""
        return cls.load_with_digest(path)[0]

    @classmethod
    def load_with_digest(cls, path: str | os.PathLike) -> tuple["Zoo", str | None]:
        """(the zoo, its file's digest), the digest checked against the data read."""
        tensors, meta, digest = load_artifact(path)
        return cls._from_file(path, tensors, meta), digest

    @classmethod
    def _from_file(cls, path, tensors: dict, meta: dict) -> "Zoo":
        if meta.get("kind") != "zoo":
            raise ValueError(f"{path}: not a model zoo (no 'kind': 'zoo' in its metadata)")
        if meta.get("format") != ZOO_FORMAT:
            raise ValueError(f"{path}: zoo format {meta.get('format')!r}, this version reads {ZOO_FORMAT}")
        missing = [k for k in _KEYS if f"zoo.{k}" not in tensors]
        if missing or not all(k in meta for k in ("spec", "tasks", "meta")):
            raise ValueError(f"{path}: not a complete model zoo (missing tensors {missing} or metadata)")
        try:
            return cls(**{k: tensors[f"zoo.{k}"] for k in _KEYS}, spec=ParamSpec.from_dict(meta["spec"]),
                       tasks=meta["tasks"], meta=meta["meta"],
                       **{k: tensors.get(f"zoo.{k}") for k in _OPTIONAL})
        except ValueError as exc:
            raise ValueError(f"{path}: not a valid model zoo ({exc})") from exc

    def rows_of(self, task_index: int) -> torch.Tensor:
        """(r, D) the rows trained on task `task_index`, in row order."""
        if not _is_int(task_index) or not 0 <= task_index < len(self.tasks):
            raise ValueError(f"Zoo.rows_of: task_index must be an int in [0, {len(self.tasks)}), got {task_index!r}")
        return self.params[self.task == task_index]
