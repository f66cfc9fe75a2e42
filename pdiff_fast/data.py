"""Datasets as in-memory tensors: MNIST-1D (generated offline), scikit-learn's digits, or
anything a user brings (a torch Dataset or DataLoader).

MNIST-1D comes from the `mnist1d` package's procedural generator (never its download) and is
cached as safetensors, so the second call is instant.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .io import load_tensors, save_tensors


@dataclass
class TensorData:
    """Train/test split held as tensors; x is (N, ...) float32, y is (N,) int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.name}: {split} has {x.shape[0]} inputs but {y.shape[0]} labels")
            if x.shape[0] == 0:
                raise ValueError(f"{self.name}: the {split} split is empty")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device) -> "TensorData":
        return TensorData(self.name, self.x_train.to(device), self.y_train.to(device),
                          self.x_test.to(device), self.y_test.to(device), self.num_classes)


def default_cache_dir() -> Path:
    return Path(os.environ.get("PDIFF_FAST_CACHE", Path.home() / ".cache" / "pdiff_fast"))


def mnist1d(cache_dir: str | os.PathLike | None = None, num_samples: int = 5000, seed: int = 42) -> TensorData:
    """MNIST-1D: 40-long signals, 10 classes, 80/20 split; x is (N, 1, 40)."""
    cache = Path(cache_dir or default_cache_dir()) / f"mnist1d_n{num_samples}_s{seed}.safetensors"
    t = None
    if cache.is_file():
        try:
            t, _ = load_tensors(cache)
            if set(t) != {"x_train", "y_train", "x_test", "y_test"}:
                raise ValueError(f"{cache}: not an MNIST-1D cache file (tensors {sorted(t)})")
        except ValueError as exc:  # a damaged or foreign cache file: made again below
            warnings.warn(f"remaking the MNIST-1D cache ({exc})", stacklevel=2)
            t = None
    if t is None:
        from mnist1d.data import get_dataset_args, make_dataset  # the generator, not the download

        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        d = make_dataset(args)
        t = {
            "x_train": torch.tensor(d["x"], dtype=torch.float32).unsqueeze(1),
            "y_train": torch.tensor(d["y"], dtype=torch.int64),
            "x_test": torch.tensor(d["x_test"], dtype=torch.float32).unsqueeze(1),
            "y_test": torch.tensor(d["y_test"], dtype=torch.int64),
        }
        try:
            save_tensors(cache, t, {"dataset": "mnist1d", "num_samples": num_samples, "seed": seed})
        except OSError as exc:  # a cache that cannot be written (read-only home, full disk) only costs time
            warnings.warn(f"MNIST-1D made but not cached ({exc})", stacklevel=2)
    return TensorData("mnist1d", t["x_train"], t["y_train"], t["x_test"], t["y_test"], 10)


def digits(test_fraction: float = 0.2, seed: int = 0) -> TensorData:
    """scikit-learn's 8x8 digits (1797 images, shipped with the package); x is (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    te, tr = perm[:n_test], perm[n_test:]
    return TensorData("digits", x[tr], y[tr], x[te], y[te], 10)


def carve_validation(data: TensorData, fraction: float, seed: int) -> tuple[TensorData, torch.Tensor, torch.Tensor]:
    """A validation split carved out of the training data, to label checkpoints with an accuracy (recipe
    "span", accuracy prompting) so the test set never labels, selects or prompts; it only scores.
    Returns (data with the training split minus the validation rows, x_val, y_val): a seeded random
    `fraction` of the training samples (at least one, and at least one left to train on)."""
    n = len(data.y_train)
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction!r}")
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(f"dataset {data.name!r}: {n} training samples cannot give a validation split of "
                         f"{fraction:g} and keep one to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
    rest = replace(data, x_train=data.x_train[train], y_train=data.y_train[train])
    return rest, data.x_train[val], data.y_train[val]


def _to_tensors(source) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(source, torch.utils.data.DataLoader):
        batches = list(source)
    else:
        batches = list(torch.utils.data.DataLoader(source, batch_size=1024, shuffle=False))
    if not batches:
        raise ValueError("dataset is empty")
    xs, ys = zip(*[(b[0], b[1]) for b in batches])
    return torch.cat(xs).float(), torch.cat(ys).long()


def from_torch(train, test, num_classes: int | None = None, name: str = "user") -> TensorData:
    """Wrap a user's torch Datasets or DataLoaders (items (x, y)) as TensorData."""
    x_tr, y_tr = _to_tensors(train)
    x_te, y_te = _to_tensors(test)
    if num_classes is None:
        num_classes = int(max(y_tr.max(), y_te.max()).item()) + 1
    return TensorData(name, x_tr, y_tr, x_te, y_te, num_classes)


DATASETS = {"mnist1d": mnist1d, "digits": digits}


def load_dataset(name: str, cache_dir=None) -> TensorData:
    if name == "mnist1d":
        return mnist1d(cache_dir)
    if name == "digits":
        return digits()
    raise ValueError(f"unknown dataset {name!r}; built in: {sorted(DATASETS)} (or pass your own via data.from_torch)")
