"""A family of related classification tasks, built offline: the 90 ordered digit-pair tasks of
scikit-learn's digits (shipped with the package).

Task "a-b" tells digit a (label 0) from digit b (label 1); "b-a" is the same pair with the labels
swapped, so a generator must read the task's data to know which output is which digit. The
split holds out whole unordered pairs: a held-out pair is held out in both orders, so no seen
task shares both digits with a held-out one (every digit still appears in seen tasks).

Every task uses the digits' fixed train / test split (pdiff_fast.data.digits): its training
samples are the train images of its two digits, its test samples the test images. The evidence a
set encoder reads (`support`) comes from the training samples only.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import TensorData, digits


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[int, ...]  # the source dataset's label of each of the task's labels 0, 1, ...


def digit_pair_tasks() -> list[Task]:
    """The 90 ordered pairs (a, b), a != b, in lexicographic order."""
    return [Task(f"{a}-{b}", (a, b)) for a, b in itertools.permutations(range(10), 2)]


def split_tasks(tasks: list[Task], held_out_pairs: int, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """(seen, held_out): `held_out_pairs` unordered pairs, drawn by `seed`, held out in every order."""
    pairs = sorted({tuple(sorted(t.classes)) for t in tasks})
    if not 1 <= held_out_pairs < len(pairs):
        raise ValueError(f"held_out_pairs must be between 1 and {len(pairs) - 1} (of {len(pairs)} pairs), "
                         f"got {held_out_pairs}")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    out = {pairs[i] for i in order[:held_out_pairs]}
    held = [t for t in tasks if tuple(sorted(t.classes)) in out]
    seen = [t for t in tasks if tuple(sorted(t.classes)) not in out]
    return seen, held


def task_by_name(tasks: list[Task], name: str) -> Task:
    for t in tasks:
        if t.name == name:
            return t
    raise ValueError(f"unknown task {name!r}; tasks are named like {tasks[0].name!r} (digit a vs digit b)")


class TaskFamily:
    """Each task's data, cut from one source dataset, and the tasks' data stacked for batched use."""

    def __init__(self, tasks: list[Task], source: TensorData | None = None):
        if not tasks:
            raise ValueError("a task family needs at least one task")
        self.tasks = list(tasks)
        self.source = source or digits()
        self.num_classes = len(self.tasks[0].classes)
        if any(len(t.classes) != self.num_classes for t in self.tasks):
            raise ValueError("every task of a family needs the same number of classes")
        self._cache: dict[str, TensorData] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.source.input_shape

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def data(self, task: Task) -> TensorData:
        if task.name not in self._cache:
            s = self.source
            parts = []
            for x, y in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
                keep = torch.zeros_like(y, dtype=torch.bool)
                label = torch.full_like(y, -1)
                for i, c in enumerate(task.classes):
                    keep |= y == c
                    label[y == c] = i
                parts += [x[keep], label[keep]]
            self._cache[task.name] = TensorData(task.name, *parts, self.num_classes)
        return self._cache[task.name]

    def stacked(self, tasks: list[Task], split: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, N, *input_shape), y (T, N), counts (T,): each task's split padded (zeros) to the longest."""
        xs, ys = zip(*[(getattr(self.data(t), f"x_{split}"), getattr(self.data(t), f"y_{split}")) for t in tasks])
        counts = torch.tensor([len(y) for y in ys])
        n = int(counts.max())
        x = torch.zeros((len(tasks), n, *xs[0].shape[1:]))
        y = torch.zeros((len(tasks), n), dtype=torch.int64)
        for i, (xi, yi) in enumerate(zip(xs, ys)):
            x[i, :len(yi)], y[i, :len(yi)] = xi, yi
        return x, y, counts


def evidence(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(..., n, *input_shape), (..., n) -> (..., n, F) set elements: the flattened input and the one-hot label."""
    flat = x.reshape(*y.shape, -1)
    return torch.cat([flat, F.one_hot(y, num_classes).to(flat.dtype)], -1)


def support(x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, task_of_row: torch.Tensor, n: int,
            generator: torch.Generator, num_classes: int) -> torch.Tensor:
    """(m, n, F): for each row, n training samples of its task drawn with replacement (stacked data from
    TaskFamily.stacked; the generator lives on x's device)."""
    u = torch.rand((len(task_of_row), n), generator=generator, device=x.device)
    idx = (u * counts[task_of_row].unsqueeze(1)).long()
    return evidence(x[task_of_row.unsqueeze(1), idx], y[task_of_row.unsqueeze(1), idx], num_classes)


def fixed_support(x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, n: int, seeds: list[int],
                  num_classes: int) -> torch.Tensor:
    """(T, n, F): one support set per task, task i's drawn by a generator seeded with seeds[i] alone (the
    evidence every sampling and nearest-task lookup of that task uses)."""
    if len(seeds) != len(counts):
        raise ValueError(f"fixed_support: one seed per task is needed ({len(counts)}), got {len(seeds)}")
    sets = []
    for i, s in enumerate(seeds):
        g = torch.Generator(device=x.device).manual_seed(s)
        sets.append(support(x, y, counts, torch.tensor([i], device=x.device), n, g, num_classes))
    return torch.cat(sets)
