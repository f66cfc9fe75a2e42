"""Parameter subsets: select them, describe them (ParamSpec), flatten a population of models
into a (K, D) tensor and back, and standardise them per parameter.

    spec = ParamSpec.from_model(model, "last-2-norm-layers")   # or names / glob patterns / "all"
    flat = spec.flatten([model_a, model_b])                      # (2, D) float32, bit-exact
    spec.load_into(model, flat[0])                               # write one row back
"""
from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .ops import flatten_params as _fp

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_PRESET_LAST_K = re.compile(r"^last-(\d+)-norm-layers?$")

_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _norm_layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, NORM_TYPES) and
            any(True for _ in m.parameters(recurse=False))]


def select_names(model: nn.Module, selector: str | Sequence[str]) -> list[str]:
    """Resolve a selector into parameter names, in the model's own order.

    selector: "all", "last-K-norm-layers" (weight and bias of the last K norm layers with an
    affine), a glob pattern ("layer4.*.bn*"), or a list of names / patterns.
    """
    names = [n for n, _ in model.named_parameters()]
    if isinstance(selector, str):
        if selector == "all":
            return names
        m = _PRESET_LAST_K.match(selector)
        if m:
            k = int(m.group(1))
            layers = _norm_layer_names(model)
            if k < 1 or k > len(layers):
                raise ValueError(f"subset {selector!r}: the model has {len(layers)} norm layers with parameters")
            chosen = set(layers[-k:])
            return [n for n in names if n.rsplit(".", 1)[0] in chosen]
        selector = [selector]
    picked: list[str] = []
    for pattern in selector:
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"subset pattern {pattern!r} matches no parameter of the model "
                             f"(it has {len(names)}, e.g. {names[:3]})")
        picked.extend(h for h in hits if h not in picked)
    return [n for n in names if n in picked]


@dataclass(frozen=True)
class Segment:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


class ParamSpec:
    """Names, shapes, dtypes and offsets of a parameter subset, laid out in one row of D values."""

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]], dtypes: Sequence[torch.dtype]):
        if not names:
            raise ValueError("ParamSpec: empty subset")
        if len(set(names)) != len(names):
            raise ValueError("ParamSpec: duplicate parameter names")
        self.segments: list[Segment] = []
        offset = 0
        for name, shape, dtype in zip(names, shapes, dtypes, strict=True):
            seg = Segment(name, tuple(int(s) for s in shape), dtype, offset)
            self.segments.append(seg)
            offset += seg.numel
        self.dim = offset

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, selector: str | Sequence[str] = "last-2-norm-layers") -> "ParamSpec":
        params = dict(model.named_parameters())
        names = select_names(model, selector)
        return cls(names, [params[n].shape for n in names], [params[n].dtype for n in names])

    # --- description --------------------------------------------------------------------
    names = property(lambda self: [s.name for s in self.segments])
    shapes = property(lambda self: [s.shape for s in self.segments])
    dtypes = property(lambda self: [s.dtype for s in self.segments])
    numels = property(lambda self: [s.numel for s in self.segments])
    offsets = property(lambda self: [s.offset for s in self.segments])

    def __len__(self) -> int:
        return len(self.segments)

    def __eq__(self, other) -> bool:
        return isinstance(other, ParamSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ParamSpec({len(self)} tensors, D={self.dim}: {', '.join(self.names[:4])}{'...' if len(self) > 4 else ''})"

    def to_dict(self) -> dict:
        return {"names": self.names, "shapes": [list(s) for s in self.shapes], "dtypes": [str(d) for d in self.dtypes]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ParamSpec":
        try:
            dtypes = [_DTYPES[x] for x in d["dtypes"]]
            return cls(list(d["names"]), [tuple(s) for s in d["shapes"]], dtypes)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a valid ParamSpec description: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "ParamSpec":
        return cls.from_dict(json.loads(text))

    # --- checks -------------------------------------------------------------------------
    def tensors_of(self, source: nn.Module | Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The subset's tensors of a model (its live parameters) or a state dict, checked against the spec."""
        table = dict(source.named_parameters()) if isinstance(source, nn.Module) else source
        out = []
        for seg in self.segments:
            if seg.name not in table:
                raise ValueError(f"spec does not fit: {seg.name!r} is not in the model / state dict")
            t = table[seg.name]
            if tuple(t.shape) != seg.shape:
                raise ValueError(f"spec does not fit: {seg.name!r} has shape {tuple(t.shape)}, the spec says {seg.shape}")
            out.append(t)
        return out

    def check(self, model: nn.Module) -> None:
        self.tensors_of(model)

    # --- flatten / unflatten ------------------------------------------------------------
    def flatten(self, sources: Iterable[nn.Module | Mapping[str, torch.Tensor]], dtype=torch.float32) -> torch.Tensor:
        """Models or state dicts -> (N, D) tensor, rows in spec order."""
        tensors = [self.tensors_of(s) for s in sources]
        return _fp.flatten_params(tensors, self.numels, dtype)

    def unflatten(self, flat: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """(N, D) -> N state dicts of the subset, each tensor in its spec dtype."""
        stacked = self.unflatten_stacked(flat)
        return [{name: t[i] for name, t in stacked.items()} for i in range(flat.shape[0])]

    def unflatten_stacked(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, D) -> {name: (N, *shape)}, ready for torch.func.functional_call + vmap."""
        if flat.dim() == 1:
            flat = flat.unsqueeze(0)
        out = _fp.unflatten_params(flat, self.shapes, self.dtypes)
        return dict(zip(self.names, out))

    def load_into(self, model: nn.Module, row: torch.Tensor) -> nn.Module:
        """Write one (D,) row into `model`'s parameters in place."""
        if row.dim() != 1 or row.numel() != self.dim:
            raise ValueError(f"load_into: expected a ({self.dim},) vector, got {tuple(row.shape)}")
        targets = [self.tensors_of(model)]
        _fp.unflatten_into(row.unsqueeze(0).to(targets[0][0].device), targets)
        return model

    def load_into_models(self, models: Sequence[nn.Module], flat: torch.Tensor) -> None:
        """Write row i of (N, D) into models[i] (in place), one launch on the extension."""
        _fp.unflatten_into(flat, [self.tensors_of(m) for m in models])


class Standardizer:
    """Per-parameter-tensor standardisation of a population (as the reference's v2 does).

    Each segment gets its own mean and std over all K checkpoints and its values; BN running
    variances (optional names in `log_names`) are log-transformed first.
    """

    def __init__(self, spec: ParamSpec, mean: torch.Tensor, std: torch.Tensor, log_mask: torch.Tensor):
        self.spec, self.mean, self.std, self.log_mask = spec, mean, std, log_mask  # each (D,)

    @classmethod
    def fit(cls, spec: ParamSpec, flat: torch.Tensor, log_names: Sequence[str] = ()) -> "Standardizer":
        flat = flat.double()
        log_mask = torch.zeros(spec.dim, dtype=torch.bool)
        for seg in spec.segments:
            if seg.name in log_names:
                log_mask[seg.offset:seg.offset + seg.numel] = True
        x = torch.where(log_mask, torch.log(flat.clamp_min(1e-12)), flat)
        mean = torch.empty(spec.dim, dtype=torch.float64)
        std = torch.empty(spec.dim, dtype=torch.float64)
        for seg in spec.segments:
            sl = slice(seg.offset, seg.offset + seg.numel)
            mean[sl] = x[:, sl].mean()
            std[sl] = x[:, sl].std(unbiased=False).clamp_min(1e-8)
        return cls(spec, mean.float(), std.float(), log_mask)

    def transform(self, flat: torch.Tensor) -> torch.Tensor:
        m, s, lm = (t.to(flat.device) for t in (self.mean, self.std, self.log_mask))
        x = torch.where(lm, torch.log(flat.clamp_min(1e-12)), flat)
        return (x - m) / s

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        m, s, lm = (t.to(z.device) for t in (self.mean, self.std, self.log_mask))
        x = z * s + m
        return torch.where(lm, torch.exp(x), x)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"standardizer.mean": self.mean, "standardizer.std": self.std,
                "standardizer.log_mask": self.log_mask.to(torch.uint8)}

    @classmethod
    def from_state_dict(cls, spec: ParamSpec, sd: Mapping[str, torch.Tensor]) -> "Standardizer":
        return cls(spec, sd["standardizer.mean"], sd["standardizer.std"], sd["standardizer.log_mask"].bool())


# --- training a parameter subset (the base model's collection, the zoo, fine-tuning) ---
def _set_norm_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm,)):
            m.eval()


def _sgd(params, lr, momentum=0.9, weight_decay=5e-4):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _subset_params(model: nn.Module, spec: ParamSpec) -> list[nn.Parameter]:
    chosen = set(spec.names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return [p for name, p in model.named_parameters() if name in chosen]
